"""How the number of bits shapes quantization error: a widget and a static figure. Chapter 15.

Two views of the same computation, as everywhere in ``lmkit``'s visualisations:

* :func:`bits_widget`: an ipywidgets panel (bits, group size, scheme) that redraws the histogram of
  the rounding error of a weight matrix; its callback is :func:`quant_error_state`, a pure function
  that the tests call directly.
* :func:`plot_error_grid`: the static small-multiples figure (one histogram per bit width, 8/6/4/3/2
  by default) that stands in for the widget in the static HTML book.

Explained in chapter 15.
"""

from __future__ import annotations

import torch

from lmkit.quant.core import dequantize_groups, quantize_groups

GROUP_CHOICES = (None, 128, 64, 32, 16)


def quant_error_state(
    w: torch.Tensor, bits: int = 8, group_size: int | None = None, scheme: str = "absmax"
) -> dict:
    """Quantize ``w`` (out, in) group-wise and measure the rounding error (the widget's callback).

    Args:
        w: (out, in) float weight.
        bits: 2..8. group_size: ``None`` (per-channel) or a divisor of ``in``.
        scheme: ``"absmax"`` or ``"zeropoint"``.
    Returns:
        dict with ``error`` ((out * in,) float32: dequantized - original), ``rmse``, ``max_abs``,
        ``rel_rmse`` (rmse / rms of w), ``levels`` (distinct integer values used) and the settings.
    Explained in chapter 15.
    """
    w = w.detach().float()
    q, scale, zero = quantize_groups(w, bits, group_size, scheme)
    err = (dequantize_groups(q, scale, zero) - w).flatten()
    rmse = float(err.pow(2).mean().sqrt())
    return {
        "bits": bits,
        "group_size": group_size,
        "scheme": scheme,
        "error": err,
        "rmse": rmse,
        "max_abs": float(err.abs().max()),
        "rel_rmse": rmse / max(float(w.pow(2).mean().sqrt()), 1e-12),
        "levels": int(torch.unique(q).numel()),
    }


def _hist(ax, state: dict, bins: int = 60) -> None:
    err = state["error"].numpy()
    ax.hist(err, bins=bins, color="tab:blue")
    g = "per-channel" if state["group_size"] is None else f"g={state['group_size']}"
    ax.set_title(f"{state['bits']} bits, {g}\nrel. RMSE {state['rel_rmse']:.3f}", fontsize=9)
    ax.set_xlabel("dequantized - original")
    ax.tick_params(labelsize=7)


def plot_error_grid(
    w: torch.Tensor,
    bits_list=(8, 6, 4, 3, 2),
    group_size: int | None = None,
    scheme: str = "absmax",
):
    """Static small multiples: the error histogram of ``w`` (out, in) for each bit width.

    Each panel has its own x axis (the error grows about 2x per bit removed). Returns the figure.
    Explained in chapter 15.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bits_list), figsize=(2.6 * len(bits_list), 2.6))
    axes = [axes] if len(bits_list) == 1 else list(axes)
    for ax, b in zip(axes, bits_list):
        _hist(ax, quant_error_state(w, b, group_size, scheme))
    axes[0].set_ylabel("weights")
    fig.tight_layout()
    return fig


def bits_widget(
    w: torch.Tensor, bits: int = 8, group_size: int | None = None, scheme: str = "absmax"
):
    """Bits / group-size / scheme explorer (ipywidgets) for a weight matrix ``w`` (out, in).

    Returns the ``VBox``; its ``update(bits, group_size, scheme)`` attribute is
    the callback (it returns :func:`quant_error_state`'s dict), so notebooks
    and tests can drive it without a browser. Explained in chapter 15.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    groups = [g for g in GROUP_CHOICES if g is None or w.shape[-1] % g == 0]
    b_slider = W.IntSlider(value=bits, min=2, max=8, step=1, description="bits")
    g_drop = W.Dropdown(
        options=[("per-channel", None)] + [(str(g), g) for g in groups if g],
        value=group_size,
        description="group",
    )
    s_drop = W.Dropdown(options=["absmax", "zeropoint"], value=scheme, description="scheme")
    plot_out, text_out = W.Output(), W.HTML()

    def update(bits: int, group_size: int | None, scheme: str) -> dict:
        state = quant_error_state(w, bits, group_size, scheme)
        with plot_out:
            plot_out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 2.6))
            _hist(ax, state)
            plt.show()
        text_out.value = (
            f"{state['levels']} integer levels used; RMSE {state['rmse']:.2e}, "
            f"max |error| {state['max_abs']:.2e}"
        )
        return state

    def on_change(_):
        update(b_slider.value, g_drop.value, s_drop.value)

    for c in (b_slider, g_drop, s_drop):
        c.observe(on_change, names="value")
    box = W.VBox([W.HBox([b_slider, g_drop, s_drop]), plot_out, text_out])
    box.update = update
    box.controls = (b_slider, g_drop, s_drop)
    update(bits, group_size, scheme)
    return box
