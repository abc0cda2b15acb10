"""Link each chapter's first bold use of a glossary term to the glossary (appC_glossary.md).

    .venv/bin/python scripts/link_glossary.py      # rewrites markdown cells in place

Only markdown cells change (no re-execution needed). A bold phrase **term** whose text is a
glossary term (case-insensitive) becomes **{term}`term <glossary term>`**, once per chapter.
Run it again after writing a chapter; phrases already linked are left alone.
"""

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "appC_glossary.md"


def glossary_terms() -> list[str]:
    text = GLOSSARY.read_text(encoding="utf-8")
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    return [
        line.strip()
        for line in block.splitlines()
        if line.strip() and not line.startswith((" ", "\t"))
    ]


def link_notebook(path: Path, terms: dict[str, str]) -> int:
    nb = nbformat.read(path, as_version=4)
    linked = set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            linked |= {m.lower() for m in re.findall(r"\{term\}`[^`<]*<([^>]+)>`", cell.source)}
    changes = 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue

        def replace(match):
            nonlocal changes
            phrase = match.group(1)
            key = phrase.lower()
            if key not in terms or key in linked:
                return match.group(0)
            linked.add(key)
            changes += 1
            return f"**{{term}}`{phrase} <{terms[key]}>`**"

        # bold phrases outside code spans and math
        cell.source = re.sub(
            r"(?<![`$\\])\*\*([A-Za-z][A-Za-z0-9 .\-]*?)\*\*", replace, cell.source
        )
    if changes:
        nbformat.write(nb, path)
    return changes


def main():
    terms = {t.lower(): t for t in glossary_terms() if re.fullmatch(r"[A-Za-z][A-Za-z0-9 .\-]*", t)}
    for path in sorted((ROOT / "book").glob("ch*_*.ipynb")):
        n = link_notebook(path, terms)
        print(f"{path.name}: {n} glossary links")


if __name__ == "__main__":
    main()
