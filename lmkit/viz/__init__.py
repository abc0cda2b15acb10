"""Widgets and their static small-multiples counterparts, one module per topic.

Every widget here is built the same way: a plain *view* function computes and draws one figure
from plain arguments (tested in ``tests/test_viz.py`` by calling it directly), a ``*_widget``
factory wires sliders to that view with ``ipywidgets.interactive``, and a ``plot_*`` function
draws a grid of the same view over a sweep of the slider, so that the static HTML book makes
the same point without a running kernel.

- ``attention``: softmax saturation and the 1/sqrt(d_k) scale (chapter 4), every attention head of
  a GPT on a sentence the reader types (chapter 5);
- ``positions``: position encodings, sinusoidal, learned, rotary (chapter 5);
- ``optim``: optimizer trajectories on a 2-D loss surface (chapter 7);
- ``scaling``: the isoFLOP curve of the Chinchilla fit (chapter 14);
- ``generation``: temperature and top-p on a model's next-token distribution (chapter 12);
- ``quant``: quantization error against bit width and group size (chapter 15).

The names of the first three are also importable from ``lmkit.viz`` itself.
"""

from lmkit.viz.attention import (
    attention_heads_view,
    attention_heads_widget,
    attention_maps_for_text,
    plot_attention_heads,
    plot_softmax_scaling_grid,
    softmax_scaling_stats,
    softmax_scaling_view,
    softmax_scaling_widget,
)
from lmkit.viz.optim import (
    SURFACE_BOX,
    SURFACE_START,
    optimizer_paths,
    optimizer_surface_view,
    optimizer_surface_widget,
    plot_optimizer_grid,
    surface,
)
from lmkit.viz.positions import (
    POSITION_KINDS,
    plot_position_encodings,
    position_encoding_matrix,
    position_encoding_view,
    position_encoding_widget,
    position_similarity,
)

__all__ = [
    "softmax_scaling_stats",
    "softmax_scaling_view",
    "softmax_scaling_widget",
    "plot_softmax_scaling_grid",
    "attention_maps_for_text",
    "attention_heads_view",
    "attention_heads_widget",
    "plot_attention_heads",
    "POSITION_KINDS",
    "position_encoding_matrix",
    "position_similarity",
    "position_encoding_view",
    "position_encoding_widget",
    "plot_position_encodings",
    "surface",
    "SURFACE_START",
    "SURFACE_BOX",
    "optimizer_paths",
    "optimizer_surface_view",
    "optimizer_surface_widget",
    "plot_optimizer_grid",
]
