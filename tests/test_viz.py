"""lmkit.viz: the widget callbacks are plain functions; call them directly (chapters 4, 5, 7)."""

import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # tests only: no display
import matplotlib.pyplot as plt  # noqa: E402

from lmkit import viz  # noqa: E402
from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.models.gpt import GPT, GPTConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .", unk="?")
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)
    ).eval()
    return model, tok


def test_softmax_scaling_stats():
    un = viz.softmax_scaling_stats(256, scaled=False)
    sc = viz.softmax_scaling_stats(256, scaled=True)
    assert abs(un["score_std"] / math.sqrt(256) - 1) < 0.15 and abs(sc["score_std"] - 1) < 0.15
    assert un["max_weight"] > 0.9 > sc["max_weight"]
    assert sc["entropy"] > un["entropy"]
    assert viz.softmax_scaling_stats(8)["weights"].sum() == pytest.approx(1.0)


def test_softmax_views_and_widget():
    assert isinstance(viz.softmax_scaling_view(16, False), plt.Figure)
    assert len(viz.plot_softmax_scaling_grid((4, 64)).axes) == 4
    w = viz.softmax_scaling_widget()
    assert w.children[0].value == 64


def test_attention_heads(tiny):
    model, tok = tiny
    maps, labels = viz.attention_maps_for_text(model, tok, "hello world", max_tokens=8)
    assert maps.shape == (2, 2, 8, 8) and labels[5] == "·"
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 8))
    assert torch.all(maps.triu(1) == 0)  # causal
    assert len(viz.attention_heads_view(model, tok, "abc", layer=1).axes) == 2
    assert len(viz.plot_attention_heads(maps, labels).axes) == 4
    w = viz.attention_heads_widget(model, tok, "abc")
    assert w.children[1].max == 1


def test_position_encodings(tiny):
    model, _ = tiny
    for kind in viz.POSITION_KINDS:
        P = viz.position_encoding_matrix(kind, 32, 16, model)
        assert P.shape == (32, 16)
        sim = viz.position_similarity(kind, 32, 16, ref=5, model=model)
        assert sim.shape == (32,) and sim[5] == pytest.approx(1.0, abs=1e-5)
    # RoPE: the score depends only on the offset
    s = viz.position_similarity("rope", 40, 16, ref=10)
    t = viz.position_similarity("rope", 40, 16, ref=20)
    np.testing.assert_allclose(s[10:30], t[20:40], atol=1e-5)
    with pytest.raises(ValueError):
        viz.position_encoding_matrix("learned", 8, 8)
    with pytest.raises(ValueError):
        viz.position_encoding_matrix("alibi", 8, 8)
    assert len(viz.position_encoding_view("rope", 3, 32, 16).axes) == 2
    assert len(viz.plot_position_encodings(model, 32, 16, ref=4).axes) == 6
    assert len(viz.plot_position_encodings(None, 32, 16).axes) == 4
    assert viz.position_encoding_widget(model, 32, 16).children[0].options == (
        "sinusoidal",
        "learned",
        "rope",
    )


def test_optimizer_paths_and_views():
    paths = viz.optimizer_paths(0.1, steps=30)
    assert set(paths) == {"sgd", "momentum", "adam"} and paths["sgd"].shape == (31, 2)
    f = viz.surface("ravine")
    assert f(torch.tensor(paths["momentum"][-1])) < f(torch.tensor(viz.SURFACE_START["ravine"]))
    big = viz.optimizer_paths(1.2, ("sgd",), steps=30)["sgd"]
    assert not np.isfinite(big[-1]).all() or abs(big[-1, 1]) > 1  # too large a step diverges
    assert len(viz.plot_optimizer_grid((0.01, 0.5), steps=10).axes) == 2
    assert isinstance(viz.optimizer_surface_view(0.05, 10, "rosenbrock"), plt.Figure)
    assert viz.optimizer_surface_widget().children[0].value == pytest.approx(0.1)
    with pytest.raises(ValueError):
        viz.surface("bowl")
