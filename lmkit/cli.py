"""Command line: ``python -m lmkit {train,generate,eval,env,bench,serve} --help``."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

PRESETS = {
    # tiny: seconds on a CPU (tests, smoke runs)
    "tiny": dict(
        n_layer=2,
        n_head=2,
        n_embd=64,
        block_size=64,
        max_steps=100,
        batch_size=8,
        lr=3e-3,
        warmup=10,
    ),
    # cpu: the shipped checkpoints (about ten minutes on two cores)
    "cpu": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=256,
        max_steps=1500,
        batch_size=16,
        lr=3e-3,
        warmup=100,
    ),
    # gpu: GPT-2 small (124M) shape, bf16 and torch.compile
    "gpu": dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        max_steps=5000,
        batch_size=16,
        lr=6e-4,
        warmup=200,
        dtype="bfloat16",
        compile=True,
    ),
}


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
        help="shipped checkpoint: char-gpt or bpe-gpt (default char-gpt)",
    )
    p.add_argument("--device", default="cpu")


def cmd_train(args):
    import torch

    from lmkit.data import BPETokenizer, CharTokenizer, load_splits, load_tokenizer
    from lmkit.env import pick_device
    from lmkit.models import GPT, GPTConfig
    from lmkit.train import TrainConfig, evaluate_loss, train

    preset = dict(PRESETS[args.preset])
    for key in (
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "max_steps",
        "batch_size",
        "lr",
        "warmup",
        "dtype",
    ):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.compile:
        preset["compile"] = True
    device = args.device or str(pick_device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.corpus)
    if (out / "tokenizer.json").exists():
        tok = load_tokenizer(out)
    elif args.tokenizer == "char":
        tok = CharTokenizer.from_text(splits["train"], unk="?")
    else:
        tok = BPETokenizer.train([splits["train"]], vocab_size=args.bpe_vocab)
    tok.save(out)
    train_ids = torch.tensor(tok.encode(splits["train"]), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(splits["val"]), dtype=torch.long)
    torch.manual_seed(args.seed)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=preset["block_size"],
        n_layer=preset["n_layer"],
        n_head=preset["n_head"],
        n_embd=preset["n_embd"],
        dropout=args.dropout,
        pos_emb=args.pos_emb,
    )
    model = GPT(cfg)
    tcfg = TrainConfig(
        max_steps=preset["max_steps"],
        batch_size=preset["batch_size"],
        grad_accum=args.grad_accum,
        lr=preset["lr"],
        min_lr=preset["lr"] / 10,
        warmup_steps=preset["warmup"],
        dtype=preset.get("dtype", "float32"),
        compile=preset.get("compile", False),
        device=device,
        seed=args.seed,
        eval_interval=args.eval_interval,
        ckpt_interval=args.ckpt_interval,
        out_dir=str(out),
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    t0 = time.time()
    history = train(model, train_ids, val_ids, tcfg)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    val_loss = evaluate_loss(model, val_ids, cfg.block_size, 32)
    from lmkit.checkpoint import save_model

    info = {
        "name": out.name,
        "command": "python -m lmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if args.record_command is None
        else args.record_command,
        "corpus": args.corpus,
        "tokenizer": tok.kind,
        "val_loss": round(val_loss, 6),
        "val_tokens": int(len(val_ids)),
        "train_time_s": round(history["elapsed_s"], 1),
        "wall_time_s": round(time.time() - t0, 1),
        "tokens_per_s": round(history["tokens_per_s"] or 0.0, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}",
        "torch": torch.__version__,
        "params": model.num_params(),
        "steps": history["step"][-1] if history["step"] else 0,
        "train_config": {k: v for k, v in vars(tcfg).items() if k not in ("out_dir", "progress")},
    }
    if device.startswith("cuda"):
        from lmkit.train import gpu_peak_flops, mfu

        name = torch.cuda.get_device_name()
        peak = gpu_peak_flops(name)
        info["gpu"] = name
        if peak and info["tokens_per_s"]:
            info["mfu"] = round(mfu(info["tokens_per_s"], model.flops_per_token(), peak), 4)
    save_model(out, model.to("cpu"), tok, info)
    print(
        json.dumps(
            {
                k: info[k]
                for k in ("val_loss", "train_time_s", "tokens_per_s", "params", "steps", "mfu")
                if k in info
            }
        )
    )


def cmd_generate(args):
    import torch

    from lmkit.generate import beam_search, generate

    model, tok, _ = _model_source(args)
    ids = torch.tensor([tok.encode(args.prompt)], dtype=torch.long, device=args.device)
    t0 = time.perf_counter()
    if args.beams > 1:
        out, _ = beam_search(model, ids, args.max_new_tokens, num_beams=args.beams)
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


def cmd_env(args):
    from lmkit.env import report

    rows = report()
    if any(r[0] == "FAIL" for r in rows if isinstance(r, (list, tuple))):
        sys.exit(1)


def cmd_bench(args):
    if args.quant:
        from lmkit.quant.bench import run_quant_bench

        result = run_quant_bench()
    else:
        from lmkit.bench import run_bench

        result = run_bench(new_tokens=args.new_tokens, train_steps=args.train_steps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


def cmd_serve(args):
    from lmkit.serve import run_server

    run_server(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmkit", description="lmkit: the book's companion library."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a GPT on an offline corpus",
        description="Train a GPT on an offline corpus.",
    )
    p.add_argument(
        "--out", required=True, help="output directory (checkpoint, tokenizer, info.json)"
    )
    p.add_argument("--corpus", default="pydoc", choices=["pydoc", "stdlib", "book"])
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    p.add_argument("--bpe-vocab", type=int, default=2048)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    for name, typ in (
        ("n-layer", int),
        ("n-head", int),
        ("n-embd", int),
        ("block-size", int),
        ("max-steps", int),
        ("batch-size", int),
        ("lr", float),
        ("warmup", int),
    ):
        p.add_argument(f"--{name}", type=typ, default=None, help="overrides the preset")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--pos-emb", default="learned", choices=["learned", "rope"])
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--ckpt-interval", type=int, default=250)
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if OUT holds a checkpoint"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--record-command", default=None, help=argparse.SUPPRESS)
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
    p.add_argument("--beams", type=int, default=1, help="beam search with this many beams (>1)")
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
        "env",
        help="environment report ([OK]/[FAIL] table)",
        description="Print the environment report.",
    )
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "bench", help="benchmarks against transformers (JSON)", description="Benchmarks, JSON out."
    )
    p.add_argument("--quant", action="store_true", help="quantization benchmark instead")
    p.add_argument("--new-tokens", type=int, default=256)
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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)
