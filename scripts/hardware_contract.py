"""Write or check each chapter's hardware contract: one marked sentence in its introduction.

    python scripts/hardware_contract.py          # insert or update the sentence in every chapter
    python scripts/hardware_contract.py --check  # exit 1 when a chapter's sentence is not current

The sentence starts with ``**Hardware.**`` and closes the chapter's first (introduction) cell:

    **Hardware.** CPU preset: under 30 s on 2 cores (measured, {doc}`status`). GPU preset on a
    Colab T4: about 10 min, under 4 GiB of GPU memory (an estimate, not yet measured on a T4).

The CPU half comes from ``book/status.json`` (the last papermill run on the 2-core CI machine),
rounded up with a margin to a coarse bound, so that ordinary run-to-run noise leaves it true
(``tests/test_hardware_contract.py`` fails when a chapter outgrows its bound). The GPU half is
:data:`T4_ESTIMATES`: estimates from each GPU preset's work (steps, model size, precision) at
what a T4 sustains; no GPU preset has been timed on a T4. When one is (``scripts/gpu_check.sh``
records wall time and peak GPU memory), replace the estimate by the measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
STATUS = BOOK / "status.json"
MARK = "**Hardware.**"
LINE = re.compile(r"^\*\*Hardware\.\*\*.*$", re.M)
MARGIN = 1.5  # the measured time times this, rounded up to a bound below (CI machines vary)
BOUNDS_S = (15, 30, 60, 90, 120, 180, 300, 600, 1200)
# Chapters left alone for now; run this script on them once they are done.
EXCLUDED: tuple[str, ...] = ()  # chapters without the line (none)

# The GPU preset on a Colab T4 (16 GB, 65 TFLOP/s fp16, ~8 TFLOP/s fp32; small models are bound
# by kernel launches, a few ms per step): (minutes, GiB of GPU memory, how it was estimated).
# None for the memory: the chapter does not use the GPU.
T4_ESTIMATES = {
    "ch00_environment": (1, 2, "fp32 matmuls up to 8192 x 8192"),
    "ch01_history": (5, 2, "an LSTM (512) and a 4-layer GPT, 3,000 steps each"),
    "ch02_tokens_embeddings": (3, 2, "skip-gram and GloVe on the GPU, BPE on the CPU"),
    "ch03_sequence_models": (3, 2, "a 2-layer LSTM (512), 2,000 steps of 64 x 128"),
    "ch04_self_attention": (1, 14, "explicit attention up to 8192 tokens: 4 GiB score matrices"),
    "ch05_multihead_positions": (1, 2, "char-gpt's head ablations on 256 blocks"),
    "ch06_ffn_residual_norm": (2, 2, "96-layer, 256-wide stacks, 600 steps"),
    "ch07_optimizers": (3, 2, "16 runs of a one-layer, 32-wide GPT, 1,000 steps each"),
    "ch08_data_pipeline": (1, None, "the data pipeline runs on the CPU"),
    "ch09_gpt_model": (1, 2, "the same 2-layer model as on the CPU"),
    "ch10_training": (10, 4, "2,000 fp16 steps of a 6-layer GPT twice, compiled, plus resume"),
    "ch11_evaluation": (2, 2, "two tiny models, 2,000 steps each"),
    "ch12_generation": (2, 2, "char-gpt decoding and timing"),
    "ch13_deployment": (2, 2, "the server on the GPU, 50 streamed requests"),
    "ch14_tuning_scaling": (
        20,
        4,
        "~25,000 small-model steps: searches and a 7-size scaling study",
    ),
    "ch15_quantization": (2, 2, "bpe-gpt's whole validation split per variant"),
    "ch16_pruning_distillation": (5, 2, "two students x 1,500 steps, nine sparsities"),
    "ch17_parallel_training": (2, None, "one GPU: the torchrun runs use CPU processes"),
    "ch18_classification_sentiment": (2, 2, "MiniLM fine-tuned for 5 epochs on 320 sentences"),
    "ch19_translation": (5, 2, "3,000 steps of a 3-layer encoder-decoder, beam search on 1,000"),
    "ch20_code_generation": (
        5,
        2,
        "code-gpt (3.5M) samples 300 bodies at 5 settings and 4 x 1,000 benchmark completions",
    ),
    "ch21_music": (4, 2, "3,000 steps of a 4-layer GPT, 400 melodies sampled"),
    "ch22_image_captioning": (3, 2, "4,000 steps of a small ViT encoder-decoder"),
    "ch23_qa_summarization_dialogue": (2, 2, "MiniLM embeddings of 2,000 passages"),
    "ch24_zero_few_shot": (2, 2, "3,000 steps of a 2-layer in-context learner"),
    "ch25_evaluating_base_models": (
        3,
        2,
        "five 3.5M models score 249 questions four ways, sliding-window perplexity",
    ),
    "ch26_uncertainty": (1, 2, "200 Monte Carlo dropout samples"),
    "ch27_privacy_fairness": (10, None, "the chapter's models run on the CPU; 10x the CPU work"),
    "ch28_vae_gan": (3, 2, "5,000 VAE and 8,000 GAN steps of small MLPs"),
    "ch29_interpretability_minds": (1, 2, "char-gpt on 128 windows"),
    "appA_frameworks": (2, 2, "400 steps in each framework"),
}


def cpu_bound_s(wall_s: float) -> int:
    """The bound the sentence states for a measured CPU time: wall * MARGIN, rounded up."""
    need = wall_s * MARGIN
    return next((b for b in BOUNDS_S if need <= b), math.ceil(need / 600) * 600)


def say_seconds(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds == 60:
        return "a minute"
    minutes = seconds / 60
    return f"{minutes:g} minutes"


def parse_bound_s(sentence: str) -> float:
    """The CPU bound a sentence states, in seconds (for the test)."""
    text = re.search(r"CPU preset: under (.+?) on 2 cores", sentence).group(1)
    if text == "a minute":
        return 60.0
    value, unit = text.split()
    return float(value) * (60 if unit.startswith("minute") else 1)


def sentence(name: str, status: dict) -> str:
    entry = status.get(f"book/{name}")
    if entry is None or entry.get("wall_s") is None:
        raise SystemExit(
            f"{name}: no run time in {STATUS.relative_to(ROOT)}; run its papermill test"
        )
    cpu = f"CPU preset: under {say_seconds(cpu_bound_s(entry['wall_s']))} on 2 cores"
    minutes, gib, _ = T4_ESTIMATES[name]
    time_ = "under a minute" if minutes <= 1 else f"about {minutes} min"
    memory = (
        "no GPU memory (it runs on the CPU)" if gib is None else f"under {gib} GiB of GPU memory"
    )
    return (
        f"{MARK} {cpu} (measured, {{doc}}`status`). GPU preset on a Colab T4: {time_}, {memory} "
        "(an estimate, not yet measured on a T4)."
    )


def chapters() -> list[Path]:
    return [BOOK / f"{name}.ipynb" for name in T4_ESTIMATES if name not in EXCLUDED]


def with_sentence(intro: str, line: str) -> str:
    """The introduction cell's source with ``line`` as its last paragraph (replacing an old one)."""
    if LINE.search(intro):
        return LINE.sub(line, intro, count=1)
    return intro.rstrip() + "\n\n" + line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report what is not current")
    args = parser.parse_args(argv)
    status = json.loads(STATUS.read_text())["notebooks"]
    stale = []
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        intro = nb.cells[0]
        new = with_sentence(intro.source, sentence(path.stem, status))
        if new != intro.source:
            stale.append(path.name)
            if not args.check:
                intro.source = new
                nbformat.write(nb, path)
    verb = "not current" if args.check else "updated"
    print(f"hardware contract: {len(stale)} of {len(chapters())} chapters {verb}: {stale}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
