"""Shared pytest set-up: every test runs offline; the book tests share one build of the book."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, browser_missing_reason

# Without these a Hugging Face hub call takes ~50 s to fail on a machine without internet; with
# them it fails at once (or uses the local cache). Kernels started by the tests inherit them.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Do not set MPLBACKEND=Agg here: kernels inherit it and executed notebooks then lose every figure.

ROOT = Path(__file__).resolve().parents[1]

# Hypothesis (the fuzzing tests of lmkit.serve, and schemathesis, which runs on it): replayable.
# "ci", the default, is derandomized: the examples are a function of the test's source, so a failure
# recurs on every run and prints a @reproduce_failure blob. (derandomize=True implies database=None
# in Hypothesis.) "dev" (HYPOTHESIS_PROFILE=dev or --hypothesis-profile=dev) explores new random
# examples and keeps failing ones in .hypothesis/examples (git-ignored), where the next run replays
# them first. Neither has a per-example deadline: on a loaded CI machine timings say nothing.
try:
    from hypothesis import settings as _hypothesis_settings
    from hypothesis.database import DirectoryBasedExampleDatabase
except ImportError:  # hypothesis is a test extra; tests that need it skip
    pass
else:
    _hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    _hypothesis_settings.register_profile(
        "dev",
        derandomize=False,
        deadline=None,
        print_blob=True,
        database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"),
    )
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def built_book():
    """Build the HTML book once per test run with execution off; return (returncode, log).

    The notebooks show their committed outputs, which papermill has just checked (CI
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
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build_book.py"), "--no-execute"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
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


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/chromium.py): skipped without it, failed with
    LMKIT_REQUIRE_BROWSER=1."""
    reason = browser_missing_reason()
    if reason:
        if os.environ.get("LMKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()
