"""Decoding: greedy, temperature, top-k, top-p (nucleus) sampling and beam search, with a KV cache.

Explained in chapter 12.

Context window policy (both paths identical, so the cache never changes the output): the model
conditions on a window of at most ``block_size`` tokens. When the sequence fills the window, the
window restarts from the last ``block_size // 2`` tokens (the cache is rebuilt from them). A prompt
longer than the window is cut to its last ``block_size // 2`` tokens when ``truncate=True`` (the
default) and raises ``ValueError`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmkit.models.decode_step import DecodeStep
from lmkit.models.gpt import KVCache
from lmkit.nn import eval_mode
from lmkit.sampling import next_token


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    truncate: bool = True,
    eos_id: int | None = None,
    before_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Continue prompts idx (B, T) by max_new_tokens tokens; returns (B, T + new).

    ``seed`` makes sampling reproducible (a private generator; the global RNG is untouched).
    Generation stops early when every row has produced ``eos_id``. ``before_step(n)`` is called
    before each model call with the number of tokens generated so far; an exception it raises
    stops generation (the server's per-request deadline, chapter 13).
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(
            "idx must be a non-empty (batch, time) tensor "
            f"of token ids, got shape {tuple(idx.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    window = model.config.block_size
    device = idx.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    start = 0
    if idx.size(1) >= window:
        if not truncate:
            raise ValueError(
                f"prompt of {idx.size(1)} tokens does not fit the context window of {window}; "
                "shorten it or pass truncate=True"
            )
        start = idx.size(1) - window // 2
    with eval_mode(model):
        cache, decode_step = None, DecodeStep(model) if use_cache else None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=device)
        for produced in range(max_new_tokens):
            if before_step is not None:
                before_step(produced)
            if idx.size(1) - start >= window:  # window full: restart it from the last half
                start = idx.size(1) - window // 2
                cache = None
            if not use_cache:  # the whole window, every step
                last = model(idx[:, start:])[0][:, -1]
            elif cache is None:  # prefill: the window so far fills a new cache
                cache = KVCache(model.config, idx.size(0), device, next(model.parameters()).dtype)
                last = model(idx[:, start:], cache=cache)[0][:, -1]
            else:  # one new token; the cache holds the rest
                last = decode_step(idx[:, -1:], cache)
            tok = next_token(last, temperature, top_k, top_p, generator)
            if eos_id is not None:
                tok = tok.masked_fill(finished[:, None], eos_id)
                finished |= tok[:, 0] == eos_id
            idx = torch.cat([idx, tok], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
    return idx


@torch.no_grad()
def beam_search(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
):
    """Beam search for one prompt idx (1, T). Returns (best sequence (1, T + n), its score).

    The score is the summed log-probability divided by (generated length) ** length_penalty.
    Prompt plus new tokens must fit the context window (``ValueError`` otherwise).
    """
    if idx.dim() != 2 or idx.size(0) != 1:
        raise ValueError(f"beam_search takes one prompt of shape (1, T), got {tuple(idx.shape)}")
    if idx.size(1) + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"prompt ({idx.size(1)}) + max_new_tokens "
            f"({max_new_tokens}) exceeds the context window "
            f"({model.config.block_size})"
        )
    with eval_mode(model):
        dtype = next(model.parameters()).dtype
        cache = KVCache(model.config, 1, idx.device, dtype)
        logits, _ = model(idx, cache=cache)
        decode_step = DecodeStep(model)
        beams = idx
        scores = torch.zeros(1, device=idx.device)
        done: list[tuple[float, torch.Tensor]] = []
        last = logits[:, -1, :]
        for step in range(max_new_tokens):
            logp = F.log_softmax(last.float(), dim=-1)  # (beams, V)
            cand = (scores[:, None] + logp).view(-1)
            top = torch.topk(cand, min(2 * num_beams, cand.numel()))
            V = logp.size(-1)
            keep_rows, keep_tok, keep_score = [], [], []
            for s, flat in zip(top.values.tolist(), top.indices.tolist()):
                row, tok = divmod(flat, V)
                if eos_id is not None and tok == eos_id:
                    seq = torch.cat([beams[row], torch.tensor([tok], device=idx.device)])
                    done.append((s / (step + 1) ** length_penalty, seq))
                    continue
                keep_rows.append(row), keep_tok.append(tok), keep_score.append(s)
                if len(keep_rows) == num_beams:
                    break
            if not keep_rows or (eos_id is not None and len(done) >= num_beams):
                break
            rows = torch.tensor(keep_rows, device=idx.device)
            toks = torch.tensor(keep_tok, device=idx.device)[:, None]
            beams = torch.cat([beams[rows], toks], dim=1)
            scores = torch.tensor(keep_score, device=idx.device)
            cache.reorder(rows)
            last = decode_step(toks, cache)
        n = beams.size(1) - idx.size(1)
        for s, seq in zip(scores.tolist(), beams):
            done.append((s / max(n, 1) ** length_penalty, seq))
        best_score, best = max(done, key=lambda t: t[0])
    return best[None, :], best_score
