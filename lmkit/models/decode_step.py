"""One decoding step of a GPT with its KV cache, without ``nn.Module`` dispatch.

Explained in chapter 12 and the performance appendix. With a KV cache, a step of a small model does
little arithmetic (one token through each layer), so on a CPU its time goes to Python: every
``module(x)`` call and every ``self.weight`` lookup costs microseconds, about as much as the
matrix-vector product it wraps. :class:`DecodeStep` looks the weights up once, then runs the same
arithmetic as ``GPT.forward(idx, cache=cache)`` as plain function calls (tested equal).

Anything it does not recognise (a quantized or LoRA linear layer, a module with hooks, a block of
another type) is still called as a module, so the step stays correct for every model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.models.gpt import GPT, Block, CausalSelfAttention
from lmkit.nn import FeedForward, apply_rope, rope_cache


def _as_function(module: nn.Module):
    """``module``'s forward as a plain function: exact
    Linear and LayerNorm skip the Module machinery."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is nn.Linear:  # positional arguments: tensor subclasses (torchao) expect them
        return lambda x, w=module.weight, b=module.bias: F.linear(x, w, b)
    if type(module) is nn.LayerNorm:
        m = module
        return lambda x, s=m.normalized_shape, w=m.weight, b=m.bias, eps=m.eps: F.layer_norm(
            x, s, w, b, eps
        )
    return module


def _plain(module: nn.Module, cls) -> bool:
    return type(module) is cls and not (module._forward_hooks or module._forward_pre_hooks)


class DecodeStep:
    """``step(idx, cache)``: next-token logits (B, V) for
    new tokens idx (B, 1) after a filled KVCache.

    Build it after the model's layers are final (quantized, fine-tuned, hooked): it reads them once.
    Falls back to ``model(idx, cache=cache)`` when the blocks are not lmkit's own.
    """

    def __init__(self, model):
        self.model = model
        self.fused = (
            isinstance(model, GPT)
            and _plain(model, type(model))
            and _plain(model.transformer.wte, nn.Embedding)
            and all(
                _plain(b, Block)
                and _plain(b.attn, CausalSelfAttention)
                and _plain(b.mlp, FeedForward)
                and b.mlp.activation == "gelu"
                for b in model.transformer.h
            )
        )
        if not self.fused:  # e.g. a wrapper that counts calls: every step goes through it
            return
        c = model.config
        self.n_head, self.head_dim = c.n_head, c.n_embd // c.n_head
        t = model.transformer
        self.wte, self.ln_f, self.lm_head = (
            t.wte.weight,
            _as_function(t.ln_f),
            _as_function(model.lm_head),
        )
        self.wpe = t.wpe.weight if c.pos_emb == "learned" else None
        self.rope = (
            rope_cache(c.block_size, self.head_dim, device=self.wte.device)
            if c.pos_emb == "rope"
            else None
        )
        self.layers = [
            tuple(
                _as_function(m)
                for m in (b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp.fc, b.mlp.proj)
            )
            for b in model.transformer.h
        ]

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, cache) -> torch.Tensor:
        if not self.fused or idx.size(1) != 1:
            return self.model(idx, cache=cache)[0][:, -1]
        B, pos, H, hd = idx.size(0), cache.pos, self.n_head, self.head_dim
        if pos >= self.model.config.block_size:
            raise ValueError(
                f"the KV cache is full ({pos} positions); start a new one from the last tokens"
            )
        x = self.wte[idx]  # (B, 1, C)
        if self.wpe is not None:
            x = x + self.wpe[pos]
        rope = (
            None
            if self.rope is None
            else (self.rope[0][pos : pos + 1], self.rope[1][pos : pos + 1])
        )
        for layer, (ln_1, c_attn, c_proj, ln_2, fc, proj) in enumerate(self.layers):
            # (B, 1, 3C) -> q, k, v each (B, H, 1, hd)
            q, k, v = c_attn(ln_1(x)).view(B, 3, H, 1, hd).unbind(1)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            keys, values = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, keys, values)  # one query sees every cached key
            x = x + c_proj(y.view(B, 1, H * hd))
            x = x + proj(F.gelu(fc(ln_2(x)), approximate="tanh"))
        cache.advance(1)
        return self.lm_head(self.ln_f(x))[:, 0]
