"""Data-parallel training made visible: launch ``torchrun`` from Python, check DDP's gradients.

Explained in chapter 17.

- :func:`torchrun_command` / :func:`launch` start ``N`` processes with ``torch.distributed.run``
  (the module behind the ``torchrun`` script) on one machine, gloo on CPU, from a notebook or test.
- Run as a module under ``torchrun`` (``python -m torch.distributed.run --nproc_per_node 2 -m
  lmkit.distributed gradcheck --out DIR``), this file is the worker: every rank takes its shard of
  one global batch, DistributedDataParallel all-reduces (averages) the gradients, and each rank
  writes what it holds to ``DIR/grads_rank{r}.safetensors``.
- :func:`single_process_grads` computes the gradients of the same model on the whole global batch
  in one process; :func:`ddp_gradient_check` runs both and compares them.
- :func:`train_memory_bytes` and :func:`memory_table` do the memory arithmetic of data, ZeRO/FSDP,
  tensor and pipeline parallelism.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lmkit.models import GPT, GPTConfig

DEFAULT_MODEL = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)


# --------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------


def torchrun_command(args: list[str], nproc: int = 2, module: bool = True) -> list[str]:
    """The command line that runs ``args`` under ``torchrun --standalone --nproc_per_node nproc``.

    ``module=True`` runs ``python -m args[0] args[1:]`` in every process (``-m`` of torchrun);
    otherwise ``args[0]`` is a script path. ``--standalone`` picks a free port on localhost.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    if module:
        cmd.append("-m")
    return cmd + list(args)


def launch(
    args: list[str],
    nproc: int = 2,
    module: bool = True,
    timeout: float = 300,
    threads: int = 1,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``args`` in ``nproc`` processes under torchrun and wait; returns the completed process.

    Each process gets ``OMP_NUM_THREADS=threads`` (so that two processes do not fight over the
    cores) and the hub is kept offline. ``check=True`` raises ``RuntimeError`` with the output
    tail when any process fails.
    """
    full_env = dict(os.environ)
    full_env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if env:
        full_env.update(env)
    proc = subprocess.run(
        torchrun_command(args, nproc, module),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{tail}")
    return proc


# --------------------------------------------------------------------------------------------
# The gradient-equivalence check
# --------------------------------------------------------------------------------------------


def make_model(model: dict | None = None, seed: int = 0):
    """A seeded tiny :class:`lmkit.models.GPT` (same weights in every process for the same seed)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**DEFAULT_MODEL, **(model or {})}))


