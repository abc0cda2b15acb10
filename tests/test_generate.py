"""Decoding: cache equivalence, sampling filters, beam search, long prompts, bad input."""

import pytest
import torch

from lmkit.generate import beam_search, generate
from lmkit.models import GPT, GPTConfig
from lmkit.sampling import filter_logits


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.8, top_k=5, seed=1),
        dict(temperature=1.2, top_p=0.9, seed=2),
    ],
)
def test_cache_gives_identical_tokens(model, kw):
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    # 60 new tokens: the window (32) fills and restarts twice
    a = generate(model, prompt, 60, use_cache=True, **kw)
    b = generate(model, prompt, 60, use_cache=False, **kw)
    assert torch.equal(a, b)


def test_rope_model_cache_identical():
    torch.manual_seed(1)
    m = GPT(
        GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="rope")
    ).eval()
    prompt = torch.randint(0, 40, (1, 4))
    assert torch.equal(
        generate(m, prompt, 30, temperature=0, use_cache=True),
        generate(m, prompt, 30, temperature=0, use_cache=False),
    )


def test_seed_reproducible_and_global_rng_untouched(model):
    prompt = torch.zeros(1, 1, dtype=torch.long)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, prompt, 20, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, generate(model, prompt, 20, seed=7))


def test_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    probs = logits.softmax(-1)  # 0.644, 0.237, 0.087, 0.032
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert probs[0, 0] < 0.7 < probs[0, :2].sum()
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).sum() == 1  # always keep the top token
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=0)


def test_greedy_equals_argmax_steps(model):
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(model, prompt, 3, temperature=0)
    seq = prompt
    for _ in range(3):
        nxt = model(seq)[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_long_prompt_truncated_or_rejected(model):
    long = torch.randint(0, 40, (1, 50))
    out = generate(model, long, 5, temperature=0)
    assert out.shape == (1, 55) and torch.equal(out[:, :50], long)
    with pytest.raises(ValueError, match="context window"):
        generate(model, long, 5, truncate=False)


def window_reference(model, prompt: list[int], n: int) -> list[int]:
    """The documented window policy, written out independently: condition on at most
    block_size tokens; when the sequence fills the window, restart it from the last
    block_size // 2 tokens; a prompt that does not fit starts from its last block_size // 2."""
    window = model.config.block_size
    seq = list(prompt)
    start = len(seq) - window // 2 if len(seq) >= window else 0
    for _ in range(n):
        if len(seq) - start >= window:
            start = len(seq) - window // 2
        logits = model(torch.tensor([seq[start:]]))[0][0, -1]
        seq.append(int(logits.argmax()))
    return seq


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("prompt_len", [3, 31, 32, 50])
def test_window_restarts_from_the_last_half(model, use_cache, prompt_len):
    """Past the window (block_size 32) both paths follow the policy token for token: a restart
    from one token more or less, or a window one token too long, changes the greedy tokens."""
    prompt = torch.randint(0, 40, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, 45, temperature=0, use_cache=use_cache)
    assert out[0].tolist() == window_reference(model, prompt[0].tolist(), 45)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 2, temperature=-1)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)


def test_beam_search_one_beam_is_greedy_and_more_beams_score_higher(model):
    prompt = torch.tensor([[5, 6, 7]])
    greedy = generate(model, prompt, 8, temperature=0)
    one, _ = beam_search(model, prompt, 8, num_beams=1, length_penalty=0.0)
    assert torch.equal(one, greedy)

    def logprob(seq):
        logp = model(seq[:, :-1])[0].log_softmax(-1)
        return logp[0, 2:].gather(-1, seq[0, 3:, None]).sum().item()

    best, score = beam_search(model, prompt, 8, num_beams=4, length_penalty=0.0)
    assert logprob(best) >= logprob(greedy) - 1e-5
    assert abs(score - logprob(best)) < 1e-4
    with pytest.raises(ValueError, match="context window"):
        beam_search(model, prompt, 40)
