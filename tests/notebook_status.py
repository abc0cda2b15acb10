"""The execution status page: per chapter, run time and peak memory of the last papermill run.

``tests/test_notebooks_papermill.py`` calls :func:`record` after each notebook; the records live
in ``book/status.json`` and :func:`render` turns them into ``book/status.md`` (a page of the book).
Both files are committed, so the published book shows the last recorded run; CI rewrites them
before it builds the book. ``python tests/notebook_status.py`` re-renders the page from the JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

try:
    from book_toc import BOOK, ROOT, read_notebook, source_of, toc_docnames
except ImportError:  # imported as tests.notebook_status
    from tests.book_toc import BOOK, ROOT, read_notebook, source_of, toc_docnames

STATUS_JSON = BOOK / "status.json"
STATUS_MD = BOOK / "status.md"
BUDGET_S = 60  # DESIGN.md: every notebook at its default parameters in under a minute on CI

HEADER = """\
# Execution status

Every chapter of this book is executed in continuous integration, on a machine with 2 CPU cores
and no GPU, at its default parameters, by [papermill](https://papermill.readthedocs.io), which
measures it and compares the numbers that the cells marked to be checked re-compute with the
committed ones. The table shows, for each chapter, the wall time of the whole notebook and the
peak memory (resident set size) of the kernel and any processes it started, from the last
recorded run. Notebooks run two at a time, so times include some contention. A chapter over its
one-minute budget is marked with a warning sign. A chapter that passed only on a second run,
after its first run stalled (a cell's reply lost while the kernel sat idle,
jupyter/nbclient#312), says so; if it stalls in two recorded runs in a row, the test fails.

This page is written by `tests/test_notebooks_papermill.py`; do not edit it by hand.
"""


def title_of(path: Path) -> str:
    """The first markdown heading of a notebook (or markdown page)."""
    if path.suffix == ".ipynb":
        cells = read_notebook(path).get("cells", [])
        lines = [
            line
            for c in cells
            if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines()
        ]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def machine() -> dict:
    info = {
        "system": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": "none",
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


@contextmanager
def _locked():
    """Serialize writers: pytest-xdist runs several notebooks at once."""
    lock_path = ROOT / "_build" / "status.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load() -> dict:
    if STATUS_JSON.exists():
        return json.loads(STATUS_JSON.read_text(encoding="utf-8"))
    return {"notebooks": {}}


def record(
    notebook: Path, *, wall_s: float, peak_mib: float | None, result: str, retries: int = 0
) -> dict:
    """Store one run (``result``: passed, failed or timeout) and re-render the page.

    ``retries``: 1 when the run shown is a second run, after the first stalled with the kernel idle
    (jupyter/nbclient#312; tests/papermill_run.py).
    """
    entry = {
        "title": title_of(notebook),
        "result": result,
        "retries": retries,
        "wall_s": round(wall_s, 1),
        "peak_mib": None if peak_mib is None else round(peak_mib),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    with _locked():
        data = load()
        data["notebooks"][str(notebook.relative_to(ROOT).with_suffix(""))] = entry
        STATUS_JSON.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        STATUS_MD.write_text(render(data), encoding="utf-8")
    return entry


def _machine_text(m: dict) -> str:
    gpu = "no GPU" if m.get("gpu", "none") == "none" else m["gpu"]
    return f"{m.get('cpus')} CPUs, {gpu}, torch {m.get('torch', '?')}"


def render(data: dict) -> str:
    """The status page (MyST markdown) for the notebooks of the table of contents."""
    rows = []
    total = 0.0
    for docname in toc_docnames():
        path = source_of(docname)
        if path is None or path.suffix != ".ipynb":
            continue
        entry = data["notebooks"].get(docname)
        link = f"{{doc}}`{Path(docname).name}`"
        if entry is None:
            rows.append(f"| {link} | not run yet | | | |")
            continue
        over = entry["result"] == "passed" and entry["wall_s"] > BUDGET_S
        result = entry["result"] + (" ⚠ over budget" if over else "")
        if entry.get("retries"):
            result += " (after a retry: the first run stalled, jupyter/nbclient#312)"
        peak = "" if entry["peak_mib"] is None else f"{entry['peak_mib']:,}"
        rows.append(
            f"| {link} | {result} | {entry['wall_s']:.1f} | {peak} | "
            f"{entry['date']}; {_machine_text(entry['machine'])} |"
        )
        total += entry["wall_s"]
    table = [
        "| Chapter | Result | Run time (s) | Peak memory (MiB) | Recorded |",
        "|---|---|--:|--:|---|",
        *rows,
    ]
    return (
        HEADER
        + "\n"
        + "\n".join(table)
        + "\n\n"
        + f"Total run time of the notebooks above: {total:.0f} s.\n"
    )


if __name__ == "__main__":
    STATUS_MD.write_text(render(load()), encoding="utf-8")
    print(f"wrote {STATUS_MD.relative_to(ROOT)}")
