"""Benchmarks of lmkit's GPT against ``transformers.GPT2LMHeadModel`` (``python -m lmkit bench``).

Explained in the performance appendix. Same configuration, same weights, same inputs, one run:

* training tokens/s (forward + backward + AdamW step) on the current device;
* decode tokens/s: lmkit with its KV cache, ``transformers``' ``generate`` (which also caches), and
  lmkit without the cache, all greedy from the same prompt on the shipped char-level GPT.

Timings are measurements, not tests: they print JSON and assert nothing.
"""

from __future__ import annotations

import platform
import time

import torch

from lmkit.generate import generate
from lmkit.models import GPT, GPTConfig
from lmkit.pretrained import load_pretrained, to_hf_gpt2


def _train_stepper(model, forward, batch):
    """One optimizer step of ``model`` on ``batch`` per call."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch
    model.train()

    def step():
        loss = forward(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _interleaved_tokens_per_s(
    steppers: dict, tokens_per_step: int, steps: int, rounds: int = 3
) -> dict:
    """Best-of-rounds tokens/s; the contenders alternate so that load on the machine hits both."""
    for step in steppers.values():  # warm-up
        for _ in range(3):
            step()
    best = {name: 0.0 for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = max(best[name], steps * tokens_per_step / (time.perf_counter() - t0))
    return best


def bench_training(
    steps: int = 10, n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, vocab_size=512
):
    """Training throughput of lmkit vs transformers on one configuration (ANCHORS.md's CPU one)."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    ours = GPT(cfg)
    theirs = to_hf_gpt2(ours)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    y = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    speed = _interleaved_tokens_per_s(
        {
            "lmkit": _train_stepper(ours, lambda a, b: ours(a, b)[1], (x, y)),
            "transformers": _train_stepper(
                theirs,
                lambda a, b: torch.nn.functional.cross_entropy(
                    theirs(a).logits.view(-1, vocab_size), b.reshape(-1)
                ),
                (x, y),
            ),
        },
        x.numel(),
        steps,
    )
    lm, hf = speed["lmkit"], speed["transformers"]
    return {
        "config": cfg.to_dict() | {"batch_size": batch_size},
        "steps": steps,
        "lmkit_tokens_per_s": round(lm, 1),
        "transformers_tokens_per_s": round(hf, 1),
        "ratio": round(lm / hf, 3),
    }


def _interleaved_best_times(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Best wall time of each zero-argument function over ``rounds`` rounds, and its last result.

    The functions alternate within each round, so that a slow spell of the machine (other jobs,
    frequency changes) hits all of them rather than whichever happened to be running.
    """
    best = {name: float("inf") for name in fns}
    out = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


@torch.no_grad()
def bench_decode(max_new_tokens: int = 256, name: str = "char-gpt", rounds: int = 5):
    """Greedy decode tokens/s: lmkit cached, transformers generate, lmkit uncached.

    Every run produces exactly ``max_new_tokens`` tokens (no end-of-text stops it); the comparison
    with transformers stops earlier where its position table ends. The result's ``new_tokens``
    entries are the number of tokens each comparison produced.
    """
    model, tok, _ = load_pretrained(name)
    hf = to_hf_gpt2(model)
    prompt = torch.tensor([tok.encode("The ")])
    # transformers cannot go past its position table: compare both at the longest length it allows
    n_hf = min(max_new_tokens, model.config.block_size - prompt.size(1))
    t, out = _interleaved_best_times(
        {
            "cached": lambda: generate(model, prompt, n_hf, temperature=0, use_cache=True),
            "transformers": lambda: hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n_hf,
                min_new_tokens=n_hf,
                do_sample=False,
                pad_token_id=0,
            ),
            "long_cached": lambda: generate(
                model, prompt, max_new_tokens, temperature=0, use_cache=True
            ),
            "long_uncached": lambda: generate(
                model, prompt, max_new_tokens, temperature=0, use_cache=False
            ),
        },
        rounds,
    )
    return {
        "model": name,
        "prompt_tokens": prompt.size(1),
        "rounds": rounds,
        "vs_transformers": {
            "new_tokens": n_hf,
            "lmkit_cached_tokens_per_s": round(n_hf / t["cached"], 1),
            "transformers_generate_tokens_per_s": round(n_hf / t["transformers"], 1),
            "ratio": round(t["transformers"] / t["cached"], 2),
            "same_tokens": bool(torch.equal(out["cached"], out["transformers"])),
        },
        "cache_vs_no_cache": {
            "new_tokens": max_new_tokens,
            "cached_tokens_per_s": round(max_new_tokens / t["long_cached"], 1),
            "uncached_tokens_per_s": round(max_new_tokens / t["long_uncached"], 1),
            "speedup": round(t["long_uncached"] / t["long_cached"], 2),
            "same_tokens": bool(torch.equal(out["long_cached"], out["long_uncached"])),
        },
    }


def run_bench(max_new_tokens: int = 256, train_steps: int = 10) -> dict:
    """Everything above in one JSON-ready dict, with the machine it ran on."""
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cpu",
        "training": bench_training(train_steps),
        "decode": bench_decode(max_new_tokens),
    }
