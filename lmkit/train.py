"""The trainer: one loop, every production detail visible. Explained in chapter 10.

AdamW (fused on CUDA), linear warmup + cosine decay, gradient clipping and accumulation, mixed
precision (bf16 autocast on CPU and CUDA; fp16 with a gradient scaler on CUDA), optional
``torch.compile``, periodic evaluation, a tqdm progress bar, metrics history, DDP when launched by
``torchrun``, and atomic safetensors checkpoints with exact resume.

Exact resume works because nothing depends on hidden state: the batch of step ``s`` is drawn from
a generator seeded with ``(seed, rank, s)``, and the checkpoint stores the weights, the optimizer
moments, the global RNG state (for dropout; the GPU's too when training on one) and the metrics so
far.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lmkit.checkpoint import atomic_write_json, load_tensors, save_tensors
from lmkit.data.loaders import pack_blocks, random_batch
from lmkit.nn import device_of, eval_mode


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
    dtype: str = "float32"  # "float32", "bfloat16" or "float16" (fp16 needs CUDA)
    compile: bool = False
    device: str = "cpu"
    seed: int = 1337
    eval_interval: int = 50  # 0 disables periodic evaluation
    eval_batches: int = 20
    ckpt_interval: int = 0  # 0: checkpoint only at the end (when out_dir is set)
    out_dir: str | None = None
    resume: bool = True  # continue from out_dir/ckpt.safetensors when it exists
    progress: bool = True

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"TrainConfig.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}"
            )
        if self.dtype == "float16" and not str(self.device).startswith("cuda"):
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
    """AdamW with weight decay on matrices only (not on biases, norms); fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = str(cfg.device).startswith("cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def autocast_context(device: str, dtype: str):
    """``torch.autocast`` for bf16/fp16, or a no-op for fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


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


def save_train_state(path, model, opt, step: int, history: dict, cfg: TrainConfig) -> None:
    """Atomically write weights, optimizer moments, RNG state and metrics (safetensors + JSON)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    device = device_of(model)
    if device.type == "cuda":  # dropout on a GPU draws from that device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {"step": step, "history": history, "train_config": asdict(cfg), **opt_meta}
    if hasattr(model, "config"):
        meta["model_config"] = model.config.to_dict()
    save_tensors(path, tensors, meta)


def load_train_state(path, model, opt) -> tuple[int, dict]:
    """Restore what :func:`save_train_state` wrote; returns (step, history)."""
    tensors, meta = load_tensors(path)
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd)
    _restore_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta)
    torch.set_rng_state(tensors["rng.cpu"])
    device = device_of(model)
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
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
    """The module the steps call: ``model``, compiled when asked, wrapped in DDP under torchrun.
    The optimizer, evaluation and checkpoints keep using ``model`` itself (same parameters)."""
    train_model = torch.compile(model) if cfg.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        local_rank = _ddp_info()[2]
        cuda = str(device).startswith("cuda")
        train_model = DDP(train_model, device_ids=[local_rank] if cuda else None)
    return train_model


def _training_step(train_model, model, opt, scaler, train_ids, cfg, step, rank, world, device):
    """One optimizer step over ``grad_accum`` micro-batches; returns the step's training loss.

    Each micro-batch is drawn from its own generator seeded by (seed, rank, step, micro), so a
    resumed run draws exactly the batches the uninterrupted run would have drawn. Under DDP the
    gradients are all-reduced only on the last micro-batch (``no_sync`` before it).
    """
    loss_sum = 0.0
    for micro in range(cfg.grad_accum):
        gen = torch.Generator().manual_seed(
            cfg.seed * 1_000_003 + rank * 10_007 + step * cfg.grad_accum + micro
        )
        x, y = random_batch(train_ids, model.config.block_size, cfg.batch_size, gen)
        x, y = x.to(device), y.to(device)
        sync = contextlib.nullcontext()
        if world > 1 and micro < cfg.grad_accum - 1:
            sync = train_model.no_sync()
        with sync, autocast_context(device, cfg.dtype):
            _, loss = train_model(x, y)
            loss = loss / cfg.grad_accum
        scaler.scale(loss).backward()
        loss_sum += loss.item()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss_sum


def _due(interval: int, step: int, last: bool) -> bool:
    return bool(interval and step % interval == 0) or last


def train(model, train_ids: torch.Tensor, val_ids: torch.Tensor | None, cfg: TrainConfig) -> dict:
    """Train ``model`` on next-token prediction over ``train_ids`` (N,); returns the metrics
    history. Explained in chapter 10.

    History keys: ``step``, ``train_loss``, ``lr`` (every step), ``eval_step``, ``val_loss``,
    ``tokens_per_s``, ``elapsed_s``. With ``out_dir`` set, ``ckpt.safetensors`` and
    ``history.json`` are written there (and training resumes from them when ``resume``).
    """
    rank, world, device = _setup_process(cfg)
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
        "elapsed_s": 0.0,
    }
    step = 0
    ckpt = Path(cfg.out_dir) / "ckpt.safetensors" if cfg.out_dir else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        step, history = load_train_state(ckpt, model, opt)
    train_model = _wrap(model, cfg, world, device)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")
    bar = None
    if cfg.progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", leave=False)
    model.train()
    tokens, busy = 0, 0.0
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = _training_step(
            train_model, model, opt, scaler, train_ids, cfg, step, rank, world, device
        )
        busy += time.perf_counter() - t0
        tokens += cfg.batch_size * cfg.grad_accum * block_size * world
        step += 1
        history["step"].append(step)
        history["train_loss"].append(loss)
        history["lr"].append(lr)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        last = step == cfg.max_steps
        if val_ids is not None and is_main and _due(cfg.eval_interval, step, last):
            val = evaluate_loss(
                model, val_ids, block_size, cfg.batch_size, cfg.eval_batches, device, cfg.dtype
            )
            history["eval_step"].append(step)
            history["val_loss"].append(val)
        if ckpt is not None and is_main and _due(cfg.ckpt_interval, step, last):
            history["tokens_per_s"] = tokens / busy if busy else None
            save_train_state(ckpt, model, opt, step, history, cfg)
            atomic_write_json(Path(cfg.out_dir) / "history.json", history)
    if bar is not None:
        bar.close()
    history["tokens_per_s"] = tokens / busy if busy else history.get("tokens_per_s")
    history["elapsed_s"] = history.get("elapsed_s", 0.0) + busy
    return history


def mfu(tokens_per_s: float, flops_per_token: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak. Chapter 10."""
    return tokens_per_s * flops_per_token / peak_flops


# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s from the vendors' data sheets (fp16 for the
# T4 and V100, which have no bf16). More specific names first: "H100 PCIe" before "H100".
GPU_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("T4", 65e12),
    ("V100", 125e12),
)


def gpu_peak_flops(device_name: str) -> float | None:
    """Peak FLOP/s of a GPU from ``torch.cuda.get_device_name()``; None when it is not in the
    table."""
    return next((peak for key, peak in GPU_PEAK_FLOPS if key in device_name), None)
