"""Where lmkit finds the book's files: book_dir() and book_data() (used by chapters 18, 23, 25, 27)
in a clone, from a copied book folder with lmkit installed elsewhere, and with nothing found."""

import shutil
from pathlib import Path

import pytest

from lmkit import assets
from lmkit.apps.classify import SENTIMENT_CSV, load_sentiment

REPO_BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture
def installed_elsewhere(tmp_path, monkeypatch):
    """lmkit as a non-editable install sees it: no book next to its source."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(assets, "REPO_ROOT", site)
    monkeypatch.delenv(assets.BOOK_DIR_VARIABLE, raising=False)
    return site


def _copy_book(dest: Path) -> Path:
    """What the Colab-like check does: the book's folder (chapters' data and intro) copied."""
    dest.mkdir(parents=True)
    shutil.copy(REPO_BOOK / "intro.md", dest / "intro.md")
    shutil.copytree(REPO_BOOK / "data", dest / "data")
    return dest


def test_book_data_in_the_clone(monkeypatch):
    monkeypatch.delenv(assets.BOOK_DIR_VARIABLE, raising=False)
    monkeypatch.chdir(REPO_BOOK.parent)  # a shell at the clone's root: ./book
    assert assets.book_dir() == REPO_BOOK
    path = assets.book_data("python_mc/questions.jsonl")
    assert path == REPO_BOOK / "data" / "python_mc" / "questions.jsonl" and path.is_file()
    monkeypatch.chdir(REPO_BOOK)  # a notebook runs in the book's folder
    assert assets.book_data(SENTIMENT_CSV).is_file()


def test_a_copied_book_folder_is_found_from_its_own_folder(
    tmp_path, monkeypatch, installed_elsewhere
):
    copy = _copy_book(tmp_path / "copy" / "book")
    monkeypatch.chdir(copy)  # as a chapter runs (papermill's cwd, Colab's %cd .../book)
    assert assets.book_dir() == copy.resolve()
    assert assets.book_data("qa/passages.jsonl") == copy.resolve() / "data/qa/passages.jsonl"
    monkeypatch.chdir(copy.parent)  # one level up: ./book
    assert assets.book_dir() == copy.resolve()
    d = load_sentiment()  # lmkit's own readers go through book_data too
    assert sum(len(texts) for texts, _ in d.values()) == 320


def test_the_book_folder_can_be_named(tmp_path, monkeypatch, installed_elsewhere):
    copy = _copy_book(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(assets.BOOK_DIR_VARIABLE, str(copy))
    assert assets.book_data("summaries/documents.jsonl").is_file()
    monkeypatch.setenv(assets.BOOK_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="LMKIT_BOOK_DIR=.* is not the book's folder"):
        assets.book_dir()


def test_no_book_folder_says_what_to_do(tmp_path, monkeypatch, installed_elsewhere):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        assets.book_data("python_mc/questions.jsonl")
    message = str(err.value)
    assert "was not found" in message and str(tmp_path) in message
    assert "%cd /content/lmkit-book/book" in message and "LMKIT_BOOK_DIR" in message
    assert "git clone" in message


def test_a_missing_data_file_names_the_file_and_the_folder(
    tmp_path, monkeypatch, installed_elsewhere
):
    copy = _copy_book(tmp_path / "book")
    shutil.rmtree(copy / "data" / "python_mc")
    monkeypatch.chdir(copy)
    with pytest.raises(FileNotFoundError, match="python_mc/questions.jsonl is not in the book's"):
        assets.book_data("python_mc/questions.jsonl")
