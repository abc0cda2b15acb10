"""Trainer behaviour that a run-to-completion test cannot see: RNG restore on resume, clipping,
accumulation, the gradient-scaler protocol, and that planted pickles are never executed.

Each test names, in its docstring, the deliberate bug ("mutant") it was shown to fail on.
The gradient the optimizer actually uses is observed with a global optimizer step pre-hook, so the
tests do not depend on AdamW's near-invariance to the scale of the gradient (which hides many bugs
in the final weights).
"""

import copy
import math
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from torch.optim.optimizer import register_optimizer_step_pre_hook

import lmkit.train
from lmkit.checkpoint import load_model, load_tensors
from lmkit.models import GPT, GPTConfig
from lmkit.train import (
    TrainConfig,
    device_rng_states,
    load_train_state,
    lr_at,
    make_optimizer,
    restore_device_rng,
    save_train_state,
    train,
)

VOCAB, BLOCK = 20, 16
EPS32 = torch.finfo(torch.float32).eps


def _ids(n=2000, seed=0):
    return torch.randint(VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=dropout
        )
    )


def _cfg(**kw):
    base = dict(max_steps=1, batch_size=4, warmup_steps=1, eval_interval=0, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Spy:
    """Records the batches the trainer draws and the gradients each optimizer step is given."""

    def __init__(self, monkeypatch, model):
        self.batches, self.grads, self._model = [], [], model
        real = lmkit.train.random_batch

        def recording_batch(*args, **kwargs):
            x, y = real(*args, **kwargs)
            self.batches.append((x.clone(), y.clone()))
            return x, y

        monkeypatch.setattr(lmkit.train, "random_batch", recording_batch)
        self._handle = register_optimizer_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        self.grads.append([p.grad.detach().clone() for p in self._model.parameters()])

    def close(self):  # the hook is global: remove it before any reference optimizer steps
        self._handle.remove()


def _reference_adamw(model, cfg):
    """AdamW with lmkit's documented grouping (decay on matrices only), built independently."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _norm(grads):
    """Euclidean norm of a list of tensors, in float64 (so its own rounding is negligible here)."""
    return torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads])).item()


# --- 1. planted pickles are rejected, not executed
# -------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (stands in for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker, fmt):
    """Write a pickle that creates ``marker`` when
    unpickled: as torch.save writes it, or a bare pickle."""
    obj = {"weight": torch.zeros(1), "payload": _Payload(marker)}
    if fmt == "torch.save":
        torch.save(obj, path)
    else:
        Path(path).write_bytes(pickle.dumps(obj))


def _unsafe_load(path, fmt):
    with open(
        path, "rb"
    ) as f:  # a file object: torch.load(<str ending .safetensors>) would defer to safetensors
        return torch.load(f, weights_only=False) if fmt == "torch.save" else pickle.load(f)


def _load_model(d):
    load_model(d)


def _load_train_state(d):
    model = _model()
    load_train_state(d / "ckpt.safetensors", model, make_optimizer(model, _cfg()))


def _resume_training(d):
    train(_model(), _ids(), None, _cfg(max_steps=2, out_dir=str(d), resume=True))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
@pytest.mark.parametrize(
    "filename, load",
    [
        ("model.safetensors", _load_model),
        ("ckpt.safetensors", _load_train_state),
        ("ckpt.safetensors", _resume_training),
    ],
    ids=["load_model", "load_train_state", "train_resume"],
)
def test_planted_pickle_is_rejected_without_running_it(tmp_path, filename, load, fmt):
    """Kills: load_tensors falling back to torch.load(file,
    weights_only=False) or pickle.load (marker file created)."""
    # the payload is live: an unsafe load does run it
    live = tmp_path / "live"
    _plant(tmp_path / "probe", live, fmt)
    _unsafe_load(tmp_path / "probe", fmt)
    assert live.exists()

    d = tmp_path / "run"
    d.mkdir()
    marker = tmp_path / "pwned"
    _plant(d / filename, marker, fmt)
    with pytest.raises(Exception) as err:
        load(d)
    assert not marker.exists(), "lmkit unpickled the planted file"
    # the error is safetensors' own, about the header,
    # not a later one about missing keys or metadata
    assert err.type is SafetensorError and "deserializing header" in str(err.value), repr(err.value)


# --- 2. exact resume restores the dropout RNG
# ------------------------------------------------------

KILL_STEPS, KILL_CKPT, KILL_AT = (
    10,
    4,
    6,
)  # checkpoint every 4 steps, die at the start of step 6 (0-based)


def _dropout_cfg(out_dir):
    return _cfg(max_steps=KILL_STEPS, warmup_steps=2, ckpt_interval=KILL_CKPT, out_dir=str(out_dir))


def _die_mid_run(out_dir):
    """Run in a subprocess: train, SIGKILL ourselves when
    step KILL_AT begins (after the step-4 checkpoint)."""
    torch.set_num_threads(1)
    real_lr_at = lmkit.train.lr_at

    def lr_at_or_die(step, cfg):
        if step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_lr_at(step, cfg)

    lmkit.train.lr_at = lr_at_or_die
    train(_model(dropout=0.2), _ids(), None, _dropout_cfg(out_dir))


def test_resume_restores_dropout_rng_after_sigkill(tmp_path):
    """Kills: load_train_state not restoring the RNG state
    (final weights differ from the uninterrupted run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # the killed part runs single-threaded: match it for bit-identical matmuls
    try:
        straight = tmp_path / "straight"
        m_straight = _model(dropout=0.2)
        train(m_straight, _ids(), None, _dropout_cfg(straight))

        killed = tmp_path / "killed"
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_train_behaviour as t; t._die_mid_run({str(killed)!r})"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=120
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        # the kill really was mid-run: the checkpoint on
        # disk is from step 4 of 10 (steps 4, 5 are lost)
        step_on_disk = load_tensors(killed / "ckpt.safetensors")[1]["step"]
        assert 0 < step_on_disk < KILL_STEPS and step_on_disk == KILL_CKPT

        m_resumed = _model(dropout=0.2)  # a fresh process would be in this RNG state too
        hist = train(m_resumed, _ids(), None, _dropout_cfg(killed))
        assert hist["step"] == list(range(1, KILL_STEPS + 1))
    finally:
        torch.set_num_threads(threads)
    _assert_equal_weights(_weights(m_straight), _weights(m_resumed))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_state_restores_the_cuda_rng(tmp_path):
    """Kills: a checkpoint that keeps only the CPU generator
    (dropout on a GPU draws other masks after a resume)."""
    cfg = _cfg(device="cuda")
    model = _model(dropout=0.2).to("cuda")
    opt = make_optimizer(model, cfg)
    torch.cuda.manual_seed(123)
    torch.rand(5, device="cuda")
    save_train_state(tmp_path / "ckpt.safetensors", model, opt, 3, {"step": [1, 2, 3]}, cfg)
    expected = torch.rand(8, device="cuda")
    torch.rand(1000, device="cuda")  # training went on after the checkpoint
    assert load_train_state(tmp_path / "ckpt.safetensors", model, opt)[0] == 3
    assert torch.equal(torch.rand(8, device="cuda"), expected)


class _FakeMpsGenerator:
    """torch.mps's get/set_rng_state on a machine without MPS: records what is set."""

    def __init__(self, monkeypatch):
        self.state, self.set_to = torch.arange(8, dtype=torch.uint8), []
        monkeypatch.setattr(torch.mps, "get_rng_state", lambda *a: self.state.clone())
        monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, *a: self.set_to.append(state))


def test_the_mps_generator_is_saved_and_restored(monkeypatch):
    """Kills: a checkpoint that keeps the CPU and CUDA generators only (dropout on Apple silicon
    draws from MPS's generator), and a restore that sets a generator from another device type."""
    fake = _FakeMpsGenerator(monkeypatch)
    states = device_rng_states("mps")
    assert list(states) == ["rng.mps"] and torch.equal(states["rng.mps"], fake.state)
    assert restore_device_rng(states, "mps") is True
    assert len(fake.set_to) == 1 and torch.equal(fake.set_to[0], fake.state)
    # written on a CPU (no device state) or on CUDA: nothing to restore on MPS, and no error
    assert restore_device_rng({"rng.cpu": torch.get_rng_state()}, "mps") is False
    assert restore_device_rng({"rng.cuda": torch.zeros(16, dtype=torch.uint8)}, "mps") is False
    # written on MPS, resumed on a CPU: the MPS state is ignored
    assert restore_device_rng(states, "cpu") is False
    assert len(fake.set_to) == 1
    assert device_rng_states("cpu") == {}


def test_a_torch_without_the_mps_generator_functions_is_handled(monkeypatch):
    """Kills: an AttributeError on a torch build whose ``torch.mps`` lacks the RNG functions."""
    monkeypatch.delattr(torch.mps, "get_rng_state", raising=False)
    assert device_rng_states("mps") == {}
    assert restore_device_rng({"rng.mps": torch.zeros(8, dtype=torch.uint8)}, "mps") is False


def test_a_checkpoint_written_on_mps_resumes_on_a_cpu(tmp_path, monkeypatch):
    model, cfg = _model(), _cfg()
    path = tmp_path / "s.safetensors"
    save_train_state(path, model, make_optimizer(model, cfg), 2, {}, cfg)
    tensors, meta = load_tensors(path)
    assert "rng.mps" not in tensors and "rng.cuda" not in tensors  # a CPU model: CPU state only
    tensors["rng.mps"] = torch.zeros(8, dtype=torch.uint8)  # as if written on a Mac
    lmkit.checkpoint.save_tensors(path, tensors, meta)
    fake = _FakeMpsGenerator(monkeypatch)
    assert load_train_state(path, _model(), make_optimizer(_model(), cfg))[0] == 2
    assert fake.set_to == []


# --- 3. gradient clipping ------------------------------------------------------------------------


def test_grad_clip_is_clip_grad_norm(monkeypatch):
    """Kills: clipping removed from the trainer (the optimizer
    is given the raw gradient, norm >> grad_clip)."""
    clip, ids = 0.05, _ids()
    cfg = _cfg(max_steps=2, warmup_steps=2, grad_clip=clip)
    model = _model()
    ref = copy.deepcopy(model)
    spy = _Spy(monkeypatch, model)
    train(model, ids, None, cfg)
    spy.close()
    assert len(spy.grads) == 2 and len(spy.batches) == 2

    opt = _reference_adamw(ref, cfg)
    for step, (x, y) in enumerate(spy.batches):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        _, loss = ref(x, y)
        loss.backward()
        raw = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip).item()
        assert raw > 10 * clip  # clipping is active
        # the same computation: the gradient the trainer
        # stepped with is bit-identical to torch's clipping
        for mine, theirs in zip(spy.grads[step], [p.grad for p in ref.parameters()]):
            assert torch.equal(mine, theirs)
        # clip_grad_norm_ scales by clip / (raw + 1e-6), so the norm becomes clip * raw /
        # (raw + 1e-6), up to float32 rounding: of raw itself (a sum of P squares: log2(P)
        # * eps / 2), of the coefficient (2 roundings) and of each scaled element (eps / 2)
        expected = clip * raw / (raw + 1e-6)
        n_params = sum(p.numel() for p in ref.parameters())
        assert (
            abs(_norm(spy.grads[step]) - expected)
            <= (math.log2(n_params) / 2 + 3) * EPS32 * expected
        )
        opt.step()
        opt.zero_grad(set_to_none=True)
    _assert_equal_weights(_weights(model), _weights(ref))

    unclipped = _model()
    train(unclipped, ids, None, _cfg(max_steps=2, warmup_steps=2, grad_clip=0))
    w, u = _weights(model), _weights(unclipped)
    assert any(not torch.equal(w[k], u[k]) for k in w)


