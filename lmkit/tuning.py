"""Hyper-parameter tuning and scaling studies for tiny GPTs. Explained in chapter 14.

- :func:`lr_range_test`: raise the learning rate exponentially for a few hundred steps and watch
  the loss (Smith's range test); the useful rates lie below the point where the loss turns up.
- :func:`schedule_lrs`: the learning rate per step of PyTorch's ``StepLR``, ``CosineAnnealingLR``
  and the trainer's warmup + cosine, read off real schedulers.
- :func:`train_run`: train a fresh seeded GPT with given hyper-parameters and return its curves;
  :func:`random_search` and :func:`optuna_search` minimise any objective over a search space.
- :func:`scaling_study`, :func:`fit_power_law`, :func:`compute_frontier`: train several model sizes
  on the same data and fit ``L(N) = a N^-alpha + c``.
- :func:`chinchilla_loss`, :func:`isoflop_optimum`, :func:`isoflop_view`, :func:`isoflop_widget`,
  :func:`plot_isoflop_grid`: the fitted Chinchilla loss along curves of constant compute, with a
  slider and its static small multiples.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.data.loaders import random_batch
from lmkit.models import GPT, GPTConfig
from lmkit.optim import optimizer_step
from lmkit.train import TrainConfig, evaluate_loss, lr_at, train

# --------------------------------------------------------------------------------------------
# Training helpers
# --------------------------------------------------------------------------------------------


def make_gpt(
    vocab_size: int,
    block_size: int = 64,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int | None = None,
    seed: int = 0,
    **kw,
):
    """A seeded :class:`lmkit.models.GPT`; ``n_head`` defaults to ``max(1, n_embd // 16)``."""
    torch.manual_seed(seed)
    n_head = n_head or max(1, n_embd // 16)
    return GPT(
        GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            **kw,
        )
    )


def _train_step(model, opt, lr, train_ids, batch_size, gen, device, grad_clip=None) -> float:
    """Set the learning rate, draw a batch, take one optimizer step; returns the batch loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    x, y = random_batch(train_ids, model.config.block_size, batch_size, gen)
    _, loss = model(x.to(device), y.to(device))
    return optimizer_step(loss, opt, model.parameters() if grad_clip else None, grad_clip or 1.0)


def train_steps(
    model,
    train_ids: torch.Tensor,
    steps: int,
    lr_fn,
    batch_size: int = 16,
    seed: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    betas=(0.9, 0.95),
    stop_loss: float | None = None,
    device: str = "cpu",
) -> dict:
    """Train ``model`` for ``steps`` AdamW steps with learning rate ``lr_fn(step)``.

    Batches (batch_size, block_size) are drawn from ``train_ids`` (N,) by a generator seeded with
    ``seed``, so two runs with the same seed see the same data in the same order. Training stops
    early when the loss exceeds ``stop_loss`` or is not finite. Returns
    ``{"lr": [...], "loss": [...]}``.
    """
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr_fn(0), betas=betas, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    out = {"lr": [], "loss": []}
    for step in range(steps):
        lr = lr_fn(step)
        value = _train_step(model, opt, lr, train_ids, batch_size, gen, device, grad_clip)
        out["lr"].append(lr)
        out["loss"].append(value)
        if not math.isfinite(value) or (stop_loss is not None and value > stop_loss):
            break
    return out


def ema(values, beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the smoothing used by the range test)."""
    avg, out = 0.0, []
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def lr_range_test(
    model,
    train_ids: torch.Tensor,
    lr_min: float = 1e-5,
    lr_max: float = 1.0,
    steps: int = 100,
    batch_size: int = 16,
    seed: int = 0,
    beta: float = 0.9,
    diverge: float = 4.0,
    device: str = "cpu",
) -> dict:
    """Learning-rate range test (Smith 2017): lr grows geometrically from ``lr_min`` to ``lr_max``.

    Stops when the smoothed loss exceeds ``diverge`` times its minimum. Returns a dict with ``lr``,
    ``loss``, ``smoothed`` (lists, one entry per step taken), ``lr_at_min`` (the rate at the lowest
    smoothed loss), ``lr_steepest`` (the rate where the smoothed loss falls fastest per log-lr) and
    ``suggested`` (= ``lr_at_min / 10``, the usual rule of thumb). Explained in chapter 14.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    factor = (lr_max / lr_min) ** (1 / max(1, steps - 1))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr_min, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, float("inf")
    for step in range(steps):
        lr = lr_min * factor**step
        value = _train_step(model, opt, lr, train_ids, batch_size, gen, device)
        if not math.isfinite(value):
            break
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        smooth.append(s)
        best = min(best, s)
        if s > diverge * best:
            break
    i_min = int(np.argmin(smooth))
    slopes = (
        np.gradient(np.asarray(smooth), np.log(np.asarray(lrs)))
        if len(lrs) > 2
        else np.zeros(len(lrs))
    )
    i_steep = int(np.argmin(slopes[: i_min + 1]))
    return {
        "lr": lrs,
        "loss": losses,
        "smoothed": smooth,
        "lr_at_min": lrs[i_min],
        "lr_steepest": lrs[i_steep],
        "suggested": lrs[i_min] / 10,
    }


def schedule_lrs(
    kind: str,
    base_lr: float,
    steps: int,
    step_size: int | None = None,
    gamma: float = 0.5,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
) -> list[float]:
    """Learning rate at each of ``steps`` steps, read off a real scheduler.

    ``kind``: ``"constant"``; ``"step"`` (``torch.optim.lr_scheduler.StepLR``: multiply by ``gamma``
    every ``step_size`` steps, default ``steps // 4``); ``"cosine"`` (``CosineAnnealingLR`` from
    ``base_lr`` to ``min_lr`` over ``steps``); ``"warmup_cosine"`` (:func:`lmkit.train.lr_at`).
    """
    if kind == "warmup_cosine":
        cfg = TrainConfig(max_steps=steps, lr=base_lr, min_lr=min_lr, warmup_steps=warmup_steps)
        return [lr_at(s, cfg) for s in range(steps)]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    if kind == "constant":
        return [base_lr] * steps
    if kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(
            opt, step_size=step_size or max(1, steps // 4), gamma=gamma
        )
    elif kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=min_lr)
    else:
        raise ValueError(
            f"kind must be 'constant', 'step', 'cosine' or 'warmup_cosine', got {kind!r}"
        )
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def train_run(
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    vocab_size: int,
    lr: float = 3e-3,
    steps: int = 100,
    batch_size: int = 16,
    block_size: int = 64,
    n_layer: int = 2,
    n_embd: int = 64,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    seed: int = 0,
    eval_batches: int = 4,
    device: str = "cpu",
    **schedule_kw,
) -> dict:
    """Train a fresh seeded tiny GPT with these hyper-parameters; the unit of every search.

    Returns ``{"val_loss", "train_loss" (list), "lr" (list), "params"}``; ``val_loss`` is the mean
    loss on the first ``eval_batches`` x 32 blocks of ``val_ids`` and ``params`` is Kaplan et al.'s
    N (every parameter but the token and position tables). Explained in chapter 14.
    """
    model = make_gpt(vocab_size, block_size, n_layer, n_embd, seed=seed)
    lrs = schedule_lrs(schedule, lr, steps, **schedule_kw)
    hist = train_steps(
        model, train_ids, steps, lambda s: lrs[s], batch_size, seed, weight_decay, device=device
    )
    diverged = len(hist["loss"]) < steps or not math.isfinite(hist["loss"][-1])
    val = float("inf")
    if not diverged:
        with torch.no_grad():  # the first eval_batches x 32 blocks of val_ids, always the same
            val = evaluate_loss(model, val_ids, block_size, 32, eval_batches)
    c = model.param_counts()
    return {
        "val_loss": val,
        "train_loss": hist["loss"],
        "lr": hist["lr"],
        # Kaplan et al.'s N: all but the vocabulary and position tables (lm_head is 0: tied)
        "params": c["total"] - c["wte"] - c["wpe"] - c["lm_head"],
    }


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


@dataclass
class Param:
    """One dimension of a search space: ``low..high`` (``log=True`` samples log-uniformly);
    ``integer=True`` rounds; or ``choices``."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def sample(self, rng: random.Random):
        if self.choices is not None:
            return rng.choice(list(self.choices))
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return int(round(value)) if self.integer else value


def random_search(
    objective, space: dict[str, Param], n_trials: int = 10, seed: int = 0
) -> list[dict]:
    """Random search (Bergstra & Bengio 2012): ``n_trials`` independent samples of ``space``.

    ``objective(**params) -> float`` (lower is better). Returns the trials as dicts
    ``{"trial", "params", "value"}``, sorted best first.
    """
    rng = random.Random(seed)
    trials = []
    for i in range(n_trials):
        params = {name: p.sample(rng) for name, p in space.items()}
        trials.append({"trial": i, "params": params, "value": float(objective(**params))})
    return sorted(trials, key=lambda t: (not math.isfinite(t["value"]), t["value"]))


def optuna_search(
    objective, space: dict[str, Param], n_trials: int = 10, seed: int = 0, sampler: str = "tpe"
):
    """The same search with Optuna (TPE, seeded); returns the ``optuna.Study``.

    Infinite objective values (diverged runs) are reported to Optuna as failed trials. Chapter 14.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials)),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    study = optuna.create_study(direction="minimize", sampler=samplers[sampler]())

    def wrapped(trial):
        params = {}
        for name, p in space.items():
            if p.choices is not None:
                params[name] = trial.suggest_categorical(name, list(p.choices))
            elif p.integer:
                params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
            else:
                params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        value = float(objective(**params))
        return value if math.isfinite(value) else float("nan")

    study.optimize(wrapped, n_trials=n_trials, catch=())
    return study


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def scaling_study(
    sizes,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    vocab_size: int,
    steps: int = 100,
    batch_size: int = 16,
    block_size: int = 64,
    lr: float = 3e-3,
    eval_every: int = 25,
    eval_batches: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Train one tiny GPT per ``(n_layer, n_embd)`` in ``sizes`` with :func:`lmkit.train.train`.

    Every model sees the same batches for the same number of steps. Returns one record per size:
    ``n_layer``, ``n_embd``, ``params`` (Kaplan et al.'s N, as in :func:`train_run`), ``steps``,
    ``tokens`` (D, per evaluation), ``flops`` (C = 6 N D, per evaluation), ``val_loss`` (per
    evaluation) and ``final_loss``.
    """
    records = []
    for n_layer, n_embd in sizes:
        model = make_gpt(vocab_size, block_size, n_layer, n_embd, seed=seed)
        cfg = TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            lr=lr,
            min_lr=lr / 10,
            warmup_steps=max(1, steps // 10),
            weight_decay=0.0,
            device=device,
            seed=seed,
            eval_interval=eval_every,
            eval_batches=eval_batches,
            progress=False,
        )
        hist = train(model, train_ids, val_ids, cfg)
        c = model.param_counts()
        n = c["total"] - c["wte"] - c["wpe"] - c["lm_head"]  # Kaplan et al.'s N, as in train_run
        tokens = [s * batch_size * block_size for s in hist["eval_step"]]
        records.append(
            {
                "n_layer": n_layer,
                "n_embd": n_embd,
                "params": n,
                "steps": hist["eval_step"],
                "tokens": tokens,
                "flops": [6 * n * d for d in tokens],
                "val_loss": hist["val_loss"],
                "final_loss": hist["val_loss"][-1],
            }
        )
        model.to("cpu")
    return records


def power_law(x, a: float, alpha: float, c: float = 0.0):
    """``a * x**(-alpha) + c`` (works on numbers and numpy arrays)."""
    return a * np.power(np.asarray(x, dtype=float), -alpha) + c


def fit_power_law(x, y, offset: bool = True) -> dict:
    """Fit ``y = a x^-alpha (+ c)`` to points (x > 0, y > 0).

    ``offset=False``: least squares on ``log y = log a - alpha log x`` (a straight line on log-log
    axes). ``offset=True``: non-linear least squares (``scipy.optimize.curve_fit``) for the form
    with an irreducible loss ``c``, started from the log-log fit. Returns ``{"a", "alpha", "c",
    "rmse"}`` (``c = 0`` without offset; ``rmse`` of y). Explained in chapter 14.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 2 or (x <= 0).any() or (y <= 0).any():
        raise ValueError("need at least two points with x > 0 and y > 0")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    a, alpha, c = float(np.exp(intercept)), float(-slope), 0.0
    if offset:
        if len(x) < 3:
            raise ValueError("the fit with an offset needs at least three points")
        from scipy.optimize import curve_fit

        scale = float(x.min())  # fit in units of the smallest x for conditioning
        c0 = 0.5 * float(y.min())
        a0 = max(1e-6, float(y.max()) - c0)
        try:
            (a_s, alpha, c), _ = curve_fit(
                lambda t, a_, al, c_: a_ * t ** (-al) + c_,
                x / scale,
                y,
                p0=(a0, max(alpha, 0.1), c0),
                bounds=([0, 0, 0], [np.inf, 5, float(y.min())]),
                maxfev=20000,
            )
            a, alpha, c = float(a_s * scale**alpha), float(alpha), float(c)
        except RuntimeError:  # no convergence: keep the log-log fit
            pass
    rmse = float(np.sqrt(np.mean((power_law(x, a, alpha, c) - y) ** 2)))
    return {"a": a, "alpha": alpha, "c": c, "rmse": rmse}


def compute_frontier(records: list[dict]) -> tuple[list[float], list[float]]:
    """Lower envelope of loss against compute over all runs of :func:`scaling_study`.

    Returns (flops, loss) sorted by flops, keeping only points that beat every cheaper point:
    the compute-efficient frontier.
    """
    pts = sorted((f, loss) for r in records for f, loss in zip(r["flops"], r["val_loss"]))
    xs, ys, best = [], [], float("inf")
    for f, loss in pts:
        if loss < best:
            best = loss
            xs.append(f)
            ys.append(loss)
    return xs, ys


# --------------------------------------------------------------------------------------------
# The Chinchilla loss surface: an isoFLOP view, its widget and its static small multiples
# --------------------------------------------------------------------------------------------

CHINCHILLA = dict(
    E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28
)  # Hoffmann et al. 2022, approach 3


def chinchilla_loss(
    n,
    d,
    E: float = 1.69,
    A: float = 406.4,
    B: float = 410.7,
    alpha: float = 0.34,
    beta: float = 0.28,
):
    """Fitted loss ``E + A / N^alpha + B / D^beta`` of Hoffmann et al. (numbers or arrays).

    Explained in chapter 14.
    """
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    return E + A / n**alpha + B / d**beta


def isoflop_optimum(
    compute: float, n_min: float = 1e6, n_max: float = 1e13, points: int = 4001
) -> dict:
    """Model size minimising :func:`chinchilla_loss` at fixed compute ``C = 6 N D`` (a log grid).

    Returns ``{"n", "d", "loss", "tokens_per_param"}``. Chapter 14.
    """
    n = np.geomspace(n_min, n_max, points)
    d = compute / (6 * n)
    loss = chinchilla_loss(n, d)
    i = int(np.argmin(loss))
    return {
        "n": float(n[i]),
        "d": float(d[i]),
        "loss": float(loss[i]),
        "tokens_per_param": float(d[i] / n[i]),
    }
