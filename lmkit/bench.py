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


def _interleaved_tokens_per_s(steppers: dict, tokens_per_step: int, steps: int, rounds: int = 3) -> dict:
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


def bench_training(steps: int = 10, n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, vocab_size=512):
    """Training throughput of lmkit vs transformers on one configuration (ANCHORS.md's CPU one)."""
    from lmkit.models import GPT, GPTConfig
    from lmkit.pretrained import to_hf_gpt2

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    ours = GPT(cfg)
    theirs = to_hf_gpt2(ours)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    y = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    speed = _interleaved_tokens_per_s({
        "lmkit": _train_stepper(ours, lambda a, b: ours(a, b)[1], (x, y)),
        "transformers": _train_stepper(theirs, lambda a, b: torch.nn.functional.cross_entropy(
            theirs(a).logits.view(-1, vocab_size), b.reshape(-1)), (x, y)),
    }, x.numel(), steps)
    lm, hf = speed["lmkit"], speed["transformers"]
    return {"config": cfg.to_dict() | {"batch_size": batch_size}, "steps": steps, "lmkit_tokens_per_s": round(lm, 1),
            "transformers_tokens_per_s": round(hf, 1), "ratio": round(lm / hf, 3)}


def _time(fn, repeats: int = 3):
    """Best wall time of ``repeats`` calls, and the last result."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@torch.no_grad()
def bench_decode(new_tokens: int = 256, name: str = "char-gpt", repeats: int = 3):
    """Greedy decode tokens/s: lmkit cached, transformers generate, lmkit uncached."""
    from lmkit.generate import generate
    from lmkit.pretrained import load_pretrained, to_hf_gpt2

    model, tok, _ = load_pretrained(name)
    hf = to_hf_gpt2(model)
    prompt = torch.tensor([tok.encode("The ")])
    # transformers cannot go past its position table: compare both at the longest length it allows
    n_hf = min(new_tokens, model.config.block_size - prompt.size(1))
    t_cached, ours = _time(lambda: generate(model, prompt, n_hf, temperature=0, use_cache=True), repeats)
    t_hf, theirs = _time(lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_hf,
                                             min_new_tokens=n_hf, do_sample=False, pad_token_id=0), repeats)
    t_long_cached, _ = _time(lambda: generate(model, prompt, new_tokens, temperature=0, use_cache=True), repeats)
    t_long_nocache, _ = _time(lambda: generate(model, prompt, new_tokens, temperature=0, use_cache=False), repeats)
    return {
        "model": name, "prompt_tokens": prompt.size(1),
        "vs_transformers": {"new_tokens": n_hf, "lmkit_cached_tokens_per_s": round(n_hf / t_cached, 1),
                            "transformers_generate_tokens_per_s": round(n_hf / t_hf, 1),
                            "ratio": round(t_hf / t_cached, 2), "same_tokens": bool(torch.equal(ours, theirs))},
        "cache_vs_no_cache": {"new_tokens": new_tokens, "cached_tokens_per_s": round(new_tokens / t_long_cached, 1),
                              "uncached_tokens_per_s": round(new_tokens / t_long_nocache, 1),
                              "speedup": round(t_long_nocache / t_long_cached, 2)},
    }


def run_bench(new_tokens: int = 256, train_steps: int = 10) -> dict:
    """Everything above in one JSON-ready dict, with the machine it ran on."""
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": "cpu", "training": bench_training(train_steps), "decode": bench_decode(new_tokens),
    }
