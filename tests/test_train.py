"""Trainer: schedule, config errors, learning, exact resume after SIGKILL, atomic checkpoints,
the device policy's choices, tokens/s after warm-up and MFU (chapter 10)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lmkit.models import GPT, GPTConfig
from lmkit.train import TrainConfig, evaluate_loss, lr_at, train


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(dtype="float8"), "dtype"),
        (dict(dtype="float16", device="cpu"), "CUDA"),
        (dict(max_steps=0), "max_steps"),
        (dict(lr=1e-3, min_lr=1e-2), "min_lr"),
    ],
)
def test_train_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def _data(n=4000, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable sequence: mostly "next = previous + 1 mod vocab"
    ids = torch.empty(n, dtype=torch.long)
    ids[0] = 0
    noise = torch.rand(n, generator=g) < 0.1
    for i in range(1, n):
        ids[i] = torch.randint(vocab, (1,), generator=g) if noise[i] else (ids[i - 1] + 1) % vocab
    return ids


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_training_reduces_loss_and_returns_history(tmp_path):
    ids = _data()
    model = _model()
    before = evaluate_loss(model, ids[:1000], 16)
    cfg = TrainConfig(
        max_steps=60,
        batch_size=8,
        warmup_steps=5,
        eval_interval=30,
        eval_batches=4,
        out_dir=str(tmp_path),
        progress=False,
    )
    hist = train(model, ids, ids[:1000], cfg)
    after = evaluate_loss(model, ids[:1000], 16)
    assert after < before - 0.5
    assert hist["step"] == list(range(1, 61)) and hist["eval_step"] == [30, 60]
    assert json.loads((tmp_path / "history.json").read_text())["step"][-1] == 60
    assert hist["tokens_per_s"] > 0


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_mixed_precision_and_accumulation_run_on_cpu(dtype):
    model = _model()
    hist = train(
        model,
        _data(),
        None,
        TrainConfig(max_steps=3, batch_size=4, grad_accum=2, dtype=dtype, progress=False),
    )
    assert len(hist["train_loss"]) == 3 and all(x == x for x in hist["train_loss"])


def test_accumulation_matches_big_batch():
    """Two micro-batches of 4 with accumulation = the same update as one batch of 8 rows."""
    from lmkit.train import make_optimizer

    ids = _data()
    a, b = _model(), _model()
    cfg = TrainConfig(
        max_steps=1, batch_size=4, grad_accum=2, warmup_steps=1, grad_clip=0, progress=False
    )
    train(a, ids, None, cfg)
    # replay the same two micro-batches as one batch
    from lmkit.data.loaders import random_batch

    xs, ys = zip(
        *(
            random_batch(ids, 16, 4, torch.Generator().manual_seed(cfg.seed * 1_000_003 + m))
            for m in range(2)
        )
    )
    opt = make_optimizer(b, cfg)
    for g in opt.param_groups:
        g["lr"] = lr_at(0, cfg)
    _, loss = b(torch.cat(xs), torch.cat(ys))
    loss.backward()
    opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def _cli_train(out, steps, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "lmkit",
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        str(steps),
        "--out",
        str(out),
        "--ckpt-interval",
        "10",
        "--eval-interval",
        "0",
        "--no-progress",
        "--block-size",
        "32",
        "--n-embd",
        "32",
        *extra,
    ]
    return cmd


def test_exact_resume_after_sigkill(tmp_path):
    """N steps straight == N/2 steps, SIGKILL, resume to N:
    identical final weights (with dropout: RNG restored).

    Kills: load_train_state not restoring the RNG state (dropout masks after the resume differ).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    extra = ("--dropout", "0.1")
    subprocess.run(
        _cli_train(straight, 40, extra), check=True, env=env, capture_output=True, timeout=300
    )
    # run towards 40 steps but kill the process once a checkpoint at step >= 20 exists
    proc = subprocess.Popen(
        _cli_train(killed, 40, extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = killed / "ckpt.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline:
        if ckpt.exists():
            from lmkit.checkpoint import load_tensors

            try:
                step = load_tensors(ckpt)[1]["step"]
            except Exception:
                step = 0
            if step >= 20:
                break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"
    from lmkit.checkpoint import load_tensors

    # the kill was mid-run (not after the last checkpoint), so the resume below really resumes
    assert 0 < load_tensors(ckpt)[1]["step"] < 40, (
        "killed before the first or after the last checkpoint"
    )
    # a SIGKILL that lands inside an atomic write leaves
    # that write's temporary file (nothing can remove it)
    left_by_kill = {p.name for p in killed.iterdir() if p.name.endswith(".tmp")}
    subprocess.run(
        _cli_train(killed, 40, extra), check=True, env=env, capture_output=True, timeout=300
    )
    a = load_file(straight / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # no temporary files left behind by the atomic writes of the runs that were not killed
    assert not [p for p in straight.iterdir() if p.name.endswith(".tmp")]
    assert {p.name for p in killed.iterdir() if p.name.endswith(".tmp")} == left_by_kill


def test_mfu():
    from lmkit.train import mfu

    assert mfu(1000.0, 6 * 10**9, 989e12) == pytest.approx(6e12 / 989e12)


def _tiny_run(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))
    ids = torch.randint(20, (2000,), generator=torch.Generator().manual_seed(0))
    base = dict(max_steps=4, batch_size=4, warmup_steps=1, eval_interval=0, progress=False)
    return model, train(model, ids, None, TrainConfig(**{**base, **kw}))


def test_tokens_per_s_leaves_out_the_first_step(monkeypatch):
    """The first step compiles (and warms caches): a slow first step must not lower tokens/s."""
    import lmkit.train as lt

    real, calls = lt._training_step, []

    def slow_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(lt, "_training_step", slow_first)
    _, hist = _tiny_run(max_steps=4)
    assert hist["first_step_s"] >= 0.5
    assert hist["elapsed_s"] >= hist["first_step_s"]
    steady_s = hist["elapsed_s"] - hist["first_step_s"]
    assert hist["tokens_per_s"] == pytest.approx(3 * 4 * 16 / steady_s, rel=1e-6)
    assert hist["tokens_per_s"] > 4 * 4 * 16 / hist["elapsed_s"]  # higher than with the warm-up
    assert hist["mfu"] is None  # a CPU has no peak in lmkit.env.GPU_SPECS
    assert len(hist["train_loss"]) == 4


def test_mfu_is_recorded_with_a_known_peak(monkeypatch):
    import lmkit.train as lt
    from lmkit.env import device_policy

    monkeypatch.setattr(
        lt,
        "current_policy",
        lambda *a, **k: dataclasses.replace(device_policy("cpu"), peak_flops=1e12),
    )
    model, hist = _tiny_run()
    assert hist["mfu"] == pytest.approx(hist["tokens_per_s"] * model.flops_per_token() / 1e12)


def test_auto_dtype_on_a_cpu_is_float32():
    _, auto = _tiny_run(dtype="auto")
    _, fp32 = _tiny_run(dtype="float32")
    assert auto["train_loss"] == fp32["train_loss"]


def test_policy_notes_are_warnings(monkeypatch):
    import lmkit.train as lt
    from lmkit.env import device_policy

    noted = dataclasses.replace(device_policy("cpu"), notes=("torch.compile skipped: a reason",))
    monkeypatch.setattr(lt, "current_policy", lambda *a, **k: noted)
    with pytest.warns(UserWarning, match="torch.compile skipped: a reason"):
        _tiny_run(max_steps=1)


class _FakeCompileError(Exception):
    pass


_FakeCompileError.__module__ = "torch._dynamo.exc"  # what BackendCompilerFailed looks like


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(model, *args, **kwargs):
        def call(*a, **k):
            raise _FakeCompileError("Feature '.bf16' requires .target sm_80 or higher")

        return call

    _, eager = _tiny_run()
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed") as record:
        _, fallback = _tiny_run(compile=True)
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    assert fallback["train_loss"] == eager["train_loss"]


def test_an_error_of_the_model_is_not_taken_for_a_compile_failure(monkeypatch):
    def compile_that_exposes_a_bug(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("shape mismatch")

        return call

    monkeypatch.setattr(torch, "compile", compile_that_exposes_a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _tiny_run(compile=True)
