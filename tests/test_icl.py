"""Tests of lmkit.frontiers.icl (chapter 24): associative recall, one token per demonstration."""

import copy
import math

import torch
import torch.nn.functional as F

from lmkit.frontiers import icl


def test_sample_recall_tokens_encode_the_map():
    g = torch.Generator().manual_seed(0)
    S, k = 5, 7
    toks, ans, seen, maps = icl.sample_recall(6, k, S, g)
    assert (
        toks.shape == (6, k + 1)
        and ans.shape == (6,)
        and seen.shape == (6,)
        and maps.shape == (6, S)
    )
    assert all(sorted(m.tolist()) == list(range(S)) for m in maps)
    xs, ys = toks[:, :k] // S, toks[:, :k] % S
    assert (torch.gather(maps, 1, xs) == ys).all()
    q = toks[:, k] - S * S
    assert (toks[:, k] >= S * S).all() and (maps[torch.arange(6), q] == ans).all()
    assert ((xs == q[:, None]).any(1) == seen).all()
    assert icl.vocab_size(S) == 30


def test_zero_demonstrations_and_render():
    toks, ans, seen, _ = icl.sample_recall(3, 0, 4)
    assert toks.shape == (3, 1) and not seen.any()
    assert icl.render([0 * 8 + 2, 64 + 1], n_symbols=8) == "a->C | b -> ?"


def test_shuffle_context_keeps_queries_and_moves_demos():
    g = torch.Generator().manual_seed(1)
    toks, _, _, _ = icl.sample_recall(10, 6, 8, g)
    sh = icl.shuffle_context(toks, g)
    assert (sh[:, -1] == toks[:, -1]).all()
    assert sorted(map(tuple, sh[:, :-1].tolist())) == sorted(map(tuple, toks[:, :-1].tolist()))
    assert not (sh[:, :-1] == toks[:, :-1]).all(1).all()


def test_train_and_accuracy_by_k_runs():
    m = icl.make_model(n_symbols=4, max_k=4, n_layer=1, n_head=1, n_embd=16)
    losses = icl.train_icl(m, steps=5, batch_size=8, max_k=4, n_symbols=4)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert icl.answer_logits(m, icl.sample_recall(2, 3, 4)[0], 4).shape == (2, 4)
    r = icl.accuracy_by_k(m, [0, 2, 4], n_seq=32, n_symbols=4)
    assert r["k"] == [0, 2, 4] and all(0 <= a <= 1 for a in r["accuracy"])
    assert math.isnan(r["acc_seen"][0]) and r["seen_frac"][0] == 0.0
    c = icl.accuracy_by_k(m, [2], n_seq=32, n_symbols=4, control=True)
    assert 0 <= c["accuracy"][0] <= 1


def test_ideal_accuracy():
    assert icl.ideal_accuracy(0, 8) == 1 / 8
    assert abs(icl.ideal_accuracy(1, 8) - (1 / 8 + 7 / 64)) < 1e-12
    assert icl.ideal_accuracy(60, 8) > 0.99


def test_train_icl_equals_a_written_out_loop():
    """Kills: a step that forgets zero_grad, skips the clipping at 1 or the one-cycle scheduler
    step, steps the scheduler before the optimizer, or draws k and the prompts in another order."""
    m = icl.make_model(n_symbols=4, max_k=4, n_layer=1, n_head=1, n_embd=16)
    ref = copy.deepcopy(m)
    losses = icl.train_icl(m, steps=6, batch_size=8, max_k=4, n_symbols=4, lr=1e-2, seed=5)

    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=6, pct_start=0.1)
    expected, norms = [], []
    for _ in range(6):
        k = int(torch.randint(1, 5, (1,), generator=g))
        x, y, _, _ = icl.sample_recall(8, k, 4, g)
        loss = F.cross_entropy(icl.answer_logits(ref, x, 4), y)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)))
        opt.step()
        sched.step()
        expected.append(loss.item())
    assert losses == expected
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    assert max(norms) > 1.0  # the clipping acted, so a missing clip would show
