"""Sampling one token from logits: top-k and top-p (nucleus) filtering, temperature, greedy.

A leaf module (it imports only torch), so that every model's ``generate`` can use it.
Explained in chapter 12.
"""

from __future__ import annotations

import torch


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set logits (B, V) outside the top-k / top-p (nucleus) set to -inf."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    # top_p = 1 keeps every token: the float32 cumulative sum can reach 1 before the tail ends
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False  # the most likely token always survives, however small top_p is
        drop_unsorted = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop_unsorted, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None, generator=None
) -> torch.Tensor:
    """Pick the next token from last-position logits (B, V) -> (B, 1). temperature 0 = greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)
