"""The isoFLOP curve of the Chinchilla fit: loss against model size at fixed compute.

Explained in chapter 14.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from lmkit.tuning import chinchilla_loss, isoflop_optimum
from lmkit.viz.display import show


def isoflop_view(compute: float = 1e21, ax=None):
    """Loss against model size at fixed compute: the
    isoFLOP curve, its optimum and the 20-tokens rule.

    Draws on ``ax`` (or a new figure) and returns the figure. Chapter 14.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    opt = isoflop_optimum(compute)
    n = np.geomspace(opt["n"] / 300, opt["n"] * 300, 200)
    ax.plot(n, chinchilla_loss(n, compute / (6 * n)), color="C0")
    ax.plot(
        opt["n"],
        opt["loss"],
        "o",
        color="C3",
        label=f"optimum N={opt['n']:.2g} ({opt['tokens_per_param']:.0f} tok/param)",
    )
    n20 = math.sqrt(compute / 120)
    ax.plot(
        n20, float(chinchilla_loss(n20, 20 * n20)), "s", color="C2", label=f"D = 20N: N={n20:.2g}"
    )
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (D = C / 6N)")
    ax.set_ylabel("fitted loss")
    ax.set_title(f"C = {compute:.0e} FLOPs", fontsize=9)
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def isoflop_widget():
    """A log slider over the compute budget driving :func:`isoflop_view`. Chapter 14."""
    import ipywidgets as W

    c = W.FloatLogSlider(value=1e21, base=10, min=17, max=25, step=0.5, description="FLOPs")
    return W.interactive(lambda compute: show(isoflop_view(compute)), compute=c)


def plot_isoflop_grid(budgets=(1e18, 1e20, 1e22, 1e24)):
    """Small multiples of :func:`isoflop_view`, one panel per compute budget. Returns the figure."""
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.6 * len(budgets), 3.2))
    for ax, c in zip(np.atleast_1d(axes), budgets):
        isoflop_view(c, ax=ax)
    fig.tight_layout()
    return fig