# --- 4. gradient accumulation --------------------------------------------------------------------


def test_accumulation_equals_one_big_batch(monkeypatch):
    """Kills: loss not divided by grad_accum (stepped gradient k
    times too big); loss_sum = instead of += (train_loss)."""
    k, b, ids = 4, 2, _ids()
    cfg = _cfg(batch_size=b, grad_accum=k, grad_clip=0)
    model = _model()
    big = copy.deepcopy(model)
    spy = _Spy(monkeypatch, model)
    hist = train(model, ids, None, cfg)
    spy.close()
    assert len(spy.batches) == k and len(spy.grads) == 1

    x = torch.cat([x for x, _ in spy.batches])
    y = torch.cat([y for _, y in spy.batches])
    _, loss = big(x, y)  # one batch of k*b rows: mean over the same k*b*T tokens
    loss.backward()
    g_big = [p.grad.clone() for p in big.parameters()]
    n = y.numel()
    # the stepped gradient and the big batch's: the same n per-token
    # contributions summed in a different order (and in k partial sums):
    # |error| <= n * eps32 * |sum|, per tensor in the Euclidean norm
    for mine, theirs in zip(spy.grads[0], g_big):
        assert torch.linalg.vector_norm(mine - theirs) <= n * EPS32 * torch.linalg.vector_norm(
            theirs
        )
    # the recorded loss is the big batch's mean over the same n per-token losses, to the same bound
    assert abs(hist["train_loss"][0] - loss.item()) <= n * EPS32 * loss.item()
    # and that gradient is what the step used: AdamW on it reproduces the trainer's weights exactly
    for p, g in zip(big.parameters(), spy.grads[0]):
        p.grad = g.clone()
    opt = _reference_adamw(big, cfg)
    for group in opt.param_groups:
        group["lr"] = lr_at(0, cfg)
    opt.step()
    _assert_equal_weights(_weights(model), _weights(big))

    # not accumulating (only the first micro-batch) gives a gradient outside that tolerance
    single = _model()
    spy1 = _Spy(monkeypatch, single)
    train(single, ids, None, _cfg(batch_size=b, grad_accum=1, grad_clip=0))
    spy1.close()
    assert any(
        torch.linalg.vector_norm(a - c) > n * EPS32 * torch.linalg.vector_norm(c)
        for a, c in zip(spy1.grads[0], g_big)
    )


