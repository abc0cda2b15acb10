"""Checkpoints: safetensors + JSON round trip, tied weights, atomicity, clear errors, no pickle."""
import pytest
import torch
from safetensors import SafetensorError

from lmkit.checkpoint import atomic_write_bytes, load_model, load_tensors, save_model, save_tensors
from lmkit.data import CharTokenizer
from lmkit.models import GPT, GPTConfig


def test_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    tok = CharTokenizer("abcdefghij")
    save_model(tmp_path, model, tok, {"note": "x"})
    loaded, tok2, info = load_model(tmp_path)
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tying survives
    assert tok2.encode("abc") == tok.encode("abc") and info == {"note": "x"}
    # the tied matrix is stored once
    tensors, meta = load_tensors(tmp_path / "model.safetensors")
    assert meta["config"]["n_embd"] == 8


def test_metadata_and_aliases(tmp_path):
    a = torch.randn(3, 3)
    save_tensors(tmp_path / "t.safetensors", {"a": a, "b": a, "c": torch.zeros(2)}, {"step": 3, "lst": [1, 2]})
    tensors, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["b"], a) and meta == {"step": 3, "lst": [1, 2]}


def test_failed_write_leaves_old_file_intact(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # fails mid-write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    save_tensors(tmp_path / "model.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="not an lmkit GPT"):
        load_model(tmp_path)


def test_pickle_files_are_not_loaded(tmp_path):
    """Kills: load_tensors falling back to torch.load(file, weights_only=False) (ValueError "not an lmkit GPT" instead)."""
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.safetensors")  # a pickle in disguise
    # safetensors' own error about the header: not a later one (missing metadata) after unpickling it
    with pytest.raises(SafetensorError, match="deserializing header"):
        load_model(tmp_path)
    # (tests/test_train_behaviour.py plants a pickle with a side effect and checks it never runs)
