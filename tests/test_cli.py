"""The command line: help for every subcommand, generate/eval from a shipped checkpoint, and
``train``'s flags, one per GPTConfig/TrainConfig field (errors: tests/test_cli_errors.py)."""

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys

import pytest
import torch

from lmkit.assets import REPO_ROOT, SHIPPED, checkpoint_path
from lmkit.checkpoint import load_model, load_tensors
from lmkit.cli import NO_FLAG_FIELDS, build_parser, configs_from_args, main, presets
from lmkit.env import current_policy, pick_device
from lmkit.generate import beam_search
from lmkit.models import GPTConfig
from lmkit.pretrained import load_pretrained
from lmkit.train import TrainConfig

SUBCOMMANDS = ["train", "generate", "eval", "models", "env", "bench", "serve"]


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
    """``serve --port 0``: the server binds a free port itself and prints it
    (tests/test_serve.py)."""
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


def test_importing_the_cli_imports_no_torch():
    """``python -m lmkit --help`` stays fast: lmkit.cli imports lmkit (so torch) in functions."""
    code = "import sys, lmkit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ``train``'s own flags, not fields of a config (keep this list in step with build_parser)
RUN_FLAGS = {
    *("help", "out", "corpus", "tokenizer", "bpe_vocab", "preset", "record_command"),
    *("init", "save_dtype"),
}


def train_subparser(parser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["train"]


def flag_mismatch(parser, classes) -> tuple[set, set, set]:
    """(fields without a flag, flags without a field, flags not named ``--field-name``)."""
    flags = {
        a.dest: a.option_strings
        for a in train_subparser(parser)._actions
        if a.option_strings and a.dest not in RUN_FLAGS
    }
    fields = {f.name for cls in classes for f in dataclasses.fields(cls)} - set(NO_FLAG_FIELDS)
    misnamed = {n for n in flags.keys() & fields if "--" + n.replace("_", "-") not in flags[n]}
    return fields - flags.keys(), flags.keys() - fields, misnamed


def test_train_flags_are_the_config_fields_one_to_one():
    assert flag_mismatch(build_parser(), (GPTConfig, TrainConfig)) == (set(), set(), set())
    # the fields without a flag are few and each is a field (a stale name would hide nothing)
    names = {f.name for cls in (GPTConfig, TrainConfig) for f in dataclasses.fields(cls)}
    assert set(NO_FLAG_FIELDS) <= names
    actions = {a.dest: a for a in train_subparser(build_parser())._actions}
    assert actions["betas"].nargs == 2 and actions["betas"].type is float
    assert "--no-compile" in actions["compile"].option_strings  # bool: BooleanOptionalAction
    assert actions["min_lr"].type is float and actions["warmup_steps"].type is int


@dataclasses.dataclass
class WiderTrainConfig(TrainConfig):
    """TrainConfig plus a field, as a contributor might add one."""

    label_smoothing: float = 0.0


def test_a_new_train_field_gets_a_flag_and_the_check_sees_a_missing_one():
    """The one-to-one check fails on a field without a flag, and the builder gives a new field
    one (no flag list to edit by hand)."""
    wider = (GPTConfig, WiderTrainConfig)
    assert flag_mismatch(build_parser(), wider) == ({"label_smoothing"}, set(), set())
    parser = build_parser(wider)
    assert flag_mismatch(parser, wider) == (set(), set(), set())
    args = parser.parse_args(["train", "--out", "x", "--label-smoothing", "0.1"])
    assert args.label_smoothing == 0.1


def test_a_field_the_builder_cannot_flag_is_an_error_naming_the_skip_tuple():
    @dataclasses.dataclass
    class WithADict(TrainConfig):
        schedule: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="WithADict.schedule.*NO_FLAG_FIELDS"):
        build_parser((GPTConfig, WithADict))


