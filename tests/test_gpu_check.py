"""scripts/gpu_check.sh, the one-shot GPU check (issue 14), as far as a CPU can run it: --dry-run
takes every step on the CPU with tiny sizes and writes the same JSON a GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402  (a script, imported from its folder)


def _run(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _the_json(folder: Path) -> dict:
    files = sorted(folder.glob("gpu_check_*.json"))
    assert len(files) == 1, files  # one file per run
    assert files[0].name.endswith("_dry-run.json")
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_its_json(tmp_path):
    proc = _run("--dry-run", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _the_json(tmp_path)
    assert report["ok"] is True and report["dry_run"] is True
    assert report["command"] == f"bash scripts/gpu_check.sh --dry-run --out-dir {tmp_path}"
    assert report["date"].endswith("UTC") and report["gpu"] == "none"
    assert report["policy"]["kind"] == "cpu" and report["policy"]["dtype"] == "float32"
    assert list(report["steps"]) == list(gpu_check.STEPS)

    bench = report["steps"]["train_bf16_compile"]
    assert bench["ok"] and bench["tokens_per_s"] > 0 and bench["first_step_s"] > 0
    assert bench["mfu"] is None and bench["target_met"] is None  # a CPU has no listed peak
    assert bench["loss_first_last"][1] < bench["loss_first_last"][0]

    fp16 = report["steps"]["train_fp16_scaler"]
    assert fp16["ok"] and fp16["dtype"] == "float16" and fp16["grad_scaler_scale"] > 0

    resume = report["steps"]["resume_exact"]
    assert resume["ok"] and resume["deterministic"] == {
        "identical_losses": True,
        "identical_weights": True,
    }
    assert "max_abs_weight_difference" in resume["default_kernels"]

    chapters = report["steps"]["chapters"]
    assert list(chapters) == list(gpu_check.CHAPTERS)
    assert all(run["result"] == "passed" and run["wall_s"] > 0 for run in chapters.values())
    assert report["elapsed_s"] < 300


def test_a_failing_step_fails_the_run_and_is_recorded(tmp_path):
    proc = _run("--dry-run", "--out-dir", str(tmp_path), "--only", "chapters", "--chapters", "nope")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = _the_json(tmp_path)
    assert report["ok"] is False
    assert report["steps"]["chapters"]["nope"]["result"] == "failed"
    assert report["steps"]["chapters"]["nope"]["log"]


def test_a_step_past_the_budget_is_skipped_and_fails_the_run(tmp_path):
    proc = _run(
        "--dry-run", "--out-dir", str(tmp_path), "--only", "resume_exact", "--budget-s", "0"
    )
    assert proc.returncode == 1
    report = _the_json(tmp_path)
    assert report["steps"]["resume_exact"] == {"ok": False, "error": "skipped: over 0.0 s"}


def test_without_a_gpu_and_without_dry_run_it_refuses(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_step_verdicts():
    assert gpu_check._step_ok({"ok": True}) and not gpu_check._step_ok({"ok": False})
    chapters = {"a": {"result": "passed"}, "b": {"result": "timeout"}}
    assert not gpu_check._step_ok(chapters)
    assert gpu_check._step_ok({"a": {"result": "passed"}})
    assert gpu_check._slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
