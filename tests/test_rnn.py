"""lmkit.models.rnn: from-scratch cells equal torch.nn;
the LM works with lmkit.train (chapter 3)."""

import pytest
import torch

from lmkit.models.rnn import (
    RecurrentLM,
    RecurrentLMConfig,
    gru_cell,
    input_gradient_norms,
    lstm_cell,
    rnn_cell,
    scratch_forward,
)
from lmkit.train import TrainConfig, evaluate_loss, train


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
@pytest.mark.parametrize("layers", [1, 2])
def test_scratch_forward_equals_torch(cls, layers):
    torch.manual_seed(0)
    m = cls(3, 5, num_layers=layers, batch_first=True)
    x = torch.randn(2, 7, 3)
    ref_out, ref_state = m(x)
    out, state = scratch_forward(m, x)
    torch.testing.assert_close(out, ref_out)
    if cls is torch.nn.LSTM:
        for a, b in zip(state, ref_state):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(state, ref_state)


def test_scratch_forward_with_initial_state_and_errors():
    torch.manual_seed(1)
    m = torch.nn.LSTM(2, 3, batch_first=True)
    x, h0, c0 = torch.randn(1, 4, 2), torch.randn(1, 1, 3), torch.randn(1, 1, 3)
    torch.testing.assert_close(scratch_forward(m, x, (h0, c0))[0], m(x, (h0, c0))[0])
    with pytest.raises(ValueError):
        scratch_forward(torch.nn.LSTM(2, 3), x)  # not batch_first


def test_cells_by_hand():
    # one hidden unit, zero weights except biases: gates are plain sigmoids of the biases
    z1, z4, z3 = torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(3, 1)
    x, h, c = torch.ones(1, 1), torch.zeros(1, 1), torch.full((1, 1), 2.0)
    b = torch.tensor([0.0, 1.0, 0.5, -1.0])  # i, f, g, o
    h1, c1 = lstm_cell(x, (h, c), z1, z4, b, None)
    i, f, g, o = torch.sigmoid(b[0]), torch.sigmoid(b[1]), torch.tanh(b[2]), torch.sigmoid(b[3])
    assert c1.item() == pytest.approx((f * 2.0 + i * g).item())
    assert h1.item() == pytest.approx((o * torch.tanh(f * 2.0 + i * g)).item())
    hg = gru_cell(x, torch.ones(1, 1), torch.zeros(3, 1), z3, torch.tensor([0.0, 0.0, 1.0]), None)
    assert hg.item() == pytest.approx(0.5 * torch.tanh(torch.tensor(1.0)).item() + 0.5)
    hr = rnn_cell(x, h, torch.full((1, 1), 0.5), torch.zeros(1, 1))
    assert hr.item() == pytest.approx(torch.tanh(torch.tensor(0.5)).item())


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_lm_trains_with_lmkit_train(kind):
    torch.manual_seed(0)
    ids = torch.tensor([0, 1, 2, 3] * 200)
    model = RecurrentLM(
        RecurrentLMConfig(vocab_size=4, block_size=16, kind=kind, n_embd=8, n_hidden=16)
    )
    logits, loss = model(ids[None, :16], ids[None, 1:17])
    assert logits.shape == (1, 16, 4) and loss.item() > 0.5
    before = evaluate_loss(model, ids, 16)
    cfg = TrainConfig(
        max_steps=60,
        batch_size=8,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=5,
        eval_interval=0,
        progress=False,
    )
    hist = train(model, ids, ids, cfg)
    after = evaluate_loss(model, ids, 16)
    assert after < 0.2 < before and len(hist["train_loss"]) == 60
    assert model.config.to_dict()["kind"] == kind
    out = model.generate(ids[None, :4], 8, temperature=0.0)
    assert out[0, 4:].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_generate_seeded_and_lstm_forget_bias():
    torch.manual_seed(0)
    m = RecurrentLM(RecurrentLMConfig(vocab_size=5, kind="lstm", n_embd=4, n_hidden=6))
    assert torch.all(m.rnn.bias_ih_l0[6:12] == 1.0)
    a = m.generate(torch.zeros(2, 1, dtype=torch.long), 10, seed=1)
    b = m.generate(torch.zeros(2, 1, dtype=torch.long), 10, seed=1)
    assert a.shape == (2, 11) and torch.equal(a, b)
    assert m.num_params() > 0


def test_config_errors():
    with pytest.raises(ValueError):
        RecurrentLMConfig(kind="transformer")
    with pytest.raises(ValueError):
        RecurrentLMConfig(n_hidden=0)


def test_input_gradient_norms_vanish_for_rnn():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(4, 16, batch_first=True)
    g = input_gradient_norms(rnn, torch.randn(1, 40, 4))
    assert g.shape == (40,)
    assert g[-1] > 1e3 * g[0]  # the far past barely matters
    assert all(p.grad is None for p in rnn.parameters())
