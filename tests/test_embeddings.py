"""lmkit.models.embeddings: skip-gram with negative sampling, GloVe, neighbours (chapter 2)."""

import numpy as np
import pytest
import torch

from lmkit.data import Vocab
from lmkit.models.embeddings import (
    SkipGramNS,
    analogy,
    cooccurrence_matrix,
    nearest_neighbors,
    neighbor_overlap,
    normalize,
    skipgram_pairs,
    subsample,
    train_glove,
    train_skipgram,
)


def _toy_corpus(n=3000, seed=0):
    """Two topics: animals appear with 'eats', tools with 'uses'; words within a topic are
    interchangeable."""
    rng = np.random.default_rng(seed)
    animals, tools = ["cat", "dog", "cow", "pig"], ["saw", "axe", "drill", "hammer"]
    words = []
    for _ in range(n):
        if rng.random() < 0.5:
            words += ["the", rng.choice(animals), "eats", "grass"]
        else:
            words += ["a", rng.choice(tools), "uses", "power"]
    return words, animals, tools


def test_word2vec_vocab_drops_rare_words():
    v = Vocab.from_tokens(["b", "a", "a", "c", "b", "a"], min_count=2)
    assert v.itos == ["a", "b"] and v.counts.tolist() == [3, 2] and len(v) == 2
    assert v.encode(["a", "c", "b"]) == [0, 1] and "c" not in v  # no <unk>: "c" is left out


def test_skipgram_pairs_and_subsample():
    c, o = skipgram_pairs(np.array([5, 6, 7]), window=1)
    assert sorted(zip(c.tolist(), o.tolist())) == [(5, 6), (6, 5), (6, 7), (7, 6)]
    ids = np.array([0] * 1000 + [1] * 10)
    kept = subsample(ids, np.array([1000, 10]), t=1e-2, seed=0)
    assert (kept == 1).sum() == 10 and (kept == 0).sum() < 300


def test_skipgram_loss_at_init_is_log2_times_k_plus_1():
    m = SkipGramNS(10, 4)  # output vectors start at zero: every sigma is 1/2
    loss = m(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [7, 8]]))
    assert loss.item() == pytest.approx(3 * np.log(2), rel=1e-6)


def test_skipgram_learns_topics():
    words, animals, tools = _toy_corpus()
    v = Vocab.from_tokens(words)
    model, losses = train_skipgram(
        v.encode(words),
        v.counts,
        dim=8,
        window=2,
        epochs=3,
        batch_size=256,
        lr=0.02,
        sample=None,
        seed=0,
    )
    assert losses[-1] < losses[0]
    E = model.vectors()
    near = [w for w, _ in nearest_neighbors(E, v, "cat", 3)]
    assert set(near) <= set(animals + ["eats", "the", "grass"]) and set(near) & set(animals)


def test_glove_learns_topics_and_fits_log_counts():
    words, animals, tools = _toy_corpus()
    v = Vocab.from_tokens(words)
    X = cooccurrence_matrix(v.encode(words), len(v), window=2)
    assert np.allclose(X, X.T)
    W, losses = train_glove(X, dim=8, epochs=300, lr=0.05, seed=0)
    assert losses[-1] < 0.1 * losses[0]
    near = [w for w, _ in nearest_neighbors(W, v, "saw", 3)]
    assert set(near) & set(tools)


def test_cooccurrence_by_hand():
    X = cooccurrence_matrix(np.array([0, 1, 2]), 3, window=2)
    assert X[0, 1] == 1.0 and X[0, 2] == 0.5 and X[1, 2] == 1.0 and X[0, 0] == 0.0
    X = cooccurrence_matrix(np.array([0, 1, 2]), 3, window=2, distance_weighting=False)
    assert X[0, 2] == 1.0


def test_neighbors_analogy_overlap():
    itos = ["king", "queen", "man", "woman", "apple"]
    v = Vocab(itos, counts=[1] * 5)
    E = np.array([[1, 1, 0], [1, -1, 0], [0.1, 1, 0], [0.1, -1, 0], [0, 0, 1]], dtype=float)
    assert analogy(E, v, "man", "king", "woman")[0][0] == "queen"
    nn = nearest_neighbors(E, v, "king", 1)
    assert nn[0][0] == "man" and nn[0][1] == pytest.approx(float(normalize(E)[0] @ normalize(E)[2]))
    assert neighbor_overlap(E, E * 3.0, [0, 1, 2], k=1) == 1.0
    assert neighbor_overlap(E, E[[0, 1, 3, 2, 4]], [0], k=1) == 0.0
    with pytest.raises(KeyError):
        nearest_neighbors(E, v, "pear")


def test_skipgram_sgd_recipe_and_bad_optimizer():
    words, animals, tools = _toy_corpus(n=1500)
    v = Vocab.from_tokens(words)
    model, losses = train_skipgram(
        v.encode(words),
        v.counts,
        dim=8,
        window=2,
        epochs=2,
        batch_size=128,
        lr=0.025,
        sample=None,
        seed=0,
        optimizer="sgd",
    )
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError):
        train_skipgram(v.encode(words), v.counts, epochs=1, optimizer="lbfgs")
