"""Data: offline corpora, tokenizers, batching (chapter 8) and seeded task generators."""

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
]
