"""Attention figures: softmax saturation and the 1/sqrt(d_k) scale, every head of a GPT.

Softmax saturation is explained in chapter 4, attention heads on a sentence the reader types in
chapter 5.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from lmkit.nn import device_of
from lmkit.viz.display import show


def softmax_scaling_stats(
    d_k: int, scaled: bool = True, n_keys: int = 16, n_queries: int = 512, seed: int = 0
) -> dict:
    """Statistics of softmax(q k^T [/ sqrt(d_k)]) for random unit-variance q, k.

    Explained in chapter 4. Draws q (n_queries, d_k) and k (n_keys, d_k) from N(0, 1); returns
    ``score_std`` (standard deviation of the scores, ~sqrt(d_k) unscaled, ~1 scaled),
    ``max_weight`` (mean of each row's largest weight: 1/n_keys is uniform, 1.0 is one-hot),
    ``entropy`` (mean row entropy in nats; log(n_keys) is uniform) and ``weights`` (n_keys,) of the
    first query.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(n_keys, d_k, generator=g, dtype=torch.float64)
    scores = q @ k.T
    if scaled:
        scores = scores / math.sqrt(d_k)
    w = torch.softmax(scores, dim=-1)
    entropy = -(w * w.clamp_min(1e-300).log()).sum(-1)
    return dict(
        score_std=scores.std().item(),
        max_weight=w.max(-1).values.mean().item(),
        entropy=entropy.mean().item(),
        weights=w[0].numpy(),
    )


def softmax_scaling_view(
    d_k: int = 64, scaled: bool = True, n_keys: int = 16, seed: int = 0, ax=None
):
    """Bar chart of one query's attention weights over
    ``n_keys`` keys. Chapter 4. Returns the figure."""
    s = softmax_scaling_stats(d_k, scaled, n_keys, seed=seed)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(np.arange(n_keys), s["weights"], color="tab:blue" if scaled else "tab:red")
    ax.axhline(1 / n_keys, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_title(
        f"d_k={d_k}, {'scaled' if scaled else 'unscaled'}\n"
        f"max w={s['max_weight']:.2f}, H={s['entropy']:.2f} nats",
        fontsize=8,
    )
    return fig if fig is not None else ax.figure


def softmax_scaling_widget(n_keys: int = 16):
    """Slider over d_k (powers of two) and a scaled/unscaled switch. Chapter 4."""
    import ipywidgets as W

    d_k = W.SelectionSlider(options=[2**i for i in range(1, 12)], value=64, description="d_k")
    scaled = W.Checkbox(value=True, description="divide by sqrt(d_k)")
    return W.interactive(
        lambda d_k, scaled: show(softmax_scaling_view(d_k, scaled, n_keys)), d_k=d_k, scaled=scaled
    )


def plot_softmax_scaling_grid(d_ks=(4, 16, 64, 256, 1024), n_keys: int = 16):
    """Small multiples: rows unscaled / scaled, one
    column per d_k. Chapter 4. Returns the figure."""
    fig, axes = plt.subplots(2, len(d_ks), figsize=(2.2 * len(d_ks), 4.6), sharey=True)
    for j, d in enumerate(d_ks):
        for i, scaled in enumerate((False, True)):
            softmax_scaling_view(d, scaled, n_keys, ax=axes[i, j])
    axes[0, 0].set_ylabel("weight (unscaled)")
    axes[1, 0].set_ylabel("weight (scaled)")
    fig.tight_layout()
    return fig


def attention_maps_for_text(model, tokenizer, text: str, max_tokens: int = 32):
    """Encode ``text`` (cut to its first ``max_tokens`` tokens) and return (maps, labels).

    Explained in chapter 5. ``maps`` is (n_layer, n_head, T, T) on the CPU (batch of one);
    ``labels`` the T token strings, with spaces shown as '·' and newlines as '⏎'.
    """
    ids = tokenizer.encode(text)[:max_tokens] or tokenizer.encode(" ")
    idx = torch.tensor([ids], dtype=torch.long, device=device_of(model))
    maps = model.attention_maps(idx)[:, 0].float().cpu()
    labels = [tokenizer.decode([i]).replace(" ", "·").replace("\n", "⏎") for i in ids]
    return maps, labels


def _heatmap(ax, m, labels, title, show_labels=True):
    ax.imshow(np.asarray(m, dtype=float), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    T = len(labels)
    if show_labels and T <= 40:
        ax.set_xticks(range(T), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(T), labels, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def attention_heads_view(model, tokenizer, text: str, layer: int = 0, max_tokens: int = 32):
    """All heads of one layer on ``text``: 1 x n_head
    heatmaps (row = query, column = key). Chapter 5."""
    maps, labels = attention_maps_for_text(model, tokenizer, text, max_tokens)
    n_head = maps.shape[1]
    fig, axes = plt.subplots(1, n_head, figsize=(3.0 * n_head, 3.3), squeeze=False)
    for h in range(n_head):
        _heatmap(axes[0, h], maps[layer, h], labels, f"layer {layer}, head {h}")
    fig.tight_layout()
    return fig


def attention_heads_widget(
    model, tokenizer, text: str = "The model reads every character.", max_tokens: int = 32
):
    """A text box and a layer slider over :func:`attention_heads_view`. Chapter 5."""
    import ipywidgets as W

    box = W.Text(
        value=text, description="text", continuous_update=False, layout=W.Layout(width="90%")
    )
    layer = W.IntSlider(value=0, min=0, max=model.config.n_layer - 1, description="layer")
    return W.interactive(
        lambda text, layer: show(attention_heads_view(model, tokenizer, text, layer, max_tokens)),
        text=box,
        layer=layer,
    )


def plot_attention_heads(maps: torch.Tensor, labels, show_labels: bool = False):
    """Small multiples of every head: maps (n_layer, n_head, T, T) -> an n_layer x n_head grid.
    Chapter 5."""
    n_layer, n_head = maps.shape[:2]
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.0 * n_head, 2.0 * n_layer), squeeze=False)
    for layer in range(n_layer):
        for h in range(n_head):
            _heatmap(axes[layer, h], maps[layer, h], labels, f"L{layer} H{h}", show_labels)
    fig.tight_layout()
    return fig
