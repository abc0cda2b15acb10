"""lmkit.viz.generation (chapter 12): shaped distributions, widget callback, static figure."""

import math

import matplotlib

matplotlib.use("Agg")  # tests only: no display
import pytest
import torch

from lmkit.data import CharTokenizer
from lmkit.models import GPT, GPTConfig
from lmkit.viz.generation import (
    entropy_bits,
    generation_widget,
    next_token_logits,
    plot_distribution_grid,
    render_state,
    shaped_probs,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefgh .")
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    return model, tok


def test_shaped_probs_temperature_and_top_p():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p1 = shaped_probs(logits, 1.0)
    assert torch.allclose(p1, logits.softmax(-1))
    # temperature 0: one-hot on the argmax; high temperature: closer to uniform
    assert shaped_probs(logits, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert (
        entropy_bits(shaped_probs(logits, 5.0))
        > entropy_bits(p1)
        > entropy_bits(shaped_probs(logits, 0.3))
    )
    # top-p 0.7: 0.6439 (first) < 0.7, so the second token is kept as well; the rest dropped
    p = shaped_probs(logits, 1.0, top_p=0.7)
    assert (p > 0).tolist() == [True, True, False, False]
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)
    # batched input keeps its shape; top_p = 1 keeps everything
    assert shaped_probs(torch.zeros(3, 5), 1.0, top_p=1.0).shape == (3, 5)
    with pytest.raises(ValueError):
        shaped_probs(logits, -1.0)


def test_entropy_bits_uniform():
    assert math.isclose(entropy_bits(torch.full((8,), 1 / 8)), 3.0, rel_tol=1e-9)
    assert entropy_bits(torch.tensor([1.0, 0.0])) == 0.0


def test_render_state_is_the_callback(setup):
    model, tok = setup
    logits = next_token_logits(model, tok, "abc")
    assert logits.shape == (tok.vocab_size,)
    s = render_state(model, tok, "abc", temperature=0.0, top_p=1.0, n_show=5, max_new_tokens=7)
    assert len(s["tokens"]) == len(s["probs"]) == 5
    assert s["kept"] == 1 and s["probs"][0] == 1.0 and s["entropy_bits"] == 0.0
    assert len(s["sample"]) == 7
    s1 = render_state(model, tok, "abc", temperature=1.0, top_p=0.5, seed=3)
    s2 = render_state(model, tok, "abc", temperature=1.0, top_p=0.5, seed=3)
    assert s1 == s2 and 1 <= s1["kept"] < tok.vocab_size


def test_widget_update_and_sliders(setup):
    model, tok = setup
    w = generation_widget(model, tok, "ab", max_new_tokens=5)
    state = w.update(0.5, 0.9)
    assert set(state) == {"tokens", "probs", "kept", "entropy_bits", "sample"}
    assert "<pre" in w.children[2].value
    t_slider, p_slider = w.sliders
    t_slider.value = 0.0  # the observer redraws without error
    assert w.update(0.0, 1.0)["kept"] == 1


def test_static_grid(setup):
    model, tok = setup
    logits = next_token_logits(model, tok, "abc")
    fig = plot_distribution_grid(
        logits, tok.chars, temperatures=(0.5, 1.0), top_ps=(1.0, 0.5, 0.2), n_show=6
    )
    assert len(fig.axes) == 6
    assert all(len(ax.patches) == 6 for ax in fig.axes)
    fig2 = plot_distribution_grid(logits, lambda i: tok.decode([i]))
    assert len(fig2.axes) == 9
