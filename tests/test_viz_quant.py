"""lmkit.viz.quant (chapter 15): error state, widget callback, static figure."""

import matplotlib

matplotlib.use("Agg")  # tests only: no display
import pytest
import torch

from lmkit.viz.quant import bits_widget, plot_error_grid, quant_error_state


@pytest.fixture(scope="module")
def w():
    torch.manual_seed(0)
    return torch.randn(16, 64)


def test_error_shrinks_with_bits(w):
    rm = [quant_error_state(w, b)["rmse"] for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(rm, rm[1:]))
    s = quant_error_state(w, 8)
    assert s["error"].shape == (16 * 64,)
    # absmax per-channel: every error is at most half a step of its row's scale
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert (s["error"].view(16, 64).abs() <= step / 2 + 1e-6).all()
    assert s["levels"] <= 255


def test_groups_and_zeropoint(w):
    per_ch = quant_error_state(w, 4)["rmse"]
    grouped = quant_error_state(w, 4, group_size=16)["rmse"]
    assert grouped < per_ch
    z = quant_error_state(w, 3, scheme="zeropoint")
    assert z["levels"] <= 8 and z["rel_rmse"] > 0


def test_widget_and_figure(w):
    box = bits_widget(w, bits=4)
    s = box.update(3, 16, "absmax")
    assert s["bits"] == 3 and s["group_size"] == 16
    assert "levels" in box.children[2].value
    fig = plot_error_grid(w, (8, 4, 2))
    assert len(fig.axes) == 3
