"""Command line: ``python -m lmkit {train,generate,eval,env,bench,serve,export} --help``.

``train`` has one flag per field of :class:`~lmkit.models.GPTConfig` and
:class:`~lmkit.train.TrainConfig`, named after the field (``--warmup-steps`` sets ``warmup_steps``),
generated from the dataclasses by :func:`add_config_flags`; a flag left out keeps the value of the
``--preset``, and no value is derived from another. Every subcommand reports a ``ValueError`` or
``FileNotFoundError`` as one line on stderr, ``lmkit <command>: error: <message>``, and exit
status 2.

The lmkit imports are inside the functions, so that importing this module stays cheap; building
the parser imports the two config dataclasses (and with them torch) to read their fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import shlex
import sys
import time
import types
import typing
from pathlib import Path

if typing.TYPE_CHECKING:
    from lmkit.train import TrainConfig

# Fields that get no flag. The builder raises on a field it cannot turn into a flag: add it here,
# with the reason, or teach _flag_type its type.
NO_FLAG_FIELDS = (
    "vocab_size",  # GPTConfig: the tokenizer's size, known once the tokenizer is built
    "out_dir",  # TrainConfig: set by --out DIR, which also receives the tokenizer and info.json
)


@functools.cache
def presets() -> dict[str, tuple[dict, TrainConfig]]:
    """The presets of ``lmkit train --preset NAME``: name -> (GPTConfig keywords, TrainConfig).

    The GPTConfig keywords leave out ``vocab_size`` (the tokenizer's); a field a preset does not
    name has the dataclass's default. ``device="auto"``, ``dtype="auto"`` and ``compile=None`` are
    resolved by :func:`configs_from_args` with :func:`lmkit.env.current_policy` (cuda, then mps,
    then cpu; bf16 from compute capability 8.0, fp16 with a scaler before it, fp32 on a CPU or
    MPS; torch.compile on CUDA where Triton works). ``min_lr`` is written as
    ``lr / 10`` in numbers: the float the shipped checkpoints were trained with (``3e-3 / 10`` is
    0.00030000000000000003, one rounding step from ``3e-4``). Built on first use: TrainConfig's
    module imports torch.
    """
    from lmkit.train import TrainConfig

    every = dict(device="auto", eval_interval=250, ckpt_interval=250)  # what all three share
    return {
        # tiny: seconds on a CPU (tests, smoke runs)
        "tiny": (
            dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
            TrainConfig(
                max_steps=100,
                batch_size=8,
                lr=3e-3,
                min_lr=3e-3 / 10,
                warmup_steps=10,
                **every,
            ),
        ),
        # cpu: the shipped checkpoints (about ten minutes on two cores)
        "cpu": (
            dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
            TrainConfig(
                max_steps=1500,
                batch_size=16,
                lr=3e-3,
                min_lr=3e-3 / 10,
                warmup_steps=100,
                **every,
            ),
        ),
        # gpu: GPT-2 small (124M) shape; the device policy's precision and torch.compile (bf16
        # and compiled on an A100 or H100, fp16 with a gradient scaler and compiled on a T4)
        "gpu": (
            dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
            TrainConfig(
                max_steps=5000,
                batch_size=16,
                lr=6e-4,
                min_lr=6e-4 / 10,
                warmup_steps=200,
                dtype="auto",
                compile=None,
                **every,
            ),
        ),
    }


def config_classes() -> tuple[type, type]:
    """(GPTConfig, TrainConfig): the dataclasses behind ``train``'s flags, in a preset's order."""
    from lmkit.models import GPTConfig
    from lmkit.train import TrainConfig

    return GPTConfig, TrainConfig


def _flag_type(cls, f: dataclasses.Field) -> dict:
    """``add_argument`` keywords for field ``f`` of dataclass ``cls``, read from its annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: a flag gives an X
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    scalars = (int, float, str)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in scalars:
        return {"type": hint, "metavar": hint.__name__.upper()}
    if hint is tuple or typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis and items[0] in scalars:  # tuple[float, ...]
            return {"type": items[0], "nargs": "+", "metavar": items[0].__name__.upper()}
        if not items:  # a bare ``tuple``: the default says how many of what
            default = _field_default(f)
            items = tuple(type(v) for v in default) if isinstance(default, tuple) else ()
        if items and len(set(items)) == 1 and items[0] in scalars:
            name = items[0].__name__.upper()
            return {"type": items[0], "nargs": len(items), "metavar": (name,) * len(items)}
    raise TypeError(
        f"{cls.__name__}.{f.name}: no command-line flag for type {hint!r}; teach "
        "lmkit.cli._flag_type the type or list the field in lmkit.cli.NO_FLAG_FIELDS, with why"
    )


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _preset_value(part, f: dataclasses.Field):
    """Field ``f`` in one half of a preset (a dict of keywords or a dataclass instance)."""
    if isinstance(part, dict):
        return part.get(f.name, _field_default(f))
    return getattr(part, f.name, _field_default(f))


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value)
    if isinstance(value, float):  # 0.0003, not 0.00030000000000000003
        return str(float(format(value, ".12g")))
    return str(value)


