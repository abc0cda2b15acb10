"""lmkit.quant.distill (chapter 16): student config, training with and without a teacher,
comparison."""

import copy

import pytest
import torch

from lmkit.data import random_batch
from lmkit.models import GPT, GPTConfig
from lmkit.quant.distill import (
    compare_distillation,
    distillation_objective,
    student_config,
    train_student,
)


def _teacher():
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    ).eval()


def _ids(n=400):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 32, (n,), generator=g)


def test_student_config_matches_vocab_and_context():
    t = _teacher()
    c = student_config(t.config, n_layer=1, n_embd=16, n_head=2)
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_embd) == (32, 16, 1, 16)
    assert sum(p.numel() for p in GPT(c).parameters()) < sum(p.numel() for p in t.parameters())


def test_train_student_is_deterministic_and_learns():
    t = _teacher()
    c = student_config(t.config, n_layer=1, n_embd=16)
    torch.manual_seed(0)
    s1 = GPT(c)
    s2 = GPT(c)
    s2.load_state_dict(s1.state_dict())
    h1 = train_student(s1, _ids(), steps=15, batch_size=4, block_size=8, teacher=t, seed=3)
    h2 = train_student(s2, _ids(), steps=15, batch_size=4, block_size=8, teacher=t, seed=3)
    assert h1 == h2 and len(h1) == 15
    # with the teacher, the student moves towards it (distillation loss with alpha=1 decreases)
    torch.manual_seed(0)
    s3 = GPT(c)
    h3 = train_student(
        s3, _ids(), steps=40, batch_size=8, block_size=8, teacher=t, alpha=1.0, lr=1e-2
    )
    assert sum(h3[-5:]) / 5 < sum(h3[:5]) / 5
    assert all(p.grad is None for p in t.parameters())  # no gradient reached the teacher


def test_compare_distillation_shapes():
    t = _teacher()
    r = compare_distillation(
        t,
        _ids(),
        _ids(200),
        student_config(t.config, 1, 16, 2),
        steps=5,
        batch_size=4,
        block_size=8,
        eval_batches=1,
    )
    assert set(r["val_loss"]) == {"teacher", "baseline", "distilled"}
    assert len(r["history"]["baseline"]) == len(r["history"]["distilled"]) == 5
    assert r["params"]["student"] < r["params"]["teacher"]
    # same initial weights, different training signal: the students differ
    pb = next(r["baseline"].parameters())
    pd = next(r["distilled"].parameters())
    assert not torch.equal(pb, pd)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_train_student_equals_a_written_out_loop(with_teacher):
    """Kills: a step that forgets zero_grad (gradients pile up), drops the clipping of the gradient
    norm to 1 or clips after the step, or returns another loss than the one minimised."""
    t = _teacher()
    torch.manual_seed(0)
    student = GPT(student_config(t.config, n_layer=1, n_embd=16))
    ref = copy.deepcopy(student)
    kw = dict(steps=6, batch_size=4, block_size=8, lr=1e-2, temperature=2.0, alpha=0.2, seed=3)
    hist = train_student(student, _ids(), teacher=t if with_teacher else None, **kw)

    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    losses, norms = [], []
    for _ in range(6):
        x, y = random_batch(_ids(), 8, 4, generator=gen)
        logits, loss = ref(x, y)
        if with_teacher:
            with torch.no_grad():
                t_logits, _ = t(x)
            loss = distillation_objective(logits, t_logits, y, 2.0, 0.2)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)))
        opt.step()
        losses.append(loss.item())
    assert hist == losses
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), ref.parameters()))
    assert max(norms) > 1.0  # the clipping acted, so a missing clip would show
    assert not student.training  # left in eval mode