def test_accumulation_draws_fresh_micro_batches(monkeypatch):
    """Kills: micro-batch seed step + micro instead of step *
    grad_accum + micro (step 1 reuses a batch of step 0)."""
    k, steps = 3, 3
    model = _model()
    spy = _Spy(monkeypatch, model)
    train(model, _ids(), None, _cfg(max_steps=steps, batch_size=2, grad_accum=k))
    spy.close()
    assert len(spy.batches) == k * steps and len(spy.grads) == steps
    xs = [x for x, _ in spy.batches]
    for i in range(len(xs)):
        for j in range(i):
            assert not torch.equal(xs[i], xs[j]), (j, i)


# --- 5. the gradient scaler (fp16) path
# ------------------------------------------------------------


def _cpu_scaler(monkeypatch, init_scale, force_enabled):
    """Make the trainer's ``torch.amp.GradScaler("cuda",
    ...)`` a real CPU scaler (CPU has no CUDA scaler)."""
    real, made = torch.amp.GradScaler, []

    def factory(device="cuda", enabled=True, **kw):
        s = real("cpu", init_scale=init_scale, enabled=True if force_enabled else enabled)
        made.append(s)
        return s

    monkeypatch.setattr(torch.amp, "GradScaler", factory)
    return made


def test_scaler_in_fp32_changes_nothing(monkeypatch):
    """Kills: clip_grad_norm_ before scaler.unscale_ (clips the
    scaled gradient: weights and stepped gradient differ)."""
    ids = _ids()
    cfg = _cfg(max_steps=2, warmup_steps=2, grad_clip=0.05)
    plain = _model()
    spy = _Spy(monkeypatch, plain)
    hist_plain = train(plain, ids, None, cfg)
    spy.close()

    scaled = _model()
    made = _cpu_scaler(monkeypatch, 2.0**16, force_enabled=True)
    spy2 = _Spy(monkeypatch, scaled)
    hist_scaled = train(scaled, ids, None, cfg)
    spy2.close()
    assert (
        len(made) == 1 and made[0].is_enabled() and made[0].get_scale() == 2.0**16
    )  # used, no overflow
    # scaling by a power of two and unscaling is exact in float32: everything is bit-identical
    assert hist_scaled["train_loss"] == hist_plain["train_loss"]
    assert len(spy2.grads) == len(spy.grads) == 2
    for step in range(2):
        for a, b in zip(spy2.grads[step], spy.grads[step]):
            assert torch.equal(a, b)
    _assert_equal_weights(_weights(scaled), _weights(plain))


