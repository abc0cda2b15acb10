"""Unit tests of lmkit.tuning (chapter 14): fast, offline, seeded."""

import math

import numpy as np
import pytest
import torch

from lmkit import tuning

V = 16


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    # a learnable stream: a repeating pattern with a little noise
    base = torch.arange(4000) % 7
    noise = torch.randint(V, (4000,), generator=g)
    keep = torch.rand(4000, generator=g) < 0.9
    return torch.where(keep, base, noise)


KAPLAN_N_1x16 = 12 * 16 * 16 + 13 * 16 + 2 * 16  # one block of width 16 and the final norm


def test_train_run_counts_kaplan_n_and_scores_fixed_blocks(ids):
    """Kills: N counted with the token or position table (or the tied head once more), and a
    validation loss taken on other blocks than the first eval_batches x 32 of val_ids."""
    from lmkit.train import evaluate_loss

    kw = dict(lr=1e-2, steps=6, batch_size=8, block_size=8, n_layer=1, n_embd=16)
    out = tuning.train_run(ids[:3000], ids[3000:], V, eval_batches=2, **kw)
    assert out["params"] == KAPLAN_N_1x16  # ch14 prints N = 3,312 for this size
    m = tuning.make_gpt(V, 8, 1, 16)
    lrs = tuning.schedule_lrs("cosine", 1e-2, 6)
    tuning.train_steps(m, ids[:3000], 6, lambda s: lrs[s], batch_size=8)
    assert out["val_loss"] == evaluate_loss(m, ids[3000:], 8, 32, max_batches=2)
    assert out["val_loss"] != evaluate_loss(m, ids[3000:], 8, 32, max_batches=1)


def _reference_train_steps(model, ids, steps, lr, batch_size, seed, clip):
    """train_steps written out: zero_grad, backward, clip (when asked), step."""
    from lmkit.data.loaders import random_batch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses, norms = [], []
    for _ in range(steps):
        x, y = random_batch(ids, model.config.block_size, batch_size, gen)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if clip:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        losses.append(loss.item())
    return losses, norms


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_train_steps_equals_a_written_out_loop(ids, clip):
    """Kills: a step that forgets zero_grad (gradients pile up), clips when grad_clip=0 or not at
    grad_clip, or draws the batches in another order."""
    a, b = tuning.make_gpt(V, 8, 1, 16, seed=0), tuning.make_gpt(V, 8, 1, 16, seed=0)
    out = tuning.train_steps(a, ids, 8, lambda s: 3e-2, batch_size=4, seed=2, grad_clip=clip)
    losses, norms = _reference_train_steps(b, ids, 8, 3e-2, 4, 2, clip)
    assert out["loss"] == losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    if clip:
        assert max(norms) > clip  # the clipping did act, so a missing clip would show


def test_make_gpt_is_seeded():
    a = tuning.make_gpt(V, 8, 1, 16, seed=3)
    b = tuning.make_gpt(V, 8, 1, 16, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_steps_lowers_loss_and_is_reproducible(ids):
    runs = []
    for _ in range(2):
        m = tuning.make_gpt(V, 8, 1, 16, seed=0)
        runs.append(tuning.train_steps(m, ids, 30, lambda s: 1e-2, batch_size=8, seed=1))
    assert runs[0]["loss"] == runs[1]["loss"]
    assert np.mean(runs[0]["loss"][-5:]) < runs[0]["loss"][0]
    assert runs[0]["lr"] == [1e-2] * 30


def test_train_steps_stops_on_divergence(ids):
    m = tuning.make_gpt(V, 8, 1, 16)
    out = tuning.train_steps(m, ids, 20, lambda s: 1e-3, batch_size=4, stop_loss=0.0)
    assert len(out["loss"]) == 1


def test_ema_bias_corrected():
    assert tuning.ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])


def test_lr_range_test_geometric_and_suggestion(ids):
    m = tuning.make_gpt(V, 8, 1, 16)
    r = tuning.lr_range_test(m, ids, 1e-4, 10.0, steps=40, batch_size=8)
    lrs = np.array(r["lr"])
    assert lrs[0] == pytest.approx(1e-4)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0])
    assert len(r["loss"]) == len(r["smoothed"]) == len(lrs)
    assert r["suggested"] == pytest.approx(r["lr_at_min"] / 10)
    assert r["lr_steepest"] <= r["lr_at_min"]
    with pytest.raises(ValueError):
        tuning.lr_range_test(m, ids, 1.0, 0.1)


