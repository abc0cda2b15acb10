"""n-gram language models: maximum likelihood, add-k and interpolated Kneser-Ney smoothing.

Explained in chapter 1. An n-gram model (n 元语法模型) predicts token ``w`` from the previous
``n - 1`` tokens ``h`` by counting: ``P(w | h) = c(h w) / c(h)``. Counts of zero make that estimate
useless on new text, so the probabilities are *smoothed* (平滑):

* ``"add-k"`` (Laplace when k = 1): ``(c(h w) + k) / (c(h) + k V)``.
* ``"kn"``: interpolated Kneser-Ney (Chen and Goodman's formulation), the classic best n-gram
  smoother: absolute discounting of every count plus interpolation with a lower-order model whose
  counts are *continuation counts* (in how many different contexts a token appears).
* ``"mle"``: no smoothing at all (unseen events get probability 0 and perplexity becomes infinite).

Tokens are integers in ``[0, vocab_size)`` so the same class serves characters, words or BPE ids.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from lmkit.data.stats import perplexity

__all__ = ["NGramLM"]


class NGramLM:
    """An n-gram language model over integer tokens. Explained in chapter 1.

    ``NGramLM(n=3, smoothing="kn").fit(ids, vocab_size)``, then ``prob(context, w)``,
    ``distribution(context) -> (V,)``, ``nll(ids)`` (mean nats per token), ``perplexity(ids)``
    and ``generate(context, max_new_tokens, seed)``.

    ``discount=None`` (Kneser-Ney) estimates one discount per order from the counts of counts,
    ``D = n1 / (n1 + 2 n2)`` (Ney, Essen and Kneser 1994), or 0.5 where n1 or n2 is zero (so that
    every order keeps some probability mass for unseen tokens).
    """

    def __init__(
        self, n: int = 3, smoothing: str = "kn", k: float = 1.0, discount: float | None = None
    ):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if smoothing not in ("kn", "add-k", "mle"):
            raise ValueError(f"smoothing must be 'kn', 'add-k' or 'mle', got {smoothing!r}")
        if smoothing == "add-k" and k <= 0:
            raise ValueError(f"add-k smoothing needs k > 0, got {k}")
        if discount is not None and not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.n, self.smoothing, self.k, self.fixed_discount = n, smoothing, k, discount
        self.vocab_size = None

    # --- counting -------------------------------------------------------------------------
    def fit(self, ids, vocab_size: int) -> NGramLM:
        """Count every m-gram (m = 1..n) of the token sequence ``ids`` (list or 1-D array)."""
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {vocab_size})")
        self.vocab_size = vocab_size
        n = self.n
        # raw counts of every m-gram, m = 1..n: grams[m][tuple] = count
        grams = [None] + [Counter(zip(*(ids[j:] for j in range(m)))) for m in range(1, n + 1)]
        self.counts = grams
        # tables[m]: context (m-1 tokens) -> {token: count}; for KN the lower orders (m < n)
        # hold continuation counts N1+(. h w) instead of raw counts.
        self.tables = [None]
        for m in range(1, n + 1):
            if self.smoothing == "kn" and m < n:
                src = Counter(
                    g[1:] for g in grams[m + 1]
                )  # distinct left extensions of each m-gram
                if len(ids) >= m:  # the start of the text counts as one more distinct left context
                    src[tuple(ids[:m])] += 1
            else:
                src = grams[m]
            table = defaultdict(dict)
            for g, c in src.items():
                table[g[:-1]][g[-1]] = c
            self.tables.append(dict(table))
        # per context: total count and number of distinct followers
        self.totals = [None] + [{h: sum(d.values()) for h, d in t.items()} for t in self.tables[1:]]
        self.types = [None] + [{h: len(d) for h, d in t.items()} for t in self.tables[1:]]
        self.discounts = [None]
        for m in range(1, n + 1):
            if self.fixed_discount is not None:
                self.discounts.append(self.fixed_discount)
                continue
            coc = Counter(c for d in self.tables[m].values() for c in d.values())
            n1, n2 = coc.get(1, 0), coc.get(2, 0)
            self.discounts.append(n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5)
        # vectorised tables for distribution(): context -> (token ids, counts) as arrays
        self._arrays = [None] + [
            {
                h: (
                    np.fromiter(d.keys(), dtype=np.int64),
                    np.fromiter(d.values(), dtype=np.float64),
                )
                for h, d in t.items()
            }
            for t in self.tables[1:]
        ]
        return self

    def _check(self):
        if self.vocab_size is None:
            raise RuntimeError("call fit(ids, vocab_size) first")

    def _context(self, context) -> tuple:
        context = tuple(int(i) for i in context)
        return context[len(context) - (self.n - 1) :] if self.n > 1 else ()

    # --- probabilities ----------------------------------------------------------------------
    def prob(self, context, w: int) -> float:
        """P(w | last n-1 tokens of context) under the chosen smoothing."""
        self._check()
        h = self._context(context)
        w = int(w)
        V = self.vocab_size
        if self.smoothing != "kn":
            m = len(h) + 1
            c_hw = self.tables[m].get(h, {}).get(w, 0)
            c_h = self.totals[m].get(h, 0)
            if self.smoothing == "add-k":
                return (c_hw + self.k) / (c_h + self.k * V)
            return c_hw / c_h if c_h else 1.0 / V  # mle: an unseen context falls back to uniform
        p = 1.0 / V  # order 0: uniform
        for m in range(1, len(h) + 2):
            ctx = h[len(h) - (m - 1) :] if m > 1 else ()
            total = self.totals[m].get(ctx)
            if not total:
                continue  # unseen context: keep the lower-order estimate
            D = self.discounts[m]
            c = self.tables[m][ctx].get(w, 0)
            p = (max(c - D, 0.0) + D * self.types[m][ctx] * p) / total
        return p

    def distribution(self, context) -> np.ndarray:
        """The whole next-token distribution (V,) for a context; sums to 1."""
        self._check()
        h = self._context(context)
        V = self.vocab_size
        if self.smoothing != "kn":
            m = len(h) + 1
            counts = np.zeros(V)
            if h in self._arrays[m]:
                ids, c = self._arrays[m][h]
                counts[ids] = c
            if self.smoothing == "add-k":
                return (counts + self.k) / (counts.sum() + self.k * V)
            return counts / counts.sum() if counts.sum() else np.full(V, 1.0 / V)
        p = np.full(V, 1.0 / V)
        for m in range(1, len(h) + 2):
            ctx = h[len(h) - (m - 1) :] if m > 1 else ()
            if ctx not in self._arrays[m]:
                continue
            ids, c = self._arrays[m][ctx]
            D = self.discounts[m]
            total = self.totals[m][ctx]
            new = D * len(ids) * p
            new[ids] += np.maximum(c - D, 0.0)
            p = new / total
        return p

    def nll(self, ids) -> float:
        """Mean negative log-likelihood (nats per token) of a token sequence; the first token is
        predicted from an empty context, later ones from up to n-1 previous tokens."""
        self._check()
        ids = [int(i) for i in ids]
        total = 0.0
        for i, w in enumerate(ids):
            p = self.prob(ids[max(0, i - self.n + 1) : i], w)
            if p <= 0.0:
                return math.inf
            total -= math.log(p)
        return total / len(ids)

    def perplexity(self, ids) -> float:
        """exp(nll(ids)) by :func:`lmkit.metrics.perplexity`: the effective number of equally
        likely choices per token. Chapter 1."""
        return perplexity(self.nll(ids))

    def generate(
        self, context, max_new_tokens: int, seed: int = 0, temperature: float = 1.0
    ) -> list[int]:
        """Sample ``max_new_tokens`` tokens after ``context`` (list of ids); returns the new ids."""
        self._check()
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        rng = np.random.default_rng(seed)
        out = [int(i) for i in context]
        for _ in range(max_new_tokens):
            p = self.distribution(out)
            if temperature != 1.0:
                p = p ** (1.0 / temperature)
                p = p / p.sum()
            out.append(int(rng.choice(self.vocab_size, p=p)))
        return out[len(context) :]

    def num_ngrams(self) -> list[int]:
        """Distinct m-grams seen in training for m = 1..n (the model's "parameters")."""
        self._check()
        return [len(self.counts[m]) for m in range(1, self.n + 1)]
