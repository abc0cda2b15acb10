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
    (
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    (lambda ps: optim.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    (
        lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
    ),
    (
        lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ),
    (
        lambda ps: optim.make("momentum", ps, 0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    ),
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
        out = optim.adam_step(
            theta, 2 * (theta - 1), m, v, t, lr=0.1, weight_decay=0.05, decoupled=decoupled
        )
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


# --- bias correction where it matters
# ---------------------------------------------------------- With betas (0.9, 0.99) the
# step-1 corrections cancel: (1 - 0.9) = sqrt(1 - 0.99), so Adam without them takes the
# same first step. With (0.8, 0.9), 1 - b1 = 0.2 but sqrt(1 - b2) = 0.316: they differ.


def test_adam_step_hand_computed_first_two_steps():
    """Kills: bias correction dropped (or applied to only
    one moment, or with t - 1 / t + 1) in adam_step.

    theta = 0, gradients -2 then +1, lr 0.1, betas (0.8, 0.9):
      t=1: m = -0.4, v = 0.4, m_hat = -0.4 / 0.2 = -2,
      v_hat = 0.4 / 0.1 = 4, theta = 0 + 0.1 * 2 / 2 = 0.1
           (uncorrected: 0.1 * 0.4 / sqrt(0.4) = 0.0632)
      t=2: m = 0.8 * -0.4 + 0.2 = -0.12, v = 0.9 * 0.4 + 0.1 = 0.46,
           m_hat = -0.12 / 0.36 = -1/3, v_hat = 0.46 / 0.19,
           theta = 0.1 + 0.1 / 3 / sqrt(0.46 / 0.19) = 0.1214228
    """
    out1 = optim.adam_step(0.0, -2.0, 0.0, 0.0, t=1, lr=0.1, betas=(0.8, 0.9), eps=0.0)
    assert out1["m"] == pytest.approx(-0.4) and out1["v"] == pytest.approx(0.4)
    assert out1["m_hat"] == pytest.approx(-2.0) and out1["v_hat"] == pytest.approx(4.0)
    assert out1["theta"] == pytest.approx(0.1, rel=1e-12)
    out2 = optim.adam_step(
        out1["theta"], 1.0, out1["m"], out1["v"], t=2, lr=0.1, betas=(0.8, 0.9), eps=0.0
    )
    assert out2["m"] == pytest.approx(-0.12) and out2["v"] == pytest.approx(0.46)
    assert out2["m_hat"] == pytest.approx(-1 / 3) and out2["v_hat"] == pytest.approx(0.46 / 0.19)
    assert out2["theta"] == pytest.approx(0.1214228, abs=1e-7)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_class_hand_computed_first_two_steps(cls):
    """Kills: bias correction dropped, or taken at the
    wrong step count, in the Adam / AdamW classes."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = cls([x], lr=0.1, betas=(0.8, 0.9), eps=0.0, weight_decay=0.0)
    for g, want in ((-2.0, 0.1), (1.0, 0.1214228)):
        x.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert x.item() == pytest.approx(want, abs=1e-7)


ADAM_SETTINGS = [
    dict(betas=(0.8, 0.9)),
    dict(betas=(0.5, 0.6)),
    dict(betas=(0.9, 0.999)),
    dict(betas=(0.99, 0.9)),  # b1 > b2: the second moment forgets faster
    dict(betas=(0.7, 0.95), weight_decay=0.3),
    dict(betas=(0.8, 0.9), eps=0.05),  # eps comparable to sqrt(v_hat): where it is added matters
]


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize(
    "kw", ADAM_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
)
def test_adam_every_step_matches_torch(kw, decoupled):
    """Kills: bias corrections off, swapped between the moments or at t - 1; eps inside the square
    root; L2 decay put in the moments for AdamW (or decoupled for Adam); decay not scaled by lr.

    Fixed gradients of different signs and sizes, every parameter compared after each of 6 steps
    (float64: the two implementations differ only in rounding)."""
    g = torch.Generator().manual_seed(0)
    grads = [
        torch.randn(7, generator=g, dtype=torch.float64) * s
        for s in (1.0, 0.05, 3.0, 0.5, 0.01, 1.0)
    ]
    start = torch.randn(7, generator=g, dtype=torch.float64)
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    kw = dict(dict(lr=0.05, eps=1e-8, weight_decay=0.0), **kw)
    opt_a = (optim.AdamW if decoupled else optim.Adam)([ours], **kw)
    opt_b = (torch.optim.AdamW if decoupled else torch.optim.Adam)([theirs], **kw)
    theta, m, v = start.clone(), 0.0, 0.0
    for t, grad in enumerate(grads, start=1):
        for p, opt in ((ours, opt_a), (theirs, opt_b)):
            p.grad = grad.clone()
            opt.step()
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)
        out = optim.adam_step(
            theta, grad, m, v, t, decoupled=decoupled, **kw
        )  # the worked-example function
        theta, m, v = out["theta"], out["m"], out["v"]
        torch.testing.assert_close(theta, theirs.detach(), rtol=1e-10, atol=1e-12)
    assert (ours.detach() - start).abs().min() > 1e-3  # the parameters did move


def test_defaults_match_torch():
    """Kills: a changed default (eps, betas, lr, AdamW's
    weight decay) in the classes or in adam_step:
    every other test passes its hyperparameters explicitly."""
    import inspect

    x = [torch.zeros(1, requires_grad=True)]
    for ours, theirs in (
        (optim.Adam, torch.optim.Adam),
        (optim.AdamW, torch.optim.AdamW),
        (optim.SGD, None),
    ):
        got = ours(x).defaults
        if theirs is None:  # torch.optim.SGD has no default lr; ours is 0.01, no momentum or decay
            assert (got["lr"], got["momentum"], got["weight_decay"]) == (1e-2, 0.0, 0.0)
            continue
        want = theirs(x).defaults
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert got[key] == want[key], (ours, key)
    sig = inspect.signature(optim.adam_step).parameters
    assert (
        sig["lr"].default,
        sig["betas"].default,
        sig["eps"].default,
        sig["weight_decay"].default,
    ) == (1e-3, (0.9, 0.999), 1e-8, 0.0)


# --- defaults and validation, by behaviour (mutmut, scripts/mutate.sh, found these unchecked) ----


def test_step_functions_defaults_by_behaviour():
    """Kills: adam_step's default lr or ``decoupled`` changed, its ``update`` entry lost; sgd_step's
    default momentum changed, or the plain-SGD branch taken for another momentum (a signature
    check cannot see a changed default inside a wrapper: call without the arguments)."""
    g, theta = 0.5, 2.0
    out = optim.adam_step(theta, g, 0.0, 0.0, t=1)  # step 1: m_hat = g, v_hat = g^2, update = lr
    assert out["update"] == pytest.approx(1e-3 * g / (abs(g) + 1e-8), rel=1e-12)
    assert out["theta"] == pytest.approx(theta - out["update"], rel=1e-15)
    coupled = optim.adam_step(theta, g, 0.0, 0.0, t=1, weight_decay=0.1)
    assert coupled["m"] == pytest.approx(
        0.1 * (g + 0.1 * theta)
    )  # L2 enters the moments by default
    new_theta, buf = optim.sgd_step(theta, g, 0.1)
    assert (new_theta, buf) == (pytest.approx(theta - 0.1 * g), None)
    assert optim.sgd_step(theta, g, 0.1, buf=3.0, momentum=0.0) == (
        pytest.approx(theta - 0.1 * g),
        None,
    )


def test_optimizer_step_clears_clips_steps_and_schedules():
    """Kills: optimizer_step's default max_norm changed, clipping of other parameters than
    ``clip_params``, no zero_grad before backward, the scheduler not stepped."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    other = torch.nn.Parameter(torch.tensor([30.0, 40.0]))
    opt = torch.optim.SGD([w, other], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    w.grad = torch.full((2,), 100.0)  # a stale gradient that must be cleared first
    loss = (w * w.detach()).sum() + (other * other.detach()).sum()  # grad = (3, 4) and (30, 40)
    assert optim.optimizer_step(loss, opt, clip_params=[w], scheduler=sched) == pytest.approx(
        2525.0
    )
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))  # |(3,4)| = 5 -> 1
    torch.testing.assert_close(other.detach(), torch.tensor([0.0, 0.0]))  # not clipped
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize(
    "make_opt, message",
    [
        (lambda p: optim.SGD(p, lr=0.0), "lr must be positive, got 0.0"),
        (lambda p: optim.Adam(p, lr=0.0), "lr must be positive, got 0.0"),
        (lambda p: optim.SGD(p, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (lambda p: optim.SGD(p, momentum=1.5), r"momentum must be in \[0, 1\), got 1.5"),
        (
            lambda p: optim.Adam(p, betas=(0.9, 1.0)),
            r"betas must lie in \[0, 1\), got \(0.9, 1.0\)",
        ),
        (lambda p: optim.make("lion", p, 0.1), r"unknown optimizer 'lion'; choose one of \['adam'"),
    ],
)
def test_refused_at_the_boundary_with_a_message(make_opt, message):
    """Kills: ``<=`` relaxed to ``<`` (lr 0 accepted), momentum 1 accepted, messages lost."""
    with pytest.raises(ValueError, match=message):
        make_opt([torch.zeros(1, requires_grad=True)])


def test_accepted_at_the_boundary():
    """Kills: beta 0 refused (``0 <= b`` tightened to ``0 < b``)."""
    optim.Adam([torch.zeros(1, requires_grad=True)], betas=(0.0, 0.0))
    optim.SGD([torch.zeros(1, requires_grad=True)], momentum=0.0)


def test_trajectory_passes_the_optimizer_arguments():
    """Kills: trajectory() dropping ``**kwargs`` (momentum would silently be 0)."""
    path = optim.trajectory(lambda x: (x**2).sum(), [1.0], "sgd", lr=0.1, steps=2, momentum=0.5)
    # x1 = 1 - 0.1 * 2 = 0.8 (buf = 2); buf = 0.5 * 2 + 1.6 = 2.6; x2 = 0.8 - 0.26 = 0.54
    torch.testing.assert_close(path[:, 0], torch.tensor([1.0, 0.8, 0.54], dtype=torch.float64))


def _norm_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def test_param_groups_decay_matrices_only():
    model = _norm_model()
    decay, no_decay = optim.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(8, 5), (3, 8)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(3,), (8,), (8,), (8,)]


def test_make_with_a_model_uses_the_trainers_groups():
    """optim.make(name, model) and lmkit.train.make_optimizer split the parameters alike, and
    decoupled decay then leaves biases and LayerNorm parameters untouched."""
    from lmkit.train import TrainConfig, make_optimizer

    model = _norm_model()
    ours = optim.make("adamw", model, 0.01, weight_decay=0.1)
    trainer = make_optimizer(model, TrainConfig(weight_decay=0.1))
    for a, b in zip(ours.param_groups, trainer.param_groups, strict=True):
        assert a["weight_decay"] == b["weight_decay"]
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
    assert optim.make("adamw", model, 0.01).param_groups[0]["weight_decay"] == 0.01  # default
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only the decay moves a parameter
    ours.step()
    for p in model.parameters():
        expected = 1 - 0.01 * 0.1 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), torch.full_like(p, expected))
