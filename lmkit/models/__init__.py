"""Models of the book: GPT (chapter 9), the n-gram and recurrent language models of chapters 1-3."""

from lmkit.models.gpt import GPT, GPTConfig, KVCache
from lmkit.models.ngram import NGramLM
from lmkit.models.rnn import RecurrentLM, RecurrentLMConfig

__all__ = ["GPT", "GPTConfig", "KVCache", "NGramLM", "RecurrentLM", "RecurrentLMConfig"]
