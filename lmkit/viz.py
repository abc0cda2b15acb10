"""Widgets and their static small-multiples counterparts.

Every widget here is built the same way: a plain *view* function computes and draws one figure
from plain arguments (tested in ``tests/test_viz.py`` by calling it directly), a ``*_widget``
factory wires sliders to that view with ``ipywidgets.interactive``, and a ``plot_*`` function
draws a grid of the same view over a sweep of the slider, so that the static HTML book makes
the same point without a running kernel.

- softmax saturation and the 1/sqrt(d_k) scale (chapter 4),
- every attention head of a GPT on a sentence the reader types (chapter 5),
- position encodings: sinusoidal, learned, rotary (chapter 5),
- optimizer trajectories on a 2-D loss surface (chapter 7).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch


def _show(fig):
    """Display a figure inside an ipywidgets output and free it."""
    plt.show()
    return fig


# --- chapter 4: why divide by sqrt(d_k) ---------------------------------------------------------

def softmax_scaling_stats(d_k: int, scaled: bool = True, n_keys: int = 16, n_queries: int = 512,
                          seed: int = 0) -> dict:
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
    return dict(score_std=scores.std().item(), max_weight=w.max(-1).values.mean().item(),
                entropy=entropy.mean().item(), weights=w[0].numpy())


def softmax_scaling_view(d_k: int = 64, scaled: bool = True, n_keys: int = 16, seed: int = 0, ax=None):
    """Bar chart of one query's attention weights over ``n_keys`` keys. Chapter 4. Returns the figure."""
    s = softmax_scaling_stats(d_k, scaled, n_keys, seed=seed)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(np.arange(n_keys), s["weights"], color="tab:blue" if scaled else "tab:red")
    ax.axhline(1 / n_keys, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_title(f"d_k={d_k}, {'scaled' if scaled else 'unscaled'}\n"
                 f"max w={s['max_weight']:.2f}, H={s['entropy']:.2f} nats", fontsize=8)
    return fig if fig is not None else ax.figure


def softmax_scaling_widget(n_keys: int = 16):
    """Slider over d_k (powers of two) and a scaled/unscaled switch. Chapter 4."""
    import ipywidgets as W

    d_k = W.SelectionSlider(options=[2 ** i for i in range(1, 12)], value=64, description="d_k")
    scaled = W.Checkbox(value=True, description="divide by sqrt(d_k)")
    return W.interactive(lambda d_k, scaled: _show(softmax_scaling_view(d_k, scaled, n_keys)), d_k=d_k, scaled=scaled)


def plot_softmax_scaling_grid(d_ks=(4, 16, 64, 256, 1024), n_keys: int = 16):
    """Small multiples: rows unscaled / scaled, one column per d_k. Chapter 4. Returns the figure."""
    fig, axes = plt.subplots(2, len(d_ks), figsize=(2.2 * len(d_ks), 4.6), sharey=True)
    for j, d in enumerate(d_ks):
        for i, scaled in enumerate((False, True)):
            softmax_scaling_view(d, scaled, n_keys, ax=axes[i, j])
    axes[0, 0].set_ylabel("weight (unscaled)")
    axes[1, 0].set_ylabel("weight (scaled)")
    fig.tight_layout()
    return fig


# --- chapter 5: every head of a GPT -------------------------------------------------------------

def attention_maps_for_text(model, tokenizer, text: str, max_tokens: int = 32):
    """Encode ``text`` (cut to its first ``max_tokens`` tokens) and return (maps, labels).

    Explained in chapter 5. ``maps`` is (n_layer, n_head, T, T) on the CPU (batch of one);
    ``labels`` the T token strings, with spaces shown as '·' and newlines as '⏎'.
    """
    ids = tokenizer.encode(text)[:max_tokens] or tokenizer.encode(" ")
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
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
    """All heads of one layer on ``text``: 1 x n_head heatmaps (row = query, column = key). Chapter 5."""
    maps, labels = attention_maps_for_text(model, tokenizer, text, max_tokens)
    n_head = maps.shape[1]
    fig, axes = plt.subplots(1, n_head, figsize=(3.0 * n_head, 3.3), squeeze=False)
    for h in range(n_head):
        _heatmap(axes[0, h], maps[layer, h], labels, f"layer {layer}, head {h}")
    fig.tight_layout()
    return fig


def attention_heads_widget(model, tokenizer, text: str = "The model reads every character.", max_tokens: int = 32):
    """A text box and a layer slider over :func:`attention_heads_view`. Chapter 5."""
    import ipywidgets as W

    box = W.Text(value=text, description="text", continuous_update=False, layout=W.Layout(width="90%"))
    layer = W.IntSlider(value=0, min=0, max=model.config.n_layer - 1, description="layer")
    return W.interactive(lambda text, layer: _show(attention_heads_view(model, tokenizer, text, layer, max_tokens)),
                         text=box, layer=layer)


def plot_attention_heads(maps: torch.Tensor, labels, show_labels: bool = False):
    """Small multiples of every head: maps (n_layer, n_head, T, T) -> n_layer x n_head grid. Chapter 5."""
    L, H = maps.shape[:2]
    fig, axes = plt.subplots(L, H, figsize=(2.0 * H, 2.0 * L), squeeze=False)
    for l in range(L):
        for h in range(H):
            _heatmap(axes[l, h], maps[l, h], labels, f"L{l} H{h}", show_labels)
    fig.tight_layout()
    return fig


# --- chapter 5: position encodings --------------------------------------------------------------

POSITION_KINDS = ("sinusoidal", "learned", "rope")


def position_encoding_matrix(kind: str, n_pos: int, dim: int, model=None) -> torch.Tensor:
    """The (n_pos, dim) position code of one kind. Explained in chapter 5.

    "sinusoidal": :func:`lmkit.nn.sinusoidal_positions`; "learned": the first ``n_pos`` rows of a GPT's
    ``wpe`` (``dim`` is then the model width, argument ignored); "rope": cos and sin of the rotation
    angles m * theta_i, interleaved (cos, sin) per pair like the sinusoidal code.
    """
    from lmkit.nn import rope_cache, sinusoidal_positions

    if kind == "sinusoidal":
        return sinusoidal_positions(n_pos, dim)
    if kind == "learned":
        if model is None or "wpe" not in model.transformer:
            raise ValueError("kind='learned' needs a GPT with learned position embeddings (model.transformer.wpe)")
        return model.transformer.wpe.weight[:n_pos].detach().float().cpu()
    if kind == "rope":
        cos, sin = rope_cache(n_pos, dim)
        return torch.stack((cos, sin), dim=-1).flatten(-2)
    raise ValueError(f"kind must be one of {POSITION_KINDS}, got {kind!r}")


def position_similarity(kind: str, n_pos: int, dim: int, ref: int, model=None, seed: int = 0) -> np.ndarray:
    """How position ``ref`` relates to every position 0..n_pos-1, per kind. Chapter 5.

    Sinusoidal and learned: cosine similarity between the code of ``ref`` and each position's code.
    RoPE: the attention score <R_ref q, R_p q> / |q|^2 of one random vector q rotated to both
    positions, which depends only on the offset p - ref. Returns (n_pos,).
    """
    if kind == "rope":
        from lmkit.nn import apply_rope, rope_cache

        g = torch.Generator().manual_seed(seed)
        q = torch.randn(1, 1, 1, dim, generator=g).expand(1, 1, n_pos, dim)
        cos, sin = rope_cache(n_pos, dim)
        r = apply_rope(q, cos, sin)[0, 0]
        return ((r @ r[ref]) / (q[0, 0, 0] @ q[0, 0, 0])).numpy()
    P = position_encoding_matrix(kind, n_pos, dim, model)
    P = P / P.norm(dim=-1, keepdim=True)
    return (P @ P[ref]).numpy()


def position_encoding_view(kind: str = "sinusoidal", ref: int = 32, n_pos: int = 128, dim: int = 64,
                           model=None, axes=None):
    """Two panels: the code as a heatmap (position x dimension) and similarity to position ``ref``. Chapter 5."""
    fig = None
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    P = position_encoding_matrix(kind, n_pos, dim, model)
    lim = float(P.abs().max())
    axes[0].imshow(P.T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0].set_xlabel("position")
    axes[0].set_ylabel("dimension")
    axes[0].set_title(f"{kind}: code ({P.shape[1]} dims)", fontsize=9)
    sim = position_similarity(kind, n_pos, P.shape[1] if kind == "learned" else dim, ref, model)
    axes[1].plot(np.arange(n_pos), sim, lw=1.2)
    axes[1].axvline(ref, color="gray", ls="--", lw=0.8)
    axes[1].set_xlabel("position")
    axes[1].set_ylabel("score / cosine" if kind == "rope" else "cosine similarity")
    axes[1].set_title(f"{kind}: similarity to position {ref}", fontsize=9)
    return fig if fig is not None else axes[0].figure


def position_encoding_widget(model=None, n_pos: int = 128, dim: int = 64):
    """Choose the kind of position code and the reference position. Chapter 5."""
    import ipywidgets as W

    kinds = list(POSITION_KINDS) if model is not None and "wpe" in model.transformer else ["sinusoidal", "rope"]
    n = min(n_pos, model.config.block_size) if model is not None else n_pos
    return W.interactive(lambda kind, ref: _show(position_encoding_view(kind, ref, n, dim, model)),
                         kind=W.Dropdown(options=kinds, value="sinusoidal", description="kind"),
                         ref=W.IntSlider(value=n // 4, min=0, max=n - 1, description="position"))


def plot_position_encodings(model=None, n_pos: int = 128, dim: int = 64, ref: int = 32):
    """Small multiples: one row per kind (code heatmap | similarity to ``ref``). Chapter 5."""
    kinds = [k for k in POSITION_KINDS if k != "learned" or (model is not None and "wpe" in model.transformer)]
    n = min(n_pos, model.config.block_size) if model is not None else n_pos
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 2.8 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        position_encoding_view(kind, min(ref, n - 1), n, dim, model, axes=axes[i])
    fig.tight_layout()
    return fig


# --- chapter 7: optimizers on a 2-D loss surface ------------------------------------------------

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


def optimizer_paths(lr: float, optimizers=("sgd", "momentum", "adam"), surface_name: str = "ravine",
                    steps: int = 60) -> dict:
    """Paths of several optimizers from the same start at one learning rate. Chapter 7.

    Returns {name: (steps + 1, 2) numpy array} (rows of inf/nan where a run diverged).
    """
    from lmkit.optim import trajectory

    f = surface(surface_name)
    return {name: trajectory(f, SURFACE_START[surface_name], name, lr, steps).numpy() for name in optimizers}


def optimizer_surface_view(lr: float = 0.1, steps: int = 60, surface_name: str = "ravine",
                           optimizers=("sgd", "momentum", "adam"), ax=None):
    """Contours of the surface and each optimizer's path, final loss in the legend. Chapter 7."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    f = surface(surface_name)
    x0, x1, y0, y1 = SURFACE_BOX[surface_name]
    X, Y = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    Z = f(torch.tensor(np.stack([X, Y]))).numpy()
    ax.contour(X, Y, Z, levels=np.geomspace(max(Z.min(), 1e-3), Z.max(), 14), colors="lightgray", linewidths=0.7)
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
    """Learning-rate slider (log scale), step count and surface over :func:`optimizer_surface_view`. Chapter 7."""
    import ipywidgets as W

    return W.interactive(
        lambda lr, steps, surface_name: _show(optimizer_surface_view(lr, steps, surface_name)),
        lr=W.FloatLogSlider(value=0.1, base=10, min=-3, max=0.5, step=0.1, description="lr"),
        steps=W.IntSlider(value=steps, min=5, max=300, step=5, description="steps"),
        surface_name=W.Dropdown(options=["ravine", "rosenbrock"], value="ravine", description="surface"),
    )


def plot_optimizer_grid(lrs=(0.01, 0.1, 0.5, 0.95), surface_name: str = "ravine", steps: int = 60):
    """Small multiples: one panel per learning rate, all optimizers on each. Chapter 7."""
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.4), squeeze=False)
    for j, lr in enumerate(lrs):
        optimizer_surface_view(lr, steps, surface_name, ax=axes[0, j])
    fig.tight_layout()
    return fig
