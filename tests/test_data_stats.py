"""lmkit.data.stats (chapter 8): rank-frequency, Zipf and Heaps fits, lengths, coverage."""

import numpy as np
import pytest

from lmkit.data.stats import (
    coverage,
    document_lengths,
    heaps_exponent,
    rank_frequency,
    vocabulary_growth,
    zipf_exponent,
)


def test_rank_frequency_order_and_ties():
    types, counts = rank_frequency("abracadabra")
    assert types[:3] == ["a", "b", "r"] and counts.tolist() == [5, 2, 2, 1, 1]


def test_zipf_exponent_recovers_exact_power_law():
    counts = 1000.0 / np.arange(1, 101) ** 1.3
    s, c = zipf_exponent(counts)
    assert s == pytest.approx(1.3) and c == pytest.approx(1000.0)
    assert zipf_exponent(counts, 10, 50)[0] == pytest.approx(1.3)
    with pytest.raises(ValueError):
        zipf_exponent(counts, 5, 5)


def test_vocabulary_growth_and_heaps():
    ns, vs = vocabulary_growth(list(range(100)), points=5)
    assert ns[0] == 1 and ns[-1] == 100 and vs.tolist() == ns.tolist()  # all distinct: V(n) = n
    beta, k = heaps_exponent(ns, vs)
    assert beta == pytest.approx(1.0) and k == pytest.approx(1.0)
    ns, vs = vocabulary_growth("aaaa", points=3)
    assert vs.tolist() == [1] * len(ns)
    with pytest.raises(ValueError):
        vocabulary_growth([])


def test_lengths_and_coverage():
    assert document_lengths(["ab", "", "xyz"]).tolist() == [2, 0, 3]
    assert document_lengths(["a b c"], encode=str.split).tolist() == [3]
    assert coverage([5, 3, 2], 1) == pytest.approx(0.5)
