"""Unit tests for lmkit.frontiers.interpret (chapter 29), on a tiny random GPT."""

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.frontiers.interpret import (
    attention_entropy,
    char_class,
    logit_lens,
    logit_lens_stats,
    previous_token_score,
    probe_layers,
    residual_features,
)
from lmkit.models.gpt import GPT, GPTConfig


def _model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    return m.eval()


def test_logit_lens_last_layer_equals_model_output():
    m = _model()
    idx = torch.randint(0, 11, (2, 8))
    lens = logit_lens(m, idx)
    assert lens.shape == (3, 2, 8, 11)
    assert torch.allclose(lens[-1], m(idx)[0], atol=1e-5)
    stats = logit_lens_stats(m, idx)
    assert len(stats) == 3 and stats[-1]["agree_final"] == 1.0 and abs(stats[-1]["kl_final"]) < 1e-6


def test_logit_lens_intermediate_layer_equals_hooked_residual_decoded():
    """Kills: intermediate layers decoded without the final LayerNorm; entries shifted by one layer
    (e.g. the first block's output reported as layer 0 or 2); every entry the model's output.

    Block 0's output is captured by a forward hook written here and decoded by hand:
    layer_norm(h) with ln_f's weight and bias, then h @ wte.T (the tied unembedding)."""
    m = _model()
    with torch.no_grad():  # weights 25x larger than at init: confident, layer-dependent predictions
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(25)
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(3))
    seen = []
    handle = m.transformer.h[0].register_forward_hook(
        lambda mod, args, out: seen.append(out.detach())
    )
    try:
        lens = logit_lens(m, idx)
    finally:
        handle.remove()
    assert len(seen) == 1
    ln = m.transformer.ln_f

    def decode(h):
        return F.layer_norm(h, (16,), ln.weight, ln.bias, ln.eps) @ m.transformer.wte.weight.T

    torch.testing.assert_close(lens[1], decode(seen[0]), atol=1e-5, rtol=1e-5)
    embedded = m.transformer.wte.weight[idx] + m.transformer.wpe.weight[:8]
    torch.testing.assert_close(lens[0], decode(embedded), atol=1e-5, rtol=1e-5)
    # not vacuous: the layers differ, and skipping the norm would be visible
    assert (lens[1] - lens[2]).abs().max() > 0.5 and (lens[0] - lens[1]).abs().max() > 0.5
    assert (seen[0] @ m.transformer.wte.weight.T - lens[1]).abs().max() > 0.5

    # the per-layer statistics of layer 1, from the hooked logits
    stats = logit_lens_stats(m, idx)
    lg, final = decode(seen[0])[:, :-1], m(idx)[0][:, :-1]
    target = idx[:, 1:]
    assert stats[1]["layer"] == 1
    want_loss = F.cross_entropy(lg.reshape(-1, 11), target.reshape(-1)).item()
    assert abs(stats[1]["loss"] - want_loss) < 1e-5 * want_loss
    assert stats[1]["acc"] == (lg.argmax(-1) == target).float().mean().item()
    assert stats[1]["agree_final"] == (lg.argmax(-1) == final.argmax(-1)).float().mean().item()
    p_final = final.softmax(-1)
    want_kl = (p_final * (p_final.log() - lg.log_softmax(-1))).sum(-1).mean().item()
    assert want_kl > 0.05 and abs(stats[1]["kl_final"] - want_kl) < 1e-4 * want_kl


def test_probe_layers_finds_a_linear_signal():
    """Kills: a majority baseline from the wrong split or
    labels (the old check was 0 < majority <= 1)."""
    m = _model()
    idx = torch.randint(0, 11, (8, 16))
    feats = residual_features(m, idx)
    assert feats.shape == (3, 128, 16)
    labels = (idx.reshape(-1) % 2).numpy()  # parity of the current token: readable at layer 0
    res = probe_layers(feats, labels, seed=0, C=100.0)
    assert len(res) == 3 and res[0]["test_acc"] > 0.8
    assert [r["layer"] for r in res] == [0, 1, 2]
    # the majority baseline, recomputed from the same split (seed 0, 70 % train)
    perm = np.random.default_rng(0).permutation(128)
    tr, te = perm[:89], perm[89:]
    maj = np.bincount(labels[tr]).argmax()
    assert all(r["majority"] == float((labels[te] == maj).mean()) for r in res)
    assert (
        res[0]["test_acc"] > res[0]["majority"] + 0.2
    )  # the probe reads the signal, not the base rate


def test_attention_helpers():
    maps = torch.tril(torch.ones(4, 4))
    maps = (maps / maps.sum(-1, keepdim=True)).expand(1, 1, 1, 4, 4)
    ent = attention_entropy(maps)
    expect = torch.log(torch.arange(1, 5).float()).mean()
    assert ent.shape == (1, 1) and torch.allclose(ent[0, 0], expect, atol=1e-5)
    prev = torch.zeros(1, 1, 1, 4, 4)
    prev[..., 0, 0] = 1
    for t in range(1, 4):
        prev[..., t, t - 1] = 1
    assert previous_token_score(prev)[0, 0].item() == 1.0
    m = _model()
    real = m.attention_maps(torch.randint(0, 11, (1, 6)))
    assert attention_entropy(real).shape == (2, 2) and previous_token_score(real).shape == (2, 2)


def test_char_class():
    assert [char_class(c) for c in "a7 ,\n"] == [0, 1, 2, 3, 2]
