"""Tests of lmkit.icl (chapter 24)."""
import math

import torch

from lmkit import icl


def test_sample_tasks_shapes_and_consistency():
    g = torch.Generator().manual_seed(0)
    for kind in ("permutation", "linear"):
        x, y, maps = icl.sample_tasks(5, 6, 7, kind, g)
        assert x.shape == (5, 12) and y.shape == (5, 12) and maps.shape == (5, 7)
        assert (y[:, 1::2] == -100).all()
        assert (x[:, 1::2] - 7 == torch.gather(maps, 1, x[:, 0::2])).all()
        assert (y[:, 0::2] == x[:, 1::2]).all()
    # permutations are bijections
    _, _, maps = icl.sample_tasks(3, 2, 8, "permutation", g)
    assert all(sorted(m.tolist()) == list(range(8)) for m in maps)


def test_render():
    assert icl.render([0, 9, 2], n_symbols=8) == "a -> B ; c ->"


def test_train_and_accuracy_by_k_runs():
    m = icl.make_model(n_symbols=4, n_pairs=4, n_layer=1, n_head=1, n_embd=16)
    losses = icl.train_icl(m, steps=5, batch_size=8, n_pairs=4, n_symbols=4)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    r = icl.accuracy_by_k(m, n_seq=32, n_pairs=4, n_symbols=4)
    assert len(r["accuracy"]) == 4 and all(0 <= a <= 1 for a in r["accuracy"])
    assert math.isnan(r["seen"][0])


def test_ideal_accuracy():
    assert icl.ideal_permutation_accuracy(0, 8) == 1 / 8
    assert icl.ideal_permutation_accuracy(40, 8) > 0.95
