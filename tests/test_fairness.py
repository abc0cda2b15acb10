"""Unit tests for lmkit.frontiers.fairness (chapter 27)."""

import numpy as np

from lmkit.frontiers.fairness import association, counterfactual_test, weat


def test_association_and_weat_detect_a_planted_bias():
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    A = a + 0.1 * rng.standard_normal((4, 8))
    B = b + 0.1 * rng.standard_normal((4, 8))
    X = a + 0.5 * rng.standard_normal((5, 8))
    Y = b + 0.5 * rng.standard_normal((5, 8))
    s = association(X, A, B)
    assert s.shape == (5,) and (s > 0).mean() >= 0.8
    r = weat(X, Y, A, B)
    assert r["effect_size"] > 1.0 and r["p_value"] < 0.05
    # swapping the targets flips the sign of the effect
    assert abs(weat(Y, X, A, B)["effect_size"] + r["effect_size"]) < 1e-9
    # no bias: identical targets give effect 0 and p-value near 1/2 or above
    r0 = weat(X, X, A, B)
    assert abs(r0["effect_size"]) < 1e-9 and r0["p_value"] > 0.3


def test_counterfactual_test():
    def proba(sents):
        return [0.9 if "Ann" in s else (0.4 if "Bob" in s else 0.6) for s in sents]

    r = counterfactual_test(
        proba, ["{name} liked it.", "{name} did not."], {"f": ["Ann", "Cat"], "m": ["Bob", "Dan"]}
    )
    assert abs(r["mean"]["f"] - 0.75) < 1e-9 and abs(r["mean"]["m"] - 0.5) < 1e-9
    assert (
        abs(r["gap"] - 0.25) < 1e-9 and r["flip_rate"] == 1.0 and abs(r["max_change"] - 0.5) < 1e-9
    )
