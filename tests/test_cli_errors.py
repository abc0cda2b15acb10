"""Every subcommand turns a ValueError or FileNotFoundError into one line on stderr,
``lmkit <command>: error: <message>``, and exit status 2: a real ``python -m lmkit`` process, a
real bad input, no traceback."""

import subprocess
import sys

import pytest

from lmkit.assets import checkpoint_path

# (subcommand, its arguments ({tmp}: a fresh directory), the first words of the message)
CASES = [
    ("train", ["--out", "{tmp}/run", "--dtype", "float8"], "dtype must be 'auto' or one of"),
    # --lr below the preset's min_lr: min_lr is no longer lr / 10 behind the reader's back
    ("train", ["--out", "{tmp}/run", "--lr", "1e-4"], "need 0 <= min_lr <= lr"),
    (
        "train",
        ["--out", "{tmp}/run", "--preset", "tiny", "--n-embd", "30", "--n-head", "4"],
        "GPTConfig: n_embd (30) must be divisible by n_head (4)",
    ),
    ("generate", ["--checkpoint", "{tmp}/missing"], "{tmp}/missing holds no model.safetensors"),
    ("generate", ["--temperature", "-1", "--max-new-tokens", "4"], "temperature must be >= 0"),
    ("generate", ["--num-beams", "0"], "--num-beams must be >= 1"),
    ("eval", ["--checkpoint", "{tmp}/missing"], "{tmp}/missing holds no model.safetensors"),
    ("eval", ["--corpus", "nosuch"], "unknown corpus 'nosuch'"),
    # checked before the benchmark runs, not after minutes of it
    ("bench", ["--out", "{tmp}/missing/bench.json"], "--out {tmp}/missing/bench.json: directory"),
    ("bench", ["--train-steps", "0"], "--max-new-tokens and --train-steps must be >= 1"),
    ("serve", ["--checkpoint", "{tmp}/missing"], "{tmp}/missing holds no model.safetensors"),
    (
        "serve",
        ["--checkpoint", str(checkpoint_path("char-gpt")), "--max-new-tokens", "0"],
        "ServerLimits.max_new_tokens must be a positive integer",
    ),
    (
        "export",
        ["--checkpoint", "{tmp}/missing", "--out", "{tmp}/hf"],
        "{tmp}/missing holds no model.safetensors",
    ),
]


def lmkit(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lmkit", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(out, command: str, first_words: str):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(f"lmkit {command}: error: {first_words}"), out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.endswith("\n"), out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    "command, args, first_words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, command, args, first_words):
    if command == "serve":
        pytest.importorskip("uvicorn")
    args = [a.format(tmp=tmp_path) for a in args]
    out = lmkit(command, *args)
    assert_one_line_error(out, command, first_words.format(tmp=tmp_path))
    if command == "train":  # the configs are checked before the run directory is made
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error", ["ValueError", "FileNotFoundError"])
def test_env_error_is_one_line_and_exit_status_2(error):
    """``env`` reads no input, so its error is planted: the report raises, as a broken check
    would, inside the real command line (``lmkit.cli.main``) of a child process."""
    code = (
        "import lmkit.env\n"
        "def broken(*args, **kwargs):\n"
        f"    raise {error}('no /proc/meminfo')\n"
        "lmkit.env.report = broken\n"
        "from lmkit.cli import main\n"
        "main(['env'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_one_line_error(out, "env", "no /proc/meminfo")


def test_a_multi_line_message_becomes_one_line():
    code = (
        "import lmkit.env\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('first\\nsecond')\n"
        "lmkit.env.report = broken\n"
        "from lmkit.cli import main\n"
        "main(['env'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_one_line_error(out, "env", "first second")
