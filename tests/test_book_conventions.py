"""The book's conventions (docs/CONTRIBUTING.md), checked on every notebook of the book.

Fast and static: nothing is executed here. papermill executes the notebooks and
compares their checked outputs (test_notebooks_papermill.py); the build and the browser check
the HTML.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from book_toc import (
    BOOK,
    ROOT,
    config,
    read_notebook,
    repository_branch,
    repository_url,
    source_of,
    toc,
    toc_docnames,
    toc_notebooks,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bootstrap_extras import bootstrap, needed_extras  # noqa: E402  (a script, from its folder)

NOTEBOOKS = toc_notebooks()
MIN_INTRO_WORDS = 40
MIN_EXERCISES = 3
MAX_NOTEBOOK_BYTES = 10 * 2**20
CJK = re.compile(r"[\u4e00-\u9fff]")
SOLUTION = re.compile(r"^\*\*Solution to exercise (\d+)\*\*\s*$")
DROPDOWN = re.compile(r"^(:{3,}|`{3,})\s*\{dropdown\}|:class:\s*dropdown", re.M)
ERRATUM = re.compile(r"^(:{3,}|`{3,})\s*\{admonition\}\s*Erratum", re.M)
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
BIBLIOGRAPHY = re.compile(r"^(?::{3,}|`{3,})\s*\{bibliography\}[^\n]*(?:\n:[^\n]*)*", re.M)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def src(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def code_cells(nb) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# --- the table of contents and the configuration ------------------------------------------


def test_toc_entries_exist():
    missing = [d for d in toc_docnames() if source_of(d) is None]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"
    assert len(toc_docnames()) == len(set(toc_docnames())), "a page is listed twice"


def test_every_notebook_is_in_the_toc():
    listed = {str(p.relative_to(ROOT)) for p in NOTEBOOKS}
    found = {
        str(p.relative_to(ROOT))
        for p in BOOK.rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts
    }
    assert not found - listed, (
        f"notebooks under book/ missing from _toc.yml: {sorted(found - listed)}"
    )


def test_toc_shape():
    data = toc()
    assert data["format"] == "jb-book"
    assert data["root"] == "book/intro"
    assert data["parts"][0]["caption"] == "Getting started"
    for part in data["parts"]:
        assert part.get("chapters"), f"part {part.get('caption')!r} has no chapters"


def test_config():
    cfg = config()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository_url())
    assert repository_branch() == "main"
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert cfg["execute"]["raise_on_error"] is True
    assert cfg["only_build_toc_files"] is True
    for pattern in ("_build", ".*", "**/.*", ".venv", "lmkit", "tests", "docs", "scripts"):
        assert pattern in cfg["exclude_patterns"], f"exclude_patterns lacks {pattern!r}"
    sphinx = cfg.get("sphinx", {})
    extensions = sphinx.get("extra_extensions") or []
    assert "sphinx.ext.intersphinx" not in extensions, "intersphinx fetches inventories online"
    for bib in cfg["bibtex_bibfiles"]:
        assert (ROOT / bib).exists()
    assert not (ROOT / "_static").exists() or not any((ROOT / "_static").rglob("*.js")), (
        "Jupyter Book adds every .js file under a root _static/ (and the other static paths, "
        "including the fetched MathJax) to every page; keep JavaScript out of _static/"
    )


def test_markdown_pages_have_a_title():
    for docname in toc_docnames():
        path = source_of(docname)
        if path is not None and path.suffix == ".md":
            first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
            assert first.startswith("# "), f"{path.name} must start with a '# Title'"


def _bib_keys() -> set[str]:
    from pybtex.database import parse_file

    return set(parse_file(str(BOOK / "references.bib")).entries.keys())


def test_references_bib_parses():
    from pybtex.database import parse_file

    bib = parse_file(str(BOOK / "references.bib"))
    assert len(bib.entries) >= 20
    for key, entry in bib.entries.items():
        assert "title" in entry.fields and "year" in entry.fields, key


def _page_text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join(
            src(c) for c in read_notebook(path)["cells"] if c["cell_type"] == "markdown"
        )
    return path.read_text(encoding="utf-8")


def test_citations_resolve():
    """Every {cite} key is in references.bib, and one page of the book holds the bibliography.

    sphinxcontrib-bibtex resolves a citation only through a {bibliography} directive; several
    unprefixed ones list the same entries twice (a warning, so a failed build)."""
    keys = _bib_keys()
    pages = [source_of(d) for d in toc_docnames()]
    cited, bibliographies = {}, []
    for path in pages:
        text = _page_text(path)
        for group in CITE.findall(text):
            for key in group.split(","):
                cited.setdefault(key.strip(), path.name)
        bibliographies += [
            path.name for m in BIBLIOGRAPHY.finditer(text) if ":keyprefix:" not in m.group(0)
        ]
    unknown = {k: page for k, page in cited.items() if k not in keys}
    assert not unknown, f"citations of keys missing from book/references.bib: {unknown}"
    if cited:
        assert len(bibliographies) == 1, (
            "citations need exactly one {bibliography} directive (without :keyprefix:) in the "
            f"pages of _toc.yml; found {bibliographies or 'none'}"
        )


# --- each notebook ---------------------------------------------------------------------------


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request) -> tuple[Path, dict]:
    path = request.param
    return path, read_notebook(path)


def test_valid_nbformat(notebook):
    path, _ = notebook
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is over 10 MiB"
    kernel = nb.metadata.get("kernelspec", {})
    assert kernel.get("name") == "python3", "kernelspec must be python3 (papermill, nbval)"
    assert nb.metadata.get("language_info", {}).get("name") == "python", (
        "language_info missing: the notebook was not executed in a Jupyter kernel"
    )


def test_title_and_introduction(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown", "the first cell must be markdown: title + introduction"
    lines = src(first).strip().splitlines()
    assert lines and re.match(r"# \S", lines[0]), "the first cell must start with '# Title'"
    intro = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            break
        intro.append(src(cell))
    words = len(" ".join(intro).split()) - len(lines[0].split())
    assert words >= MIN_INTRO_WORDS, (
        f"introduction before the first code cell has {words} words; say what the reader "
        f"will learn (at least {MIN_INTRO_WORDS})"
    )


def test_bootstrap_then_parameters(notebook):
    path, nb = notebook
    code = code_cells(nb)
    assert len(code) >= 2
    extras = needed_extras(path)  # only the optional extras this chapter imports (#14)
    expected = bootstrap(extras, url=repository_url(), branch=repository_branch())
    assert src(code[0]).rstrip() == expected, (
        f"the first code cell must be the bootstrap, exactly:\n{expected}\n"
        "(python scripts/bootstrap_extras.py --write rewrites every notebook's)"
    )
    assert "parameters" in tags(code[1]), "the second code cell must be tagged 'parameters'"
    assert sum("parameters" in tags(c) for c in code) == 1, "exactly one 'parameters' cell"


def test_executed_in_order_without_errors(notebook):
    path, nb = notebook
    code = code_cells(nb)
    empty = [i for i, c in enumerate(code) if not src(c).strip()]
    assert not empty, f"empty code cells (remove them): {empty}"
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"execution counts {counts} are not 1..{len(code)}: re-run top to bottom "
        f"(make execute NB={path.relative_to(ROOT)})"
    )
    errors = [
        i
        for i, c in enumerate(code)
        for out in c.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"error outputs in code cells {errors}"


def test_exercises_with_hidden_solutions(notebook):
    """Every solution is collapsed until the reader opens it: the code cell after a
    '**Solution to exercise N**' label is tagged 'hide-cell' (input and output behind one toggle;
    'hide-input' would show the output), and any prose after it, up to the next label or heading,
    is a {dropdown}. The browser test checks that the page shows them collapsed."""
    path, nb = notebook
    cells = nb["cells"]
    heading = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "markdown" and re.search(r"^## Exercises\s*$", src(c), re.M)
    ]
    assert heading, "no '## Exercises' section"
    solved, label = [], None
    for i, cell in enumerate(cells[heading[0] + 1 :], start=heading[0] + 1):
        text = src(cell).strip()
        if cell["cell_type"] == "code":
            if label is not None:
                assert "hide-cell" in tags(cell) and "hide-input" not in tags(cell), (
                    f"cell {i}, the code of '{label}', must be tagged 'hide-cell' (not "
                    "'hide-input', which leaves its output visible)"
                )
            continue
        match = SOLUTION.match(text)
        if match:
            following = cells[i + 1] if i + 1 < len(cells) else None
            assert following is not None and following["cell_type"] == "code", (
                f"'{text}' must be followed by its code cell"
            )
            solved.append(int(match.group(1)))
            label = text
        elif text.startswith("#"):
            label = None
        elif label is not None:
            assert DROPDOWN.match(text) and re.search(r"^:{3,}\s*$", text.splitlines()[-1]), (
                f"markdown cell {i} after '{label}' discusses a solution in the open: put it in a "
                "':::{dropdown} Discussion of exercise N' ... ':::' block"
            )
        solved.extend(["dropdown"] * len(DROPDOWN.findall(text)))
    assert len(solved) >= MIN_EXERCISES, (
        f"{len(solved)} hidden solutions; at least {MIN_EXERCISES} exercises with solutions "
        "('**Solution to exercise N**' + a 'hide-cell' code cell, or a {dropdown})"
    )
    numbers = [n for n in solved if n != "dropdown"]
    assert len(numbers) == len(set(numbers)), f"solution numbers repeat: {numbers}"


# Chapters whose takeaways are still backed only by bare asserts, not by visible checked claims:
# the debt of #16-#18. A chapter leaves this set when its claims are checked with lmkit.claims.
CLAIMS_PENDING = {
    *(f"ch{n:02d}" for n in (*range(8, 20), *range(21, 30))),
    "appA",
    "appE",
}
CHECK_CALL = re.compile(r"^\s*check\(", re.M)
MIN_CHECKED_CLAIMS = 3


def test_takeaways_are_checked_claims(notebook):
    """A chapter states its results as checked claims (lmkit.claims.check, chapter 0): each
    prints a visible 'checked:' line in the committed outputs, so the page shows which sentences
    the code has just confirmed."""
    path, nb = notebook
    chapter = path.stem.split("_")[0]
    code = "\n".join(src(c) for c in code_cells(nb))
    calls = len(CHECK_CALL.findall(code))
    if chapter in CLAIMS_PENDING:
        assert calls == 0 or calls >= MIN_CHECKED_CLAIMS, f"{chapter}: finish it, leave the set"
        return
    assert "from lmkit.claims import check" in code, f"{chapter}: import lmkit.claims.check"
    assert calls >= MIN_CHECKED_CLAIMS, (
        f"{chapter} checks {calls} claims; back its takeaways with lmkit.claims.check "
        f"(at least {MIN_CHECKED_CLAIMS})"
    )
    shown = sum(
        "".join(o.get("text", "")).count("checked: ")
        for c in code_cells(nb)
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    assert shown >= calls, f"{chapter}: {calls} check() calls but {shown} 'checked:' lines shown"


def test_chinese_terms(notebook):
    path, nb = notebook
    text = " ".join(src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert CJK.search(text), "give the Chinese term beside key English terms: **term** (术语)"


def test_nbval_markers(notebook):
    path, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        text = src(cell)
        cell_tags = tags(cell)
        if "skip-execution" in cell_tags:
            assert "nbval-skip" in cell_tags or "# NBVAL_SKIP" in text, (
                f"code cell {i}: nbval ignores 'skip-execution'; add the 'nbval-skip' tag too"
            )
        if text.lstrip().startswith("# NBVAL_CHECK_OUTPUT"):
            outputs = [
                o
                for o in cell.get("outputs", [])
                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
            assert outputs, f"code cell {i} is checked by nbval but prints nothing on stdout"
        elif "NBVAL_CHECK_OUTPUT" in text:
            pytest.fail(f"code cell {i}: '# NBVAL_CHECK_OUTPUT' must be the cell's first line")


# What a checked cell must not print: a library's internals change with its version (the lock
# pins them for CI, but readers and the next lock do not), so nbval would fail on a library
# upgrade, not on a change of the book. Print what the chapter teaches instead (hasattr, a shape).
INTERNALS_IN_SOURCE = re.compile(r"\.keys\(\)|\bdir\(|\bvars\(|__dict__|__version__|getsource\(")
INTERNALS_IN_OUTPUT = re.compile(
    r"^\s*\(\w+\): [A-Z]\w*\("  # a module repr: "(wte): Embedding(103, 128)"
    r"|object at 0x|<class '|odict_keys|dict_keys\(|Config \{"
    r"|\b\d+\.\d+\.\d+\+(cpu|cu\d+)\b",  # a torch build string
    re.M,
)


def checked_stdout(cell) -> str:
    return "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for o in cell.get("outputs", [])
        if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
    )


def test_checked_outputs_avoid_library_internals(notebook):
    path, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        text = src(cell)
        if not text.lstrip().startswith("# NBVAL_CHECK_OUTPUT"):
            continue
        code = "\n".join(line.split("#")[0] for line in text.splitlines())
        found = INTERNALS_IN_SOURCE.search(code) or INTERNALS_IN_OUTPUT.search(checked_stdout(cell))
        assert not found, (
            f"code cell {i} is checked by nbval and prints a library's internals "
            f"({found.group(0).strip()!r}): print what the chapter teaches (hasattr, a shape, a "
            "count), or drop '# NBVAL_CHECK_OUTPUT' from the cell"
        )


def test_widgets_have_saved_state_and_a_static_figure(notebook):
    path, nb = notebook
    views = [
        out["data"][WIDGET_VIEW]["model_id"]
        for c in code_cells(nb)
        for out in c.get("outputs", [])
        if WIDGET_VIEW in out.get("data", {})
    ]
    if not views:
        return
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = [v for v in views if v not in state]
    assert not missing, (
        "widget state not saved for views {missing}: execute with nbclient/"
        "nbconvert (it saves widget state) and commit the notebook"
    )
    images = [
        out
        for c in code_cells(nb)
        for out in c.get("outputs", [])
        if any(k.startswith("image/") for k in out.get("data", {}))
    ]
    assert images, "a notebook with widgets needs a static figure beside them for the HTML book"


def test_errata_are_recorded(notebook):
    path, nb = notebook
    text = "\n".join(src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    n_errata = len(ERRATUM.findall(text))
    if not n_errata:
        return
    chapter = re.match(r"(ch\d\d)", path.stem)
    assert chapter, f"{path.name}: errata need a chNN_ file name"
    errata = BOOK / "errata" / f"{chapter.group(1)}.yml"
    assert errata.exists(), (
        f"{path.name} has {n_errata} Erratum boxes but no {errata.relative_to(ROOT)}"
    )
    rows = yaml.safe_load(errata.read_text(encoding="utf-8"))
    rows = rows.get("errata", rows) if isinstance(rows, dict) else rows
    assert isinstance(rows, list) and rows, f"{errata.name}: expected a list of rows"
    for row in rows:
        missing = {"seed", "section", "claim", "correct", "cell"} - set(row)
        assert not missing, f"{errata.name}: a row lacks {sorted(missing)}"


def test_the_extras_scan_follows_lmkit_imports_into_functions(tmp_path):
    """Kills: a scan that reads only the notebook (ch13 imports lmkit.serve, which needs the
    serve extra), or only module-level imports (sklearn is imported inside lmkit's functions)."""
    import json

    def nb(code):
        cells = [
            {"cell_type": "code", "source": "# bootstrap"},
            {"cell_type": "code", "source": code},
        ]
        p = tmp_path / "x.ipynb"
        p.write_text(json.dumps({"cells": cells}))
        return p

    assert needed_extras(nb("import torch\nimport lmkit.models")) == ()
    assert needed_extras(nb("from lmkit.serve import create_app")) == ("serve",)
    assert needed_extras(nb("from lmkit.apps import retrieval")) == ("apps",)  # TfidfRetriever
    assert needed_extras(nb("%pip install x\nimport sklearn")) == ("apps",)
