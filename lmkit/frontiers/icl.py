"""In-context learning on associative recall: a small GPT reads a lookup table from its prompt.

Explained in chapter 24.

Every sequence carries its own random bijection (permutation) ``f`` of ``S = n_symbols`` symbols,
drawn afresh, so no weight can memorise it. A prompt is ``k`` demonstrations followed by a query:

    [pair(x1, y1), pair(x2, y2), ..., pair(xk, yk), query(q)]     with y_i = f(x_i)

Each demonstration is ONE token, ``pair(x, y) = x * S + y`` (ids 0 .. S*S - 1), and the query is
``query(q) = S*S + q``; the vocabulary therefore has ``S*S + S`` ids. The model must output
``f(q)``: it can only do so when some demonstration has ``x_i = q``, by attending from the query to
that token and copying its ``y`` -- a single attention lookup, which a one-layer GPT learns on a CPU
in seconds (S = 6, one layer, two heads, 800 steps of 128 prompts: chapter 24). The answer is read
from the logits of ids 0..S-1 at the last position (S classes).
"""

from __future__ import annotations

import math
import string

import torch
import torch.nn.functional as F

from lmkit.models.gpt import GPT, GPTConfig
from lmkit.optim import optimizer_step


def vocab_size(n_symbols: int) -> int:
    """S*S pair tokens + S query tokens. Explained in chapter 24."""
    return n_symbols * n_symbols + n_symbols


def sample_recall(n_seq: int, k: int, n_symbols: int = 8, generator=None):
    """Draw ``n_seq`` prompts with ``k`` demonstrations each, every prompt with its own permutation.

    Demonstration inputs and the query are drawn uniformly with replacement from 0..S-1.
    Returns (tokens (n_seq, k + 1) long, answers (n_seq,) long in 0..S-1, seen (n_seq,) bool:
    whether the query's input appears among the k demonstrations, maps (n_seq, S) long:
    maps[b, x] = f_b(x)).
    Explained in chapter 24.
    """
    S = n_symbols
    g = generator
    maps = torch.argsort(torch.rand(n_seq, S, generator=g), dim=1)
    xs = torch.randint(0, S, (n_seq, k + 1), generator=g)
    ys = torch.gather(maps, 1, xs)
    demos = xs[:, :k] * S + ys[:, :k]
    query = S * S + xs[:, k:]
    tokens = torch.cat([demos, query], dim=1)
    seen = (xs[:, :k] == xs[:, k:]).any(1) if k > 0 else torch.zeros(n_seq, dtype=torch.bool)
    return tokens, ys[:, k], seen, maps


def shuffle_context(tokens: torch.Tensor, generator=None) -> torch.Tensor:
    """Control: replace each prompt's demonstrations with those of another prompt (another map).

    tokens (n_seq, k + 1) -> (n_seq, k + 1); the query tokens stay in place. Chapter 24.
    """
    n = tokens.shape[0]
    perm = (torch.arange(n) + 1 + torch.randint(0, max(n - 1, 1), (1,), generator=generator)) % n
    out = tokens.clone()
    out[:, :-1] = tokens[perm, :-1]
    return out


def render(tokens, n_symbols: int = 8) -> str:
    """Human-readable prompt: ``a->C b->A | c -> ?`` (inputs lower case, outputs upper case)."""
    S = n_symbols
    parts = []
    for t in [int(v) for v in tokens]:
        if t < S * S:
            parts.append(f"{string.ascii_lowercase[t // S]}->{string.ascii_uppercase[t % S]}")
        else:
            parts.append(f"| {string.ascii_lowercase[t - S * S]} -> ?")
    return " ".join(parts)


def make_model(
    n_symbols: int = 6,
    max_k: int = 16,
    n_layer: int = 1,
    n_head: int = 2,
    n_embd: int = 64,
    seed: int = 0,
) -> GPT:
    """A small GPT for associative recall: vocab S*S + S, block max_k + 1. Chapter 24."""
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=vocab_size(n_symbols),
            block_size=max_k + 1,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=0.0,
        )
    )


def answer_logits(model: GPT, tokens: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """Logits (n_seq, S) over the S possible answers, read at the query position."""
    logits, _ = model(tokens)
    return logits[:, -1, :n_symbols]


def train_icl(
    model: GPT,
    steps: int = 600,
    batch_size: int = 128,
    max_k: int = 16,
    n_symbols: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    device="cpu",
) -> list[float]:
    """Train on fresh prompts (k uniform in 1..max_k per step), AdamW with a one-cycle schedule.

    Returns the cross-entropy (nats) of each step; chance is ln S. Explained in chapter 24.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in range(steps):
        k = int(torch.randint(1, max_k + 1, (1,), generator=g))
        x, y, _, _ = sample_recall(batch_size, k, n_symbols, g)
        loss = F.cross_entropy(answer_logits(model, x.to(device), n_symbols), y.to(device))
        losses.append(optimizer_step(loss, opt, model.parameters(), max_norm=1.0, scheduler=sched))
    model.eval()
    return losses


@torch.no_grad()
def accuracy_by_k(
    model: GPT,
    ks,
    n_seq: int = 512,
    n_symbols: int = 8,
    seed: int = 1,
    control: bool = False,
    device="cpu",
) -> dict:
    """Accuracy on fresh prompts for each number of demonstrations k in ``ks``.

    With ``control=True`` every prompt's demonstrations come from another prompt (another map), so
    the context is present but useless. Returns {"k", "accuracy", "seen_frac", "acc_seen",
    "acc_unseen"} (lists, NaN where a group is empty). Explained in chapter 24.
    """
    g = torch.Generator().manual_seed(seed)
    model.to(device).eval()
    out = {"k": [], "accuracy": [], "seen_frac": [], "acc_seen": [], "acc_unseen": []}
    for k in ks:
        x, y, seen, _ = sample_recall(n_seq, int(k), n_symbols, g)
        if control and k > 0:
            x = shuffle_context(x, g)
        pred = answer_logits(model, x.to(device), n_symbols).argmax(-1).cpu()
        correct = (pred == y).float()
        out["k"].append(int(k))
        out["accuracy"].append(float(correct.mean()))
        out["seen_frac"].append(float(seen.float().mean()))
        out["acc_seen"].append(float(correct[seen].mean()) if seen.any() else math.nan)
        out["acc_unseen"].append(float(correct[~seen].mean()) if (~seen).any() else math.nan)
    return out


def ideal_accuracy(k: int, n_symbols: int = 8) -> float:
    """Copy-or-guess reader: P(query demonstrated) + P(not) / S, with P(not) = (1 - 1/S)^k.

    Explained in chapter 24.
    """
    miss = (1.0 - 1.0 / n_symbols) ** k
    return (1.0 - miss) + miss / n_symbols
