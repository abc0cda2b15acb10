"""Unit tests for lmkit.frontiers.privacy (chapter 27)."""

import copy
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.frontiers.privacy import (
    accuracy,
    canary_exposure,
    dp_train_classifier,
    exposure,
    fedavg,
    label_skew_split,
    mlp_classifier,
    plant_canary,
    sequence_nll,
    train_classifier,
)
from lmkit.models.gpt import GPT, GPTConfig


def test_plant_canary():
    t = "a\nb\nc"
    out = plant_canary(t, "SECRET", 3, seed=1)
    assert out.count("SECRET") == 3 and out.replace("SECRET\n", "").replace("\nSECRET", "") == t
    assert plant_canary(t, "X", 0) == t


def test_exposure():
    nll = torch.tensor([3.0, 1.0, 2.0, 4.0])
    assert exposure(1.0, nll) == (1, 2.0)
    rank, e = exposure(4.0, nll)
    assert rank == 4 and abs(e) < 1e-12


class _Tok:
    def encode(self, s):
        return [int(c) if c.isdigit() else 10 for c in s]


def test_sequence_nll_and_canary_exposure():
    torch.manual_seed(0)
    m = GPT(
        GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=1, n_embd=8, dropout=0.0)
    ).eval()
    ids = torch.randint(0, 11, (3, 6))
    nll = sequence_nll(m, ids, start=2)
    logp = m(ids[:, :-1])[0].log_softmax(-1)
    ref = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)[:, 1:].sum(-1)
    assert torch.allclose(nll, ref, atol=1e-5)
    r = canary_exposure(m, _Tok(), "x=", "07", 2)
    assert 1 <= r["rank"] <= 100 and 0 <= r["exposure"] <= math.log2(100) + 1e-9


def test_train_dp_and_fedavg():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] > 0).long()
    m = train_classifier(mlp_classifier(4, 8, 2), x, y, epochs=20)
    assert accuracy(m, x, y) > 0.85
    dm, noise, eps = dp_train_classifier(
        mlp_classifier(4, 8, 2), x, y, target_epsilon=4.0, epochs=3, batch_size=50, delta=1e-3
    )
    assert noise > 0 and 0 < eps <= 4.0 + 0.1
    parts = label_skew_split(y.numpy(), 2, 1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert all(len(np.unique(y.numpy()[p])) == 1 for p in parts)
    g, hist = fedavg(
        lambda: mlp_classifier(4, 8, 2),
        x,
        y,
        parts,
        rounds=3,
        eval_fn=lambda mm: accuracy(mm, x, y),
    )
    assert len(hist) == 3 and 0 <= hist[-1] <= 1


def _two_class_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def test_train_classifier_equals_a_written_out_loop():
    """Kills: a step that forgets zero_grad (with momentum SGD the stale gradients would pile up),
    or another batch order than the seeded permutation per epoch."""
    x, y = _two_class_data()
    torch.manual_seed(0)
    m = mlp_classifier(4, 8, 2)
    ref = copy.deepcopy(m)
    train_classifier(m, x, y, epochs=2, batch_size=32, lr=0.05, seed=3)

    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        perm = torch.randperm(120, generator=g)
        for i in range(0, 120, 32):
            b = perm[i : i + 32]
            loss = F.cross_entropy(ref(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))


def test_dp_train_classifier_equals_a_written_out_opacus_loop():
    """Kills: a DP step that forgets zero_grad (Opacus then mixes the per-example gradients of two
    batches), or one that bypasses the private optimizer (no clipping, no noise)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _two_class_data()
    torch.manual_seed(0)
    init = mlp_classifier(4, 8, 2)
    kw = dict(target_epsilon=4.0, delta=1e-3, epochs=2, batch_size=30, lr=0.05, seed=3)
    m, noise, eps = dp_train_classifier(copy.deepcopy(init), x, y, **kw)

    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    loader = DataLoader(TensorDataset(x, y), batch_size=30, shuffle=True, generator=g)
    opt = torch.optim.SGD(init.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        ref, opt, loader = engine.make_private_with_epsilon(
            module=init,
            optimizer=opt,
            data_loader=loader,
            epochs=2,
            target_epsilon=4.0,
            target_delta=1e-3,
            max_grad_norm=1.0,
        )
        ref.train()
        for _ in range(2):
            for xb, yb in loader:
                if len(yb) == 0:
                    continue
                loss = F.cross_entropy(ref(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        ref_eps = engine.get_epsilon(1e-3)
    assert (noise, eps) == (float(opt.noise_multiplier), float(ref_eps))
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