@pytest.mark.filterwarnings("ignore:lmkit.train. float16 training needs CUDA")
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_fp16_overflow_skips_the_step_and_backs_off(monkeypatch, grad_clip):
    """Kills: opt.step() instead of scaler.step(opt) (weights
    change/NaN); scaler.update() removed (scale not halved)."""
    cfg = _cfg(grad_clip=grad_clip)
    cfg.dtype = (
        "float16"  # TrainConfig refuses fp16 on CPU only because the trainer's scaler is CUDA's
    )
    made = _cpu_scaler(monkeypatch, 2.0**24, force_enabled=False)
    model = _model()
    before = _weights(model)
    spy = _Spy(monkeypatch, model)
    hist = train(model, _ids(), None, cfg)
    spy.close()
    assert len(made) == 1 and made[0].is_enabled()  # the trainer enabled its scaler for float16
    # 2**24 / (4 * 16 tokens) = 2**18 > 65504: the fp16 activation gradients overflow
    assert spy.grads == []  # the optimizer never stepped
    _assert_equal_weights(_weights(model), before)
    assert made[0].get_scale() == 2.0**23  # backoff factor 0.5
    assert len(hist["train_loss"]) == 1 and torch.isfinite(torch.tensor(hist["train_loss"][0]))


@pytest.mark.filterwarnings("ignore:lmkit.train. float16 training needs CUDA")
def test_the_loss_scale_travels_with_the_checkpoint(tmp_path, monkeypatch):
    """Kills: a checkpoint without the gradient scaler's state (a resumed fp16 run starts again
    from 2**16 and skips steps the uninterrupted run did not skip)."""
    cfg = _cfg(out_dir=str(tmp_path))
    cfg.dtype = "float16"  # as in the test above: the CPU stands in for CUDA's scaler
    made = _cpu_scaler(monkeypatch, 2.0**24, force_enabled=False)
    train(_model(), _ids(), None, cfg)
    _, meta = load_tensors(tmp_path / "ckpt.safetensors")
    assert meta["grad_scaler"]["scale"] == made[0].get_scale() == 2.0**23
    resumed = torch.amp.GradScaler("cpu", init_scale=1.0)
    model = _model()
    load_train_state(tmp_path / "ckpt.safetensors", model, make_optimizer(model, cfg), resumed)
    assert resumed.get_scale() == 2.0**23


