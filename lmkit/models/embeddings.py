"""Static word embeddings: skip-gram with negative sampling, GloVe, nearest neighbours.

Explained in chapter 2. A word embedding (词嵌入) maps each word of a vocabulary to a vector so
that words used in similar contexts get similar vectors. This module trains two classic kinds on a
word-level corpus:

* :func:`train_skipgram`: word2vec's skip-gram with negative sampling (负采样) (Mikolov et al.
  2013) in PyTorch: for every (centre, context) pair within a window, push ``sigma(u_o . v_c)`` up
  and ``sigma(u_k . v_c)`` down for k random "negative" words drawn from unigram^0.75.
* :func:`train_glove`: GloVe (Pennington et al. 2014): a weighted least-squares factorisation of
  the log co-occurrence matrix, ``w_i . w~_j + b_i + b~_j ~ log X_ij``.

and compares embeddings by their nearest neighbours (cosine similarity), analogies and the overlap
of neighbour lists between two models (:func:`neighbor_overlap`). Words come from
:func:`lmkit.data.tokenize_words` and ids from :class:`lmkit.data.Vocab` (most frequent first).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.data import Vocab

__all__ = [
    "subsample",
    "skipgram_pairs",
    "SkipGramNS",
    "train_skipgram",
    "cooccurrence_matrix",
    "train_glove",
    "normalize",
    "nearest_neighbors",
    "analogy",
    "neighbor_overlap",
]


def subsample(ids: np.ndarray, counts: np.ndarray, t: float = 1e-3, seed: int = 0) -> np.ndarray:
    """word2vec's frequent-word subsampling: keep token w with probability
    min(1, sqrt(t / f(w)) + t / f(w)), f(w) the word's relative frequency. Returns the kept ids."""
    f = counts / counts.sum()
    keep_p = np.minimum(1.0, np.sqrt(t / f) + t / f)
    rng = np.random.default_rng(seed)
    return ids[rng.random(len(ids)) < keep_p[ids]]


