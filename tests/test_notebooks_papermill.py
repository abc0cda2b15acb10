"""Run every notebook of the table of contents with papermill, offline, and measure it.

Each notebook runs at its default parameters in a fresh ``python3`` kernel whose working
directory is the notebook's folder, with a time limit for the whole notebook
(``LMKIT_NOTEBOOK_TIMEOUT``, seconds). Wall time and the peak memory of the kernel's process tree
are recorded on the book's status page (tests/notebook_status.py). The executed copies are kept
in ``_build/papermill/`` for inspection, and their checked cells (``# NBVAL_CHECK_OUTPUT``) must
print what the committed notebook shows (tests/notebook_outputs.py): this one execution both runs
and re-derives every notebook.

papermill runs through tests/papermill_run.py, which tells a cell timeout's two causes apart. Only
the lost-reply stall of jupyter/nbclient#312 (the kernel idle, its reply lost) earns one retry; the
retry is printed and shown on the status page, and a notebook that stalls again, in the retry or
in the previous recorded run, fails. A cell still executing at its timeout fails at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import notebook_outputs
import notebook_status
import psutil
import pytest
from book_toc import ROOT, notebook_id, toc_notebooks
from papermill_run import BUSY, STALL

NOTEBOOK_TIMEOUT = float(os.environ.get("LMKIT_NOTEBOOK_TIMEOUT", "600"))
# No cell of the book needs this long on a CPU (tests/papermill_run.py says why one ran past it).
CELL_TIMEOUT = float(os.environ.get("LMKIT_CELL_TIMEOUT", "300"))
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
        self.seen: set[int] = set()  # every descendant pid observed
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            total = 0
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            self.seen.update(child.pid for child in children)
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
    """Kill papermill and everything under it (Jupyter starts kernels in their own session)."""
    try:
        parent = psutil.Process(proc.pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@dataclass
class Run:
    result: str  # passed, failed or timeout
    wall_s: float
    peak_mib: float | None
    log: str
    pids: frozenset = frozenset()  # processes started under papermill (kernel and children)

    @property
    def stalled(self) -> bool:
        """A cell timed out with the kernel idle and its reply lost (jupyter/nbclient#312)."""
        return STALL in self.log


def run_papermill(
    notebook: Path,
    output: Path,
    timeout: float,
    cell_timeout: float = CELL_TIMEOUT,
    env: dict | None = None,
) -> Run:
    """Execute ``notebook`` with papermill (offline, python3 kernel, cwd = its folder)."""
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("papermill_run.py")),
        str(notebook),
        str(output),
        "--kernel",
        "python3",
        "--cwd",
        str(notebook.parent),
        "--execution-timeout",
        str(int(min(cell_timeout, timeout))),
        "--no-progress-bar",
        "--log-level",
        "WARNING",
    ]
    env = {
        **os.environ,
        **(env or {}),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    monitor = TreeMemoryMonitor(proc.pid)
    monitor.start()
    try:
        log, _ = proc.communicate(timeout=timeout)
        result = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        peak = monitor.stop()
        _kill_tree(proc)
        log, _ = proc.communicate()
        return Run("timeout", time.perf_counter() - start, peak, log, frozenset(monitor.seen))
    peak = monitor.stop()
    return Run(result, time.perf_counter() - start, peak, log, frozenset(monitor.seen))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", toc_notebooks(), ids=notebook_id)
def test_notebook_runs(notebook: Path):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    docname = str(notebook.relative_to(ROOT).with_suffix(""))
    stalled_before = notebook_status.load()["notebooks"].get(docname, {}).get("retries", 0) > 0
    run = run_papermill(notebook, OUT_DIR / notebook.name, NOTEBOOK_TIMEOUT)
    retries = 0
    if run.stalled and not stalled_before:
        # a warning, so the retry shows in pytest's summary of a passing run too
        warnings.warn(
            f"{notebook.name}: RETRY: a cell stalled (kernel idle, execute_reply lost, "
            f"jupyter/nbclient#312) after {run.wall_s:.0f} s; running the notebook once more",
            stacklevel=1,
        )
        retries = 1
        first_log = run.log
        run = run_papermill(notebook, OUT_DIR / notebook.name, NOTEBOOK_TIMEOUT)
    entry = notebook_status.record(
        notebook, wall_s=run.wall_s, peak_mib=run.peak_mib, result=run.result, retries=retries
    )
    print(
        f"{notebook.name}: {run.result}, {entry['wall_s']} s, peak {entry['peak_mib']} MiB"
        + (", after 1 retry" if retries else "")
    )
    assert not (run.stalled and stalled_before), (
        f"{notebook.name} stalled (jupyter/nbclient#312) in this run and in the previous recorded "
        "one (book/status.json): a stall that repeats is a bug to fix, not to retry\n"
        f"{run.log[-4000:]}"
    )
    assert not (run.stalled and retries), (
        f"{notebook.name} stalled twice in a row (jupyter/nbclient#312)\n"
        f"first run:\n{first_log[-2000:]}\nretry:\n{run.log[-2000:]}"
    )
    assert BUSY not in run.log, (
        f"{notebook.name}: a cell was still executing after {CELL_TIMEOUT:.0f} s "
        f"(LMKIT_CELL_TIMEOUT)\n{run.log[-4000:]}"
    )
    assert run.result != "timeout", (
        f"{notebook.name} did not finish in {NOTEBOOK_TIMEOUT:.0f} s "
        f"(LMKIT_NOTEBOOK_TIMEOUT); its defaults must run in about a minute\n{run.log[-4000:]}"
    )
    assert run.result == "passed", f"{notebook.name} failed under papermill:\n{run.log[-8000:]}"
    changed = notebook_outputs.differences(
        json.loads(notebook.read_text()), json.loads((OUT_DIR / notebook.name).read_text())
    )
    assert not changed, (
        f"{notebook.name}: {len(changed)} checked cell(s) (# NBVAL_CHECK_OUTPUT) print something "
        "else than the committed notebook: re-read the text beside them, then re-execute it "
        "(make execute NB=...)\n" + "\n".join(changed)[-8000:]
    )


# --- the measuring machinery itself, on tiny notebooks -------------------------------------


def _tiny_notebook(path: Path, *sources: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_papermill_measures_memory_and_uses_the_notebook_folder(tmp_path):
    nb = _tiny_notebook(
        tmp_path / "probe.ipynb",
        "MB = 300",
        "import os, numpy as np\n"
        f"assert os.getcwd() == {str(tmp_path)!r}\n"
        "block = np.ones(MB * 2**20 // 8)",
    )
    run = run_papermill(nb, tmp_path / "out.ipynb", timeout=300)
    assert run.result == "passed", run.log
    assert run.peak_mib is not None and run.peak_mib >= 300, run.peak_mib


@pytest.mark.slow
def test_papermill_timeout_kills_the_kernel(tmp_path):
    nb = _tiny_notebook(
        tmp_path / "slow.ipynb", "SECONDS = 600", "import time; time.sleep(SECONDS)"
    )
    run = run_papermill(nb, tmp_path / "out.ipynb", timeout=60)  # papermill + kernel start first
    assert run.result == "timeout"
    assert run.pids, "the monitor saw no kernel"
    alive = []
    for pid in run.pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"processes left running after the timeout: {alive}"


@pytest.mark.slow
def test_cell_timeouts_are_diagnosed(tmp_path):
    """A lost reply is a STALL (retried); a cell still running is BUSY (never retried)."""
    nb = _tiny_notebook(tmp_path / "stall.ipynb", "X = 1", "# drop-this-reply\nY = X + 1")
    run = run_papermill(
        nb,
        tmp_path / "out.ipynb",
        timeout=120,
        cell_timeout=5,
        env={"LMKIT_PAPERMILL_DROP_REPLY": "# drop-this-reply"},
    )
    assert run.result == "failed" and run.stalled and BUSY not in run.log, run.log[-3000:]
    nb = _tiny_notebook(tmp_path / "busy.ipynb", "SECONDS = 60", "import time; time.sleep(SECONDS)")
    run = run_papermill(nb, tmp_path / "out.ipynb", timeout=120, cell_timeout=5)
    assert run.result == "failed" and BUSY in run.log and not run.stalled, run.log[-3000:]


def _cell(source, *outputs):
    return {"cell_type": "code", "source": source, "outputs": list(outputs), "metadata": {}}


def _stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def test_checked_outputs_are_compared_and_noise_is_not():
    def nb(*cells):
        return {"cells": list(cells)}

    checked = "# NBVAL_CHECK_OUTPUT\nprint(x)"
    png = {"output_type": "display_data", "data": {"image/png": "AAA", "text/plain": "<Figure>"}}
    ref = nb(
        _cell(checked, _stream("stdout", "loss 1.23\n"), _stream("stderr", "warn A"), png),
        _cell("print(t)", _stream("stdout", "12.3 s\n")),
    )
    noise = nb(
        _cell(
            checked,
            _stream("stdout", "loss "),
            _stream("stdout", "1.23\n"),
            _stream("stderr", "warn B"),
            {**png, "data": {"image/png": "BBB", "text/plain": "<Figure>"}},
        ),
        _cell("print(t)", _stream("stdout", "99.9 s\n")),  # not checked: timings may change
    )
    assert notebook_outputs.differences(ref, noise) == []
    changed = nb(_cell(checked, _stream("stdout", "loss 1.24\n"), png), ref["cells"][1])
    (message,) = notebook_outputs.differences(ref, changed)
    assert "cell 0 (stdout)" in message and "-loss 1.23" in message and "+loss 1.24" in message
    silent = nb(_cell(checked, png), ref["cells"][1])  # the checked print vanished
    assert len(notebook_outputs.differences(ref, silent)) == 1
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    failed = nb(_cell(checked, _stream("stdout", "loss 1.23\n"), png, error), ref["cells"][1])
    assert "ValueError: bad" in notebook_outputs.differences(ref, failed)[0]
    assert notebook_outputs.differences(ref, nb(ref["cells"][0]))  # a cell went missing
