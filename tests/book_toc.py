"""What the book consists of, read from _config.yml and _toc.yml (shared by the book's tests).

Every book test loops over these lists, so a chapter added to _toc.yml is executed, checked,
built and opened in the browser with no change to the tests.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = ROOT / "_build" / "html"
SUFFIXES = (".ipynb", ".md")


@functools.cache
def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


@functools.cache
def toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))


def repository_url() -> str:
    return config()["repository"]["url"].rstrip("/")


def repository_branch() -> str:
    return config()["repository"]["branch"]


def _walk(entries):
    for entry in entries or []:
        if "file" in entry:
            yield entry["file"]
        for key in ("parts", "chapters", "sections"):
            yield from _walk(entry.get(key))


def toc_docnames() -> list[str]:
    """Every page in the table of contents, root first, as docnames (``book/ch00_environment``)."""
    data = toc()
    names = [data["root"], *_walk(data.get("parts")), *_walk(data.get("chapters"))]
    return [str(Path(n).with_suffix("")) if Path(n).suffix in SUFFIXES else n for n in names]


def source_of(docname: str) -> Path | None:
    """The file a docname refers to, or None where no such page exists."""
    for suffix in SUFFIXES:
        path = ROOT / (docname + suffix)
        if path.exists():
            return path
    return None


def toc_notebooks() -> list[Path]:
    """The notebooks of the book, in table-of-contents order."""
    paths = [source_of(d) for d in toc_docnames()]
    return [p for p in paths if p is not None and p.suffix == ".ipynb"]


def notebook_id(path: Path) -> str:
    return path.stem


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


if __name__ == "__main__":  # used by scripts/test.sh: the notebooks papermill runs
    print("\n".join(str(p.relative_to(ROOT)) for p in toc_notebooks()))
