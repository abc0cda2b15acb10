"""The server's production limits, one dataclass. Explained in chapter 13."""

import math
from dataclasses import dataclass

MIN_TEMPERATURE = 1e-3  # below this (but above 0), logits / temperature overflow float32
MAX_TEMPERATURE = 100.0  # /generate's ceiling; the OpenAI endpoints keep OpenAI's 2.0
MAX_OPENAI_TEMPERATURE = 2.0
MIN_TOP_P = 1e-6  # a top_p that rounds to 0 in float32 would drop every token in filter_logits


@dataclass
class ServerLimits:
    """Production limits of the server. Explained in chapter 13.

    ``max_prompt_tokens=None`` means the model's context window less one (``block_size - 1``): the
    whole prompt and the first new token fit the window, so no prompt is ever cut. ``timeout_s``
    counts from the arrival of the request, so time spent waiting in the queue counts too.
    ``max_queue`` counts sequences waiting or running (a request with ``n=4`` counts 4);
    ``max_batch`` is how many of them the decoding loop runs together (1 = no batching).
    """

    max_prompt_chars: int = 4000
    max_prompt_tokens: int | None = None
    max_new_tokens: int = 256
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    max_queue: int = 64  # sequences waiting or running at once; more get 503
    max_batch: int = 64  # sequences decoded together in one step

    def __post_init__(self):
        for name in (
            "max_prompt_chars",
            "max_new_tokens",
            "max_body_bytes",
            "max_queue",
            "max_batch",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerLimits.{name} must be a positive integer, got {value!r}")
        if self.max_prompt_tokens is not None and (
            not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1
        ):
            raise ValueError(
                "ServerLimits.max_prompt_tokens must be a positive "
                f"integer or None, got {self.max_prompt_tokens!r}"
            )
        if not (
            isinstance(self.timeout_s, (int, float))
            and math.isfinite(self.timeout_s)
            and self.timeout_s > 0
        ):
            raise ValueError(
                "ServerLimits.timeout_s must be a positive "
                f"number of seconds, got {self.timeout_s!r}"
            )

    def prompt_tokens_for(self, block_size: int) -> int:
        """The prompt limit in tokens for a model with context ``block_size``; ``ValueError`` if a
        set limit leaves no room in the window for the first new token."""
        window = max(1, block_size - 1)
        if self.max_prompt_tokens is None:
            return window
        if self.max_prompt_tokens > window:
            raise ValueError(
                f"ServerLimits.max_prompt_tokens={self.max_prompt_tokens} does not fit the "
                f"model's context window of {block_size} tokens with room for one new token; "
                f"use at most {window}"
            )
        return self.max_prompt_tokens
