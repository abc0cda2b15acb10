"""The one-shot GPU check of the book's GPU paths (issue 14): run it whenever a GPU machine is
available, in under 8 minutes on one GPU.

    bash scripts/gpu_check.sh              # on a GPU: writes book/data/bench/gpu_check_*.json
    bash scripts/gpu_check.sh --dry-run    # every step on the CPU, tiny sizes (< 2 minutes)

Steps, each in its own process (a crash or a hang fails that step only) and timed out on its own;
a step that would start after ``--budget-s`` (480 s) is recorded as skipped, and fails the run:

1. ``train_bf16_compile``: ``lmkit.train.train`` on a GPT-2-small-sized model (124M parameters,
   context 1024) with the device policy's dtype and ``torch.compile`` (bf16 and compiled on an
   A100/H100/H200), a fixed number of steps on synthetic tokens; tokens/s and MFU after the first
   (compiling) step, against a target of 45% of the dense bf16 peak on an H100/H200.
2. ``train_fp16_scaler``: the path a T4 takes, forced: float16 autocast with the gradient scaler
   (compiled where the policy compiles fp16); the losses must stay finite and fall, and the loss
   scale is read back from the checkpoint.
3. ``resume_exact``: a run with dropout interrupted after N steps and resumed from its checkpoint
   equals an uninterrupted 2N-step run bit for bit, with deterministic kernels (fp32, explicit
   attention, ``torch.use_deterministic_algorithms``); the same comparison with the default fused
   kernels is reported (not asserted: their backward passes add in a varying order).
4. ``chapters``: chapters 10, 12, 13 and 15 executed with papermill (``tests/papermill_run.py``);
   on a CUDA machine their parameters cells choose the GPU preset. Wall time and, where
   ``nvidia-smi`` exists, the peak GPU memory of each.

One JSON file per run (date, GPU, command, the device policy, every step's figures) goes to
``--out-dir`` (default ``book/data/bench`` on a GPU, ``_build/gpu_check`` for a dry run); the
performance appendix lists them. The exit status is 1 when a step failed; a missed MFU target is
reported (``target_met``), not a failure. Explained in chapter 10 and the performance appendix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ("ch10_training", "ch12_generation", "ch13_deployment", "ch15_quantization")
STEPS = ("train_bf16_compile", "train_fp16_scaler", "resume_exact", "chapters")
MFU_TARGET = 0.45  # of the dense bf16 peak, on the GPUs below (nanoGPT-class trainers: ~0.38-0.41)
MFU_TARGET_GPUS = ("H100 SXM", "H100 PCIe", "H200")
# seconds per step (not measured on a GPU yet: the first GPU run's wall times should set them)
TIMEOUTS = {"train_bf16_compile": 150, "train_fp16_scaler": 90, "resume_exact": 90}
CHAPTER_TIMEOUTS = {"ch10_training": 330}  # two 2,000-step runs and a few compiles; others:
CHAPTER_TIMEOUT = 150
BUDGET_S = 480  # the whole check; a step that would start later is recorded as skipped


# --- the steps, each run in a child process: python scripts/gpu_check.py --step NAME ----------


def _device(dry_run: bool) -> str:
    import lmkit.env

    return "cpu" if dry_run else lmkit.env.current_policy().device


def _synthetic_ids(vocab_size: int, n: int, seed: int = 0):
    """A random walk over the vocabulary (each token is the previous one plus 1, 2 or 3): every
    token equally frequent, the next one ln 3 nats uncertain, so a model that trains lowers its
    loss from ln V within a few steps. The speed of a step does not depend on what tokens say."""
    import torch

    steps = torch.randint(1, 4, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.cumsum(steps, 0) % vocab_size


def _peak_memory_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def step_train_bf16_compile(dry_run: bool) -> dict:
    import torch

    import lmkit.env
    from lmkit.models import GPT, GPTConfig
    from lmkit.train import TrainConfig, train

    device = _device(dry_run)
    if dry_run:
        shape = dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64)
        steps, batch, accum = 6, 4, 1
    else:  # GPT-2 small; the vocabulary padded to a multiple of 64, as fast trainers do
        shape = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
        steps, batch, accum = 61, 16, 2  # the first step compiles; 60 are timed
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape))
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        grad_accum=accum,
        lr=3e-3 if dry_run else 6e-4,
        min_lr=3e-4 if dry_run else 6e-5,
        warmup_steps=2 if dry_run else 10,
        dtype="auto",
        compile=None,  # the policy's choice: compiled on CUDA where Triton works
        device=device,
        eval_interval=0,
        progress=False,
    )
    policy = lmkit.env.current_policy(device, dtype=cfg.dtype, compile=cfg.compile)
    hist = train(model, _synthetic_ids(shape["vocab_size"], 2_000_000), None, cfg)
    losses = hist["train_loss"]
    label = lmkit.env.GPU_SPECS.get(policy.name)
    target = MFU_TARGET if label and label.label in MFU_TARGET_GPUS else None
    out = {
        "config": {**shape, "batch_size": batch, "grad_accum": accum, "steps": steps},
        "params": model.num_params(),
        "flops_per_token": model.flops_per_token(),
        "dtype": policy.dtype,
        "compile": policy.compile,
        "tokens_per_s": round(hist["tokens_per_s"], 1),
        "first_step_s": round(hist["first_step_s"], 2),
        "mfu": None if hist["mfu"] is None else round(hist["mfu"], 4),
        "mfu_target": target,
        "target_met": None if target is None or hist["mfu"] is None else hist["mfu"] >= target,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "peak_memory_gib": _peak_memory_gib(device),
    }
    out["ok"] = all(map(_finite, losses)) and losses[-1] < losses[0]
    return out


def step_train_fp16_scaler(dry_run: bool) -> dict:
    import torch

    import lmkit.train
    from lmkit.checkpoint import load_tensors
    from lmkit.models import GPT, GPTConfig
    from lmkit.train import TrainConfig, train

    device = _device(dry_run)
    if dry_run:
        shape = dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)
        steps, batch = 10, 4
    else:  # a nanoGPT-sized model, as chapter 10's GPU preset trains
        shape = dict(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384)
        steps, batch = 60, 32
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape))
    out_dir = tempfile.mkdtemp(prefix="lmkit-gpu-check-fp16-")
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        compile=None,
        device=device,
        eval_interval=0,
        out_dir=out_dir,
        progress=False,
    )
    cfg.dtype = "float16"  # forced, as the policy chooses on a T4 (set after the config's checks)
    if dry_run:  # the CPU has no CUDA scaler: swap in torch's CPU one, so the same code path runs
        real = torch.amp.GradScaler
        lmkit.train.torch.amp.GradScaler = lambda device, **kw: real("cpu", **kw)
    try:
        hist = train(model, _synthetic_ids(shape["vocab_size"], 500_000), None, cfg)
    finally:
        if dry_run:
            lmkit.train.torch.amp.GradScaler = real
    meta = load_tensors(Path(out_dir) / "ckpt.safetensors")[1]
    shutil.rmtree(out_dir, ignore_errors=True)
    losses = hist["train_loss"]
    scale = meta.get("grad_scaler", {}).get("scale")
    return {
        "config": {**shape, "batch_size": batch, "steps": steps},
        "dtype": "float16",
        "grad_scaler_scale": scale,
        "tokens_per_s": round(hist["tokens_per_s"], 1),
        "first_step_s": round(hist["first_step_s"], 2),
        "mfu": None if hist["mfu"] is None else round(hist["mfu"], 4),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "peak_memory_gib": _peak_memory_gib(device),
        "ok": bool(scale) and all(map(_finite, losses)) and losses[-1] < losses[0],
    }


def _resume_pair(device: str, shape: dict, n: int, batch: int, dtype: str, root: Path):
    """(straight run's weights, resumed run's weights, losses equal?) for 2n steps."""
    import torch

    import lmkit.env
    import lmkit.train as lt
    from lmkit.models import GPT, GPTConfig
    from lmkit.train import TrainConfig, train

    ids = _synthetic_ids(shape["vocab_size"], 200_000)

    def cfg(out):
        return TrainConfig(
            max_steps=2 * n,
            batch_size=batch,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=2,
            dtype=dtype,
            device=device,
            eval_interval=0,
            ckpt_interval=n,
            out_dir=str(out),
            progress=False,
        )

    class Crash(Exception):
        pass

    real, calls = lt.random_batch, {"n": 0}

    def crash_after_n(*args, **kwargs):
        if calls["n"] == n:
            raise Crash
        calls["n"] += 1
        return real(*args, **kwargs)

    lmkit.env.seed_everything(0, deterministic=torch.are_deterministic_algorithms_enabled())
    lt.random_batch = crash_after_n
    try:
        train(GPT(GPTConfig(**shape)), ids, None, cfg(root / "resumed"))
    except Crash:
        pass
    finally:
        lt.random_batch = real
    torch.manual_seed(123)  # another initialisation and RNG state: the checkpoint must win
    resumed = GPT(GPTConfig(**shape))
    hist_resumed = train(resumed, ids, None, cfg(root / "resumed"))
    lmkit.env.seed_everything(0, deterministic=torch.are_deterministic_algorithms_enabled())
    straight = GPT(GPTConfig(**shape))
    hist_straight = train(straight, ids, None, cfg(root / "straight"))
    same_losses = hist_resumed["train_loss"] == hist_straight["train_loss"]
    return straight.state_dict(), resumed.state_dict(), same_losses


def step_resume_exact(dry_run: bool) -> dict:
    import torch

    import lmkit.env

    # before cuBLAS starts: its deterministic mode needs a fixed workspace (PyTorch's notes on
    # reproducibility); seed_everything(deterministic=True) sets it too, but possibly too late
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = _device(dry_run)
    n, batch = (3, 4) if dry_run else (10, 16)
    shape = dict(vocab_size=256, block_size=64 if dry_run else 256, n_layer=2, n_head=2)
    shape.update(n_embd=64 if dry_run else 256, dropout=0.1)
    root = Path(tempfile.mkdtemp(prefix="lmkit-gpu-check-resume-"))
    out = {"config": {**shape, "batch_size": batch, "steps": 2 * n}, "device": device}
    try:
        # deterministic kernels: fp32, the explicit attention, deterministic algorithms
        torch.use_deterministic_algorithms(True)
        a, b, same_losses = _resume_pair(
            device, {**shape, "attn_impl": "math"}, n, batch, "float32", root / "det"
        )
        exact = same_losses and all(torch.equal(a[k], b[k]) for k in a)
        out["deterministic"] = {"identical_losses": same_losses, "identical_weights": exact}
        # the defaults (fused attention, the policy's dtype): reported only
        torch.use_deterministic_algorithms(False)
        dtype = lmkit.env.current_policy(device).dtype
        a, b, same_losses = _resume_pair(device, shape, n, batch, dtype, root / "default")
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        out["default_kernels"] = {
            "dtype": dtype,
            "identical_losses": same_losses,
            "max_abs_weight_difference": diff,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["ok"] = exact
    return out


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


STEP_FUNCTIONS = {
    "train_bf16_compile": step_train_bf16_compile,
    "train_fp16_scaler": step_train_fp16_scaler,
    "resume_exact": step_resume_exact,
}


# --- the orchestrator -------------------------------------------------------------------------


class GpuMemorySampler:
    """Peak ``memory.used`` of GPU 0 (MiB) while a chapter runs, from ``nvidia-smi``; None
    without it (a CPU machine, a dry run)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak, self._stop = interval_s, None, threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        query = [self._smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                used = float(subprocess.run(query, capture_output=True, text=True).stdout.strip())
                self.peak = max(self.peak or 0.0, used)
            except (ValueError, OSError):
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self):
        if self._smi:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._smi:
            self._thread.join(timeout=5)


