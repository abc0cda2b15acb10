"""Offline corpora and deterministic splits. Explained in chapter 8.

Five corpora need no download:

* ``"pydoc"``: Python's documentation topics (``pydoc_data.topics``, ~465 KB of English prose).
* ``"stdlib"``: source of the Python standard library's top-level modules (real code, chapter 20).
* ``"docs"``: pydoc's training split plus the docstrings and comments of those modules (~1.7 MB of
  English about Python); its validation and test splits are pydoc's, so a model trained on it is
  scored on the same text as one trained on ``"pydoc"``.
* ``"chat"``: the instruction-tuning conversations shipped in the book's ``data/chat`` (written
  by :mod:`lmkit.data.instructions` in its chat template; chapter 23), split as shipped.
* ``"book"``: the markdown of this book's own chapters (needs a checkout of the repository; it
  changes with every edit of the book, so no shipped model is trained on it).

Named hub datasets are loaded only when the caller asks (``load_hub_text``) and has internet.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from lmkit.assets import book_dir
from lmkit.data.instructions import ChatTemplate, instruction_text, load_instructions
from lmkit.data.sources import prose_of, pydoc_documents, stdlib_documents

CORPORA = ("pydoc", "stdlib", "docs", "chat", "book")


def _docs_documents() -> dict[str, str]:
    prose = {name: prose_of(src) for name, src in stdlib_documents().items()}
    return {**pydoc_documents(), **{k: v for k, v in prose.items() if v.strip()}}


def _book_documents() -> dict[str, str]:
    book = book_dir()
    docs = {}
    for p in sorted(book.glob("*.md")):
        docs[p.name] = p.read_text(encoding="utf-8")
    for p in sorted(book.glob("*.ipynb")):
        cells = json.loads(p.read_text(encoding="utf-8"))["cells"]
        docs[p.name] = "\n\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
        )
    return docs


def corpus_documents(name: str) -> dict[str, str]:
    """The documents of an offline corpus, as {document name: text}, in a fixed order."""
    if name == "pydoc":
        return pydoc_documents()
    if name == "stdlib":
        return stdlib_documents()
    if name == "docs":
        return _docs_documents()
    if name == "chat":
        rows = load_instructions("train") + load_instructions("val")
        return {e["id"]: ChatTemplate().example_text(e) for e in rows}
    if name == "book":
        return _book_documents()
    raise ValueError(f"unknown corpus {name!r}; choose one of {CORPORA}")


def load_corpus(name: str) -> str:
    """The whole corpus as one string (documents joined in sorted order)."""
    return "\n".join(corpus_documents(name).values())


def split_text(
    text: str, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, str]:
    """Deterministic contiguous split into train / val / test (the last parts go to val and test).

    A contiguous split keeps neighbouring sentences from leaking across splits, which a random
    line-level split would do.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    n = len(text)
    a = int(n * (1 - val_fraction - test_fraction))
    b = int(n * (1 - test_fraction))
    return {"train": text[:a], "val": text[a:b], "test": text[b:]}


@functools.cache
def _stdlib_prose() -> str:
    """The docstrings and comments of the standard library, parsed once per process (seconds)."""
    return "\n".join(prose_of(src) for src in stdlib_documents().values())


def load_splits(
    name: str, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, str]:
    """``split_text(load_corpus(name))``: the train / val / test text of an offline corpus.

    Two exceptions: ``"docs"`` has pydoc's splits with the standard library's docstrings and
    comments appended to the training split, and ``"chat"`` the shipped train and val files (no
    test split)."""
    if name == "chat":
        return {"train": instruction_text("train"), "val": instruction_text("val"), "test": ""}
    if name == "docs":
        splits = split_text(load_corpus("pydoc"), val_fraction, test_fraction)
        return {**splits, "train": splits["train"] + "\n" + _stdlib_prose()}
    return split_text(load_corpus(name), val_fraction, test_fraction)


def load_text_dataset(paths, split: str = "train"):
    """Load local text files with ``datasets`` (one example per line), offline. Chapter 8."""
    from datasets import load_dataset

    paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"text file {p!r} does not exist")
    return load_dataset("text", data_files={split: paths}, split=split)


def load_hub_text(
    name: str, config: str | None = None, split: str = "train", text_field: str = "text"
):
    """Load a named hub dataset (needs internet; never used by the offline defaults or CI).

    Returns the list of strings in ``text_field``.
    """
    import os

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"load_hub_text({name!r}) needs internet, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
            "is set; unset them (on Colab they are unset) or use an offline corpus"
        )
    from datasets import load_dataset

    ds = load_dataset(name, config, split=split)
    if text_field not in ds.column_names:
        raise KeyError(f"dataset {name!r} has no column {text_field!r}; columns: {ds.column_names}")
    return list(ds[text_field])
