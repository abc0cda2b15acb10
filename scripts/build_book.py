#!/usr/bin/env python3
"""Build the HTML book into _build/html (run from the project's virtual environment).

    python scripts/build_book.py               # execute notebooks as _config.yml says (cache)
    python scripts/build_book.py --no-execute  # show the committed outputs (CI: papermill has
                                               # executed every notebook already)

Fetches the offline JavaScript first (scripts/fetch_static.py), then runs
``jupyter-book build . -W -n --keep-going``: any warning fails the build, and with
``execute.raise_on_error`` so does any failing cell.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-execute",
        action="store_true",
        help="build with execute_notebooks: off (outputs as committed)",
    )
    parser.add_argument("--all", action="store_true", help="rebuild every page (sphinx -a)")
    args = parser.parse_args()

    subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_static.py")], check=True)
    cmd = [  # jupyter-book, with nbclient's lost-wake-up fix installed (scripts/nbclient_fix.py)
        sys.executable,
        str(ROOT / "scripts" / "nbclient_fix.py"),
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(ROOT),
        "-W",
        "-n",
        "--keep-going",
    ]
    if args.all:
        cmd.append("--all")
    if args.no_execute:
        cfg = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
        cfg.setdefault("execute", {})["execute_notebooks"] = "off"
        # Jupyter Book resolves local_extensions paths against the config file's folder.
        local = cfg.get("sphinx", {}).get("local_extensions") or {}
        for name, path in local.items():
            local[name] = str((ROOT / path).resolve())
        BUILD.mkdir(exist_ok=True)
        tmp = BUILD / "_config.no-execute.yml"
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        cmd += ["--config", str(tmp)]
    print("build_book:", " ".join(cmd), flush=True)
    # Chapters run offline by default; without these a stray hub call waits ~50 s to fail.
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **os.environ,
    }
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    index = BUILD / "html" / "index.html"
    if rc == 0 and not index.exists():
        print(f"build_book: {index} is missing", file=sys.stderr)
        rc = 1
    if rc == 0:
        print(f"build_book: open {index}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
