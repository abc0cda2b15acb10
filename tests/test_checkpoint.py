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
    save_tensors(
        tmp_path / "t.safetensors",
        {"a": a, "b": a, "c": torch.zeros(2)},
        {"step": 3, "lst": [1, 2]},
    )
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
    """Kills: load_tensors falling back to torch.load(file,
    weights_only=False) (ValueError "not an lmkit GPT" instead)."""
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.safetensors")  # a pickle in disguise
    # safetensors' own error about the header: not a
    # later one (missing metadata) after unpickling it
    with pytest.raises(SafetensorError, match="deserializing header"):
        load_model(tmp_path)
    # (tests/test_train_behaviour.py plants a pickle with a side effect and checks it never runs)


# --- the file-level contract (mutmut, scripts/mutate.sh, found these unchecked) -------------------


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))


@pytest.mark.parametrize("write", ["bytes", "json", "tensors"])
def test_atomic_write_renames_a_hidden_sibling_with_ordinary_permissions(
    tmp_path, monkeypatch, write
):
    """Kills: the temporary file made elsewhere (``dir`` dropped: the rename could cross file
    systems and stop being atomic), not hidden as ``.NAME.*.tmp`` (what cleanup and the tests look
    for), or published with other permissions than 0o666 minus the umask (mkstemp makes 0o600)."""
    import os

    from lmkit.checkpoint import atomic_write_json

    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst))
    )
    old_umask = os.umask(0o027)
    try:
        target = tmp_path / "sub" / "dir" / "out.file"  # parents that do not exist yet
        if write == "bytes":
            atomic_write_bytes(target, b"x")
        elif write == "json":
            atomic_write_json(target, {"a": 1})
        else:
            save_tensors(target, {"t": torch.zeros(2)})
    finally:
        os.umask(old_umask)
    ((src, dst),) = renames
    src = type(tmp_path)(src)
    assert src.parent == target.parent and type(tmp_path)(dst) == target
    assert src.name.startswith(".out.file.") and src.name.endswith(".tmp"), src.name
    assert (target.stat().st_mode & 0o777) == 0o640  # 0o666 & ~0o027


def test_json_is_indented_utf8_text(tmp_path):
    """Kills: info.json written compact or with \\u escapes (it is meant to be read by people)."""
    import json

    from lmkit.checkpoint import atomic_write_json

    obj = {"name": "café ☕", "steps": [1, 2]}
    atomic_write_json(tmp_path / "info.json", obj)
    text = (tmp_path / "info.json").read_bytes().decode("utf-8")
    assert text == json.dumps(obj, indent=2, ensure_ascii=False) and "café ☕" in text


def test_save_model_into_new_nested_directory_and_optional_files(tmp_path):
    """Kills: save_model not creating parent directories; load_model inventing a tokenizer or info
    that was not saved (the files' existence decides)."""
    d = tmp_path / "runs" / "a" / "b"
    save_model(d, _tiny_gpt())
    model, tok, info = load_model(d)
    assert tok is None and info == {} and not model.training
    assert sorted(p.name for p in d.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("meta", [{"kind": "gpt"}, {"config": {"vocab_size": 10}}, {}])
def test_load_model_needs_both_kind_and_config(tmp_path, meta):
    """Kills: ``or`` weakened to ``and`` (a file with only one of the two keys accepted), and the
    error message losing the file's path or the keys it found."""
    save_tensors(tmp_path / "model.safetensors", {"x": torch.zeros(1)}, meta)
    path = tmp_path / "model.safetensors"
    want = rf"{path} is not an lmkit GPT checkpoint \(metadata: {sorted(meta)!s}\)"
    with pytest.raises(ValueError, match=want.replace("[", r"\[").replace("]", r"\]")):
        load_model(tmp_path)


def test_missing_files_are_named_with_what_to_do(tmp_path):
    """Kills: the FileNotFoundError messages of load_model and load_tensors lost or garbled."""
    with pytest.raises(
        FileNotFoundError,
        match=(
            r"holds no model.safetensors; "
            r"expected a directory written by lmkit.checkpoint.save_model "
            r"\(or `python -m lmkit train --out DIR`\)"
        ),
    ):
        load_model(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=rf"checkpoint file {tmp_path / 'w.safetensors'} does not exist"
    ):
        load_tensors(tmp_path / "w.safetensors")


def test_plain_safetensors_file_without_lmkit_metadata_loads(tmp_path):
    """Kills: load_tensors requiring the ``__aliases__`` entry (files written by safetensors itself,
    or by other libraries, have none)."""
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "plain.safetensors"))
    tensors, meta = load_tensors(tmp_path / "plain.safetensors")
    assert meta == {} and torch.equal(tensors["w"], torch.arange(3.0))
