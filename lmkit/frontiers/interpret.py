"""Interpretability tools for lmkit's GPT: logit lens, linear probes, attention-map helpers.

Explained in chapter 29.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "logit_lens",
    "logit_lens_stats",
    "residual_features",
    "probe_layers",
    "attention_entropy",
    "previous_token_score",
    "char_class",
]


@torch.no_grad()
def logit_lens(model, idx: torch.Tensor) -> torch.Tensor:
    """Decode every layer's residual stream with the final norm and the unembedding.

    idx (B, T) -> logits (L+1, B, T, V): entry 0 reads the embeddings, entry L equals the model's
    own output logits. Explained in chapter 29.
    """
    states = model.hidden_states(idx)
    tr = model.transformer
    return torch.stack([model.lm_head(tr.ln_f(h)) for h in states])


@torch.no_grad()
def logit_lens_stats(model, idx: torch.Tensor) -> list[dict]:
    """Per layer: cross-entropy of the next token, top-1 accuracy and agreement with the last layer.

    idx (B, T): predictions at positions 0..T-2 are scored against idx[:, 1:]. Returns a list of
    L+1 dicts {layer, loss, acc, agree_final, kl_final}. Explained in chapter 29.
    """
    lens = logit_lens(model, idx)[:, :, :-1]  # (L+1, B, T-1, V)
    target = idx[:, 1:]
    final = lens[-1].log_softmax(-1)
    out = []
    for layer, lg in enumerate(lens):
        logp = lg.log_softmax(-1)
        loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), target.reshape(-1)).item()
        pred = logp.argmax(-1)
        out.append(
            {
                "layer": layer,
                "loss": loss,
                "acc": (pred == target).float().mean().item(),
                "agree_final": (pred == final.argmax(-1)).float().mean().item(),
                "kl_final": (final.exp() * (final - logp)).sum(-1).mean().item(),
            }
        )
    return out


@torch.no_grad()
def residual_features(model, idx: torch.Tensor) -> torch.Tensor:
    """Residual streams stacked: idx (B, T) -> (L+1, B*T, C) float32 on the CPU. Chapter 29."""
    states = model.hidden_states(idx)
    return torch.stack([h.reshape(-1, h.shape[-1]).float().cpu() for h in states])


def probe_layers(
    features: torch.Tensor,
    labels,
    train_frac: float = 0.7,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
) -> list[dict]:
    """Fit one logistic-regression **linear probe** per layer and report held-out accuracy.

    features (L+1, N, C) from :func:`residual_features`; labels (N,) integers. Returns a list of
    {layer, train_acc, test_acc, majority} where majority is the accuracy of always predicting the
    most frequent training label. Explained in chapter 29.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    n = labels.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    k = int(train_frac * n)
    tr, te = perm[:k], perm[k:]
    maj_label = np.bincount(labels[tr]).argmax()
    majority = float((labels[te] == maj_label).mean())
    out = []
    for layer in range(features.shape[0]):
        x = features[layer].numpy()
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(sc.transform(x[tr]), labels[tr])
        out.append(
            {
                "layer": layer,
                "train_acc": float(clf.score(sc.transform(x[tr]), labels[tr])),
                "test_acc": float(clf.score(sc.transform(x[te]), labels[te])),
                "majority": majority,
            }
        )
    return out


def char_class(ch: str) -> int:
    """Coarse class of a character: 0 letter, 1 digit, 2 space/newline, 3 punctuation/other.

    Explained in chapter 29.
    """
    if ch.isalpha():
        return 0
    if ch.isdigit():
        return 1
    if ch.isspace():
        return 2
    return 3


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of each head's attention rows: (L, B, H, T, T) -> (L, H).

    Low entropy = a focused head; log(t+1) at row t = uniform attention. Explained in chapter 29.
    """
    p = maps.clamp_min(1e-12)
    ent = -(maps * p.log()).sum(-1)  # (L, B, H, T)
    return ent.mean(dim=(1, 3))


def previous_token_score(maps: torch.Tensor) -> torch.Tensor:
    """Average attention weight on the immediately preceding token: (L, B, H, T, T) -> (L, H).

    Rows 1..T-1 of the sub-diagonal; 1.0 = a pure previous-token head. Explained in chapter 29.
    """
    sub = torch.diagonal(maps, offset=-1, dim1=-2, dim2=-1)  # (L, B, H, T-1)
    return sub.mean(dim=(1, 3))