def add_config_flags(parser, classes=None, skip=None, preset_table=None) -> None:
    """One flag per field of each dataclass in ``classes`` (default :func:`config_classes`).

    ``--n-layer`` for ``n_layer``: types from the annotations (int, float, str; bool as
    ``--x/--no-x``; a tuple as that many values). Every flag defaults to None, "keep the
    preset's value"; its help lists the presets' values. Fields in ``skip`` (default
    :data:`NO_FLAG_FIELDS`) get no flag.
    """
    classes = classes or config_classes()
    skip = NO_FLAG_FIELDS if skip is None else skip
    preset_table = presets() if preset_table is None else preset_table
    for i, cls in enumerate(classes):
        group = parser.add_argument_group(
            f"{cls.__name__} fields",
            f"default: the preset's value (lmkit.cli.presets()[NAME][{i}])",
        )
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            values = {name: _show(_preset_value(p[i], f)) for name, p in preset_table.items()}
            shown = (
                next(iter(values.values()))
                if len(set(values.values())) == 1
                else ", ".join(f"{name} {v}" for name, v in values.items())
            )
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                help=f"preset: {shown}".replace("%", "%%"),
                **_flag_type(cls, f),
            )


def _flags_set(args, cls) -> dict:
    """{field: value} for the fields of ``cls`` whose flag was given (not None)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if f.name not in NO_FLAG_FIELDS and value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def configs_from_args(args) -> tuple[dict, TrainConfig]:
    """(GPTConfig keywords without vocab_size, TrainConfig) named by parsed ``train`` flags.

    The ``--preset``'s two configs with every given flag replacing its field; ``out_dir`` is
    ``--out``, and ``device``, ``dtype`` and ``compile`` are what :func:`lmkit.env.current_policy`
    makes of them on this machine (``"auto"`` device and dtype, ``compile=None``: its choice; a
    refused request is printed on stderr), so that info.json records what really ran. The model
    keywords are checked here (with a stand-in vocab_size), before a tokenizer is built.
    """
    from lmkit.env import current_policy

    GPTConfig, TrainConfig = config_classes()
    model_preset, train_preset = presets()[args.preset]
    model = {**model_preset, **_flags_set(args, GPTConfig)}
    GPTConfig(vocab_size=1, **model)  # raises ValueError on a bad shape, e.g. n_embd % n_head
    overrides = _flags_set(args, TrainConfig)
    wanted = {k: overrides.get(k, getattr(train_preset, k)) for k in ("device", "dtype", "compile")}
    policy = current_policy(wanted["device"], dtype=wanted["dtype"], compile=wanted["compile"])
    for note in policy.notes:
        print(f"lmkit train: {note}", file=sys.stderr)
    overrides.update(device=policy.device, dtype=policy.dtype, compile=policy.compile)
    return model, dataclasses.replace(train_preset, out_dir=str(args.out), **overrides)


def _model_source(args):
    from lmkit.checkpoint import load_model
    from lmkit.pretrained import load_pretrained

    if args.checkpoint:
        return load_model(args.checkpoint, args.device)
    return load_pretrained(args.pretrained, args.device)


def _add_model_source(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="directory written by `lmkit train --out DIR`")
    g.add_argument(
        "--pretrained",
        default="char-gpt",
        help="shipped checkpoint: char-gpt, bpe-gpt, code-gpt or chat-gpt (default char-gpt)",
    )
    p.add_argument("--device", default="cpu")


def _tokenized_corpus(args, out: Path, tok=None):
    """(tokenizer, train ids, val ids): ``tok`` (the ``--init`` model's), the tokenizer saved in
    ``out`` (a resumed run's) or a new one built from the training split of ``--corpus``; the
    tokenizer is saved in ``out``."""
    import torch

    from lmkit.data import BPETokenizer, CharTokenizer, load_splits, load_tokenizer

    splits = load_splits(args.corpus)
    if tok is not None:
        pass
    elif (out / "tokenizer.json").exists():
        tok = load_tokenizer(out)
    elif args.tokenizer == "char":
        tok = CharTokenizer.from_text(splits["train"], unk="?")
    else:
        tok = BPETokenizer.train([splits["train"]], vocab_size=args.bpe_vocab)
    tok.save(out)
    train_ids = torch.tensor(tok.encode(splits["train"]), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(splits["val"]), dtype=torch.long)
    return tok, train_ids, val_ids


def _train_record(args, model, tok, val_ids, tcfg, history, t0: float) -> dict:
    """The ``info.json`` of a finished run: command, data, result, speed, machine, config."""
    import torch

    from lmkit.train import evaluate_loss

    val_loss = evaluate_loss(model, val_ids, model.config.block_size, 32)
    command = args.record_command
    if command is None:
        command = "python -m lmkit " + " ".join(shlex.quote(a) for a in args.argv)
    info = {
        "name": Path(tcfg.out_dir).name,
        "command": command,
        "corpus": args.corpus,
        "tokenizer": tok.kind,
        "val_loss": round(val_loss, 6),
        "val_tokens": int(len(val_ids)),
        "val_chars": len(tok.decode(val_ids.tolist())),
        "train_time_s": round(history["elapsed_s"], 1),
        "wall_time_s": round(time.time() - t0, 1),
        "tokens_per_s": round(history["tokens_per_s"] or 0.0, 1),
        "hardware": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {tcfg.device}",
        "torch": torch.__version__,
        "params": model.num_params(),
        "steps": history["step"][-1] if history["step"] else 0,
        "train_config": {k: v for k, v in vars(tcfg).items() if k not in ("out_dir", "progress")},
    }
    if args.init:
        info["init"] = args.init
    if tcfg.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        if history.get("mfu") is not None:  # the trainer's: after warm-up, per GPU
            info["mfu"] = round(history["mfu"], 4)
    return info


def _init_model(args):
    """(model, tokenizer) of ``--init DIR``: fine-tuning starts from its weights, architecture and
    tokenizer (chapter 23's chat-gpt); only ``--dropout`` of the model flags may change."""
    from lmkit.checkpoint import load_model
    from lmkit.models import GPT, GPTConfig

    shape = sorted(k for k in _flags_set(args, GPTConfig) if k != "dropout")
    if shape:
        flags = ", ".join("--" + k.replace("_", "-") for k in shape)
        raise ValueError(f"--init takes the architecture from {args.init}; drop {flags}")
    model, tok, _ = load_model(args.init)
    if tok is None:
        raise FileNotFoundError(f"--init {args.init} holds no tokenizer.json to fine-tune with")
    if args.dropout is not None and args.dropout != model.config.dropout:
        tuned = GPT(dataclasses.replace(model.config, dropout=args.dropout))
        tuned.load_state_dict(model.state_dict())
        model = tuned
    return model.train(), tok


def cmd_train(args):
    import os

    import torch

    from lmkit.checkpoint import save_model
    from lmkit.models import GPT, GPTConfig
    from lmkit.train import train  # looked up at call time: tests/test_ddp.py wraps it

    model_kwargs, tcfg = configs_from_args(args)
    out = Path(tcfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.init:
        model, tok = _init_model(args)
    else:
        tok = None
    tok, train_ids, val_ids = _tokenized_corpus(args, out, tok)
    torch.manual_seed(tcfg.seed)
    if not args.init:
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **model_kwargs))
    t0 = time.time()
    history = train(model, train_ids, val_ids, tcfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone writes the result
        return
    dtype = getattr(torch, args.save_dtype)
    model.to(dtype).float()  # round to what is stored, so the recorded loss is the file's
    info = _train_record(args, model, tok, val_ids, tcfg, history, t0)
    save_model(out, model.to("cpu", dtype), tok, info)
    keys = ("val_loss", "train_time_s", "tokens_per_s", "params", "steps", "mfu")
    print(json.dumps({k: info[k] for k in keys if k in info}))


def cmd_generate(args):
    import torch

    from lmkit.generate import beam_search, generate

    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be >= 1, got {args.num_beams}")
    model, tok, _ = _model_source(args)
    ids = torch.tensor([tok.encode(args.prompt)], dtype=torch.long, device=args.device)
    t0 = time.perf_counter()
    if args.num_beams > 1:
        out, _ = beam_search(model, ids, args.max_new_tokens, num_beams=args.num_beams)
    else:
        out = generate(
            model,
            ids,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            use_cache=not args.no_cache,
            seed=args.seed,
        )
    dt = time.perf_counter() - t0
    print(tok.decode(out[0].tolist()))
    print(f"[{out.size(1) - ids.size(1)} tokens in {dt:.2f} s]", file=sys.stderr)


def cmd_eval(args):
    import math

    import torch

    from lmkit.data import load_splits
    from lmkit.train import evaluate_loss

    model, tok, info = _model_source(args)
    corpus = args.corpus or info.get("corpus", "pydoc")
    text = load_splits(corpus)[args.split]
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    loss = evaluate_loss(model, ids, model.config.block_size, 32)
    chars_per_token = len(text) / len(ids)
    print(
        json.dumps(
            {
                "corpus": corpus,
                "split": args.split,
                "loss": round(loss, 6),
                "perplexity": round(math.exp(loss), 4),
                "bits_per_char": round(loss / math.log(2) / chars_per_token, 4),
                "tokens": len(ids),
            }
        )
    )


def cmd_models(args):
    from lmkit.pretrained import list_models

    print(
        f"{'name':9s} {'params':>7s} {'corpus':7s} {'tokenizer':9s} {'val loss':>8s} "
        f"{'bits/char':>9s} {'MiB':>5s}  chapters"
    )
    for r in list_models():
        init = f" (tuned from {r['init']})" if r["init"] else ""
        print(
            f"{r['name']:9s} {r['params'] / 1e6:6.2f}M {r['corpus']:7s} {r['tokenizer']:9s} "
            f"{r['val_loss']:8.3f} {r['val_bpc']:9.3f} {r['size_mib']:5.1f}  "
            f"{', '.join(r['chapters'])}{init}"
        )
    print(
        "val loss: nats per token of the model's own tokenizer, on its corpus's validation "
        "split; bits/char compares across tokenizers. GPT-2 from the hub (opt-in, needs "
        "internet): lmkit.pretrained.load_pretrained('gpt2', hub=True)"
    )


def cmd_env(args):
    from lmkit.env import report

    rows = report()
    if any(r[0] == "FAIL" for r in rows if isinstance(r, (list, tuple))):
        sys.exit(1)


def cmd_bench(args):
    # checked before the benchmark runs (minutes), not after
    if args.max_new_tokens < 1 or args.train_steps < 1:
        raise ValueError(
            f"--max-new-tokens and --train-steps must be >= 1, got {args.max_new_tokens} and "
            f"{args.train_steps}"
        )
    if args.out and not Path(args.out).parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: directory {Path(args.out).parent} not found")
    if args.serve:
        from lmkit.serve.bench import run_serve_bench

        result = run_serve_bench()
    elif args.quant:
        from lmkit.quant.bench import run_quant_bench

        result = run_quant_bench()
    else:
        from lmkit.bench import run_bench

        result = run_bench(max_new_tokens=args.max_new_tokens, train_steps=args.train_steps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


def cmd_serve(args):
    from lmkit.serve import run_server

    run_server(args)


def cmd_export(args):
    from lmkit.assets import checkpoint_path
    from lmkit.pretrained import export_hf

    source = args.checkpoint if args.checkpoint else checkpoint_path(args.pretrained)
    out = export_hf(source, args.out, overwrite=args.force)
    print(json.dumps({"out": str(out), "files": sorted(p.name for p in Path(out).iterdir())}))


def build_parser(classes=None) -> argparse.ArgumentParser:
    """The ``python -m lmkit`` parser; ``classes`` (default :func:`config_classes`) are the
    dataclasses whose fields become ``train``'s flags (tests pass others)."""
    parser = argparse.ArgumentParser(
        prog="lmkit", description="lmkit: the book's companion library."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a GPT on an offline corpus",
        description="Train a GPT on an offline corpus. One flag per GPTConfig and TrainConfig "
        "field, named after it; a flag left out keeps the preset's value. --device auto (every "
        "preset's) picks cuda, then mps, then cpu.",
    )
    p.add_argument(
        "--out", required=True, help="output directory (checkpoint, tokenizer, info.json)"
    )
    p.add_argument("--corpus", default="pydoc", choices=["pydoc", "stdlib", "docs", "chat", "book"])
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    p.add_argument("--bpe-vocab", type=int, default=2048)
    p.add_argument(
        "--init",
        default=None,
        metavar="DIR",
        help="fine-tune: start from this checkpoint's weights, architecture and tokenizer",
    )
    p.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype of the saved weights (bfloat16 halves the file; loading upcasts to float32)",
    )
    p.add_argument(
        "--preset",
        default="cpu",
        choices=list(presets()),
        help="tiny (seconds on a CPU), cpu (the shipped checkpoints) or gpu (GPT-2 small; bf16 or "
        "fp16 and compiled, as lmkit.env.current_policy() decides); default cpu",
    )
    p.add_argument("--record-command", default=None, help=argparse.SUPPRESS)
    add_config_flags(p, classes)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate",
        help="sample text from a checkpoint",
        description="Sample text from a checkpoint.",
    )
    _add_model_source(p)
    p.add_argument("--prompt", default="The ")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--num-beams",
        type=int,
        default=1,
        help="beam search with this many beams when > 1 (then --temperature, --top-k, --top-p "
        "and --seed do not apply); default 1: sampling",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="decode without the KV cache")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval",
        help="loss, perplexity and bits per character on a split",
        description="Evaluate a checkpoint.",
    )
    _add_model_source(p)
    p.add_argument("--corpus", default=None, help="default: the corpus the model was trained on")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "models",
        help="list the shipped models",
        description="The shipped models: size, corpus, validation loss, chapters that use them.",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "env",
        help="environment report ([OK]/[FAIL] table)",
        description="Print the environment report.",
    )
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "bench", help="benchmarks against transformers (JSON)", description="Benchmarks, JSON out."
    )
    p.add_argument("--quant", action="store_true", help="quantization benchmark instead")
    p.add_argument(
        "--serve",
        action="store_true",
        help="load test of `lmkit serve` instead: 1-64 streaming clients, batching on and off",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP",
        description="Serve a checkpoint over HTTP (FastAPI).",
    )
    try:
        from lmkit.serve import add_serve_arguments

        add_serve_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to the Hugging Face format",
        description="Write a checkpoint as a Hugging Face save_pretrained directory (config.json, "
        "model.safetensors, generation_config.json, tokenizer files) that transformers, vLLM "
        "and TGI load.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="directory written by `lmkit train --out DIR`")
    g.add_argument(
        "--pretrained",
        default="char-gpt",
        help="shipped checkpoint: char-gpt, bpe-gpt, code-gpt or chat-gpt (default char-gpt)",
    )
    p.add_argument("--out", required=True, help="output directory: new or empty")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier export in --out (nothing else)"
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # what info.json records
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        message = " ".join(str(e).splitlines())  # one line, whatever the exception says
        parser.exit(2, f"lmkit {args.command}: error: {message}\n")
