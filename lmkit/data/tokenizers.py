"""Tokenizers: characters, byte-level BPE (``tokenizers`` library) and the encoder's WordPiece.

Explained in chapter 2. Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) ->
str``, ``vocab_size``, ``save(dir)`` and a matching ``load(dir)``; :func:`load_tokenizer` reads
any of them back from a directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmkit.assets import encoder_path


class CharTokenizer:
    """One id per character. ``unk``: a character of the vocabulary that stands in for unknown ones.

    Without ``unk`` (the default), text with characters outside the vocabulary raises a
    ``ValueError`` naming them, instead of failing deep inside an embedding lookup.
    """

    kind = "char"

    def __init__(self, chars, unk: str | None = None):
        self.chars = sorted(set(chars))
        if unk is not None and unk not in self.chars:
            self.chars.append(unk)
        self.unk = unk
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, unk: str | None = None) -> CharTokenizer:
        return cls(set(text), unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        if self.unk is None:
            missing = sorted({c for c in text if c not in self.stoi})
            if missing:
                shown = ", ".join(repr(c) for c in missing[:10])
                raise ValueError(
                    f"text contains {len(missing)} character(s) outside the vocabulary: {shown}. "
                    "Remove them, or build the tokenizer with unk='?' to map them to a placeholder."
                )
            return [self.stoi[c] for c in text]
        u = self.stoi[self.unk]
        return [self.stoi.get(c, u) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, directory) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.json").write_text(
            json.dumps({"kind": "char", "chars": self.chars, "unk": self.unk}, ensure_ascii=False),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, directory) -> CharTokenizer:
        spec = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8"))
        return cls(spec["chars"], spec.get("unk"))


class BPETokenizer:
    """Byte-level BPE trained with Hugging Face ``tokenizers`` (GPT-2's scheme); no unknown id."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tk = tokenizer

    @classmethod
    def train(cls, texts, vocab_size: int = 2048, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from an iterable of strings. Chapter 2."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
            show_progress=False,
        )
        tk.train_from_iterator(list(texts), trainer=trainer)
        return cls(tk)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def decode(self, ids) -> str:
        """The text of ``ids``; ``<|endoftext|>`` is kept, so ``decode(encode(t)) == t`` for every
        text, chat conversations included (chapter 23 cuts a reply at the token's id instead)."""
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def tokens(self, text: str) -> list[str]:
        return self.tk.encode(text).tokens

    def save(self, directory) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(d / "tokenizer.json"))

    @classmethod
    def load(cls, directory) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))


def load_tokenizer(directory):
    """Read back a tokenizer saved by ``save(directory)`` (character or BPE)."""
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    spec = json.loads(path.read_text(encoding="utf-8"))
    return (
        CharTokenizer.load(directory)
        if spec.get("kind") == "char"
        else BPETokenizer.load(directory)
    )


def encoder_tokenizer():
    """The WordPiece tokenizer of the offline pretrained encoder (all-MiniLM-L6-v2). Chapter 2."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_path())
