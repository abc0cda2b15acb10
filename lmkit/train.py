"""The trainer: one loop, every production detail visible. Explained in chapter 10.

AdamW (fused on CUDA), linear warmup + cosine decay, gradient clipping and accumulation, mixed
precision (bf16 autocast; fp16 with a gradient scaler on CUDA; ``dtype="auto"`` asks
:func:`lmkit.env.device_policy`), optional ``torch.compile`` (skipped where the policy says Triton
cannot compile, and dropped with one warning if compiling fails), periodic evaluation, a tqdm
progress bar, metrics history with tokens/s and MFU measured after the first (compiling) step, DDP
when launched by ``torchrun``, and atomic safetensors checkpoints with exact resume.

Exact resume works because nothing depends on hidden state: the batch of step ``s`` is drawn from
a generator seeded with ``(seed, rank, s)``, and the checkpoint stores the weights, the optimizer
moments, the gradient scaler's state, the random-number states (the CPU's, and the CUDA or MPS
device's that dropout draws from there) and the metrics so far. It is bit-exact where the kernels
are deterministic; on GPUs some are not (atomic additions in attention's backward pass, for one),
and there a resumed run agrees with an uninterrupted one to rounding error only.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lmkit.checkpoint import atomic_write_json, load_tensors, save_tensors
from lmkit.data.loaders import pack_blocks, random_batch
from lmkit.env import current_policy, synchronize
from lmkit.nn import device_of, eval_mode
from lmkit.optim import param_groups

FLUSH_EVERY = 10  # steps between reads of the losses from the device (each read waits for it)


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Chapter 10 explains each."""

    max_steps: int = 200
    batch_size: int = 16  # sequences per micro-batch (per process under DDP)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping
    # "float32", "bfloat16", "float16" (needs CUDA) or "auto": lmkit.env.device_policy's choice
    # (bf16 from compute capability 8.0, fp16 + scaler before it, fp32 on a CPU or MPS)
    dtype: str = "float32"
    # True: torch.compile unless the policy says Triton cannot compile here; None: the policy's
    # default (on CUDA with Triton, not on a CPU or MPS)
    compile: bool | None = False
    device: str = "cpu"
    seed: int = 1337
    eval_interval: int = 50  # 0 disables periodic evaluation
    eval_batches: int = 20
    ckpt_interval: int = 0  # 0: checkpoint only at the end (when out_dir is set)
    out_dir: str | None = None
    resume: bool = True  # continue from out_dir/ckpt.safetensors when it exists
    progress: bool = True

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(
                "TrainConfig.dtype must be 'float32', 'bfloat16', 'float16' or 'auto', "
                f"got {self.dtype!r}"
            )
        if self.dtype == "float16" and not str(self.device).startswith(("cuda", "auto")):
            raise ValueError(
                "float16 training needs a CUDA device (it relies on a gradient scaler); "
                "use 'bfloat16' on CPU"
            )
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}"
            )
        self.betas = tuple(self.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warmup to ``lr``, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (``lmkit.optim.param_groups``: not on biases,
    norms); fused on CUDA."""
    groups = param_groups(model, cfg.weight_decay)
    fused = str(cfg.device).startswith("cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def autocast_context(device, dtype: str):
    """``torch.autocast`` for bf16/fp16 on ``device``'s type (cuda, mps, cpu), or a no-op for
    fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


@torch.no_grad()
def evaluate_loss(
    model,
    ids: torch.Tensor,
    block_size: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    device=None,
    dtype: str = "float32",
) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping blocks of ``ids`` (N,). Chapter 11.

    Deterministic: the same ids always give the same blocks. ``max_batches`` caps the cost.
    """
    device = device or device_of(model)
    blocks = pack_blocks(ids, block_size)
    if max_batches is not None:
        blocks = blocks[: max_batches * batch_size]
    with eval_mode(model):
        total, count = 0.0, 0
        for i in range(0, len(blocks), batch_size):
            b = blocks[i : i + batch_size].to(device)
            with autocast_context(str(device), dtype):
                _, loss = model(b[:, :-1], b[:, 1:])
            n = b[:, 1:].numel()
            total += loss.item() * n
            count += n
    return total / count


def _ddp_info():
    """(rank, world_size, local_rank) from torchrun's environment, or (0, 1, 0)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    return 0, 1, 0


def _optimizer_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def _restore_optimizer(opt, tensors: dict, meta: dict):
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _device_rng(kind: str):
    """(get_rng_state, set_rng_state) of a device type's generator: CUDA's (per device) or MPS's;
    None for a CPU, or where this torch has no such functions."""
    if kind == "cuda":
        return torch.cuda.get_rng_state, torch.cuda.set_rng_state
    module = getattr(torch, kind, None) if kind == "mps" else None
    get, put = getattr(module, "get_rng_state", None), getattr(module, "set_rng_state", None)
    if get is None or put is None:
        return None
    return (lambda device: get()), (lambda state, device: put(state))  # MPS has one generator


def device_rng_states(device) -> dict[str, torch.Tensor]:
    """``{"rng.cuda": state}`` or ``{"rng.mps": state}``: the generator dropout draws from on
    ``device``; empty on a CPU (``rng.cpu`` covers it) or where torch cannot read it. Chapter 10."""
    device = torch.device(device)
    functions = _device_rng(device.type)
    return {} if functions is None else {f"rng.{device.type}": functions[0](device)}


def restore_device_rng(tensors: dict, device) -> bool:
    """Set ``device``'s generator from ``tensors`` (written by :func:`device_rng_states`); False,
    and nothing done, when the checkpoint has no state for this device type (written on another
    kind of device) or torch cannot set it here. Chapter 10."""
    device = torch.device(device)
    state = tensors.get(f"rng.{device.type}")
    functions = _device_rng(device.type)
    if state is None or functions is None:
        return False
    functions[1](state, device)
    return True


def save_train_state(
    path, model, opt, step: int, history: dict, cfg: TrainConfig, scaler=None
) -> None:
    """Atomically write weights, optimizer moments, the gradient scaler, RNG states and metrics
    (safetensors + JSON). Chapter 10."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors.update(device_rng_states(device_of(model)))  # dropout on a GPU draws from its own
    meta = {"step": step, "history": history, "train_config": asdict(cfg), **opt_meta}
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale it has learnt
        meta["grad_scaler"] = scaler.state_dict()
    if hasattr(model, "config"):
        meta["model_config"] = model.config.to_dict()
    save_tensors(path, tensors, meta)


def load_train_state(path, model, opt, scaler=None) -> tuple[int, dict]:
    """Restore what :func:`save_train_state` wrote; returns (step, history)."""
    tensors, meta = load_tensors(path)
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd)
    _restore_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta)
    torch.set_rng_state(tensors["rng.cpu"])
    restore_device_rng(tensors, device_of(model))
    if scaler is not None and scaler.is_enabled() and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    return int(meta["step"]), meta["history"]


def _setup_process(cfg: TrainConfig):
    """(rank, world_size, device): under torchrun, join the process group and take this
    process's GPU; otherwise (0, 1, cfg.device)."""
    rank, world, local_rank = _ddp_info()
    device = cfg.device
    if world > 1:
        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        if str(device).startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    return rank, world, device


def _wrap(model, cfg: TrainConfig, world: int, device):
    """The module the steps call: ``model``, compiled when ``cfg.compile`` (as resolved by the
    device policy), wrapped in DDP under torchrun. The optimizer, evaluation and checkpoints keep
    using ``model`` itself (same parameters)."""
    train_model = torch.compile(model) if cfg.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        local_rank = _ddp_info()[2]
        cuda = str(device).startswith("cuda")
        train_model = DDP(train_model, device_ids=[local_rank] if cuda else None)
    return train_model


def _training_step(train_model, model, opt, scaler, train_ids, cfg, step, rank, world, device):
    """One optimizer step over ``grad_accum`` micro-batches; returns the micro-batches' losses
    (divided by ``grad_accum``) as tensors still on the device: reading them waits for the device,
    so the loop reads them every :data:`FLUSH_EVERY` steps (:func:`_step_loss` adds them up).

    Each micro-batch is drawn from its own generator seeded by (seed, rank, step, micro), so a
    resumed run draws exactly the batches the uninterrupted run would have drawn. Under DDP the
    gradients are all-reduced only on the last micro-batch (``no_sync`` before it).
    """
    losses = []
    for micro in range(cfg.grad_accum):
        gen = torch.Generator().manual_seed(
            cfg.seed * 1_000_003 + rank * 10_007 + step * cfg.grad_accum + micro
        )
        x, y = random_batch(train_ids, model.config.block_size, cfg.batch_size, gen)
        x, y = _to_device(x, device), _to_device(y, device)
        sync = contextlib.nullcontext()
        if world > 1 and micro < cfg.grad_accum - 1:
            sync = train_model.no_sync()
        with sync, autocast_context(device, cfg.dtype):
            _, loss = train_model(x, y)
            loss = loss / cfg.grad_accum
        scaler.scale(loss).backward()
        losses.append(loss.detach())
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return losses


def _to_device(batch: torch.Tensor, device) -> torch.Tensor:
    """A CPU batch on ``device``. To a GPU it is copied from pinned memory without waiting: a copy
    from ordinary (pageable) memory first waits for the GPU to finish everything queued, which
    would leave the GPU idle while the next step is launched."""
    if torch.device(device).type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def _step_loss(micro_losses) -> float:
    """A step's training loss: its micro-batch losses read and added in order (Python floats)."""
    total = 0.0
    for value in torch.stack(micro_losses).tolist():
        total += value
    return total


def _compile_failed(exc: Exception) -> bool:
    """True for the errors torch.compile raises when it cannot compile (dynamo, inductor,
    Triton), not for errors of the model or the data, which eager mode would raise as well."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor", "triton"))


def _resolved(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``cfg`` with the policy's choices: the caller's object is left as it was, and
    its checks are not run again (they ran when it was made)."""
    out = copy.copy(cfg)
    for name, value in changes.items():
        setattr(out, name, value)
    return out


def _due(interval: int, step: int, last: bool) -> bool:
    return bool(interval and step % interval == 0) or last


def train(model, train_ids: torch.Tensor, val_ids: torch.Tensor | None, cfg: TrainConfig) -> dict:
    """Train ``model`` on next-token prediction over ``train_ids`` (N,); returns the metrics
    history. Explained in chapter 10.

    History keys: ``step``, ``train_loss``, ``lr`` (every step), ``eval_step``, ``val_loss``,
    ``tokens_per_s`` (this run's, after its first step, which compiles and warms up),
    ``first_step_s``, ``mfu`` (on a GPU of :data:`lmkit.env.GPU_SPECS`, else None) and
    ``elapsed_s``. ``dtype="auto"`` and ``compile`` are resolved by
    :func:`lmkit.env.current_policy` (a warning says when a request is not followed). With
    ``out_dir`` set, ``ckpt.safetensors`` and ``history.json`` are written there (and training
    resumes from them when ``resume``).
    """
    rank, world, device = _setup_process(cfg)
    policy = current_policy(device, dtype=cfg.dtype, compile=cfg.compile)
    for note in policy.notes:
        warnings.warn(f"lmkit.train: {note}", stacklevel=2)
    cfg = _resolved(cfg, dtype=policy.dtype, compile=policy.compile)
    is_main = rank == 0
    model.to(device)
    block_size = model.config.block_size
    opt = make_optimizer(model, cfg)
    history = {
        "step": [],
        "train_loss": [],
        "lr": [],
        "eval_step": [],
        "val_loss": [],
        "tokens_per_s": None,
        "first_step_s": None,
        "mfu": None,
        "elapsed_s": 0.0,
    }
    step = 0
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")
    ckpt = Path(cfg.out_dir) / "ckpt.safetensors" if cfg.out_dir else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        step, history = load_train_state(ckpt, model, opt, scaler)
    train_model = _wrap(model, cfg, world, device)
    bar = None
    if cfg.progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", leave=False)
    model.train()
    tokens_per_step = cfg.batch_size * cfg.grad_accum * block_size * world
    steps_run, busy, first_s, pending = 0, 0.0, None, []
    t0 = None  # the clock runs over training steps only, not evaluation or checkpoints

    def stop_clock():  # wait for the device, then add the time since t0
        nonlocal t0, busy
        if t0 is not None:
            synchronize(device)
            busy += time.perf_counter() - t0
            t0 = None

    def flush():  # read the pending losses from the device: the history gets them
        stop_clock()
        for micro_losses in pending:
            history["train_loss"].append(_step_loss(micro_losses))
        pending.clear()
        if bar is not None and history["train_loss"]:
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}")

    while step < cfg.max_steps:
        if t0 is None:
            t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        args = (opt, scaler, train_ids, cfg, step, rank, world, device)
        try:
            losses = _training_step(train_model, model, *args)
        except Exception as exc:
            if train_model is model or steps_run or not _compile_failed(exc):
                raise
            warnings.warn(
                f"lmkit.train: torch.compile failed ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "training without it",
                stacklevel=2,
            )
            cfg = _resolved(cfg, compile=False)
            opt.zero_grad(set_to_none=True)
            train_model = _wrap(model, cfg, world, device)
            losses = _training_step(train_model, model, *args)
        step += 1
        steps_run += 1
        history["step"].append(step)
        history["lr"].append(lr)
        pending.append(losses)
        if bar is not None:
            bar.update(1)
        last = step == cfg.max_steps
        evaluate = val_ids is not None and is_main and _due(cfg.eval_interval, step, last)
        save = ckpt is not None and is_main and _due(cfg.ckpt_interval, step, last)
        if steps_run == 1:  # the first step compiles and warms up: timed on its own
            flush()
            first_s, busy = busy, 0.0
        elif last or evaluate or save or steps_run % FLUSH_EVERY == 0:
            flush()
        if evaluate:
            val = evaluate_loss(
                model, val_ids, block_size, cfg.batch_size, cfg.eval_batches, device, cfg.dtype
            )
            history["eval_step"].append(step)
            history["val_loss"].append(val)
        if save:
            _record_speed(history, model, policy, tokens_per_step, steps_run, first_s, busy, world)
            save_train_state(ckpt, model, opt, step, history, cfg, scaler)
            atomic_write_json(Path(cfg.out_dir) / "history.json", history)
    flush()
    if bar is not None:
        bar.close()
    if steps_run:
        _record_speed(history, model, policy, tokens_per_step, steps_run, first_s, busy, world)
        history["elapsed_s"] = history.get("elapsed_s", 0.0) + first_s + busy
    return history


def _record_speed(history, model, policy, tokens_per_step, steps_run, first_s, busy, world):
    """tokens/s after the first step (or of the first step alone when it is the only one), and
    MFU per GPU where the policy knows the GPU's peak."""
    if steps_run > 1 and busy > 0:
        tokens_per_s = tokens_per_step * (steps_run - 1) / busy
    else:
        tokens_per_s = tokens_per_step / first_s if first_s else None
    history["tokens_per_s"] = tokens_per_s
    history["first_step_s"] = first_s
    history["mfu"] = None
    if tokens_per_s and policy.peak_flops and hasattr(model, "flops_per_token"):
        history["mfu"] = mfu(tokens_per_s / world, model.flops_per_token(), policy.peak_flops)


def mfu(tokens_per_s: float, flops_per_token: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak (per GPU: pass
    one GPU's tokens/s and ``lmkit.env.peak_flops(name)``). Chapter 10."""
    return tokens_per_s * flops_per_token / peak_flops
