"""Named mutants: plausible bugs planted one at a time in a copy of lmkit; the tests must fail.

The full mutation run (`make mutate`, mutmut, docs/mutation.md) takes hours on two cores, so CI
runs this fixed set instead: one bug per core concept, each the kind a refactoring introduces.
A mutant whose original line is gone fails here too ("no longer applies"): update the mutant to
the new code rather than deleting it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# name: (file, original text, mutated text, the test files that must catch it)
MUTANTS = {
    "top-p drops the token that crosses the threshold": (
        "lmkit/sampling.py",
        "drop = probs.cumsum(-1) - probs >= top_p",
        "drop = probs.cumsum(-1) >= top_p",
        ["tests/test_sampling_exact.py"],
    ),
    "Adam without bias correction of the first moment": (
        "lmkit/optim.py",
        "m_hat = m / (1 - b1**t)",
        "m_hat = m",
        ["tests/test_optim.py"],
    ),
    "warmup reaches the peak rate one step late": (
        "lmkit/train.py",
        "return cfg.lr * (step + 1) / cfg.warmup_steps",
        "return cfg.lr * step / cfg.warmup_steps",
        ["tests/test_train.py", "tests/test_train_behaviour.py"],
    ),
    "attention scaled by 1/d_k instead of 1/sqrt(d_k)": (
        "lmkit/nn.py",
        "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)",
        "scores = q @ k.transpose(-2, -1) / d_k",
        ["tests/test_model.py", "tests/test_nn.py"],
    ),
    "the KV cache never advances": (
        "lmkit/models/gpt.py",
        "cache.advance(T)",
        "cache.advance(0)",
        ["tests/test_generate.py", "tests/test_decode_step.py"],
    ),
    "absmax uses 2^(b-1) levels, one too many for a symmetric grid": (
        "lmkit/quant/core.py",
        "qmax = 2 ** (bits - 1) - 1",
        "qmax = 2 ** (bits - 1)",
        ["tests/test_quant.py"],
    ),
    "checkpoints written in place, not through a temporary file": (
        "lmkit/checkpoint.py",
        "os.replace(tmp, path)",
        '__import__("shutil").copyfile(tmp, path)',
        ["tests/test_checkpoint.py"],
    ),
    "the context window restarts from one token too few": (
        "lmkit/generate.py",
        "start = idx.size(1) - window // 2\n",
        "start = idx.size(1) - window // 2 + 1\n",
        ["tests/test_generate.py", "tests/test_sampling_exact.py"],
    ),
}


def plant(tmp_path: Path, file: str, original: str, mutated: str) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "lmkit", copy / "lmkit", ignore=shutil.ignore_patterns("__pycache__", "checkpoints")
    )
    (copy / "lmkit" / "checkpoints").symlink_to(ROOT / "lmkit" / "checkpoints")
    target = copy / file
    text = target.read_text()
    assert original in text, f"mutant no longer applies: {original!r} is not in {file}"
    target.write_text(text.replace(original, mutated))
    return copy


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_tests_catch_the_mutant(tmp_path, name):
    file, original, mutated, test_files = MUTANTS[name]
    test_files = [t for t in test_files if (ROOT / t).exists()]
    assert test_files, f"{name}: none of its test files exists"
    copy = plant(tmp_path, file, original, mutated)
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    # -P: the mutated copy, not the checkout in the working directory, is what `import lmkit` finds
    run = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            *[str(ROOT / t) for t in test_files],
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 1, (
        f"the mutant {name!r} survived: {' '.join(test_files)} passed with it "
        f"(exit {run.returncode})\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    )
    assert "failed" in run.stdout, run.stdout[-2000:]


def test_the_unmutated_copy_passes(tmp_path):
    """The control: the same copy without a mutant passes the same tests, so a failure above is
    the mutant's doing and not the copy's."""
    copy = plant(tmp_path, "lmkit/sampling.py", "", "")
    files = ["tests/test_sampling_exact.py", "tests/test_optim.py"]
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-P", "-c", "import lmkit, sys; print(lmkit.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip().startswith(str(copy)), run.stdout + run.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *[str(ROOT / t) for t in files],
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:]
