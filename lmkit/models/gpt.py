"""A decoder-only GPT, written to be read (in the spirit of nanoGPT's ``model.py``).

Explained in chapter 9 (the model), chapter 12 (the KV cache) and chapter 5 (positions).
Module names follow Hugging Face's ``GPT2LMHeadModel`` so that weights convert both ways
(:func:`lmkit.pretrained.to_hf_gpt2`, :func:`lmkit.pretrained.from_hf_gpt2`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.nn import FeedForward, apply_rope, attention, rope_cache


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`GPT`. Invalid settings raise ``ValueError`` with the fix."""

    vocab_size: int = 256
    block_size: int = 256  # longest sequence (context window) the model accepts
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_emb: str = "learned"  # "learned" (GPT-2) or "rope" (rotary, LLaMA-style)
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "math" (explicit, for teaching)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_emb not in ("learned", "rope"):
            raise ValueError(f"GPTConfig.pos_emb must be 'learned' or 'rope', got {self.pos_emb!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("GPTConfig: RoPE needs an even head size (n_embd / n_head)")
        if self.attn_impl not in ("sdpa", "math"):
            raise ValueError(
                f"GPTConfig.attn_impl must be 'sdpa' or 'math', got {self.attn_impl!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to ``block_size``.

    Explained in chapter 12. Shapes: keys/values (n_layer, B, n_head, block_size, head_dim);
    ``pos`` is the number of positions already filled.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        hd = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._split_layers()
        self.pos = 0

    def _split_layers(self):
        # one view per layer, made once: decoding then pays one slice per update, not four
        self.layer_k = [self.k[i] for i in range(len(self.k))]  # each (B, H, block_size, hd)
        self.layer_v = [self.v[i] for i in range(len(self.v))]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, hd) at the current position; return all keys/values so far."""
        t, end = k.size(2), self.pos + k.size(2)
        keys, values = self.layer_k[layer], self.layer_v[layer]
        keys.narrow(2, self.pos, t).copy_(k)
        values.narrow(2, self.pos, t).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, t: int):
        self.pos += t

    def reorder(self, index: torch.Tensor):
        """Select batch rows (beam search keeps the cache of the surviving beams)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self._split_layers()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T, C) -> (B, T, C). Chapters 4 and 5."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.attn_impl = config.attn_impl
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, rope=None, cache=None, layer=0, keep_weights=False):
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, H, T, hd): splitting q, k, v and the heads is just a reshape.
        q, k, v = (
            self.c_attn(x)
            .view(B, T, 3, self.n_head, C // self.n_head)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        self.weights = None
        if self.attn_impl == "math" or keep_weights:
            y, w = attention(q, k, v, is_causal=True, dropout_p=p, return_weights=True)
            self.weights = w.detach() if keep_weights else None
        elif T == k.size(2):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif T == 1:  # one new query sees every cached key
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # several new queries after a cached prefix: causal mask aligned to the end
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return F.dropout(y, p) if p else y  # a function call, not a module: decoding pays per call


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Chapter 6."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(
            config.n_embd, 4 * config.n_embd, "gelu", config.bias, config.dropout
        )

    def forward(self, x, rope=None, cache=None, layer=0, keep_weights=False):
        x = x + self.attn(self.ln_1(x), rope, cache, layer, keep_weights)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only Transformer language model. Explained in chapter 9.

    ``model(idx)`` maps token ids (B, T) to logits (B, T, vocab_size); ``model(idx, targets)`` also
    returns the mean cross-entropy loss (targets (B, T), -100 = ignore). With a :class:`KVCache`,
    ``idx`` holds only the new tokens and the cache supplies the past.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def param_counts(self) -> dict[str, int]:
        """Parameters by group: ``wte``, ``wpe``, ``blocks``, ``ln_f``, ``lm_head``, ``total``.

        ``wte`` is the token table (V x C) and ``wpe`` the position table (0 with RoPE, which has
        none); ``blocks`` sums the n_layer Transformer blocks, ``ln_f`` is the final norm.
        ``lm_head`` counts only weights of its own: 0 while the head is tied to ``wte`` (the same
        matrix), V x C once untied. A shared tensor is counted once, in the first group that
        holds it, so the groups add up to ``total``. A count that leaves groups out subtracts
        them where it is used, under its own name (chapter 9): Kaplan et al.'s N is
        ``total - wte - wpe - lm_head``.
        """
        t = self.transformer
        groups = {
            "wte": t.wte,
            "wpe": t["wpe"] if "wpe" in t else None,
            "blocks": t.h,
            "ln_f": t.ln_f,
            "lm_head": self.lm_head,
        }
        seen: set[int] = set()
        counts = {}
        for name, module in groups.items():
            counts[name] = 0
            for p in module.parameters() if module is not None else ():
                if id(p) not in seen:
                    seen.add(id(p))
                    counts[name] += p.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())  # parameters() dedups too
        return counts

    def num_params(self) -> int:
        """Every parameter, tied weights counted once: ``param_counts()["total"]``."""
        return self.param_counts()["total"]

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N + 12 L H Q T (PaLM appendix B). Used for MFU, chapter 10.

        N counts the weights every token multiplies: the blocks, the final norm and the output
        matrix (V x C; the token table itself while tied). The tables are only looked up, so the
        position table is left out, and so is an untied token table. With the tied head this is
        nanoGPT's ``get_num_params()``: every parameter except ``wpe``.
        """
        c, cfg = self.param_counts(), self.config
        n = c["blocks"] + c["ln_f"] + self.lm_head.weight.numel()
        t = seq_len or cfg.block_size
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * t

    def hidden_states(self, idx, cache: KVCache | None = None, keep_weights: bool = False):
        """Residual stream after the embeddings and after every block: list of L+1 (B, T, C)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context window "
                f"(block_size={self.config.block_size}); crop the input to its last "
                f"{self.config.block_size} tokens"
            )
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_emb == "learned":
            x = (
                x + self.transformer.wpe.weight[start : start + T]
            )  # rows start..start+T-1 of the table
        else:
            cos, sin = rope_cache(
                start + T, self.config.n_embd // self.config.n_head, device=idx.device
            )
            rope = (cos[start:], sin[start:])
        if self.training and self.config.dropout:
            x = F.dropout(x, self.config.dropout)
        states = [x]
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, i, keep_weights)
            states.append(x)
        if cache is not None:
            cache.advance(T)
        return states

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ):
        """idx (B, T) long -> (logits (B, T, V), loss or None)."""
        x = self.hidden_states(idx, cache)[-1]
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head: (n_layer, B, n_head, T, T). Chapter 5."""
        self.hidden_states(idx, keep_weights=True)
        maps = torch.stack([blk.attn.weights for blk in self.transformer.h])
        for blk in self.transformer.h:
            blk.attn.weights = None
        return maps
