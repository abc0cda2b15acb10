"""Corpora, splits, tokenizers and batching."""

import pytest
import torch

from lmkit.data import (
    BlockDataset,
    BPETokenizer,
    CharTokenizer,
    encoder_tokenizer,
    load_corpus,
    load_splits,
    load_text_dataset,
    load_tokenizer,
    pack_blocks,
    random_batch,
    split_text,
)


def test_corpora_are_offline_and_deterministic():
    a, b = load_corpus("pydoc"), load_corpus("pydoc")
    assert a == b and len(a) > 300_000
    assert "def " in load_corpus("stdlib")
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("wikipedia")


def test_splits_partition_the_text():
    s = load_splits("pydoc")
    text = load_corpus("pydoc")
    assert s["train"] + s["val"] + s["test"] == text
    assert abs(len(s["val"]) / len(text) - 0.05) < 0.001
    with pytest.raises(ValueError):
        split_text("abc", 0.6, 0.5)


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(ValueError, match="outside the vocabulary: 'z'"):
        tok.encode("zero")
    fallback = CharTokenizer.from_text("hello world?", unk="?")
    assert fallback.decode(fallback.encode("hez")) == "he?"
    fallback.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("hez") == fallback.encode("hez")


def test_bpe_tokenizer_train_save_load(tmp_path):
    text = "the cat sat on the mat. the cat ate the rat. " * 50
    tok = BPETokenizer.train([text], vocab_size=300)
    ids = tok.encode("the cat sat")
    assert tok.decode(ids) == "the cat sat" and len(ids) < len("the cat sat")
    assert tok.decode(tok.encode("naïve ünïcode ✓")) == "naïve ünïcode ✓"  # byte-level: no unknowns
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("the mat") == tok.encode("the mat")


def test_encoder_wordpiece_offline():
    tok = encoder_tokenizer()
    assert tok.tokenize("unbelievable tokenization") and tok.vocab_size == 30522


def test_blocks_and_batches():
    ids = torch.arange(100)
    blocks = pack_blocks(ids, 10)
    assert blocks.shape == (9, 11) and torch.equal(blocks[1], torch.arange(10, 21))
    x, y = random_batch(ids, 10, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10) and torch.equal(y, x + 1)
    ds = BlockDataset(ids, 10)
    assert len(ds) == 9 and torch.equal(ds[0][1], torch.arange(1, 11))
    with pytest.raises(ValueError, match="more than"):
        pack_blocks(torch.arange(5), 10)


def test_datasets_text_loader(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("line one\nline two\n")
    ds = load_text_dataset(f)
    assert ds["text"] == ["line one", "line two"]
    with pytest.raises(FileNotFoundError):
        load_text_dataset(tmp_path / "missing.txt")
