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
    proc = D.launch(
        D.tiny_train_args(str(out), steps=4, extra=["--corpus", "book", "--block-size", "32"]),
        nproc=2,
        timeout=300,
    )
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


# A test-only torchrun worker: it runs lmkit's own command line (`python -m lmkit train ...`), and
# wraps two names of lmkit.train (looked up by cmd_train at call time) to record every micro-batch
# the trainer draws and this rank's weights when train() returns.
_TRAIN_WORKER = """
import os, sys
from safetensors.torch import save_file
import lmkit.train as T
from lmkit.cli import main

dump, argv = sys.argv[1], sys.argv[2:]
real_batch, real_train = T.random_batch, T.train
drawn = []

def recording_batch(*args, **kwargs):
    x, y = real_batch(*args, **kwargs)
    drawn.append((x.clone(), y.clone()))
    return x, y

def train_and_dump(model, *args, **kwargs):
    history = real_train(model, *args, **kwargs)
    tensors = {"w." + n: v.detach().clone().contiguous() for n, v in model.state_dict().items()}
    for i, (x, y) in enumerate(drawn):
        tensors[f"x.{i}"], tensors[f"y.{i}"] = x, y
    save_file(tensors, os.path.join(dump, f"rank{os.environ['RANK']}.safetensors"))
    return history

T.random_batch, T.train = recording_batch, train_and_dump
main(argv)
"""


def _train_argv(out, batch_size: int, steps: int, grad_accum: int) -> list[str]:
    return D.tiny_train_args(
        str(out),
        steps=steps,
        extra=[
            "--corpus",
            "book",
            "--block-size",
            "16",
            "--n-layer",
            "1",
            "--n-embd",
            "32",
            "--n-head",
            "2",
            "--batch-size",
            str(batch_size),
            "--grad-accum",
            str(grad_accum),
            "--warmup-steps",
            "0",
            "--seed",
            "7",
            "--device",
            "cpu",
        ],
    )[1:]  # ["train", ...]: what follows `python -m lmkit`


def _single_process_weights(
    out, batches: list, batch_size: int, steps: int, grad_accum: int, monkeypatch
):
    """lmkit's trainer in this process (world size 1), its k-th draw replaced by ``batches[k]``."""
    import lmkit.train as T
    from lmkit.cli import main

    feed, got = iter(batches), {}
    real_train = T.train

    def train_and_keep(model, *args, **kwargs):
        history = real_train(model, *args, **kwargs)
        got.update({n: v.detach().clone() for n, v in model.state_dict().items()})
        return history

    with monkeypatch.context() as m:
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            m.delenv(var, raising=False)
        m.setattr(T, "random_batch", lambda ids, block, n, gen=None: next(feed))
        m.setattr(T, "train", train_and_keep)
        main(_train_argv(out, batch_size, steps, grad_accum))
    assert next(feed, None) is None, "the trainer drew fewer micro-batches than the ranks did"
    return got


def test_lmkit_trainer_ddp_equals_single_process_on_the_global_batch(tmp_path, monkeypatch):
    """Two gloo ranks of ``python -m lmkit train`` (2 steps, 2 micro-batches of 2 sequences each)
    end with the weights of one process trained on the global batch: at every micro-batch, rank 0's
    sequences and rank 1's sequences together (4 sequences). Both ranks end bit-identical, and the
    two ranks draw different sequences (else the global batch is one batch twice).

    Kills: ``no_sync()`` on every micro-batch (gradients never all-reduced: the ranks diverge and
    differ from the single process); the rank dropped from the batch seed in lmkit.train (both
    ranks draw the same batch).
    """
    from safetensors.torch import load_file

    # tol: DDP vs one process differ by about 5e-7 (all-reduce
    # order); both bugs move weights by about 1e-2
    per_rank, steps, accum, tol = 2, 2, 2, 1e-5
    script = tmp_path / "ddp_train_worker.py"
    script.write_text(_TRAIN_WORKER)
    D.launch(
        [str(script), str(tmp_path), *_train_argv(tmp_path / "ddp", per_rank, steps, accum)],
        nproc=2,
        module=False,
        timeout=300,
    )
    dumps = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    weights = [{k[2:]: v for k, v in d.items() if k.startswith("w.")} for d in dumps]
    drawn = [
        [(d[f"x.{i}"], d[f"y.{i}"]) for i in range(sum(k.startswith("x.") for k in d))]
        for d in dumps
    ]
    assert len(drawn[0]) == len(drawn[1]) == steps * accum

    # every rank trains on its own data; the same draw on
    # both ranks makes the global batch one batch twice
    for k, ((x0, _), (x1, _)) in enumerate(zip(*drawn)):
        assert not torch.equal(x0, x1), (
            f"micro-batch {k}: rank 1 drew rank 0's sequences (rank missing from the seed?)"
        )

    # the all-reduce keeps every replica identical
    bad = [n for n in weights[0] if not torch.equal(weights[0][n], weights[1][n])]
    assert not bad, f"ranks end with different weights in {bad[:3]} (gradients not synchronised?)"

    union = [(torch.cat([x0, x1]), torch.cat([y0, y1])) for (x0, y0), (x1, y1) in zip(*drawn)]
    ref = _single_process_weights(
        tmp_path / "single", union, 2 * per_rank, steps, accum, monkeypatch
    )
    diff = {n: (weights[0][n] - ref[n]).abs().max().item() for n in ref}
    worst = max(diff, key=diff.get)
    assert diff[worst] < tol, (
        f"DDP differs from one process on the global batch: {worst} by {diff[worst]:.3g}"
    )

    # the comparison has power: one batch twice (rank 0's) gives weights far from the global batch's
    twice = [(torch.cat([x0, x0]), torch.cat([y0, y0])) for (x0, y0), _ in zip(*drawn)]
    dup = _single_process_weights(
        tmp_path / "twice", twice, 2 * per_rank, steps, accum, monkeypatch
    )
    assert max((dup[n] - ref[n]).abs().max().item() for n in ref) > 100 * tol
