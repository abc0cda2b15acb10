"""Run every notebook of the table of contents with papermill, offline, and measure it.

Each notebook runs at its default parameters in a fresh ``python3`` kernel whose working
directory is the notebook's folder, with a time limit for the whole notebook
(``LMKIT_NOTEBOOK_TIMEOUT``, seconds). Wall time and the peak memory of the kernel's process tree
are recorded on the book's status page (tests/notebook_status.py). The executed copies are kept
in ``_build/papermill/`` for inspection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from book_toc import ROOT, notebook_id, toc_notebooks
import notebook_status

NOTEBOOK_TIMEOUT = float(os.environ.get("LMKIT_NOTEBOOK_TIMEOUT", "300"))
OUT_DIR = ROOT / "_build" / "papermill"


def _hwm_bytes(proc: psutil.Process) -> int:
    """Peak resident set size of one process (Linux: VmHWM), else its current RSS."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return proc.memory_info().rss


class TreeMemoryMonitor(threading.Thread):
    """Samples the memory of every descendant of ``pid`` (the kernel and what it starts).

    At each sample it sums the peak RSS of the live descendants, and keeps the largest sum.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            total = 0
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for child in children:
                try:
                    total += _hwm_bytes(child)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._stop_event.wait(self.interval)

    def stop(self) -> float | None:
        self._stop_event.set()
        self.join()
        return self.peak / 2**20 if self.peak else None


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("notebook", toc_notebooks(), ids=notebook_id)
def test_notebook_runs(notebook: Path):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    output = OUT_DIR / notebook.name
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(output),
           "--kernel", "python3", "--cwd", str(notebook.parent),
           "--execution-timeout", str(int(NOTEBOOK_TIMEOUT)),
           "--no-progress-bar", "--log-level", "WARNING"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    monitor = TreeMemoryMonitor(proc.pid)
    monitor.start()
    try:
        log, _ = proc.communicate(timeout=NOTEBOOK_TIMEOUT)
        result = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        log, _ = proc.communicate()
        result = "timeout"
    wall = time.perf_counter() - start
    peak = monitor.stop()
    entry = notebook_status.record(notebook, wall_s=wall, peak_mib=peak, result=result)
    print(f"{notebook.name}: {result}, {entry['wall_s']} s, peak {entry['peak_mib']} MiB")

    assert result != "timeout", (
        f"{notebook.name} did not finish in {NOTEBOOK_TIMEOUT:.0f} s "
        f"(LMKIT_NOTEBOOK_TIMEOUT); its defaults must run in about a minute\n{log[-4000:]}")
    assert result == "passed", f"{notebook.name} failed under papermill:\n{log[-8000:]}"
