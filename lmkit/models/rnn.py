"""Recurrent networks: RNN, LSTM and GRU cells written out, and recurrent language models.

Explained in chapter 3. The cells follow PyTorch's parameter layout exactly (``weight_ih`` of shape
(G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``/``bias_hh`` (G*H,), gates stacked in PyTorch's order:
LSTM ``i, f, g, o``; GRU ``r, z, n``), so the from-scratch functions can be checked against
``torch.nn.LSTM``/``GRU``/``RNN`` given the same weights (``scratch_forward``).

:class:`RecurrentLM` is a character- or token-level language model (embedding -> recurrent layers
-> linear head) with the same interface as :class:`lmkit.models.gpt.GPT`: ``model(idx, targets)``
returns ``(logits, loss)`` and ``model.config`` has ``block_size`` and ``to_dict()``, so
:func:`lmkit.train.train` and :func:`lmkit.train.evaluate_loss` work with it unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.nn import eval_mode
from lmkit.sampling import next_token

__all__ = [
    "rnn_cell",
    "lstm_cell",
    "gru_cell",
    "scratch_forward",
    "RecurrentLMConfig",
    "RecurrentLM",
    "input_gradient_norms",
]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def rnn_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """Elman RNN step: h' = tanh(W_ih x + b_ih + W_hh h + b_hh). x (B, I), h (B, H) -> (B, H)."""
    a = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    return torch.tanh(a)


