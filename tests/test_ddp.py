"""DDP on CPU (gloo), two processes under torchrun: chapter 17. About a minute on two cores."""
import json

import pytest
import torch

from lmkit import distributed as D


def test_torchrun_command_shape():
    cmd = D.torchrun_command(["lmkit.distributed", "gradcheck"], nproc=2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "lmkit.distributed", "gradcheck"]
    assert "-m" not in D.torchrun_command(["script.py"], module=False)[4:]
    with pytest.raises(ValueError):
        D.torchrun_command(["x"], nproc=0)


def test_shard_and_batch():
    x, y = D.global_batch(8, seed=0)
    assert x.shape == (8, D.DEFAULT_MODEL["block_size"]) and torch.equal(x[:, 1:], y[:, :-1])
    parts = [D.shard(x, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(parts), x)
    with pytest.raises(ValueError):
        D.shard(x, 0, 3)


def test_mean_of_shard_gradients_is_global_gradient():
    ref = D.single_process_grads(8, seed=0)
    shards = [D.single_process_grads(8, seed=0, shard_of=(r, 2)) for r in range(2)]
    for name, g in ref.items():
        assert torch.allclose((shards[0][name] + shards[1][name]) / 2, g, atol=1e-6)
    assert any(not torch.allclose(shards[0][n], ref[n], atol=1e-4) for n in ref)


def test_ddp_gradients_equal_single_process():
    r = D.ddp_gradient_check(nproc=2, global_batch_size=8, timeout=240)
    assert r["world_size"] == 2
    assert r["ranks_identical"]
    assert r["max_abs_diff"] < 1e-6
    assert r["max_abs_diff_unsynced"] > 1e-3  # without the all-reduce the ranks would disagree


def test_lmkit_train_runs_under_torchrun(tmp_path):
    out = tmp_path / "run"
    proc = D.launch(D.tiny_train_args(str(out), steps=4, extra=["--corpus", "book", "--block-size", "32"]),
                    nproc=2, timeout=300)
    info = json.loads((out / "info.json").read_text())
    assert info["steps"] == 4
    assert (out / "model.safetensors").exists()
    assert '"steps": 4' in proc.stdout


def test_train_memory_arithmetic():
    n = 1e9
    dp = D.train_memory_bytes(n, 8, "DP", "mixed")
    assert dp["total"] == 16 * n
    assert D.train_memory_bytes(n, 8, "ZeRO-1")["total"] == 4 * n + 12 * n / 8
    assert D.train_memory_bytes(n, 8, "ZeRO-2")["total"] == 2 * n + 14 * n / 8
    assert D.train_memory_bytes(n, 8, "ZeRO-3")["total"] == 16 * n / 8
    assert D.train_memory_bytes(n, 4, "TP", "fp32")["total"] == 16 * n / 4
    assert D.train_memory_bytes(n, 1, "PP")["total"] == dp["total"]
    with pytest.raises(ValueError):
        D.train_memory_bytes(n, 8, "ZeRO-4")
    with pytest.raises(ValueError):
        D.train_memory_bytes(n, 8, "DP", "fp8")
    rows = D.memory_table({"a": 1e9}, n_gpus=8)
    assert rows[0]["DP"] == pytest.approx(16e9 / 2**30)


def test_gpipe_schedule_and_bubble():
    import numpy as np

    g = D.gpipe_schedule(4, 8)
    assert g.shape == (4, 2 * 11)
    for s in range(4):  # every stage runs each micro-batch forward and backward exactly once
        assert sorted(g[s][g[s] > 0]) == list(range(1, 9))
        assert sorted(-g[s][g[s] < 0]) == list(range(1, 9))
    assert (g == 0).mean() == pytest.approx(D.bubble_fraction(4, 8))
    assert D.bubble_fraction(1, 5) == 0.0
    # the backward of micro-batch k on stage s comes after its backward on stage s + 1
    for k in range(1, 9):
        t = [int(np.where(g[s] == -k)[0][0]) for s in range(4)]
        assert t == sorted(t, reverse=True)
    with pytest.raises(ValueError):
        D.bubble_fraction(0, 1)
