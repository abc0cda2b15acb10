"""Fairness measurements: a WEAT-style association test and counterfactual tests of a classifier.

Explained in chapter 27.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["association", "weat", "counterfactual_test"]


def _unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def association(w, A, B) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b): w (n, d), A (na, d), B (nb, d) -> (n,).

    Explained in chapter 27.
    """
    w, A, B = _unit(w), _unit(A), _unit(B)
    return (w @ A.T).mean(1) - (w @ B.T).mean(1)


def weat(X, Y, A, B, n_perm: int = 10_000, seed: int = 0) -> dict:
    """WEAT (Caliskan et al. 2017) on embeddings X, Y (targets) and A, B (attributes), each (n, d).

    Returns {statistic, effect_size, p_value}: statistic = sum_x s(x) - sum_y s(y); effect size =
    (mean_x s - mean_y s) / std over X ∪ Y of s (sample std, ddof=1); one-sided p-value from
    ``n_perm`` random equal-size re-partitions of X ∪ Y (all of them when there are fewer).
    Explained in chapter 27.
    """
    sx, sy = association(X, A, B), association(Y, A, B)
    s = np.concatenate([sx, sy])
    nx = len(sx)
    stat = sx.sum() - sy.sum()
    effect = (sx.mean() - sy.mean()) / s.std(ddof=1)
    total = s.sum()
    from math import comb

    if comb(len(s), nx) <= n_perm:
        perms = [np.array(c) for c in itertools.combinations(range(len(s)), nx)]
    else:
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(len(s))[:nx] for _ in range(n_perm)]
    null = np.array([2 * s[p].sum() - total for p in perms])
    p_value = float((null >= stat - 1e-12).mean())
    return {"statistic": float(stat), "effect_size": float(effect), "p_value": p_value}


def counterfactual_test(
    predict_proba, templates: list[str], groups: dict[str, list[str]], slot: str = "{name}"
) -> dict:
    """Fill each template's slot with every word of every group and compare the predictions.

    predict_proba(list[str]) -> (n,) probability of the positive class. Returns
    {mean: {group: mean probability}, gap: max - min of the group means, flip_rate: fraction of
    templates whose predicted label (p > 0.5) is not the same for all fillers, max_change: largest
    within-template spread of probability}. Explained in chapter 27.
    """
    names = [(g, n) for g, ns in groups.items() for n in ns]
    sents = [t.replace(slot, n) for t in templates for _, n in names]
    p = np.asarray(predict_proba(sents), dtype=np.float64).reshape(len(templates), len(names))
    mean = {
        g: float(p[:, [i for i, (gg, _) in enumerate(names) if gg == g]].mean()) for g in groups
    }
    labels = p > 0.5
    flips = (labels.any(1) & ~labels.all(1)).mean()
    return {
        "mean": mean,
        "gap": max(mean.values()) - min(mean.values()),
        "flip_rate": float(flips),
        "max_change": float((p.max(1) - p.min(1)).max()),
    }
