"""In-context learning on synthetic tasks: a small GPT learns to read the rule from the prompt.

Explained in chapter 24.

Each sequence is ``x1 y1 x2 y2 ... xK yK`` (rendered ``x1 -> y1 ; x2 -> y2 ; ...``) where the map
x -> y is drawn afresh for every sequence, so no weight can memorise it: the only way to predict
y_i is to read the earlier pairs. Two task families:

* ``"permutation"``: a random bijection (letter substitution) of ``n_symbols`` symbols;
* ``"linear"``: y = (a x + b) mod p with random a (non-zero) and b, ``n_symbols = p`` prime.

Input symbols use token ids 0..S-1 and output symbols S..2S-1, so a GPT with ``vocab_size = 2S``
reads them. The loss is taken on the y tokens only; the prediction of y_i has i-1 demonstrations in
its context, so one forward pass measures accuracy as a function of the number of demonstrations.
"""
from __future__ import annotations

import string

import torch
import torch.nn.functional as F

from lmkit.models.gpt import GPT, GPTConfig


def sample_tasks(n_seq: int, n_pairs: int, n_symbols: int = 8, kind: str = "permutation", generator=None):
    """Draw ``n_seq`` sequences of ``n_pairs`` (x, y) pairs, each with its own random map.

    Returns (tokens (n_seq, 2 n_pairs) long, targets (n_seq, 2 n_pairs) with -100 except at the
    positions that predict a y, maps (n_seq, n_symbols) long: maps[b, x] = y of sequence b).
    """
    g = generator
    S = n_symbols
    if kind == "permutation":
        maps = torch.stack([torch.randperm(S, generator=g) for _ in range(n_seq)])
    elif kind == "linear":
        a = torch.randint(1, S, (n_seq, 1), generator=g)
        b = torch.randint(0, S, (n_seq, 1), generator=g)
        maps = (a * torch.arange(S)[None] + b) % S
    else:
        raise ValueError(f"kind must be 'permutation' or 'linear', got {kind!r}")
    xs = torch.randint(0, S, (n_seq, n_pairs), generator=g)
    ys = torch.gather(maps, 1, xs)
    tokens = torch.stack([xs, ys + S], dim=2).reshape(n_seq, 2 * n_pairs)
    targets = torch.full_like(tokens, -100)
    targets[:, 0::2] = ys + S  # the position of x_i predicts y_i
    return tokens, targets, maps


def render(tokens, n_symbols: int = 8) -> str:
    """Human-readable prompt: inputs as lower-case letters, outputs as upper-case letters."""
    t = [int(v) for v in tokens]
    out = []
    for i in range(0, len(t) - 1, 2):
        out.append(f"{string.ascii_lowercase[t[i]]} -> {string.ascii_uppercase[t[i + 1] - n_symbols]}")
    if len(t) % 2:
        out.append(f"{string.ascii_lowercase[t[-1]]} ->")
    return " ; ".join(out)


def make_model(n_symbols: int = 8, n_pairs: int = 16, n_layer: int = 2, n_head: int = 2, n_embd: int = 64, seed: int = 0) -> GPT:
    """A small GPT for the synthetic tasks (vocab 2S, block 2 * n_pairs)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=2 * n_symbols, block_size=2 * n_pairs, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=0.0))


def train_icl(model: GPT, steps: int = 400, batch_size: int = 64, n_pairs: int = 16, n_symbols: int = 8,
              kind: str = "permutation", lr: float = 3e-3, seed: int = 0, device="cpu") -> list[float]:
    """Train on freshly drawn sequences each step (AdamW, cosine decay); returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in range(steps):
        x, y, _ = sample_tasks(batch_size, n_pairs, n_symbols, kind, g)
        _, loss = model(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def accuracy_by_k(model: GPT, n_seq: int = 512, n_pairs: int = 16, n_symbols: int = 8, kind: str = "permutation",
                  seed: int = 1, device="cpu") -> dict:
    """Accuracy of y_{k+1} given k demonstrations, k = 0..n_pairs-1, on fresh sequences.

    Returns {"k" (n_pairs,), "accuracy" (n_pairs,), "seen" (n_pairs,): accuracy restricted to queries
    whose x appeared among the k demonstrations, "unseen": the others (NaN when none)}.
    """
    g = torch.Generator().manual_seed(seed)
    x, y, _ = sample_tasks(n_seq, n_pairs, n_symbols, kind, g)
    logits, _ = model(x.to(device))
    pred = logits[:, 0::2, n_symbols:].argmax(-1).cpu() + n_symbols
    truth = y[:, 0::2]
    correct = (pred == truth).float()
    xs = x[:, 0::2]
    seen = torch.zeros_like(correct, dtype=torch.bool)
    for k in range(1, n_pairs):
        seen[:, k] = (xs[:, :k] == xs[:, k : k + 1]).any(1)
    nan = float("nan")
    acc_seen = [float(correct[:, k][seen[:, k]].mean()) if seen[:, k].any() else nan for k in range(n_pairs)]
    acc_unseen = [float(correct[:, k][~seen[:, k]].mean()) if (~seen[:, k]).any() else nan for k in range(n_pairs)]
    return {"k": list(range(n_pairs)), "accuracy": correct.mean(0).tolist(), "seen": acc_seen, "unseen": acc_unseen}


def ideal_permutation_accuracy(k: int, n_symbols: int = 8, n_sim: int = 20000, seed: int = 0) -> float:
    """Accuracy of the best possible reader of a random permutation after k random demonstrations.

    It copies y when the query was demonstrated, otherwise it guesses uniformly among the outputs not
    yet used: (Monte Carlo over n_sim draws).
    """
    g = torch.Generator().manual_seed(seed)
    S = n_symbols
    xs = torch.randint(0, S, (n_sim, k + 1), generator=g)
    total = 0.0
    for row in xs.tolist():
        demo, q = set(row[:k]), row[k]
        total += 1.0 if q in demo else 1.0 / (S - len(demo))
    return total / n_sim