def lstm_cell(x, state, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM step. x (B, I), state = (h, c) each (B, H) -> (h', c').

    i = sigma(.), f = sigma(.), g = tanh(.), o = sigma(.) of W_ih x + b_ih + W_hh h + b_hh (split in
    four, PyTorch's order); c' = f * c + i * g; h' = o * tanh(c').
    """
    h, c = state
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    return h_new, c_new


def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU step (PyTorch's variant). x (B, I), h (B, H) -> h' (B, H).

    r = sigma(W_ir x + b_ir + W_hr h + b_hr), z = sigma(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """
    gi = F.linear(x, weight_ih, bias_ih)
    gh = F.linear(h, weight_hh, bias_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def scratch_forward(module: nn.Module, x: torch.Tensor, state=None):
    """Run a ``torch.nn.RNN``/``LSTM``/``GRU`` (batch_first, unidirectional) with the cells above.

    x (B, T, I); state as PyTorch's: h0 (L, B, H), or (h0, c0) for an LSTM; None means zeros.
    Returns (output (B, T, H), final state), the same as ``module(x, state)``: assert it with
    ``torch.testing.assert_close``. Explained in chapter 3.
    """
    if not getattr(module, "batch_first", False) or getattr(module, "bidirectional", False):
        raise ValueError(
            "scratch_forward needs a batch_first, unidirectional torch.nn.RNN/LSTM/GRU"
        )
    kind = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[type(module)]
    if kind == "rnn" and module.nonlinearity != "tanh":
        raise ValueError("scratch_forward implements the tanh RNN only")
    L, H = module.num_layers, module.hidden_size
    B, T, _ = x.shape
    if state is None:
        zeros = x.new_zeros(L, B, H)
        state = (zeros, zeros.clone()) if kind == "lstm" else zeros
    finals_h, finals_c = [], []
    layer_in = x
    for layer in range(L):
        w_ih = getattr(module, f"weight_ih_l{layer}")
        w_hh = getattr(module, f"weight_hh_l{layer}")
        b_ih = getattr(module, f"bias_ih_l{layer}", None) if module.bias else None
        b_hh = getattr(module, f"bias_hh_l{layer}", None) if module.bias else None
        if kind == "lstm":
            h, c = state[0][layer], state[1][layer]
        else:
            h = state[layer]
        outs = []
        for t in range(T):
            if kind == "lstm":
                h, c = lstm_cell(layer_in[:, t], (h, c), w_ih, w_hh, b_ih, b_hh)
            elif kind == "gru":
                h = gru_cell(layer_in[:, t], h, w_ih, w_hh, b_ih, b_hh)
            else:
                h = rnn_cell(layer_in[:, t], h, w_ih, w_hh, b_ih, b_hh)
            outs.append(h)
        layer_in = torch.stack(outs, dim=1)
        finals_h.append(h)
        if kind == "lstm":
            finals_c.append(c)
    h_n = torch.stack(finals_h)
    return layer_in, ((h_n, torch.stack(finals_c)) if kind == "lstm" else h_n)


@dataclass
class RecurrentLMConfig:
    """Hyper-parameters of :class:`RecurrentLM`. ``block_size`` is the length of the training
    windows (truncated back-propagation through time); the model itself has no context limit."""

    vocab_size: int = 256
    block_size: int = 128
    kind: str = "lstm"  # "rnn", "lstm" or "gru"
    n_embd: int = 64
    n_hidden: int = 256
    n_layer: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        if self.kind not in GATES:
            raise ValueError(
                f"RecurrentLMConfig.kind must be one of {tuple(GATES)}, got {self.kind!r}"
            )
        for name in ("vocab_size", "block_size", "n_embd", "n_hidden", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"RecurrentLMConfig.{name} must be a positive integer, got {value!r}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RecurrentLMConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class RecurrentLM(nn.Module):
    """Embedding -> RNN/LSTM/GRU (``torch.nn``, batch_first) -> linear head. Chapter 3.

    ``model(idx (B, T), targets (B, T) or None, state=None)`` -> ``(logits (B, T, V), loss)``;
    ``model.step(idx, state)`` also returns the new recurrent state, which :meth:`generate` carries
    from token to token (a recurrent model needs no window: its memory is the state).
    """

    def __init__(self, config: RecurrentLMConfig):
        super().__init__()
        self.config = config
        c = config
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[c.kind]
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.rnn = rnn_cls(
            c.n_embd,
            c.n_hidden,
            num_layers=c.n_layer,
            batch_first=True,
            dropout=c.dropout if c.n_layer > 1 else 0.0,
        )
        self.head = nn.Linear(c.n_hidden, c.vocab_size)
        if c.kind == "lstm":  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            H = c.n_hidden
            for layer in range(c.n_layer):
                with torch.no_grad():
                    getattr(self.rnn, f"bias_ih_l{layer}")[H : 2 * H].fill_(1.0)
                    getattr(self.rnn, f"bias_hh_l{layer}")[H : 2 * H].fill_(0.0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def step(self, idx: torch.Tensor, state=None):
        """idx (B, T) -> (logits (B, T, V), new state)."""
        x = self.drop(self.wte(idx))
        out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None):
        """idx (B, T) long -> (logits (B, T, V), mean
        cross-entropy or None); targets -100 = ignore."""
        logits, _ = self.step(idx, state)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue prompts idx (B, T) by max_new_tokens
        sampled tokens, carrying the state: (B, T + new)."""
        with eval_mode(self):
            gen = torch.Generator(device=idx.device).manual_seed(seed) if seed is not None else None
            logits, state = self.step(idx)
            out = [idx]
            for _ in range(max_new_tokens):
                nxt = next_token(logits[:, -1], temperature, top_k, None, gen)
                out.append(nxt)
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)


def input_gradient_norms(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """How strongly the last output depends on each earlier input: ||d h_T / d x_t|| for t = 1..T.

    module: a batch_first ``torch.nn.RNN``/``LSTM``/``GRU``; x (1, T, I). The last hidden state is
    projected on a fixed direction (the all-ones vector) to get a scalar, whose gradient with
    respect to every input x_t is measured. Returns (T,) gradient norms. Vanishing gradients
    (梯度消失) show up as norms that fall exponentially with the distance T - t. Chapter 3.
    """
    x = x.detach().clone().requires_grad_(True)
    out, _ = module(x)
    (grad,) = torch.autograd.grad(out[0, -1].sum(), x)
    return grad[0].norm(dim=-1)
