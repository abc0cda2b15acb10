"""Words and vocabularies: the one word tokenizer and the one token <-> id table of the book.

* :func:`tokenize_words` splits text into lower-cased words; its options are the rule differences
  that chapters depend on: digits kept (chapters 18, 19), punctuation kept as tokens (chapter 19:
  the hyphen of "forty-two"; chapter 18: "!" and "?"), "n't" split off (chapter 18).
* :class:`Vocab` maps tokens to ids and back: the special tokens first, in the order given, then
  the ordinary tokens; built from a token stream or from texts with ``min_count`` and
  ``max_size``, in frequency or alphabetical order. Chapters 1 (word n-grams), 2 (word
  embeddings), 18 (a GRU classifier), 19 (translation) and 22 (captioning) use it.
* :func:`pad_batch` right-pads lists of ids into one tensor.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

import numpy as np
import torch

__all__ = ["PAD", "UNK", "BOS", "EOS", "tokenize_words", "Vocab", "pad_batch"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
_NEGATION = re.compile(r"n't", re.IGNORECASE)


@cache
def _word_pattern(lower: bool, digits: bool, punctuation: bool | str) -> re.Pattern:
    letters = ("a-z" if lower else "a-zA-Z") + ("0-9" if digits else "")
    word = f"[{letters}]+(?:'[{letters}]+)?"
    if punctuation is True:
        return re.compile(rf"{word}|[^\w\s]")
    if punctuation:
        return re.compile(rf"{word}|[{re.escape(punctuation)}]")
    return re.compile(word)


def tokenize_words(
    text: str,
    lower: bool = True,
    digits: bool = False,
    punctuation: bool | str = False,
    split_negation: bool = False,
) -> list[str]:
    """Split text into words: runs of ASCII letters with at most one inner apostrophe ("cat's").

    With the defaults (chapters 1 and 2) the text is lower-cased and digits, punctuation and every
    other character are dropped: "The cat's 3 hats!" -> ["the", "cat's", "hats"].

    * ``lower``: lower-case the text first;
    * ``digits``: digits count as letters ("mp3", "42");
    * ``punctuation``: ``True`` keeps every character that is neither a word character nor
      space as a token of its own ("forty-two" -> "forty", "-", "two"); a string keeps only the
      characters it lists (``"!?"``); ``False`` drops them;
    * ``split_negation``: "n't" becomes a token of its own, as in the Penn Treebank:
      "didn't" -> "did", "n't".
    """
    if lower:
        text = text.lower()
    if split_negation:
        text = _NEGATION.sub(lambda m: " " + m.group(0), text)
    return _word_pattern(lower, digits, punctuation).findall(text)


class Vocab:
    """Token <-> id table: the ``specials`` get ids 0, 1, ... in the order given, then ``tokens``.

    The special tokens with a role are recognised by their text: :data:`PAD` ``"<pad>"``,
    :data:`UNK` ``"<unk>"``, :data:`BOS` ``"<bos>"`` and :data:`EOS` ``"<eos>"``; their ids are
    ``pad_id``, ``unk_id``, ``bos_id``, ``eos_id`` (``None`` when the vocabulary has no such
    token). For example ``specials=(PAD, BOS, EOS, UNK)`` gives pad 0, bos 1, eos 2, unk 3.

    ``counts`` (V,) int64 holds the corpus frequency of each id (0 for the specials, and for every
    id when the vocabulary was given as a plain list). ``tokenize`` splits a string for
    :meth:`encode`; ``join`` glues tokens back in :meth:`decode` (``""`` for characters).

    :meth:`encode` maps a token the vocabulary does not hold to ``<unk>`` when it has one, and
    leaves it out otherwise (word2vec's convention for words below ``min_count``).
    """

    def __init__(
        self,
        tokens,
        *,
        specials=(),
        counts=None,
        tokenize=tokenize_words,
        join: str = " ",
    ):
        tokens = list(tokens)
        self.specials = tuple(specials)
        self.itos = [*self.specials, *tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            repeated = sorted({t for t in self.itos if self.itos.count(t) > 1}, key=str)
            raise ValueError(f"a vocabulary holds each token once; repeated: {repeated}")
        if counts is None:
            counts = [0] * len(tokens)
        if len(counts) != len(tokens):
            raise ValueError(f"{len(counts)} counts for {len(tokens)} tokens")
        self.counts = np.asarray([0] * len(self.specials) + list(counts), dtype=np.int64)
        self.tokenize, self.join = tokenize, join
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            self.stoi.get(t) for t in (PAD, UNK, BOS, EOS)
        )

    @classmethod
    def from_tokens(
        cls,
        tokens,
        *,
        min_count: int = 1,
        max_size: int | None = None,
        specials=(),
        order: str = "frequency",
        tokenize=tokenize_words,
        join: str = " ",
    ) -> Vocab:
        """The vocabulary of a token stream: every token seen at least ``min_count`` times.

        ``max_size`` caps ``len(vocab)``, specials included, by keeping the most frequent tokens
        (ties broken alphabetically). ``order`` sets the ids after the specials: ``"frequency"``
        (most frequent first, ties alphabetical; chapter 2 compares "the most frequent words" by
        id) or ``"alphabetical"``. A token equal to a special is not counted twice.
        """
        if order not in ("frequency", "alphabetical"):
            raise ValueError(f"order must be 'frequency' or 'alphabetical', got {order!r}")
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"max_size={max_size} leaves no room for {len(specials)} specials")
        c = Counter(tokens)
        for s in specials:
            c.pop(s, None)
        kept = sorted(((t, n) for t, n in c.items() if n >= min_count), key=lambda x: (-x[1], x[0]))
        if max_size is not None:
            kept = kept[: max_size - len(specials)]
        if order == "alphabetical":
            kept.sort(key=lambda x: x[0])
        return cls(
            [t for t, _ in kept],
            specials=specials,
            counts=[n for _, n in kept],
            tokenize=tokenize,
            join=join,
        )

    @classmethod
    def from_texts(cls, texts, *, tokenize=tokenize_words, **options) -> Vocab:
        """The vocabulary of the tokens of ``texts`` split by ``tokenize``; ``options`` as in
        :meth:`from_tokens`. The vocabulary keeps ``tokenize`` for :meth:`encode`."""
        return cls.from_tokens(
            (tok for text in texts for tok in tokenize(text)), tokenize=tokenize, **options
        )

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens, specials={list(self.specials)})"

    def encode(self, text, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of a string (split by ``self.tokenize``) or of a list of tokens, with ``<bos>``
        first and ``<eos>`` last on request. Unknown tokens -> ``<unk>``, or left out without one.
        """
        tokens = self.tokenize(text) if isinstance(text, str) else text
        if self.unk_id is None:
            ids = [self.stoi[t] for t in tokens if t in self.stoi]
        else:
            ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        for wanted, tid, name in ((bos, self.bos_id, BOS), (eos, self.eos_id, EOS)):
            if wanted and tid is None:
                raise ValueError(f"this vocabulary has no {name} token")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        """Tokens of ``ids`` joined by ``self.join``, up to the first ``<eos>``; ``<pad>`` and
        ``<bos>`` are left out."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.pad_id or i == self.bos_id:
                continue
            out.append(self.itos[i])
        return self.join.join(out)

    def encode_batch(
        self, texts, bos: bool = False, eos: bool = False, max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T) int64 right-padded with ``<pad>``, lengths (B,) int64) for a list of texts.

        Each row is cut to its first ``max_length`` ids (a trailing ``<eos>`` too). A row that
        would be empty holds one ``<unk>`` instead (when the vocabulary has one), so that every
        length is at least 1, as packing for an RNN and mean pooling need.
        """
        if self.pad_id is None:
            raise ValueError(f"encode_batch pads with {PAD}, which this vocabulary lacks")
        seqs = []
        for text in texts:
            ids = self.encode(text, bos, eos)[:max_length]
            if not ids and self.unk_id is not None:
                ids = [self.unk_id]
            seqs.append(ids)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        return pad_batch(seqs, self.pad_id), lengths


def pad_batch(seqs, pad_id: int = 0) -> torch.Tensor:
    """Right-pad lists of ids with ``pad_id`` to one (B, T_max) int64 tensor."""
    seqs = [list(s) for s in seqs]
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    t = max(len(s) for s in seqs)
    return torch.tensor([s + [pad_id] * (t - len(s)) for s in seqs], dtype=torch.long)
