"""Export to the Hugging Face format: what transformers loads from the directory behaves as lmkit.

Both shipped models are exported once (module fixture) and loaded back offline with
``AutoModelForCausalLM``, ``AutoTokenizer`` and ``pipeline("text-generation")``.
"""

import json
import subprocess
import sys

import pytest
import torch

from lmkit.assets import SHIPPED, checkpoint_path
from lmkit.checkpoint import save_model
from lmkit.data import load_splits
from lmkit.data.tokenizers import CharTokenizer
from lmkit.generate import generate
from lmkit.models import GPT, GPTConfig
from lmkit.pretrained import HF_EXPORT_FILES, export_hf, load_pretrained, load_pretrained_info

transformers = pytest.importorskip("transformers")

PROMPTS = ["def read(self, path):\n    ", "The ", "import os\n\n# Return the  number of\t"]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (export directory, lmkit model, lmkit tokenizer)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in SHIPPED:
        model, tok, _ = load_pretrained(name)
        out[name] = (export_hf(checkpoint_path(name), root / name), model, tok)
    return out


@pytest.fixture(scope="module")
def loaded(exported):
    """name -> (transformers model, transformers tokenizer), loaded from the export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {
        name: (AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d))
        for name, (d, _, _) in exported.items()
    }


def validation_text(name: str) -> str:
    return load_splits(load_pretrained_info(name)["corpus"])["val"]


@pytest.mark.parametrize("name", SHIPPED)
def test_directory_holds_exactly_the_expected_files(exported, name):
    d = exported[name][0]
    assert sorted(p.name for p in d.iterdir()) == sorted(HF_EXPORT_FILES)
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] == config["n_ctx"] == 256
    # the class name transformers 4 and 5 both resolve to the generic tokenizer.json loader
    spec = json.loads((d / "tokenizer_config.json").read_text())
    assert spec["tokenizer_class"] == "PreTrainedTokenizerFast"


@pytest.mark.parametrize("name", SHIPPED)
def test_tokenizer_ids_equal_lmkit_on_the_validation_text(exported, loaded, name):
    _, _, tok = exported[name]
    hf_tok = loaded[name][1]
    text = validation_text(name)
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == text
    # spaces, blank lines, tabs, a carriage return and characters the char vocabulary lacks
    # (lmkit maps them to its stand-in "?"; transformers must too)
    odd = "  two spaces\n\n\n\ttab\r\nend ° é 中 \u00a0 ?"
    ids = tok.encode(odd)
    assert hf_tok(odd)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids)


def test_bpe_end_of_text_is_the_eos_token(exported, loaded):
    _, _, tok = exported["bpe-gpt"]
    hf_model, hf_tok = loaded["bpe-gpt"]
    eos = tok.encode("<|endoftext|>")
    assert eos == [hf_tok.eos_token_id] == [hf_model.config.eos_token_id]
    assert hf_tok("a<|endoftext|>b")["input_ids"] == tok.encode("a<|endoftext|>b")


@pytest.mark.parametrize("name", SHIPPED)
def test_logits_equal_on_a_batch(exported, loaded, name):
    _, model, tok = exported[name]
    hf_model = loaded[name][0]
    ids = torch.tensor(tok.encode(validation_text(name))[: 4 * 256]).view(4, 256)
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf_model(ids).logits
    assert theirs.shape == ours.shape
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


@pytest.mark.parametrize("name", SHIPPED)
def test_greedy_tokens_equal_through_generate_and_pipeline(exported, loaded, name):
    from transformers import pipeline

    d, model, tok = exported[name]
    hf_model = loaded[name][0]
    pipe = pipeline("text-generation", model=str(d))
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        # transformers stops at the exported eos token (chat-gpt writes it), so lmkit does too
        eos = hf_model.generation_config.eos_token_id
        ours = generate(model, ids, NEW_TOKENS, temperature=0, eos_id=eos)[0].tolist()
        with torch.no_grad():
            theirs = hf_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert theirs[0].tolist() == ours, prompt
        (piped,) = pipe(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, return_tensors=True)
        assert list(piped["generated_token_ids"]) == ours, prompt
        # the pipeline returns the prompt as typed (the tab is not in char-gpt's vocabulary and
        # reaches the model as "?") followed by the decoded continuation
        (text,) = pipe(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = [i for i in ours[ids.size(1) :] if i != eos]  # the pipeline's text skips it
        assert text["generated_text"] == prompt + tok.decode(new), prompt


def _checkpoint(path, tokenizer=True, **cfg):
    config = GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=2, n_embd=8, **cfg)
    return save_model(path, GPT(config), CharTokenizer("ab ") if tokenizer else None)


@pytest.mark.parametrize(
    "cfg, words", [({"pos_emb": "rope"}, "rotary position embeddings"), ({"bias": False}, "bias")]
)
def test_what_gpt2_cannot_express_is_a_clear_error(tmp_path, cfg, words):
    src = _checkpoint(tmp_path / "ckpt", **cfg)
    with pytest.raises(ValueError, match=f"cannot export: .*{words}.*python -m lmkit train"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left


def test_a_checkpoint_without_tokenizer_is_refused(tmp_path):
    src = _checkpoint(tmp_path / "ckpt", tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        export_hf(src, tmp_path / "hf")


def test_existing_directory_new_empty_earlier_export_or_foreign(tmp_path):
    """Chosen behaviour: an empty directory is used; a non-empty one is refused unless
    ``overwrite=True`` and it holds only what an export writes (then it is replaced, stale
    tokenizer files of other transformers versions removed); foreign files are never touched."""
    src = _checkpoint(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    export_hf(src, tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(HF_EXPORT_FILES)

    out = export_hf(src, tmp_path / "hf")
    with pytest.raises(ValueError, match="is not empty .*overwrite=True"):
        export_hf(checkpoint_path("bpe-gpt"), out)
    (out / "special_tokens_map.json").write_text("{}")  # as transformers 4 writes it
    export_hf(checkpoint_path("bpe-gpt"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_EXPORT_FILES)
    vocab = load_pretrained("bpe-gpt")[0].config.vocab_size
    assert json.loads((out / "config.json").read_text())["vocab_size"] == vocab != 64

    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty|files an export does not write"):
            export_hf(src, out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "mine"
    # a checkpoint holds model.safetensors and tokenizer.json too: never exported over
    with pytest.raises(ValueError, match="holds an lmkit checkpoint"):
        export_hf(src, src, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["model.safetensors", "tokenizer.json"]
    with pytest.raises(ValueError, match="is a file"):
        export_hf(src, out / "notes.txt")


def test_command_line_export(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lmkit", "export", "--pretrained", "char-gpt", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["out"] == str(tmp_path) and report["files"] == sorted(HF_EXPORT_FILES)
