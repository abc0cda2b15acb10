"""Position encodings compared: sinusoidal, learned, rotary (chapter 5)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from lmkit.nn import apply_rope, rope_cache, sinusoidal_positions
from lmkit.viz.display import show

POSITION_KINDS = ("sinusoidal", "learned", "rope")


def position_encoding_matrix(kind: str, n_pos: int, dim: int, model=None) -> torch.Tensor:
    """The (n_pos, dim) position code of one kind. Explained in chapter 5.

    "sinusoidal": :func:`lmkit.nn.sinusoidal_positions`;
    "learned": the first ``n_pos`` rows of a GPT's
    ``wpe`` (``dim`` is then the model width, argument ignored); "rope": cos and sin of the rotation
    angles m * theta_i, interleaved (cos, sin) per pair like the sinusoidal code.
    """
    if kind == "sinusoidal":
        return sinusoidal_positions(n_pos, dim)
    if kind == "learned":
        if model is None or "wpe" not in model.transformer:
            raise ValueError(
                "kind='learned' needs a GPT with learned "
                "position embeddings (model.transformer.wpe)"
            )
        return model.transformer.wpe.weight[:n_pos].detach().float().cpu()
    if kind == "rope":
        cos, sin = rope_cache(n_pos, dim)
        return torch.stack((cos, sin), dim=-1).flatten(-2)
    raise ValueError(f"kind must be one of {POSITION_KINDS}, got {kind!r}")


def position_similarity(
    kind: str, n_pos: int, dim: int, ref: int, model=None, seed: int = 0
) -> np.ndarray:
    """How position ``ref`` relates to every position 0..n_pos-1, per kind. Chapter 5.

    Sinusoidal and learned: cosine similarity between the code of ``ref`` and each position's code.
    RoPE: the attention score <R_ref q, R_p q> / |q|^2 of one random vector q rotated to both
    positions, which depends only on the offset p - ref. Returns (n_pos,).
    """
    if kind == "rope":
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(1, 1, 1, dim, generator=g).expand(1, 1, n_pos, dim)
        cos, sin = rope_cache(n_pos, dim)
        r = apply_rope(q, cos, sin)[0, 0]
        return ((r @ r[ref]) / (q[0, 0, 0] @ q[0, 0, 0])).numpy()
    P = position_encoding_matrix(kind, n_pos, dim, model)
    P = P / P.norm(dim=-1, keepdim=True)
    return (P @ P[ref]).numpy()


def position_encoding_view(
    kind: str = "sinusoidal", ref: int = 32, n_pos: int = 128, dim: int = 64, model=None, axes=None
):
    """Two panels: the code as a heatmap (position x dimension)
    and similarity to position ``ref``. Chapter 5."""
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

    kinds = (
        list(POSITION_KINDS)
        if model is not None and "wpe" in model.transformer
        else ["sinusoidal", "rope"]
    )
    n = min(n_pos, model.config.block_size) if model is not None else n_pos
    return W.interactive(
        lambda kind, ref: show(position_encoding_view(kind, ref, n, dim, model)),
        kind=W.Dropdown(options=kinds, value="sinusoidal", description="kind"),
        ref=W.IntSlider(value=n // 4, min=0, max=n - 1, description="position"),
    )


def plot_position_encodings(model=None, n_pos: int = 128, dim: int = 64, ref: int = 32):
    """Small multiples: one row per kind (code heatmap | similarity to ``ref``). Chapter 5."""
    kinds = [
        k
        for k in POSITION_KINDS
        if k != "learned" or (model is not None and "wpe" in model.transformer)
    ]
    n = min(n_pos, model.config.block_size) if model is not None else n_pos
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 2.8 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        position_encoding_view(kind, min(ref, n - 1), n, dim, model, axes=axes[i])
    fig.tight_layout()
    return fig
