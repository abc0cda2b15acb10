"""transformers parity, the offline encoder, and the shipped checkpoints."""

import math

import pytest
import torch

from lmkit.assets import SHIPPED, checkpoint_path
from lmkit.models import GPT, GPTConfig
from lmkit.pretrained import (
    embed_sentences,
    from_hf_gpt2,
    load_pretrained,
    to_hf_gpt2,
    validation_ids,
)
from lmkit.train import evaluate_loss


def test_logits_equal_transformers_gpt2_both_ways():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()
    hf = to_hf_gpt2(model)
    idx = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-5)
        back = from_hf_gpt2(hf)
        assert torch.allclose(back(idx)[0], model(idx)[0], atol=1e-6)


def test_rope_model_has_no_gpt2_equivalent():
    with pytest.raises(ValueError, match="GPT-2"):
        to_hf_gpt2(
            GPT(
                GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8, pos_emb="rope")
            )
        )


def test_encoder_embeddings_are_semantic():
    e = embed_sentences(
        [
            "A cat sits on the mat.",
            "A kitten is sitting on a rug.",
            "Stock markets fell sharply today.",
        ]
    )
    assert e.shape == (3, 384)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.3


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_recorded_validation_loss(name):
    model, tok, info = load_pretrained(name)
    for key in ("command", "train_time_s", "hardware", "val_loss", "corpus"):
        assert key in info, key
    assert info["command"].startswith("python -m lmkit train")
    loss = evaluate_loss(model, validation_ids(name), model.config.block_size, 32)
    assert math.isclose(loss, info["val_loss"], rel_tol=1e-4), (loss, info["val_loss"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_small_and_generates(name):
    from lmkit.generate import generate

    size = (checkpoint_path(name) / "model.safetensors").stat().st_size
    assert size < 10e6
    model, tok, _ = load_pretrained(name)
    out = generate(model, torch.tensor([tok.encode("The ")]), 20, seed=0)
    assert len(tok.decode(out[0].tolist())) > 4
