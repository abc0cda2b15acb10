"""Models of the book: GPT (chapter 9) and the sequence models of earlier chapters."""
from lmkit.models.gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
