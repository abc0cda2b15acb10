"""DecodeStep: the one-token decoding step without
nn.Module dispatch equals GPT.forward with a cache."""

import pytest
import torch

from lmkit.generate import beam_search, generate
from lmkit.models import GPT, GPTConfig, KVCache
from lmkit.models.decode_step import DecodeStep
from lmkit.quant import quantize_model


def tiny(**kw):
    return GPTConfig(**(dict(vocab_size=37, block_size=24, n_layer=2, n_head=2, n_embd=16) | kw))


def cached_logits(step, model, idx, prefill=5):
    """Last-position logits (B, V) after each token of idx past the prefill, through ``step``."""
    cache = KVCache(model.config, idx.size(0))
    model(idx[:, :prefill], cache=cache)
    return torch.stack([step(idx[:, t : t + 1], cache) for t in range(prefill, idx.size(1))], dim=1)


@pytest.mark.parametrize(
    "kw", [dict(), dict(pos_emb="rope"), dict(bias=False), dict(attn_impl="math")]
)
def test_fused_step_equals_full_forward(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    idx = torch.randint(0, 37, (3, 24))  # up to the last position of the context window
    step = DecodeStep(model)
    assert step.fused
    full, _ = model(idx)
    assert torch.allclose(cached_logits(step, model, idx), full[:, 5:], atol=1e-5)


def test_unknown_layers_are_called_as_modules():
    torch.manual_seed(0)
    model = quantize_model(GPT(tiny()).eval(), bits=8)  # QuantLinear layers: not plain nn.Linear
    idx = torch.randint(0, 37, (2, 12))
    step = DecodeStep(model)
    assert step.fused
    assert torch.allclose(cached_logits(step, model, idx), model(idx)[0][:, 5:], atol=1e-5)


def test_hooks_still_run():
    model = GPT(tiny()).eval()
    seen = []
    model.transformer.h[1].mlp.fc.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    cached_logits(DecodeStep(model), model, torch.randint(0, 37, (1, 8)))
    assert len(seen) == 1 + 3  # the prefill, then each of the three steps


def test_block_with_hooks_or_wrapper_falls_back_to_forward():
    model = GPT(tiny()).eval()
    model.transformer.h[0].register_forward_pre_hook(lambda m, args: None)
    assert not DecodeStep(model).fused
    embedded = GPT(tiny()).eval()
    embedded.transformer.wte.register_forward_hook(lambda m, args, out: None)
    assert not DecodeStep(embedded).fused

    class Counting:  # a wrapper like lmkit.serve's deadline guard: every step must go through it
        def __init__(self, m):
            self.m, self.calls = m, 0

        def __call__(self, *a, **k):
            self.calls += 1
            return self.m(*a, **k)

        def __getattr__(self, name):
            return getattr(self.m, name)

    wrapped = Counting(GPT(tiny()).eval())
    out = generate(wrapped, torch.tensor([[1, 2]]), 6, temperature=0)
    assert wrapped.calls == 6 and torch.equal(
        out, generate(wrapped.m, torch.tensor([[1, 2]]), 6, temperature=0)
    )


def test_full_cache_is_a_clear_error():
    model = GPT(tiny()).eval()
    cache = KVCache(model.config, 1)
    model(torch.zeros(1, 24, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache is full"):
        DecodeStep(model)(torch.zeros(1, 1, dtype=torch.long), cache)


def test_generate_and_beam_search_unchanged_by_the_fused_step():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    prompt = torch.tensor([[3, 1, 4]])
    # sampling over 40 tokens crosses the window restart; the uncached path never uses DecodeStep
    assert torch.equal(
        generate(model, prompt, 40, seed=0), generate(model, prompt, 40, seed=0, use_cache=False)
    )
    best, _ = beam_search(model, prompt, 10, num_beams=1)
    assert torch.equal(best, generate(model, prompt, 10, temperature=0))
