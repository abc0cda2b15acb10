"""Knowledge distillation (Hinton, Vinyals & Dean 2015): the losses and a student's training loop.
Explained in chapter 16.

The student learns from the teacher's *softened* distribution ``softmax(z / T)``: at temperature
T > 1 the teacher's small probabilities (which wrong tokens are "almost right") carry information.
The gradient of the softened KL scales as 1 / T^2, so the loss is multiplied by T^2 to keep its
magnitude comparable to the hard-label cross-entropy when the two are mixed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lmkit.data import random_batch
from lmkit.models import GPT, GPTConfig
from lmkit.nn import device_of
from lmkit.optim import optimizer_step
from lmkit.train import evaluate_loss


def _flatten(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape (..., vocab), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    v = student_logits.size(-1)
    return student_logits.reshape(-1, v).float(), teacher_logits.reshape(-1, v).float()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over positions.

    Explained in chapter 16.

    Args:
        student_logits, teacher_logits: (..., V), e.g. (B, T, V) from two language models. The
            teacher's logits are detached (no gradient flows into the teacher).
        temperature: T > 0.
        mask: optional (...) bool, True for the positions to average over.
    Returns:
        A scalar >= 0, zero when the two distributions are equal.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = _flatten(student_logits, teacher_logits.detach())
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)  # (N,)
    if mask is not None:
        m = mask.reshape(-1).to(kl.device)
        kl = kl[m]
    if kl.numel() == 0:
        return s.sum() * 0.0
    return kl.mean() * temperature**2


def distillation_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
) -> torch.Tensor:
    """``alpha * distillation_loss + (1 - alpha) * cross_entropy(student, targets)``. Chapter 16.

    Args:
        student_logits, teacher_logits: (..., V). targets: (...) token ids, ``ignore_index`` skipped
            in both terms.
        alpha: weight of the soft (teacher) term, in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    soft = distillation_loss(student_logits, teacher_logits, temperature, mask=keep)
    hard = F.cross_entropy(
        student_logits.reshape(-1, student_logits.size(-1)).float(),
        targets,
        ignore_index=ignore_index,
    )
    return alpha * soft + (1 - alpha) * hard


# The training loop. :func:`train_student` trains a student GPT for a few steps on random windows
# of the teacher's training text, either on the data alone (cross-entropy) or with the teacher's
# softened predictions as extra targets (``lmkit.quant.distillation_objective``:
# ``alpha * T^2 * KL + (1 - alpha) * CE``). :func:`compare_distillation` runs both from the *same*
# initial weights and the *same* batches, so that the only difference between the two students is
# the teacher.


def student_config(
    teacher_config: GPTConfig, n_layer: int = 2, n_embd: int = 64, n_head: int = 2
) -> GPTConfig:
    """A smaller GPT with the teacher's vocabulary and context length (so the logits (B, T, V)
    line up). Explained in chapter 16."""
    return GPTConfig(
        vocab_size=teacher_config.vocab_size,
        block_size=teacher_config.block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=0.0,
        bias=teacher_config.bias,
        pos_emb=teacher_config.pos_emb,
    )


def train_student(
    student: GPT,
    train_ids: torch.Tensor,
    steps: int = 60,
    batch_size: int = 8,
    block_size: int = 64,
    lr: float = 3e-3,
    teacher: GPT | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[float]:
    """Train ``student`` in place with AdamW on random windows (B, block_size) of ``train_ids``.

    With ``teacher`` the loss is ``distillation_objective(student_logits, teacher_logits, targets,
    temperature, alpha)``; without, plain next-token cross-entropy. Each step is one
    :func:`lmkit.optim.optimizer_step` with the gradient norm clipped to 1. The batches depend only
    on ``seed``. Returns the training loss at each step (the objective that was minimised).
    Explained in chapter 16.
    """
    device = device_of(student)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    if teacher is not None:
        teacher.eval()
    student.train()
    history = []
    for _ in range(steps):
        x, y = random_batch(train_ids, block_size, batch_size, generator=gen)
        x, y = x.to(device), y.to(device)
        logits, ce = student(x, y)
        if teacher is None:
            loss = ce
        else:
            with torch.no_grad():
                t_logits, _ = teacher(x)
            loss = distillation_objective(logits, t_logits, y, temperature, alpha)
        history.append(optimizer_step(loss, opt, clip_params=student.parameters(), max_norm=1.0))
    student.eval()
    return history


def compare_distillation(
    teacher: GPT,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    config: GPTConfig | None = None,
    steps: int = 60,
    batch_size: int = 8,
    block_size: int = 64,
    lr: float = 3e-3,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    eval_batches: int | None = 4,
) -> dict:
    """Train the same student (same init, same batches) with and without the teacher. Chapter 16.

    Returns ``{"baseline": student trained on data only, "distilled": student trained with the
    teacher, "val_loss": {"teacher", "baseline", "distilled"}, "history": {"baseline", "distilled"},
    "params": {"teacher", "student"}}``. Validation losses are next-token cross-entropy (nats) on
    ``val_ids`` with the teacher's block size, capped at ``eval_batches`` batches of 16 blocks.
    """
    config = config or student_config(teacher.config)
    torch.manual_seed(seed)
    init = GPT(config)
    base, dist = copy.deepcopy(init), copy.deepcopy(init)
    device = device_of(teacher)
    base.to(device), dist.to(device)
    kw = dict(steps=steps, batch_size=batch_size, block_size=block_size, lr=lr, seed=seed)
    h_base = train_student(base, train_ids, **kw)
    h_dist = train_student(
        dist, train_ids, teacher=teacher, temperature=temperature, alpha=alpha, **kw
    )

    def ev(m):
        return evaluate_loss(
            m, val_ids, teacher.config.block_size, batch_size=16, max_batches=eval_batches
        )

    return {
        "baseline": base,
        "distilled": dist,
        "val_loss": {"teacher": ev(teacher), "baseline": ev(base), "distilled": ev(dist)},
        "history": {"baseline": h_base, "distilled": h_dist},
        "params": {
            "teacher": teacher.num_params(),
            "student": init.num_params(),
        },
    }
