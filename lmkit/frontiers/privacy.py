"""Privacy tools: canaries and exposure, DP-SGD with Opacus, federated averaging.

Explained in chapter 27.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.nn import device_of
from lmkit.optim import optimizer_step

__all__ = [
    "plant_canary",
    "sequence_nll",
    "exposure",
    "canary_exposure",
    "mlp_classifier",
    "train_classifier",
    "dp_train_classifier",
    "accuracy",
    "label_skew_split",
    "fedavg",
]


def plant_canary(text: str, canary: str, repeats: int, seed: int = 0) -> str:
    """Insert ``canary`` (one line) ``repeats`` times at random line breaks of ``text``.

    Explained in chapter 27.
    """
    if repeats <= 0:
        return text
    lines = text.split("\n")
    rng = random.Random(seed)
    for _ in range(repeats):
        lines.insert(rng.randrange(len(lines) + 1), canary)
    return "\n".join(lines)


@torch.no_grad()
def sequence_nll(model, ids: torch.Tensor, start: int, batch_size: int = 1024) -> torch.Tensor:
    """Log-perplexity (nats) of tokens ids[:, start:] given everything before: (N, T) -> (N,).

    Explained in chapter 27.
    """
    out = []
    dev = device_of(model)
    for i in range(0, ids.shape[0], batch_size):
        x = ids[i : i + batch_size].to(dev)
        logits, _ = model(x[:, :-1])
        logp = logits.float().log_softmax(-1)
        tok = logp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        out.append(-tok[:, start - 1 :].sum(-1).cpu())
    return torch.cat(out)


def exposure(canary_nll: float, candidate_nll: torch.Tensor) -> tuple[int, float]:
    """Rank of the canary among all candidates (1 = most likely) and its exposure in bits.

    candidate_nll (|R|,) includes the canary itself; exposure = log2 |R| - log2 rank
    (Carlini et al. 2019). Explained in chapter 27.
    """
    rank = int((candidate_nll < canary_nll).sum().item()) + 1
    return rank, math.log2(candidate_nll.numel()) - math.log2(rank)


def canary_exposure(model, tokenizer, prefix: str, secret: str, n_digits: int) -> dict:
    """Exposure of ``prefix + secret`` among all 10**n_digits digit strings of the same prefix.

    Returns {rank, exposure, canary_nll, median_nll}. Explained in chapter 27.
    """
    cands = [f"{i:0{n_digits}d}" for i in range(10**n_digits)]
    p = tokenizer.encode(prefix)
    ids = torch.tensor([p + tokenizer.encode(c) for c in cands])
    nll = sequence_nll(model, ids, start=len(p))
    c_nll = nll[int(secret)].item()
    rank, exp_ = exposure(c_nll, nll)
    return {"rank": rank, "exposure": exp_, "canary_nll": c_nll, "median_nll": nll.median().item()}


def mlp_classifier(n_in: int = 64, hidden: int = 64, n_out: int = 10) -> nn.Module:
    """A two-layer MLP (B, n_in) -> logits (B, n_out). Explained in chapter 27."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of model on (x (N, d), y (N,)). Explained in chapter 27."""
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def train_classifier(
    model, x, y, epochs: int = 20, batch_size: int = 64, lr: float = 0.05, seed: int = 0
) -> nn.Module:
    """Plain SGD training (the non-private baseline of DP-SGD). Explained in chapter 27."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            b = perm[i : i + batch_size]
            optimizer_step(F.cross_entropy(model(x[b]), y[b]), opt)
    return model


def dp_train_classifier(
    model,
    x,
    y,
    target_epsilon: float,
    delta: float = 1e-5,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 0.05,
    max_grad_norm: float = 1.0,
    seed: int = 0,
) -> tuple[nn.Module, float, float]:
    """DP-SGD with Opacus (Abadi et al. 2016) to a target (epsilon, delta).

    Per-example gradients are clipped to ``max_grad_norm`` and Gaussian noise is added with the
    multiplier Opacus' accountant chooses for the target. Returns (model, noise_multiplier,
    epsilon spent). Explained in chapter 27.
    """
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns that secure_mode (a CSPRNG) is off
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        model, opt, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=opt,
            data_loader=loader,
            epochs=epochs,
            target_epsilon=target_epsilon,
            target_delta=delta,
            max_grad_norm=max_grad_norm,
        )
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                if len(yb) == 0:
                    continue
                # Opacus' DPOptimizer does the private part inside this ordinary step: zero_grad
                # also clears the per-example gradients, backward fills them (hooks of the
                # GradSampleModule), step clips each to max_grad_norm, adds the noise, averages
                optimizer_step(F.cross_entropy(model(xb), yb), opt)
        eps = engine.get_epsilon(delta)
    return model, float(opt.noise_multiplier), float(eps)


def label_skew_split(
    y: np.ndarray, n_clients: int, classes_per_client: int, seed: int = 0
) -> list[np.ndarray]:
    """Non-IID split: client k gets examples of ``classes_per_client`` labels (round robin).

    Returns one index array per client. Explained in chapter 27.
    """
    y = np.asarray(y)
    labels = np.unique(y)
    rng = np.random.default_rng(seed)
    owners = {c: [] for c in labels}
    for k in range(n_clients):
        for j in range(classes_per_client):
            owners[labels[(k * classes_per_client + j) % len(labels)]].append(k)
    parts = [[] for _ in range(n_clients)]
    for c in labels:
        idx = rng.permutation(np.where(y == c)[0])
        ks = owners[c] or [int(rng.integers(n_clients))]
        for k, chunk in zip(ks, np.array_split(idx, len(ks))):
            parts[k].extend(chunk.tolist())
    return [np.array(sorted(p), dtype=int) for p in parts]


def fedavg(
    make_model,
    x,
    y,
    client_idx: list[np.ndarray],
    rounds: int = 20,
    local_epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    eval_fn=None,
) -> tuple[nn.Module, list]:
    """Federated averaging (McMahan et al. 2017): local SGD on each client, then a weighted mean.

    make_model() builds a fresh model; x (N, d), y (N,); client_idx from :func:`label_skew_split`.
    Returns (global model, history of eval_fn(global) per round). Explained in chapter 27.
    """
    torch.manual_seed(seed)
    glob = make_model()
    sizes = np.array([len(c) for c in client_idx], dtype=float)
    weights = sizes / sizes.sum()
    hist = []
    for r in range(rounds):
        states = []
        for k, idx in enumerate(client_idx):
            local = copy.deepcopy(glob)
            ti = torch.as_tensor(idx)
            train_classifier(
                local,
                x[ti],
                y[ti],
                epochs=local_epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed + 1000 * r + k,
            )
            states.append(local.state_dict())
        new = {n: sum(w * s[n] for w, s in zip(weights, states)) for n in states[0]}
        glob.load_state_dict(new)
        if eval_fn is not None:
            hist.append(eval_fn(glob))
    return glob, hist
