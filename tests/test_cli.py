"""The command line: help for every subcommand, generate/eval from a shipped checkpoint, errors."""

import json
import subprocess
import sys

import pytest

SUBCOMMANDS = ["train", "generate", "eval", "env", "bench", "serve"]


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lmkit", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_subcommand():
    out = run("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name):
    out = run(name, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_serve_help_documents_port_zero():
    """``serve --port 0``: the server binds a free port itself and prints it (tests/test_serve.py)."""
    pytest.importorskip("uvicorn")
    out = run("serve", "--help")
    assert out.returncode == 0, out.stderr
    assert "--port PORT" in out.stdout and "0 = a free port, printed at start" in " ".join(
        out.stdout.split()
    )


def test_generate_from_shipped_checkpoint():
    out = run(
        "generate",
        "--pretrained",
        "char-gpt",
        "--prompt",
        "The ",
        "--max-new-tokens",
        "40",
        "--seed",
        "1",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The ") and len(out.stdout) > 30
    again = run(
        "generate",
        "--pretrained",
        "char-gpt",
        "--prompt",
        "The ",
        "--max-new-tokens",
        "40",
        "--seed",
        "1",
    )
    assert again.stdout == out.stdout  # seeded


def test_eval_prints_json_matching_the_shipped_record():
    out = run("eval", "--pretrained", "bpe-gpt")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    info = json.loads(
        (
            __import__("lmkit.assets", fromlist=["x"]).checkpoint_path("bpe-gpt") / "info.json"
        ).read_text()
    )
    assert abs(result["loss"] - info["val_loss"]) < 1e-4
    assert result["bits_per_char"] > 0


def test_bad_input_gives_a_clear_message(tmp_path):
    out = run("generate", "--checkpoint", str(tmp_path))
    assert out.returncode != 0 and "model.safetensors" in out.stderr
    out = run(
        "train", "--out", str(tmp_path), "--preset", "tiny", "--n-embd", "30", "--n-head", "4"
    )
    assert out.returncode != 0 and "divisible by n_head" in out.stderr