def _child_env() -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def run_step(name: str, dry_run: bool, timeout: float) -> dict:
    """One trainer step in a child process; its JSON result, or why it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--step", name, "--result", str(result_file)]
        cmd += ["--dry-run"] if dry_run else []
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, env=_child_env(), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            log = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return {"ok": False, "error": f"timed out after {timeout:.0f} s", "log": log[-2000:]}
        wall = round(time.perf_counter() - start, 1)
        if proc.returncode != 0 or not result_file.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            return {"ok": False, "wall_s": wall, "error": f"exit {proc.returncode}", "log": tail}
        return {**json.loads(result_file.read_text()), "wall_s": wall}


def run_chapter(chapter: str, timeout: float, workdir: Path) -> dict:
    """A chapter executed by papermill in the book's folder; on CUDA its preset is the GPU one."""
    notebook = ROOT / "book" / f"{chapter}.ipynb"
    cmd = [sys.executable, str(ROOT / "tests" / "papermill_run.py"), str(notebook)]
    cmd += [str(workdir / f"{chapter}.ipynb"), "--kernel", "python3", "--cwd", str(ROOT / "book")]
    cmd += ["--execution-timeout", str(int(timeout)), "--no-progress-bar", "--log-level", "WARNING"]
    start = time.perf_counter()
    with GpuMemorySampler() as memory:
        try:
            proc = subprocess.run(
                cmd, env=_child_env(), capture_output=True, text=True, timeout=timeout
            )
            result = "passed" if proc.returncode == 0 else "failed"
            log = (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            result, log = "timeout", ""
    out = {"result": result, "wall_s": round(time.perf_counter() - start, 1)}
    out["peak_gpu_mib"] = memory.peak
    if result != "passed":
        out["log"] = log
    return out


def machine(dry_run: bool) -> dict:
    import torch

    import lmkit.env

    policy = lmkit.env.current_policy("cpu" if dry_run else None)
    info = {
        "gpu": policy.name if policy.kind == "cuda" else "none",
        "policy": {**asdict(policy), "summary": policy.describe()},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    info["commit"] = commit or None
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny")
    parser.add_argument("--out-dir", default=None, help="where the JSON goes (see above)")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--chapters", nargs="+", default=list(CHAPTERS), metavar="CHAPTER")
    parser.add_argument(
        "--jobs", type=int, default=None, help="chapters run at once (default 1; dry run 2)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="steps not started by then are skipped"
    )
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)  # set by the .sh
    parser.add_argument("--step", choices=list(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.step:  # a child process: one step, its result as JSON
        result = STEP_FUNCTIONS[args.step](args.dry_run)
        Path(args.result).write_text(json.dumps(result, indent=1))
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    default_out = ROOT / ("_build/gpu_check" if args.dry_run else "book/data/bench")
    out_dir = Path(args.out_dir) if args.out_dir else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    info = machine(args.dry_run)
    label = "dry-run" if args.dry_run else _slug(info["gpu"])
    path = out_dir / f"gpu_check_{now:%Y%m%d-%H%M%S}_{label}.json"
    command = args.command or "python scripts/gpu_check.py " + shlex.join(argv or sys.argv[1:])
    report = {
        "kind": "lmkit gpu check",
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command.strip(),
        "dry_run": args.dry_run,
        **info,
        "steps": {},
    }
    start = time.perf_counter()

    def write():
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        report["ok"] = all(_step_ok(s) for s in report["steps"].values())
        path.write_text(json.dumps(report, indent=1) + "\n")

    for name in args.only:
        if time.perf_counter() - start > args.budget_s:
            report["steps"][name] = {"ok": False, "error": f"skipped: over {args.budget_s} s"}
            write()
            continue
        print(f"gpu_check: {name} ...", flush=True)
        if name == "chapters":
            # one at a time on a GPU (each chapter's memory is its own); two at once on the CPU
            jobs = args.jobs or (2 if args.dry_run else 1)
            with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
                runs = [
                    pool.submit(
                        run_chapter, ch, CHAPTER_TIMEOUTS.get(ch, CHAPTER_TIMEOUT), Path(tmp)
                    )
                    for ch in args.chapters
                ]
                report["steps"]["chapters"] = {
                    ch: run.result() for ch, run in zip(args.chapters, runs)
                }
        else:
            report["steps"][name] = run_step(name, args.dry_run, TIMEOUTS[name])
        print(f"gpu_check: {name}: {_summary(report['steps'][name])}", flush=True)
        write()  # after every step: a later hang still leaves the figures so far
    print(f"gpu_check: {'OK' if report['ok'] else 'FAILED'} in {report['elapsed_s']} s -> {path}")
    return 0 if report["ok"] else 1


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "gpu"


def _step_ok(step: dict) -> bool:
    if "ok" in step:
        return bool(step["ok"])
    return all(ch.get("result") == "passed" for ch in step.values())  # the chapters


def _summary(step: dict) -> str:
    if "ok" not in step:
        return ", ".join(f"{ch} {r['result']} {r['wall_s']} s" for ch, r in step.items())
    keys = ("ok", "error", "tokens_per_s", "mfu", "target_met", "deterministic", "wall_s")
    return ", ".join(f"{k} {step[k]}" for k in keys if k in step)


if __name__ == "__main__":
    sys.exit(main())
