"""Unit tests for lmkit.interpret (chapter 29), on a tiny random GPT."""
import torch

from lmkit.interpret import (attention_entropy, char_class, logit_lens, logit_lens_stats,
                             previous_token_score, probe_layers, residual_features)
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


def test_probe_layers_finds_a_linear_signal():
    m = _model()
    idx = torch.randint(0, 11, (8, 16))
    feats = residual_features(m, idx)
    assert feats.shape == (3, 128, 16)
    labels = (idx.reshape(-1) % 2).numpy()       # parity of the current token: readable at layer 0
    res = probe_layers(feats, labels, seed=0, C=100.0)
    assert len(res) == 3 and res[0]["test_acc"] > 0.8
    assert 0 < res[0]["majority"] <= 1


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
