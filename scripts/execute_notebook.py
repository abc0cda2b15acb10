#!/usr/bin/env python3
"""Execute notebooks in place, top to bottom, the way the book commits them (`make execute`).

    python scripts/execute_notebook.py book/ch04_self_attention.ipynb [more.ipynb ...]

Each notebook runs offline (HF_*_OFFLINE=1) in a fresh ``python3`` kernel whose working
directory is the notebook's folder; the kernelspec is set to python3 where it is missing, widget
state is saved (the HTML book renders widgets from it), and no per-cell timing metadata is
written. A notebook whose cell fails is not overwritten: the partial run goes to
_build/failed/<name>.ipynb and the script exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbclient_fix import install as install_nbclient_fix

install_nbclient_fix()

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: Path, timeout: int = 600) -> bool:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {
        **KERNELSPEC,
        **nb.metadata.get("kernelspec", {}),
        "name": "python3",
    }
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = ROOT / "_build" / "failed" / path.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, failed)
        print(f"{path}: FAILED (partial run in {failed.relative_to(ROOT)})\n{exc}", file=sys.stderr)
        return False
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.perf_counter() - start:.1f} s")
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    ok = [execute(Path(arg).resolve()) for arg in argv]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