# --- found unchecked by mutmut (scripts/mutate.sh; docs/mutation.md) ------------------------------


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, (0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4"}, (3, 4, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
        ({"RANK": "3"}, (0, 1, 0)),
        ({"WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (0, 1, 0)),
    ],
)
def test_ddp_info_reads_torchrun_environment(monkeypatch, env, want):
    """Kills: rank/world/local rank read from the wrong variable, a default other than 0, and
    ``and`` weakened to ``or`` (half a torchrun environment taken for DDP). Only torchrun workers
    call this in the other tests, where mutmut cannot see it."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert lmkit.train._ddp_info() == want


def test_lr_schedule_ends_and_stays_at_min_lr():
    """Kills: the cosine's progress clamped above 1 (the rate climbs again after max_steps) and the
    decay length floored at 2 instead of 1 (one decay step would stop halfway)."""
    cfg = _cfg(max_steps=10, warmup_steps=2, lr=1e-3, min_lr=1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-4) and lr_at(15, cfg) == pytest.approx(1e-4)
    one = _cfg(max_steps=3, warmup_steps=2, lr=1e-3, min_lr=1e-4)
    assert lr_at(2, one) == pytest.approx(1e-3) and lr_at(3, one) == pytest.approx(1e-4)


def test_train_state_records_both_configs(tmp_path):
    """Kills: the train_config or model_config entry of a training checkpoint renamed or emptied
    (what resume and evaluation read back to rebuild the run)."""
    from dataclasses import asdict

    model, cfg = _model(), _cfg()
    opt = make_optimizer(model, cfg)
    save_train_state(tmp_path / "s.safetensors", model, opt, 3, {"train_loss": [1.0]}, cfg)
    _, meta = load_tensors(tmp_path / "s.safetensors")
    assert meta["train_config"] == json_roundtrip(asdict(cfg))
    assert meta["model_config"] == json_roundtrip(model.config.to_dict())
    assert meta["step"] == 3 and meta["history"] == {"train_loss": [1.0]}


def test_cpu_resume_ignores_a_cuda_generator_state(tmp_path, monkeypatch):
    """Kills: the CUDA generator restored for a model that is not on CUDA (``!=`` for ``==``), which
    on a CPU-only machine fails (or starts CUDA) when a checkpoint written on a GPU is resumed."""
    model, cfg = _model(), _cfg()
    opt = make_optimizer(model, cfg)
    path = tmp_path / "s.safetensors"
    save_train_state(path, model, opt, 1, {}, cfg)
    tensors, meta = load_tensors(path)
    tensors["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)  # as if written on a GPU
    lmkit.checkpoint.save_tensors(path, tensors, meta)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.cuda.set_rng_state called for a CPU model")

    monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
    assert load_train_state(path, _model(), make_optimizer(_model(), cfg))[0] == 1


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))
