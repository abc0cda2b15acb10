"""Optimizer trajectories on a 2-D loss surface (chapter 7)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from lmkit.optim import trajectory
from lmkit.viz.display import show


def surface(name: str):
    """A 2-D test loss f(p) for p (2,): "ravine" 0.05 x^2 + y^2 (condition number 20) or
    "rosenbrock" (1 - x)^2 + 10 (y - x^2)^2. Minimum at (0, 0) and (1, 1). Chapter 7."""
    if name == "ravine":
        return lambda p: 0.05 * p[0] ** 2 + p[1] ** 2
    if name == "rosenbrock":
        return lambda p: (1 - p[0]) ** 2 + 10 * (p[1] - p[0] ** 2) ** 2
    raise ValueError(f"surface must be 'ravine' or 'rosenbrock', got {name!r}")


SURFACE_START = {"ravine": (-4.5, 1.5), "rosenbrock": (-1.5, 2.0)}


SURFACE_BOX = {"ravine": (-5, 5, -2, 2), "rosenbrock": (-2, 2, -1, 3)}


def optimizer_paths(
    lr: float, optimizers=("sgd", "momentum", "adam"), surface_name: str = "ravine", steps: int = 60
) -> dict:
    """Paths of several optimizers from the same start at one learning rate. Chapter 7.

    Returns {name: (steps + 1, 2) numpy array} (rows of inf/nan where a run diverged).
    """
    f = surface(surface_name)
    return {
        name: trajectory(f, SURFACE_START[surface_name], name, lr, steps).numpy()
        for name in optimizers
    }


def optimizer_surface_view(
    lr: float = 0.1,
    steps: int = 60,
    surface_name: str = "ravine",
    optimizers=("sgd", "momentum", "adam"),
    ax=None,
):
    """Contours of the surface and each optimizer's path, final loss in the legend. Chapter 7."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    f = surface(surface_name)
    x0, x1, y0, y1 = SURFACE_BOX[surface_name]
    X, Y = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    Z = f(torch.tensor(np.stack([X, Y]))).numpy()
    ax.contour(
        X,
        Y,
        Z,
        levels=np.geomspace(max(Z.min(), 1e-3), Z.max(), 14),
        colors="lightgray",
        linewidths=0.7,
    )
    colors = {"sgd": "tab:red", "momentum": "tab:green", "adam": "tab:blue", "adamw": "tab:purple"}
    with np.errstate(all="ignore"):
        for name, path in optimizer_paths(lr, optimizers, surface_name, steps).items():
            final = float(f(torch.tensor(path[-1])))
            label = f"{name}: {final:.2g}" if math.isfinite(final) else f"{name}: diverged"
            ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, color=colors.get(name), label=label)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(f"{surface_name}, lr={lr:g}, {steps} steps", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig if fig is not None else ax.figure


def optimizer_surface_widget(steps: int = 60):
    """Learning-rate slider (log scale), step count and
    surface over :func:`optimizer_surface_view`. Chapter 7."""
    import ipywidgets as W

    return W.interactive(
        lambda lr, steps, surface_name: show(optimizer_surface_view(lr, steps, surface_name)),
        lr=W.FloatLogSlider(value=0.1, base=10, min=-3, max=0.5, step=0.1, description="lr"),
        steps=W.IntSlider(value=steps, min=5, max=300, step=5, description="steps"),
        surface_name=W.Dropdown(
            options=["ravine", "rosenbrock"], value="ravine", description="surface"
        ),
    )


def plot_optimizer_grid(lrs=(0.01, 0.1, 0.5, 0.95), surface_name: str = "ravine", steps: int = 60):
    """Small multiples: one panel per learning rate, all optimizers on each. Chapter 7."""
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.4), squeeze=False)
    for j, lr in enumerate(lrs):
        optimizer_surface_view(lr, steps, surface_name, ax=axes[0, j])
    fig.tight_layout()
    return fig
