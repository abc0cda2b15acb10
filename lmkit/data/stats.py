"""Corpus statistics: frequencies, Zipf's law, vocabulary growth, document lengths (chapter 8),
and the perplexity of a text under a model (chapter 1).

All functions take plain Python sequences (tokens as strings or ids) and return plain numbers or
NumPy arrays, so that they work with any tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def perplexity(mean_nll: float) -> float:
    """Perplexity (困惑度) from the mean negative log-likelihood per token in nats: exp(mean_nll).

    The one definition in lmkit, imported as ``lmkit.metrics.perplexity``. It lives here because
    it is a statistic of a text (its mean surprise under a model, as an effective number of
    equally likely choices per token) and because ``lmkit.data`` sits below ``lmkit.models``, so
    the n-gram model of chapter 1 can use it too. An infinite mean NLL (a token of probability
    0), or one too large for a float's exp, gives ``inf``. Chapters 1 and 25.
    """
    try:
        return float(math.exp(mean_nll))
    except OverflowError:
        return math.inf


def rank_frequency(tokens) -> tuple[list, np.ndarray]:
    """Token types sorted by count: (types, counts (V,) descending). Ties broken by first sight."""
    counts = Counter(tokens)
    items = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
    return [k for k, _ in items], np.array([v for _, v in items], dtype=np.int64)


def zipf_exponent(counts, min_rank: int = 1, max_rank: int | None = None) -> tuple[float, float]:
    """Least-squares fit of log f = log C - s log r over ranks [min_rank, max_rank]: returns (s, C).

    ``counts`` (V,) sorted descending. Zipf's law predicts s close to 1 for words. Chapter 8.
    """
    counts = np.asarray(counts, dtype=np.float64)
    max_rank = len(counts) if max_rank is None else min(max_rank, len(counts))
    if max_rank - min_rank < 1:
        raise ValueError("need at least two ranks to fit a line")
    r = np.arange(min_rank, max_rank + 1, dtype=np.float64)
    f = counts[min_rank - 1 : max_rank]
    slope, intercept = np.polyfit(np.log(r), np.log(f), 1)
    return float(-slope), float(np.exp(intercept))


def vocabulary_growth(tokens, points: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Heaps' law data: (number of tokens read n (points,), distinct types seen V(n) (points,))."""
    tokens = list(tokens)
    if not tokens:
        raise ValueError("no tokens")
    ns = np.unique(np.geomspace(1, len(tokens), points).astype(np.int64))
    seen, out, j = set(), [], 0
    for i, t in enumerate(tokens, 1):
        seen.add(t)
        while j < len(ns) and ns[j] == i:
            out.append(len(seen))
            j += 1
    return ns, np.array(out, dtype=np.int64)


def heaps_exponent(ns, vs) -> tuple[float, float]:
    """Fit V(n) = K n^beta in log-log space: returns (beta, K). Chapter 8."""
    beta, logk = np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(vs, float)), 1)
    return float(beta), float(np.exp(logk))


def document_lengths(documents, encode=None) -> np.ndarray:
    """Length of each document (characters, or tokens when ``encode`` is given): (D,) int64."""
    return np.array([len(encode(d)) if encode else len(d) for d in documents], dtype=np.int64)


def coverage(counts, top: int) -> float:
    """Fraction of all token occurrences covered by the ``top`` most frequent types."""
    counts = np.asarray(counts)
    return float(counts[:top].sum() / counts.sum())