def test_schedule_lrs_matches_formulas():
    step = tuning.schedule_lrs("step", 1.0, 8, step_size=2, gamma=0.5)
    assert step == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])
    cos = tuning.schedule_lrs("cosine", 1.0, 10, min_lr=0.1)
    expected = [0.1 + 0.45 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
    assert cos == pytest.approx(expected)
    assert tuning.schedule_lrs("constant", 0.3, 3) == [0.3] * 3
    wc = tuning.schedule_lrs("warmup_cosine", 1.0, 20, min_lr=0.1, warmup_steps=5)
    assert wc[0] == pytest.approx(0.2) and wc[4] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tuning.schedule_lrs("linear", 1.0, 3)


def test_train_run_returns_finite_loss(ids):
    out = tuning.train_run(
        ids[:3000],
        ids[3000:],
        V,
        lr=1e-2,
        steps=20,
        batch_size=8,
        block_size=8,
        n_layer=1,
        n_embd=16,
        eval_batches=2,
    )
    assert math.isfinite(out["val_loss"]) and len(out["train_loss"]) == 20 and out["params"] > 0
    bad = tuning.train_run(
        ids[:3000],
        ids[3000:],
        V,
        lr=1e6,
        steps=20,
        batch_size=8,
        block_size=8,
        n_layer=1,
        n_embd=16,
        schedule="constant",
        eval_batches=2,
    )
    assert bad["val_loss"] > out["val_loss"]


def test_param_sampling():
    import random

    rng = random.Random(0)
    lr = tuning.Param(1e-4, 1e-1, log=True)
    vals = [lr.sample(rng) for _ in range(200)]
    assert min(vals) >= 1e-4 and max(vals) <= 1e-1
    assert abs(np.median(np.log10(vals)) + 2.5) < 0.3  # log-uniform: median near 10^-2.5
    assert tuning.Param(choices=("a",)).sample(rng) == "a"
    assert isinstance(tuning.Param(1, 4, integer=True).sample(rng), int)


def test_random_search_sorted_and_seeded():
    space = {"x": tuning.Param(-2, 2), "k": tuning.Param(choices=(0, 1))}

    def f(x, k):
        return (x - 0.5) ** 2 + k

    a = tuning.random_search(f, space, 15, seed=1)
    b = tuning.random_search(f, space, 15, seed=1)
    assert a == b
    assert [t["value"] for t in a] == sorted(t["value"] for t in a)
    assert a[0]["value"] < 0.2


def test_optuna_search_finds_minimum():
    space = {"x": tuning.Param(-2, 2), "lr": tuning.Param(1e-4, 1, log=True)}
    study = tuning.optuna_search(
        lambda x, lr: (x - 0.5) ** 2 + (math.log10(lr) + 2) ** 2, space, 30, seed=0
    )
    assert len(study.trials) == 30
    assert study.best_value < 0.3


def test_power_law_fit_recovers_parameters():
    x = np.array([1e3, 3e3, 1e4, 3e4, 1e5, 3e5])
    y = tuning.power_law(x, 20.0, 0.3, 1.5)
    fit = tuning.fit_power_law(x, y)
    assert fit["alpha"] == pytest.approx(0.3, rel=1e-3)
    assert fit["c"] == pytest.approx(1.5, rel=1e-3)
    assert fit["a"] == pytest.approx(20.0, rel=1e-2)
    pure = tuning.fit_power_law(x, tuning.power_law(x, 5.0, 0.2), offset=False)
    assert pure["alpha"] == pytest.approx(0.2) and pure["c"] == 0.0 and pure["rmse"] < 1e-9
    with pytest.raises(ValueError):
        tuning.fit_power_law([1, 2], [1, -1])


def test_scaling_study_and_frontier(ids):
    recs = tuning.scaling_study(
        [(1, 16), (1, 32)],
        ids[:3000],
        ids[3000:],
        V,
        steps=10,
        batch_size=4,
        block_size=8,
        eval_every=5,
        eval_batches=2,
    )
    assert [r["n_embd"] for r in recs] == [16, 32]
    assert recs[0]["params"] == KAPLAN_N_1x16  # the same N as train_run's
    assert recs[1]["params"] == 12 * 32 * 32 + 13 * 32 + 2 * 32
    r = recs[0]
    assert r["steps"] == [5, 10] and r["tokens"] == [5 * 4 * 8, 10 * 4 * 8]
    assert r["flops"] == [6 * r["params"] * d for d in r["tokens"]]
    xs, ys = tuning.compute_frontier(recs)
    assert xs == sorted(xs) and all(b < a for a, b in zip(ys, ys[1:]))
