"""Shared pytest set-up: every test runs offline; the book tests share one build of the book."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Without these a Hugging Face hub call takes ~50 s to fail on a machine without internet; with
# them it fails at once (or uses the local cache). Kernels started by the tests inherit them.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Do not set MPLBACKEND=Agg here: kernels inherit it and executed notebooks then lose every figure.

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def built_book():
    """Build the HTML book once per test run with execution off; return (returncode, log).

    The notebooks show their committed outputs, which papermill and nbval have just checked (CI
    runs them first; see scripts/test.sh). The build itself must pass with ``-W -n --keep-going``.
    A lock and the xdist run id keep parallel workers from building twice at once.
    """
    build = ROOT / "_build"
    build.mkdir(exist_ok=True)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid{os.getpid()}")
    stamp = build / "test-build.stamp"
    log_path = build / "test-build.log"
    with open(build / "test-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            previous_run, _, rc = stamp.read_text().partition(" ")
            if previous_run == run_id:
                return int(rc), log_path.read_text(encoding="utf-8", errors="replace")
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"),
                               "--no-execute"], cwd=ROOT, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        log_path.write_text(log, encoding="utf-8")
        stamp.write_text(f"{run_id} {proc.returncode}")
        return proc.returncode, log


@pytest.fixture(scope="session")
def book_html(built_book):
    """The built book's folder; fails the test where the build failed."""
    rc, log = built_book
    if rc != 0:
        pytest.fail(f"the book build failed (rc={rc}); see _build/test-build.log:\n{log[-6000:]}")
    return ROOT / "_build" / "html"
