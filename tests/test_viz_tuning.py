"""The isoFLOP view, widget and small multiples of
lmkit.viz.scaling (chapter 14): call them directly."""

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # tests only: no display
import matplotlib.pyplot as plt  # noqa: E402

from lmkit import tuning  # noqa: E402
from lmkit.viz import scaling  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_chinchilla_loss_values():
    c = tuning.CHINCHILLA
    n, d = 70e9, 1.4e12
    expected = c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
    assert float(tuning.chinchilla_loss(n, d)) == pytest.approx(expected)
    assert float(tuning.chinchilla_loss(1e15, 1e20)) == pytest.approx(c["E"], abs=0.01)


def test_isoflop_optimum_is_a_minimum_and_grows_with_compute():
    small, big = tuning.isoflop_optimum(1e20), tuning.isoflop_optimum(1e22)
    assert big["n"] > small["n"] and big["loss"] < small["loss"]
    assert 6 * small["n"] * small["d"] == pytest.approx(1e20)
    for f in (0.5, 2.0):  # neighbours on the same isoFLOP curve are worse
        n = small["n"] * f
        assert float(tuning.chinchilla_loss(n, 1e20 / (6 * n))) > small["loss"]
    # N_opt grows as C^(beta / (alpha + beta)) for this functional form
    slope = math.log(big["n"] / small["n"]) / math.log(100)
    assert slope == pytest.approx(0.28 / 0.62, abs=0.02)


def test_isoflop_view_widget_and_grid():
    fig = scaling.isoflop_view(1e21)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 1
    assert len(scaling.plot_isoflop_grid((1e18, 1e22)).axes) == 2
    w = scaling.isoflop_widget()
    assert w.children[0].value == pytest.approx(1e21)
    assert np.isfinite(tuning.isoflop_optimum(1e19)["tokens_per_param"])