def global_batch(global_batch_size: int, model: dict | None = None, seed: int = 0):
    """A seeded random batch of token ids: x, y each (global_batch_size, block_size)."""
    cfg = {**DEFAULT_MODEL, **(model or {})}
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(
        cfg["vocab_size"], (global_batch_size, cfg["block_size"] + 1), generator=gen
    )
    return ids[:, :-1], ids[:, 1:]


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of the batch dimension; the batch must split evenly."""
    if x.size(0) % world:
        raise ValueError(f"global batch {x.size(0)} does not split evenly over {world} processes")
    per = x.size(0) // world
    return x[rank * per : (rank + 1) * per]


def single_process_grads(
    global_batch_size: int = 8,
    model: dict | None = None,
    seed: int = 0,
    shard_of: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of the mean loss of the seeded model on the global batch, in one process.

    ``shard_of=(rank, world)`` computes the gradient on that rank's shard only (what one DDP rank
    holds *before* the all-reduce). Returns {parameter name: gradient}, names as in
    ``model.named_parameters()``.
    """
    net = make_model(model, seed)
    x, y = global_batch(global_batch_size, model, seed)
    if shard_of is not None:
        x, y = shard(x, *shard_of), shard(y, *shard_of)
    _, loss = net(x, y)
    # a bare backward on purpose: the gradients are the result, so no optimizer_step (which would
    # also update the weights); the DDP worker below shows the same call with its hooks
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def _gradcheck_worker(out: Path, global_batch_size: int, model: dict, seed: int) -> None:
    """Body of one torchrun process: DDP forward/backward on this rank's shard, write the grads."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        net = make_model(model, seed)
        ddp = DDP(net)  # broadcasts rank 0's weights, registers the all-reduce hooks
        x, y = global_batch(global_batch_size, model, seed)
        _, loss = ddp(shard(x, rank, world), shard(y, rank, world))
        loss.backward()  # the hooks average every gradient over the ranks during backward
        grads = {n: p.grad.detach().contiguous() for n, p in net.named_parameters()}
        save_file(grads, str(out / f"grads_rank{rank}.safetensors"))
        (out / f"loss_rank{rank}.json").write_text(
            json.dumps({"loss": loss.item(), "world": world})
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def ddp_gradient_check(
    nproc: int = 2,
    global_batch_size: int = 8,
    model: dict | None = None,
    seed: int = 0,
    timeout: float = 300,
    workdir: str | None = None,
) -> dict:
    """Run the DDP worker in ``nproc`` processes and compare with one process on the whole batch.

    Returns a dict: ``max_abs_diff`` (DDP rank 0 vs single process, over all parameters),
    ``ranks_identical`` (every rank holds bit-identical gradients after the all-reduce),
    ``max_abs_diff_unsynced`` (one rank's shard gradient vs the global one: what DDP fixes),
    ``shard_mean_diff`` (mean of the per-shard gradients vs the global gradient, one process),
    ``n_params``, ``world_size`` and ``losses`` (each rank's shard loss).
    """
    from safetensors.torch import load_file

    model = {**DEFAULT_MODEL, **(model or {})}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp)
        launch(
            [
                "lmkit.distributed",
                "gradcheck",
                "--out",
                str(out),
                "--global-batch",
                str(global_batch_size),
                "--model",
                json.dumps(model),
                "--seed",
                str(seed),
            ],
            nproc=nproc,
            timeout=timeout,
        )
        ranks = [load_file(str(out / f"grads_rank{r}.safetensors")) for r in range(nproc)]
        losses = [
            json.loads((out / f"loss_rank{r}.json").read_text())["loss"] for r in range(nproc)
        ]
    ref = single_process_grads(global_batch_size, model, seed)
    shards = [
        single_process_grads(global_batch_size, model, seed, shard_of=(r, nproc))
        for r in range(nproc)
    ]

    def maxdiff(a, b):
        return max((a[n] - b[n]).abs().max().item() for n in ref)

    mean_of_shards = {n: sum(s[n] for s in shards) / nproc for n in ref}
    return {
        "world_size": nproc,
        "n_params": sum(g.numel() for g in ref.values()),
        "max_abs_diff": maxdiff(ranks[0], ref),
        "ranks_identical": all(torch.equal(ranks[0][n], r[n]) for r in ranks[1:] for n in ref),
        "max_abs_diff_unsynced": maxdiff(shards[0], ref),
        "shard_mean_diff": maxdiff(mean_of_shards, ref),
        "losses": losses,
    }


def tiny_train_args(out_dir: str, steps: int = 10, extra: list[str] | None = None) -> list[str]:
    """Arguments of ``python -m lmkit train --preset tiny`` for a short run (under torchrun)."""
    return [
        "lmkit",
        "train",
        "--preset",
        "tiny",
        "--out",
        str(out_dir),
        "--max-steps",
        str(steps),
        "--eval-interval",
        "0",
        "--ckpt-interval",
        "0",
        "--no-progress",
        "--no-resume",
        *(extra or []),
    ]


# --------------------------------------------------------------------------------------------
# Memory arithmetic
# --------------------------------------------------------------------------------------------

# Bytes per parameter for (weights, gradients, optimizer state) under two recipes.
# fp32: weights 4, grads 4, Adam m and v 4 + 4.
# mixed (bf16/fp16 with fp32 master copy, ZeRO paper's K = 12): weights 2, grads 2,
# optimizer 12 = fp32 master weights 4 + m 4 + v 4.
PRECISIONS = {"fp32": (4, 4, 8), "mixed": (2, 2, 12)}
STRATEGIES = ("DP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "TP", "PP")


def train_memory_bytes(
    n_params: float, n_gpus: int = 1, strategy: str = "DP", precision: str = "mixed"
) -> dict:
    """Per-GPU bytes of model state (weights, gradients, optimizer) when training with Adam.

    ``strategy``: ``DP`` (every GPU holds everything), ``ZeRO-1`` (optimizer state sharded),
    ``ZeRO-2`` (+ gradients), ``ZeRO-3`` (= FSDP full shard; + weights), ``TP`` (tensor parallel of
    degree ``n_gpus``: each GPU holds 1/n of every matrix) and ``PP`` (pipeline of ``n_gpus``
    stages: each GPU holds 1/n of the layers). Activations and temporary buffers are not counted;
    TP and PP are taken as perfectly balanced. Returns a dict with ``weights``, ``grads``,
    ``optimizer`` and ``total`` in bytes. Explained in chapter 17.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    w, g, o = (b * n_params for b in PRECISIONS[precision])
    n = n_gpus
    if strategy == "ZeRO-1":
        o /= n
    elif strategy == "ZeRO-2":
        g, o = g / n, o / n
    elif strategy in ("ZeRO-3", "TP", "PP"):
        w, g, o = w / n, g / n, o / n
    return {"weights": w, "grads": g, "optimizer": o, "total": w + g + o}


def memory_table(
    models: dict[str, float], n_gpus: int = 8, precision: str = "mixed", strategies=STRATEGIES
) -> list[dict]:
    """Rows {model, params, <strategy>: GiB per GPU}, one per entry of ``models`` {name: N}."""
    rows = []
    for name, n in models.items():
        row = {"model": name, "params": n}
        for s in strategies:
            row[s] = train_memory_bytes(n, n_gpus, s, precision)["total"] / 2**30
        rows.append(row)
    return rows


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Idle share of a GPipe schedule: (p - 1) / (m + p - 1) for p stages, m micro-batches.

    Explained in chapter 17.
    """
    if stages < 1 or microbatches < 1:
        raise ValueError("stages and microbatches must be >= 1")
    return (stages - 1) / (microbatches + stages - 1)


def gpipe_schedule(stages: int, microbatches: int):
    """GPipe's timetable (all forwards, then all backwards), one time slot per stage-step.

    Returns an int array (stages, 2 * (microbatches + stages - 1)): entry ``m + 1`` = forward of
    micro-batch ``m``, ``-(m + 1)`` = its backward, ``0`` = idle (the bubble). Chapter 17.
    """
    import numpy as np

    p, m = stages, microbatches
    span = m + p - 1
    grid = np.zeros((p, 2 * span), dtype=int)
    for s in range(p):
        for k in range(m):
            grid[s, s + k] = k + 1  # forward of micro-batch k reaches stage s at time s + k
            grid[s, span + (p - 1 - s) + k] = -(
                m - k
            )  # backwards run last stage first, last micro-batch first
    return grid


def main(argv=None) -> None:
    """Entry point of the torchrun workers: ``python -m lmkit.distributed gradcheck --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m lmkit.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gradcheck", help="one DDP backward pass; every rank writes its gradients")
    p.add_argument("--out", required=True)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--model", default=json.dumps(DEFAULT_MODEL), help="GPTConfig fields as JSON")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "gradcheck":
        _gradcheck_worker(Path(args.out), args.global_batch, json.loads(args.model), args.seed)


if __name__ == "__main__":
    main()
