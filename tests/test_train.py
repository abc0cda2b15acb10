"""Trainer: schedule, config errors, learning, exact resume after SIGKILL, atomic checkpoints."""

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


def test_gpu_peak_flops_lookup_and_mfu():
    from lmkit.train import gpu_peak_flops, mfu

    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("Some Future GPU") is None
    assert mfu(1000.0, 6 * 10**9, 989e12) == pytest.approx(6e12 / 989e12)