def skipgram_pairs(ids: np.ndarray, window: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """All (centre, context) pairs with |offset| <= window: two (P,) int64 arrays."""
    ids = np.asarray(ids, dtype=np.int64)
    centers, contexts = [], []
    for off in range(1, window + 1):
        centers += [ids[:-off], ids[off:]]
        contexts += [ids[off:], ids[:-off]]
    return np.concatenate(centers), np.concatenate(contexts)


class SkipGramNS(nn.Module):
    """Skip-gram with negative sampling: input vectors ``v`` (centre), output ``u`` (context).

    ``forward(center (B,), context (B,), negatives (B, K))`` -> mean loss
    ``-log sigma(u_o . v_c) - sum_k log sigma(-u_k . v_c)``. ``vectors()`` (V, d) are the input
    vectors.
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.v = nn.Embedding(vocab_size, dim)
        self.u = nn.Embedding(vocab_size, dim)
        nn.init.uniform_(self.v.weight, -0.5 / dim, 0.5 / dim)  # word2vec's initialisation
        nn.init.zeros_(self.u.weight)

    def forward(self, center, context, negatives):
        vc = self.v(center)  # (B, d)
        pos = (self.u(context) * vc).sum(-1)  # (B,)
        neg = torch.bmm(self.u(negatives), vc.unsqueeze(-1)).squeeze(-1)  # (B, K)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()

    def vectors(self) -> np.ndarray:
        return self.v.weight.detach().cpu().numpy().copy()


def train_skipgram(
    ids,
    counts,
    dim: int = 50,
    window: int = 2,
    negatives: int = 5,
    epochs: int = 3,
    batch_size: int = 1024,
    lr: float = 0.01,
    sample: float | None = 1e-3,
    seed: int = 0,
    optimizer: str = "adam",
    device: str = "cpu",
):
    """Train :class:`SkipGramNS` on a corpus of word ids (N,) with frequencies ``counts`` (V,).

    Negatives are drawn from the unigram distribution raised to 3/4; frequent words are subsampled
    each epoch when ``sample`` is set. ``optimizer="adam"`` (mean loss per batch) or ``"sgd"``
    (word2vec's recipe: summed loss, learning rate decaying linearly to zero; use lr ~ 0.025).
    Returns (model, per-epoch mean losses). Explained in chapter 2.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    model = SkipGramNS(len(counts), dim).to(device)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    noise = torch.tensor(counts**0.75 / (counts**0.75).sum(), dtype=torch.float)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        kept = subsample(ids, counts.astype(np.int64), sample, seed + epoch) if sample else ids
        c, o = skipgram_pairs(kept, window)
        order = rng.permutation(len(c))
        c, o = torch.from_numpy(c[order]), torch.from_numpy(o[order])
        total, nb = 0.0, 0
        n_batches = (len(c) + batch_size - 1) // batch_size
        for bi, s in enumerate(range(0, len(c), batch_size)):
            cb, ob = c[s : s + batch_size], o[s : s + batch_size]
            neg = torch.multinomial(
                noise, len(cb) * negatives, replacement=True, generator=gen
            ).view(len(cb), negatives)
            loss = model(cb.to(device), ob.to(device), neg.to(device))
            opt.zero_grad(set_to_none=True)
            if (
                optimizer == "sgd"
            ):  # word2vec: per-pair steps (sum of losses), lr decaying linearly to 0
                for g in opt.param_groups:
                    g["lr"] = lr * max(1e-4, 1 - (epoch * n_batches + bi) / (epochs * n_batches))
                (loss * len(cb)).backward()
            else:
                loss.backward()
            opt.step()
            total += loss.item()
            nb += 1
        losses.append(total / max(nb, 1))
    return model, losses


def cooccurrence_matrix(
    ids, vocab_size: int, window: int = 5, distance_weighting: bool = True
) -> np.ndarray:
    """Symmetric co-occurrence counts X (V, V): X[i, j] sums 1/d (or 1) over every pair of words
    i, j at distance d <= window (GloVe's weighting). Dense, so keep V to a few thousand."""
    ids = np.asarray(ids, dtype=np.int64)
    X = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    for d in range(1, window + 1):
        w = 1.0 / d if distance_weighting else 1.0
        np.add.at(X, (ids[:-d], ids[d:]), w)
        np.add.at(X, (ids[d:], ids[:-d]), w)
    return X


def train_glove(
    X: np.ndarray,
    dim: int = 50,
    epochs: int = 200,
    lr: float = 0.05,
    x_max: float = 100.0,
    alpha: float = 0.75,
    seed: int = 0,
    device: str = "cpu",
):
    """GloVe: minimise sum_{X_ij > 0} f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2 with full-batch
    Adam, f(x) = min(1, (x / x_max)^alpha). Returns (vectors W + W~ (V, d), per-epoch losses).
    Explained in chapter 2."""
    torch.manual_seed(seed)
    i, j = np.nonzero(X)
    x = torch.tensor(X[i, j], dtype=torch.float, device=device)
    i, j = torch.from_numpy(i).to(device), torch.from_numpy(j).to(device)
    V = X.shape[0]
    W = nn.Parameter(torch.randn(V, dim, device=device) * 0.1)
    Wc = nn.Parameter(torch.randn(V, dim, device=device) * 0.1)
    b = nn.Parameter(torch.zeros(V, device=device))
    bc = nn.Parameter(torch.zeros(V, device=device))
    weight = torch.clamp(x / x_max, max=1.0) ** alpha
    logx = torch.log(x)
    opt = torch.optim.Adam([W, Wc, b, bc], lr=lr)
    losses = []
    for _ in range(epochs):
        pred = (W[i] * Wc[j]).sum(-1) + b[i] + bc[j]
        loss = (weight * (pred - logx) ** 2).sum() / len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return (W + Wc).detach().cpu().numpy(), losses


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (V, d), so that dot products are cosine similarities."""
    n = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(n, 1e-12)


def nearest_neighbors(
    vectors: np.ndarray, vocab: Vocab, word: str, k: int = 5
) -> list[tuple[str, float]]:
    """The k words with the highest cosine similarity to ``word`` (itself excluded)."""
    if word not in vocab:
        raise KeyError(f"{word!r} is not in the vocabulary")
    E = normalize(vectors)
    sims = E @ E[vocab.stoi[word]]
    sims[vocab.stoi[word]] = -np.inf
    top = np.argsort(-sims, kind="stable")[:k]
    return [(vocab.itos[t], float(sims[t])) for t in top]


def analogy(
    vectors: np.ndarray, vocab: Vocab, a: str, b: str, c: str, k: int = 1
) -> list[tuple[str, float]]:
    """'a is to b as c is to ?': the words closest to b - a + c (3CosAdd), excluding a, b, c."""
    for w in (a, b, c):
        if w not in vocab:
            raise KeyError(f"{w!r} is not in the vocabulary")
    E = normalize(vectors)
    q = E[vocab.stoi[b]] - E[vocab.stoi[a]] + E[vocab.stoi[c]]
    sims = E @ (q / np.linalg.norm(q))
    for w in (a, b, c):
        sims[vocab.stoi[w]] = -np.inf
    top = np.argsort(-sims, kind="stable")[:k]
    return [(vocab.itos[t], float(sims[t])) for t in top]


def neighbor_overlap(vectors_a: np.ndarray, vectors_b: np.ndarray, word_ids, k: int = 10) -> float:
    """Mean |N_a(w) & N_b(w)| / k over the given word ids, N(w) the k nearest neighbours of w under
    each embedding (same vocabulary, same row order). 1 = identical neighbourhoods."""
    A, B = normalize(vectors_a), normalize(vectors_b)
    total = 0.0
    for w in word_ids:
        sa, sb = A @ A[w], B @ B[w]
        sa[w] = sb[w] = -np.inf
        na = set(np.argsort(-sa, kind="stable")[:k].tolist())
        nb = set(np.argsort(-sb, kind="stable")[:k].tolist())
        total += len(na & nb) / k
    return total / len(word_ids)
