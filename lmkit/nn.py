"""Transformer building blocks: attention, position encodings, feed-forward layers, norms.

Each piece is written to be read. The explicit-math attention path exists for teaching and is
tested to give the same result as PyTorch's fused ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0, return_weights=False):
    """Scaled dot-product attention written out: softmax(q k^T / sqrt(d_k) + mask) v.

    Explained in chapter 4.

    Args:
        q: (..., T_q, d_k) queries.  k: (..., T_k, d_k) keys.  v: (..., T_k, d_v) values.
        mask: optional bool tensor broadcastable to (..., T_q, T_k); True = may attend.
        is_causal: if True, position i attends only to positions <= i (aligned to the end, so a
            single new query attends to every cached key).
        return_weights: also return the attention weights (..., T_q, T_k).
    Returns:
        (..., T_q, d_v) outputs (and the weights when asked).
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if is_causal:
        t_q, t_k = q.size(-2), k.size(-2)
        causal = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v
    return (out, weights) if return_weights else out


def causal_mask(t: int, device=None) -> torch.Tensor:
    """(t, t) bool mask, True on and below the diagonal. Explained in chapter 4."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def sinusoidal_positions(n_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed sine/cosine position encodings of Vaswani et al. (2017).

    Explained in chapter 5. Returns (n_pos, dim): even
    columns sin(p / base^(2i/dim)), odd columns cos.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_positions needs an even dim, got {dim}")
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pe = torch.zeros(n_pos, dim)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs)
    return pe


def rope_cache(n_pos: int, head_dim: int, base: float = 10000.0, device=None):
    """Cosines and sines for rotary position embeddings (RoPE, Su et al. 2021).

    Explained in chapter 5. Returns (cos, sin), each (n_pos, head_dim // 2).
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )
    angles = torch.arange(n_pos, dtype=torch.float32, device=device)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, hd) by position-dependent angles (T, hd/2)."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019): x / rms(x) * g. Chapter 6."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rms = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * rms).to(x.dtype) * self.weight


class FeedForward(nn.Module):
    """Position-wise feed-forward network: (B, T, d) -> (B, T, d). Chapter 6.

    ``activation`` is "gelu" (GPT-2), "relu" (the original Transformer) or "swiglu" (LLaMA).
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in ("gelu", "relu", "swiglu"):
            raise ValueError(f"activation must be 'gelu', 'relu' or 'swiglu', got {activation!r}")
        self.activation = activation
        n_in = 2 * d_hidden if activation == "swiglu" else d_hidden
        self.fc = nn.Linear(d_model, n_in, bias=bias)
        self.proj = nn.Linear(d_hidden, d_model, bias=bias)
        self.dropout = dropout

    def forward(self, x):
        h = self.fc(x)
        if self.activation == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        elif self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h)
        h = self.proj(h)
        return F.dropout(h, self.dropout) if self.training and self.dropout else h


# Helpers every training and decoding loop uses.


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the model is assumed to live on one device)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no device") from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (dropout off) for the block; restore its previous mode afterwards,
    also when the block raises (for example a generation timeout)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
