"""The HTML book builds with no warnings, offline, and a failing cell fails a build.

The main build (fixture ``built_book`` in conftest.py) runs with execution off: papermill and
nbval execute every notebook earlier in the same CI run. The second test proves, on a tiny book
with the project's own execute settings, that a notebook whose cell raises fails the build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from book_toc import HTML, config, toc_docnames

pytestmark = pytest.mark.slow

CDN_HOSTS = (
    "cdn.jsdelivr.net",
    "cdnjs.cloudflare.com",
    "unpkg.com",
    "polyfill.io",
    "fonts.googleapis.com",
    "mathjax.org",
)


def test_book_builds(built_book):
    rc, log = built_book
    assert rc == 0, f"jupyter-book build -W -n --keep-going failed:\n{log[-8000:]}"
    assert (HTML / "index.html").exists()
    for docname in toc_docnames():
        assert (HTML / f"{docname}.html").exists(), f"{docname} was not built"


def test_pages_load_scripts_only_from_the_book(book_html):
    """No page pulls a script or stylesheet from a CDN (the browser test checks requests too)."""
    tag = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=\"([^\"]+)\"")
    for docname in toc_docnames():
        html = (book_html / f"{docname}.html").read_text(encoding="utf-8")
        remote = [u for u in tag.findall(html) if u.startswith(("http:", "https:", "//"))]
        assert not remote, f"{docname} loads {remote}"
        assert not any(host in u for u in tag.findall(html) for host in CDN_HOSTS)
    mathjax = book_html / "_static" / config()["sphinx"]["config"]["mathjax_path"]
    assert mathjax.exists(), f"{mathjax} missing: scripts/fetch_static.py did not run"


def _notebook(source: str) -> dict:
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# A tiny chapter"},
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": source,
            },
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _tiny_book(path: Path, cell: str) -> Path:
    """A one-notebook book with the project's execute section (outputs not committed)."""
    path.mkdir()
    project = config()
    cfg = {"title": "tiny", "only_build_toc_files": True, "execute": project["execute"]}
    (path / "_config.yml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n", encoding="utf-8"
    )
    (path / "intro.md").write_text("# Tiny\n\nA test book.\n", encoding="utf-8")
    (path / "chapter.ipynb").write_text(json.dumps(_notebook(cell)), encoding="utf-8")
    return path


def _build(book: Path) -> subprocess.CompletedProcess:
    jb = str(Path(sys.executable).with_name("jupyter-book"))
    return subprocess.run(
        [jb, "build", str(book), "-W", "-n", "--keep-going"],
        cwd=book,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_project_executes_notebooks_and_fails_on_errors():
    execute = config()["execute"]
    assert execute["raise_on_error"] is True
    assert execute["allow_errors"] is False
    assert execute["execute_notebooks"] in ("cache", "force", "auto")
    assert execute["timeout"] >= 60


@pytest.mark.parametrize(
    "cell,should_pass",
    [
        ("print(6 * 7)", True),
        ("raise RuntimeError('this cell fails on purpose')", False),
    ],
    ids=["passing-cell", "failing-cell"],
)
def test_failing_cell_fails_the_build(tmp_path, cell, should_pass):
    proc = _build(_tiny_book(tmp_path / "tiny", cell))
    log = proc.stdout + proc.stderr
    if should_pass:
        assert proc.returncode == 0, log[-4000:]
        html = (tmp_path / "tiny" / "_build" / "html" / "chapter.html").read_text()
        assert "42" in html
    else:
        assert proc.returncode != 0, f"a failing cell did not fail the build:\n{log[-4000:]}"
        assert "this cell fails on purpose" in log or "RuntimeError" in log, log[-4000:]
