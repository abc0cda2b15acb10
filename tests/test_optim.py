"""lmkit.optim: from-scratch optimizers agree with torch.optim (chapter 7)."""
import math

import pytest
import torch

from lmkit import optim


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _run(make_opt, steps=25):
    model = _model()
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=g)
        y = torch.randn(16, 3, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


CASES = [
    (lambda ps: optim.SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01)),
    (lambda ps: optim.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    (lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
     lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
    (lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1), lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    (lambda ps: optim.make("momentum", ps, 0.05), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
]


@pytest.mark.parametrize("ours,theirs", CASES)
def test_matches_torch_optim(ours, theirs):
    for a, b in zip(_run(ours), _run(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_step_worked_example():
    theta, path = 0.0, []
    for _ in range(3):
        theta, _ = optim.sgd_step(theta, 2 * (theta - 1), lr=0.1)
        path.append(round(theta, 6))
    assert path == [0.2, 0.36, 0.488]


def test_sgd_step_momentum_matches_class():
    x = torch.tensor([0.0], requires_grad=True)
    opt = optim.SGD([x], lr=0.1, momentum=0.9)
    theta, buf = 0.0, None
    for _ in range(4):
        opt.zero_grad()
        ((x - 1) ** 2).sum().backward()
        opt.step()
        theta, buf = optim.sgd_step(theta, 2 * (theta - 1), 0.1, buf, momentum=0.9)
        assert math.isclose(theta, x.item(), rel_tol=1e-6)


def test_adam_step_first_step_is_lr_sized():
    out = optim.adam_step(0.0, -2.0, 0.0, 0.0, t=1, lr=0.1, betas=(0.9, 0.99))
    assert math.isclose(out["theta"], 0.1, rel_tol=1e-6)
    assert math.isclose(out["m"], -0.2) and math.isclose(out["v"], 0.04)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_step_matches_class(decoupled):
    x = torch.tensor([0.5, -1.0], requires_grad=True)
    cls = optim.AdamW if decoupled else optim.Adam
    opt = cls([x], lr=0.1, weight_decay=0.05)
    theta, m, v = torch.tensor([0.5, -1.0]), 0.0, 0.0
    for t in range(1, 5):
        opt.zero_grad()
        ((x - 1) ** 2).sum().backward()
        opt.step()
        out = optim.adam_step(theta, 2 * (theta - 1), m, v, t, lr=0.1, weight_decay=0.05, decoupled=decoupled)
        theta, m, v = out["theta"], out["m"], out["v"]
        torch.testing.assert_close(theta, x.detach())


def test_trajectory_shape_and_convergence():
    path = optim.trajectory(lambda p: ((p - 1) ** 2).sum(), [0.0, 3.0], "adam", lr=0.1, steps=200)
    assert path.shape == (201, 2)
    assert torch.allclose(path[-1], torch.ones(2, dtype=torch.float64), atol=0.05)


def test_errors():
    with pytest.raises(ValueError):
        optim.make("lion", [torch.zeros(1, requires_grad=True)], 0.1)
    with pytest.raises(ValueError):
        optim.SGD([torch.zeros(1, requires_grad=True)], lr=-1)
    with pytest.raises(ValueError):
        optim.Adam([torch.zeros(1, requires_grad=True)], betas=(1.0, 0.9))
