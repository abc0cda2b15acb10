#!/usr/bin/env python3
"""Which of lmkit's optional extras (pyproject.toml: ``apps``, ``serve``) each chapter needs, so
that its Colab bootstrap installs only those.

    python scripts/bootstrap_extras.py          # print each notebook's extras
    python scripts/bootstrap_extras.py --write  # rewrite each notebook's bootstrap cell to match

A chapter needs an extra when its code, or any lmkit module it imports (followed through lmkit's
own imports, those inside functions included), imports a package of that extra. The scan reads
source; it runs nothing. tests/test_book_conventions.py checks every bootstrap against it.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from functools import cache
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# the import name of each distribution in the extras, where it differs from the distribution's
IMPORT_NAMES = {"scikit-learn": "sklearn", "rouge-score": "rouge_score"}
BOOTSTRAP = """\
# Bootstrap: on Colab, fetch the book (chapters and data) and install lmkit from it;
# elsewhere lmkit is already installed.
import sys

if "google.colab" in sys.modules:
    !git clone -q --depth 1 -b {branch} {url} /content/lmkit-book
    %pip install -q "/content/lmkit-book{extras}"
    %cd /content/lmkit-book/book
import lmkit"""
RUNTIME_EXTRAS = ("apps", "serve")  # the others (book, test) are tools, not chapter imports


def extra_of_module() -> dict[str, str]:
    """{top-level import name: extra} for the packages of the runtime extras."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out = {}
    for extra in RUNTIME_EXTRAS:
        for requirement in spec[extra]:
            dist = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
            out[IMPORT_NAMES.get(dist, dist.replace("-", "_"))] = extra
    return out


def imported_modules(source: str) -> set[str]:
    """Every module an (IPython-free) source imports, anywhere in it, as dotted names; for
    ``from a.b import c`` both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _lmkit_file(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def _closure(module: str) -> frozenset[str]:
    """The modules an lmkit module imports, followed through lmkit (package inits included)."""
    seen, todo, found = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        path = _lmkit_file(name)
        if path is None:
            continue
        for dep in imported_modules(path.read_text(encoding="utf-8")):
            if dep.split(".")[0] == "lmkit":
                todo.append(dep)
            else:
                found.add(dep)
    return frozenset(found)


def notebook_source(path: Path) -> str:
    """The code cells of a notebook after the bootstrap, with IPython magics and shell lines
    dropped."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    code = [c for c in cells if c["cell_type"] == "code"][1:]
    lines = []
    for c in code:
        for line in "".join(c["source"]).splitlines():
            lines.append("" if line.lstrip().startswith(("%", "!")) else line)
        lines.append("")
    return "\n".join(lines)


def needed_extras(path: Path) -> tuple[str, ...]:
    """The runtime extras a notebook needs, sorted."""
    table = extra_of_module()
    modules = set()
    for name in imported_modules(notebook_source(path)):
        modules.add(name)
        if name.split(".")[0] == "lmkit":
            modules |= _closure(name)
    return tuple(sorted({table[m.split(".")[0]] for m in modules if m.split(".")[0] in table}))


def bootstrap(extras: tuple[str, ...], url: str, branch: str) -> str:
    return BOOTSTRAP.format(
        url=url, branch=branch, extras=f"[{','.join(extras)}]" if extras else ""
    )


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from book_toc import repository_branch, repository_url, toc_notebooks

    for path in toc_notebooks():
        extras = needed_extras(path)
        print(f"{path.name:40s} {','.join(extras) or '-'}")
        if "--write" in argv:
            nb = json.loads(path.read_text(encoding="utf-8"))
            first = next(c for c in nb["cells"] if c["cell_type"] == "code")
            text = bootstrap(extras, repository_url(), repository_branch())
            first["source"] = text.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
