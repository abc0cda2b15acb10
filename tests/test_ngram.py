"""lmkit.models.ngram: counts, smoothing, normalisation, perplexity (chapter 1)."""

import math

import numpy as np
import pytest

from lmkit.metrics import perplexity
from lmkit.models.ngram import NGramLM

IDS = [0, 1, 2, 0, 1, 2, 0, 1, 3, 0, 1, 2]


def test_mle_counts_by_hand():
    m = NGramLM(2, "mle").fit(IDS, 4)
    # "0 1" occurs 4 times; "0" is followed by 1 every time
    assert m.prob([0], 1) == 1.0
    # "1" is followed by 2 three times and by 3 once
    assert m.prob([1], 2) == pytest.approx(0.75)
    assert m.prob([1], 3) == pytest.approx(0.25)
    assert m.prob([1], 0) == 0.0
    assert m.nll([1, 0]) == math.inf
    assert m.num_ngrams() == [4, 5]


def test_add_k_formula():
    m = NGramLM(2, "add-k", k=0.5).fit(IDS, 4)
    assert m.prob([1], 2) == pytest.approx((3 + 0.5) / (4 + 0.5 * 4))
    assert m.prob([3], 3) == pytest.approx(0.5 / (1 + 0.5 * 4))


@pytest.mark.parametrize("smoothing", ["kn", "add-k", "mle"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_distributions_sum_to_one_and_match_prob(smoothing, n):
    m = NGramLM(n, smoothing).fit(IDS, 5)  # token 4 never occurs
    for ctx in ([], [0], [0, 1], [4, 4], [2, 0]):
        d = m.distribution(ctx)
        assert d.shape == (5,)
        assert d.sum() == pytest.approx(1.0)
        assert [m.prob(ctx, w) for w in range(5)] == pytest.approx(d.tolist())


def test_kneser_ney_gives_unseen_tokens_mass_and_beats_add_one():
    rng = np.random.default_rng(0)
    # a text with structure: a repeated phrase with noise
    ids = np.tile([0, 1, 2, 3, 4, 5], 200)
    ids[rng.random(len(ids)) < 0.1] = 6
    train, val = ids[:1000].tolist(), ids[1000:].tolist()
    kn = NGramLM(3, "kn").fit(train, 8)
    add1 = NGramLM(3, "add-k", k=1.0).fit(train, 8)
    assert kn.prob([0, 1], 7) > 0  # 7 never occurs
    assert kn.perplexity(val) < add1.perplexity(val)
    assert 0 < kn.discounts[3] < 1


def test_perplexity_of_uniform_model_is_vocab_size():
    m = NGramLM(1, "add-k", k=1.0).fit([0, 1, 2, 3], 4)
    assert m.perplexity([3, 2, 1, 0]) == pytest.approx(4.0)
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)


def test_perplexity_method_is_the_one_function_of_the_mean_nll(monkeypatch):
    import lmkit.models.ngram as ngram

    m = NGramLM(2, "kn").fit(IDS, 4)
    assert m.perplexity(IDS) == pytest.approx(math.exp(m.nll(IDS)))
    assert NGramLM(2, "mle").fit(IDS, 4).perplexity([1, 0]) == math.inf  # unseen bigram
    seen = []
    monkeypatch.setattr(ngram, "perplexity", lambda h: seen.append(h) or -1.0)
    assert m.perplexity(IDS) == -1.0 and seen == [pytest.approx(m.nll(IDS))]


def test_generate_is_seeded_and_in_range():
    m = NGramLM(2).fit(IDS, 4)
    a = m.generate([0], 20, seed=3)
    assert a == m.generate([0], max_new_tokens=20, seed=3)
    assert len(a) == 20 and all(0 <= t < 4 for t in a)
    assert m.generate([0, 1], max_new_tokens=0) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate([0], max_new_tokens=-1)


def test_errors():
    with pytest.raises(ValueError):
        NGramLM(0)
    with pytest.raises(ValueError):
        NGramLM(2, "good-turing")
    with pytest.raises(RuntimeError):
        NGramLM(2).prob([0], 1)
    with pytest.raises(ValueError):
        NGramLM(2).fit([0, 5], 4)
