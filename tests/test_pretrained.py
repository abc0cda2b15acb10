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


def test_the_table_of_chapters_is_the_book_s():
    """USED_IN (printed by ``lmkit models``) names exactly the notebooks that load each model."""
    import re

    from lmkit.assets import book_dir
    from lmkit.pretrained import USED_IN

    found = {name: set() for name in SHIPPED}
    for nb in sorted(book_dir().glob("*.ipynb")):
        label = re.match(r"(?:ch(\d+)|app([A-Z]))_", nb.name).groups()
        text = nb.read_text(encoding="utf-8")
        for name in SHIPPED:
            if f'\\"{name}\\"' in text or f"'{name}'" in text:
                found[name].add(str(int(label[0])) if label[0] else label[1])
    assert {k: set(v) for k, v in USED_IN.items()} == found


def test_list_models_reads_every_info_and_converts_to_bits_per_character():
    from lmkit.pretrained import list_models

    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == set(SHIPPED)
    for name, r in rows.items():
        info = load_pretrained(name)[2]
        assert r["params"] == info["params"] and 0 < r["size_mib"] < 10
        assert r["val_bpc"] == pytest.approx(
            info["val_loss"] * info["val_tokens"] / (len(tok_text(name)) * math.log(2))
        )
    assert rows["chat-gpt"]["init"] == "lmkit/checkpoints/bpe-gpt"


def tok_text(name):
    from lmkit.data import load_splits
    from lmkit.pretrained import load_pretrained_info

    return load_splits(load_pretrained_info(name)["corpus"])["val"]


def test_hub_loading_converts_a_save_pretrained_gpt2_directory(tmp_path):
    """The opt-in hub path, run on a local directory (what from_pretrained also accepts)."""
    from lmkit.pretrained import export_hf

    model, tok, _ = load_pretrained("bpe-gpt")
    export_hf(checkpoint_path("bpe-gpt"), tmp_path / "hf")
    hub_model, hub_tok, info = load_pretrained(str(tmp_path / "hf"), hub=True)
    text = "The for statement is used to iterate over the elements of a sequence."
    assert hub_tok.encode(text) == tok.encode(text)
    idx = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.allclose(hub_model(idx)[0], model(idx)[0], atol=1e-4)
    assert info["source"] == "hub" and info["params"] == model.num_params()
