"""Knowledge distillation losses (Hinton, Vinyals & Dean 2015). Explained in chapter 16.

The student learns from the teacher's *softened* distribution ``softmax(z / T)``: at temperature
T > 1 the teacher's small probabilities (which wrong tokens are "almost right") carry information.
The gradient of the softened KL scales as 1 / T^2, so the loss is multiplied by T^2 to keep its
magnitude comparable to the hard-label cross-entropy when the two are mixed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    hard = F.cross_entropy(student_logits.reshape(-1, student_logits.size(-1)).float(), targets, ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard
