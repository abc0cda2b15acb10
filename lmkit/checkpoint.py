"""Saving and loading without pickle: safetensors for tensors, JSON for everything else.

Explained in chapters 10 and 13. Every file is written atomically: to a temporary file in the same
directory, flushed, then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmkit.data.tokenizers import load_tokenizer
from lmkit.models.gpt import GPT, GPTConfig


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions (mkstemp makes it 0600) and rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save a dict of tensors atomically as safetensors; tensors sharing storage are stored once.

    ``metadata`` values may be any JSON-serialisable object (stored as JSON strings).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen, unique, aliases = {}, {}, {}
    for name, t in tensors.items():
        key = (
            (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if t.numel()
            else None
        )
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = t.detach().to("cpu").contiguous()
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    meta["__aliases__"] = json.dumps(aliases)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(unique, tmp, metadata=meta)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and JSON metadata saved by :func:`save_tensors` (no code is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    tensors = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        raw = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    meta = {k: json.loads(v) for k, v in raw.items()}
    for alias, source in meta.pop("__aliases__", {}).items():
        tensors[alias] = tensors[source]
    return tensors, meta


def save_model(directory, model, tokenizer=None, info: dict | None = None) -> Path:
    """Save a GPT as ``model.safetensors`` (weights +
    config), ``tokenizer.json`` and ``info.json``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(
        d / "model.safetensors",
        model.state_dict(),
        {"config": model.config.to_dict(), "kind": "gpt"},
    )
    if tokenizer is not None:
        tokenizer.save(d)
    if info is not None:
        atomic_write_json(d / "info.json", info)
    return d


def load_model(directory, device="cpu"):
    """Load a GPT saved by :func:`save_model`: returns
    (model in eval mode, tokenizer or None, info)."""
    d = Path(directory)
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{d} holds no model.safetensors; expected a "
            "directory written by lmkit.checkpoint.save_model "
            "(or `python -m lmkit train --out DIR`)"
        )
    tensors, meta = load_tensors(d / "model.safetensors", device)
    if meta.get("kind") != "gpt" or "config" not in meta:
        raise ValueError(
            f"{d / 'model.safetensors'} is not an lmkit GPT checkpoint (metadata: {sorted(meta)})"
        )
    model = GPT(GPTConfig(**meta["config"])).to(device)
    model.load_state_dict(tensors)
    model.eval()
    tokenizer = load_tokenizer(d) if (d / "tokenizer.json").exists() else None
    info = (
        json.loads((d / "info.json").read_text(encoding="utf-8"))
        if (d / "info.json").exists()
        else {}
    )
    return model, tokenizer, info
