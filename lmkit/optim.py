"""Optimizers written out: SGD, momentum, Adam and AdamW, each a few lines of update rule.

Explained in chapter 7. Each class subclasses ``torch.optim.Optimizer`` only to inherit the
bookkeeping (parameter groups, ``zero_grad``, ``state``, learning-rate schedulers); the update
itself is written here, one line per equation, and ``tests/test_optim.py`` checks that every
parameter agrees with ``torch.optim`` after many steps.

The pure functions :func:`sgd_step` and :func:`adam_step` do one update of a single number or
tensor and return every intermediate quantity, so that a worked example can print them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch


def optimizer_step(
    loss: torch.Tensor, opt, clip_params=None, max_norm: float = 1.0, scheduler=None
) -> float:
    """One update from ``loss``: clear old gradients, backpropagate, clip the gradient norm of
    ``clip_params`` (when given) to ``max_norm``, step ``opt`` and then ``scheduler``. Returns the
    loss as a float. The four lines every training loop of the applications chapters repeats.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    opt.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()


def _closure_loss(closure: Callable | None):
    """``torch.optim``'s protocol: ``step(closure)`` re-evaluates the loss with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# --- one step, with every intermediate value (for worked examples) ------------------------------


def sgd_step(theta, grad, lr: float, buf=None, momentum: float = 0.0):
    """One (momentum) SGD step: buf <- momentum * buf + grad; theta <- theta - lr * buf.

    Explained in chapter 7. ``theta`` and ``grad`` are floats or tensors of one shape; ``buf`` is
    the velocity from the previous step (None on the first step, when it starts as ``grad``, as in
    ``torch.optim.SGD``). Returns ``(new_theta, new_buf)``.
    """
    if momentum == 0.0:
        return theta - lr * grad, None
    buf = grad if buf is None else momentum * buf + grad
    return theta - lr * buf, buf


def adam_step(
    theta,
    grad,
    m,
    v,
    t: int,
    lr: float = 1e-3,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> dict:
    """One Adam (or AdamW when ``decoupled``) step on a float or tensor ``theta``.

    Explained in chapter 7. ``m``, ``v`` are the moment estimates after step ``t - 1``
    (0 at the start), ``t`` counts from 1. The bias corrections divide the *moments*:
    m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t), theta <- theta - lr * m_hat
    / (sqrt(v_hat) + eps). Returns a dict with ``theta, m, v, m_hat, v_hat, update``.
    """
    b1, b2 = betas
    if weight_decay and decoupled:  # AdamW: shrink the weights, apart from the gradient
        theta = theta * (1 - lr * weight_decay)
    elif weight_decay:  # Adam with L2: the decay enters the gradient (and so the moments)
        grad = grad + weight_decay * theta
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    sqrt = torch.sqrt if isinstance(v_hat, torch.Tensor) else math.sqrt
    update = lr * m_hat / (sqrt(v_hat) + eps)
    return dict(theta=theta - update, m=m, v=v, m_hat=m_hat, v_hat=v_hat, update=update)


# --- optimizers over a model's parameters -------------------------------------------------------


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay. Chapter 7.

    p <- p - lr * b,  b <- momentum * b + g  (b = g on the first step; plain SGD when momentum = 0),
    where g = grad + weight_decay * p. Matches ``torch.optim.SGD`` (dampening 0, no Nesterov).
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                if mu:
                    state = self.state[p]
                    if "buf" not in state:
                        state["buf"] = g.clone()
                    else:
                        state["buf"].mul_(mu).add_(g)
                    g = state["buf"]
                p.add_(g, alpha=-lr)
        return loss


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015); with ``decoupled=True`` it is AdamW (Loshchilov & Hutter 2019).

    Explained in chapter 7. Per parameter p with gradient g, at step t = 1, 2, ...:
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  m_hat = m / (1 - b1^t);
    v_hat = v / (1 - b2^t); p <- p - lr * m_hat / (sqrt(v_hat) + eps). Weight decay:
    Adam adds ``weight_decay * p`` to g (L2); AdamW first multiplies p by (1 - lr *
    weight_decay) and leaves g alone. Matches ``torch.optim.Adam`` / ``AdamW``.
    """

    decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t, m, v = state["t"], state["m"], state["v"]
                g = p.grad
                if wd and self.decoupled:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g + wd * p
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1**t)
                v_hat = v / (1 - b2**t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as in ``torch.optim.AdamW``). Chapter 7."""

    decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "momentum": SGD, "adam": Adam, "adamw": AdamW}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The two weight-decay groups of a model's trainable parameters. Explained in chapter 7.

    Matrices (``p.dim() >= 2``: linear and embedding weights) get ``weight_decay``; vectors
    (biases, LayerNorm gains and shifts) get 0, because decay would pull a gain towards 0 instead
    of its neutral 1 and a bias towards an arbitrary 0. ``lmkit.train.make_optimizer`` and
    :func:`make` (given a model) use these groups; tied weights appear once.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make(name: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
    """Build one of this module's optimizers by name ("sgd", "momentum", "adam", "adamw").

    "momentum" is SGD with momentum 0.9 unless ``momentum=`` is given. ``params`` is an iterable
    of tensors or parameter groups, as for ``torch.optim``, or a model: then its parameters are
    split by :func:`param_groups` (``weight_decay``, default the optimizer's own, on matrices
    only), the groups of ``lmkit.train``'s AdamW. Chapter 7.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if key == "momentum":
        kwargs.setdefault("momentum", 0.9)
    cls = OPTIMIZERS[key]
    if isinstance(params, torch.nn.Module):
        default = inspect.signature(cls).parameters["weight_decay"].default
        params = param_groups(params, kwargs.pop("weight_decay", default))
    return cls(params, lr=lr, **kwargs)


def trajectory(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    start,
    optimizer: str,
    lr: float,
    steps: int,
    **kwargs,
) -> torch.Tensor:
    """Run an optimizer on a function of a small vector and return the path.

    Explained in chapter 7. ``loss_fn`` maps a (d,) tensor to a scalar; ``start`` is (d,).
    Returns (steps + 1, d): the starting point and the point after every step (float64).
    Diverging runs are kept as they are (inf/nan rows), so that a plot can show the blow-up.
    """
    x = torch.tensor(start, dtype=torch.float64).clone().requires_grad_(True)
    opt = make(optimizer, [x], lr, **kwargs)
    path = [x.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
        path.append(x.detach().clone())
    return torch.stack(path)
