"""Data: offline corpora, tokenizers, batching (chapter 8), seeded task generators, and the one
word tokenizer and vocabulary (:mod:`lmkit.data.vocab`)."""

from lmkit.data.corpora import (
    CORPORA,
    corpus_documents,
    load_corpus,
    load_hub_text,
    load_splits,
    load_text_dataset,
    split_text,
)
from lmkit.data.loaders import BlockDataset, pack_blocks, random_batch, to_tensor
from lmkit.data.tokenizers import BPETokenizer, CharTokenizer, encoder_tokenizer, load_tokenizer
from lmkit.data.vocab import BOS, EOS, PAD, UNK, Vocab, pad_batch, tokenize_words

__all__ = [
    "CORPORA",
    "corpus_documents",
    "load_corpus",
    "load_hub_text",
    "load_splits",
    "load_text_dataset",
    "split_text",
    "BlockDataset",
    "pack_blocks",
    "random_batch",
    "to_tensor",
    "BPETokenizer",
    "CharTokenizer",
    "encoder_tokenizer",
    "load_tokenizer",
    "PAD",
    "UNK",
    "BOS",
    "EOS",
    "Vocab",
    "pad_batch",
    "tokenize_words",
]