def parse_train(*flags):
    return build_parser().parse_args(["train", "--out", "runs/x", *flags])


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu"])
def test_a_preset_alone_gives_exactly_its_configs(name):
    model, tcfg = configs_from_args(parse_train("--preset", name))
    preset_model, preset_train = presets()[name]
    assert model == preset_model and "vocab_size" not in model
    # --out is out_dir; device, dtype and compile are resolved by the device policy, nothing else
    assert preset_train.device == "auto"
    policy = current_policy("auto", dtype=preset_train.dtype, compile=preset_train.compile)
    assert policy.device == pick_device("auto")
    resolved = dict(device=policy.device, dtype=policy.dtype, compile=policy.compile)
    assert tcfg == dataclasses.replace(preset_train, out_dir="runs/x", **resolved)


def test_the_cpu_preset_holds_the_numbers_of_the_shipped_runs():
    model, tcfg = configs_from_args(parse_train("--preset", "cpu"))
    assert model == dict(n_layer=4, n_head=4, n_embd=128, block_size=256)
    expected = dict(max_steps=1500, batch_size=16, lr=3e-3, min_lr=3e-3 / 10, warmup_steps=100)
    assert {k: getattr(tcfg, k) for k in expected} == expected
    assert (tcfg.eval_interval, tcfg.ckpt_interval, tcfg.dtype, tcfg.compile) == (
        250,
        250,
        "float32",
        False,
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_the_recorded_command_of_a_shipped_checkpoint_gives_its_recorded_configs(name):
    """info.json's command, parsed by today's parser, names the configs the run recorded."""
    d = checkpoint_path(name)
    info = json.loads((d / "info.json").read_text())
    argv = shlex.split(info["command"])[3:]  # after "python -m lmkit"
    model, tcfg = configs_from_args(build_parser().parse_args(argv))
    recorded = {k: v for k, v in vars(tcfg).items() if k not in ("out_dir", "progress")}
    recorded["device"] = "cpu"  # where the shipped runs ran; "auto" picks this machine's best
    assert json.loads(json.dumps(recorded)) == info["train_config"]
    shipped = load_tensors(d / "model.safetensors")[1]["config"]
    args = build_parser().parse_args(argv)
    if args.init and "base_command" in info:  # continued from its own first run (not shipped)
        base_model, _ = configs_from_args(
            build_parser().parse_args(shlex.split(info["base_command"])[3:])
        )
        base = GPTConfig(vocab_size=shipped["vocab_size"], **base_model).to_dict()
        assert {**base, "dropout": args.dropout or base["dropout"]} == shipped
    elif args.init:  # a fine-tuned model has its base's architecture (and the given dropout)
        base = load_tensors(REPO_ROOT / args.init / "model.safetensors")[1]["config"]
        assert {**base, "dropout": args.dropout or base["dropout"]} == shipped
    else:
        assert GPTConfig(vocab_size=shipped["vocab_size"], **model).to_dict() == shipped


def test_a_flag_overrides_its_field_and_nothing_else():
    _, preset_train = presets()["cpu"]
    model, tcfg = configs_from_args(parse_train("--preset", "cpu", "--min-lr", "0.001"))
    assert tcfg.min_lr == 0.001
    assert tcfg == dataclasses.replace(
        preset_train, min_lr=0.001, out_dir="runs/x", device=pick_device("auto")
    )
    model, tcfg = configs_from_args(
        parse_train(
            *("--preset", "gpu", "--no-compile", "--betas", "0.8", "0.99", "--n-layer", "6"),
            *("--warmup-steps", "7", "--pos-emb", "rope", "--no-progress", "--device", "cpu"),
        )
    )
    assert (tcfg.compile, tcfg.betas, tcfg.warmup_steps, tcfg.progress) == (
        False,
        (0.8, 0.99),
        7,
        False,
    )
    assert (tcfg.device, tcfg.dtype, tcfg.lr) == ("cpu", "float32", 6e-4)  # auto dtype: fp32
    _, tcfg = configs_from_args(
        parse_train("--preset", "gpu", "--device", "cpu", "--dtype", "bfloat16")
    )
    assert (tcfg.dtype, tcfg.compile) == ("bfloat16", False)  # compile=None: not on a CPU
    assert model == {**presets()["gpu"][0], "n_layer": 6, "pos_emb": "rope"}


def test_no_value_is_derived_from_another():
    """--lr alone keeps the preset's min_lr (no silent lr / 10), so a low --lr is an error."""
    _, tcfg = configs_from_args(parse_train("--preset", "cpu", "--lr", "1e-3"))
    assert tcfg.min_lr == presets()["cpu"][1].min_lr
    with pytest.raises(ValueError, match="min_lr"):
        configs_from_args(parse_train("--preset", "cpu", "--lr", "1e-4"))


def test_generate_num_beams_is_beam_search(capsys):
    main(["generate", "--num-beams", "3", "--max-new-tokens", "12", "--prompt", "The "])
    model, tok, _ = load_pretrained("char-gpt")
    best, _ = beam_search(model, torch.tensor([tok.encode("The ")]), 12, num_beams=3)
    assert capsys.readouterr().out == tok.decode(best[0].tolist()) + "\n"
    with pytest.raises(SystemExit):  # the old name is gone
        build_parser().parse_args(["generate", "--beams", "3"])


def _train_tiny(out, *flags):
    argv = ["train", "--preset", "tiny", "--corpus", "pydoc", "--no-progress", "--out", str(out)]
    main([*argv, "--device", "cpu", *flags])
    return load_model(out)


def test_init_fine_tunes_from_the_checkpoint_with_its_tokenizer(tmp_path):
    """Kills: --init ignored (a fresh model), its tokenizer replaced, its dropout not applied."""
    base, base_tok, _ = _train_tiny(
        tmp_path / "base", "--tokenizer", "bpe", "--bpe-vocab", "300", "--max-steps", "30"
    )
    tuned, tok, info = _train_tiny(
        tmp_path / "tuned",
        "--init",
        str(tmp_path / "base"),
        "--max-steps",
        "1",
        "--lr",
        "1e-9",
        "--min-lr",
        "0",
        "--warmup-steps",
        "0",
        "--dropout",
        "0.2",
    )
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (
        tmp_path / "base" / "tokenizer.json"
    ).read_text()
    assert tuned.config == dataclasses.replace(base.config, dropout=0.2)
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # one step at lr 1e-9 moves nothing visible
    assert info["init"] == str(tmp_path / "base") and "--init" in info["command"]


def test_init_refuses_architecture_flags(tmp_path):
    _train_tiny(tmp_path / "base", "--max-steps", "2")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "--init",
                str(tmp_path / "base"),
                "--n-layer",
                "3",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert e.value.code == 2


def test_bfloat16_storage_halves_the_file_and_records_the_loss_of_what_is_stored(tmp_path):
    from lmkit.data import load_splits
    from lmkit.train import evaluate_loss

    _train_tiny(tmp_path / "f32", "--max-steps", "3")
    model, tok, info = _train_tiny(
        tmp_path / "bf16", "--max-steps", "3", "--save-dtype", "bfloat16"
    )
    sizes = [(tmp_path / d / "model.safetensors").stat().st_size for d in ("f32", "bf16")]
    assert 0.45 < sizes[1] / sizes[0] < 0.55
    tensors, _ = load_tensors(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.float32  # loading upcasts
    val = torch.tensor(tok.encode(load_splits("pydoc")["val"]))
    assert evaluate_loss(model, val, model.config.block_size, 32) == pytest.approx(
        info["val_loss"], abs=1e-5
    )


def test_models_lists_every_shipped_model(capsys):
    main(["models"])
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
    assert "tuned from lmkit/checkpoints/bpe-gpt" in out


def test_the_readme_shows_the_current_models_table(capsys):
    main(["models"])
    table = capsys.readouterr().out.strip()
    assert table in (REPO_ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md's models table is stale: paste the output of `python -m lmkit models`"
    )
