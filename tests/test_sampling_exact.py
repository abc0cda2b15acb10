"""Decoding against independent computations on fixed
logits: temperature, top-k, top-p, eos, beam scores.

The reference probabilities are computed here with ``torch.softmax`` and plain Python loops over
the sorted tokens, never through lmkit; the models are fakes whose next-token logits are fixed
tables, so the expected output of every decoding rule can be worked out by hand.
"""

import math

import pytest
import torch
import torch.nn as nn

from lmkit.generate import beam_search, generate
from lmkit.models import GPTConfig
from lmkit.sampling import filter_logits, next_token

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])  # no ties: every filter has one answer


def reference_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """Sampling distribution worked out independently: softmax(logits / T), keep the k largest,
    renormalize, then keep the smallest prefix (by probability) whose mass reaches top_p."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = sorted(range(len(p)), key=lambda i: -float(p[i]))
    keep = order if top_k is None else order[:top_k]
    if top_p is not None:
        mass = sum(float(p[i]) for i in keep)
        nucleus, total = [], 0.0
        for i in keep:
            nucleus.append(i)
            total += float(p[i]) / mass
            if total >= top_p:
                break
        keep = nucleus
    q = torch.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


class FixedLM(nn.Module):
    """Same next-token logits at every position, for
    every row; works with and without a KV cache."""

    def __init__(self, logits, block_size=16):
        super().__init__()
        self.config = GPTConfig(
            vocab_size=len(logits), block_size=block_size, n_layer=1, n_head=1, n_embd=1
        )
        self.register_buffer("logits", logits.float())
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        if cache is not None:
            cache.advance(T)
        return self.logits.expand(B, T, -1), None


class TableLM(nn.Module):
    """Next-token log-probabilities given by ``table(history) -> list of
    V floats``, where history is the tuple of all tokens so far. With
    a KV cache the history is kept *in the cache* (layer 0's
    keys), so that beam search's ``cache.reorder`` moves each beam's history with it."""

    def __init__(self, table, vocab_size, block_size=16):
        super().__init__()
        self.table = table
        self.config = GPTConfig(
            vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=1
        )
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        if cache is None:
            hist = idx
        else:
            k = idx.float()[:, None, :, None]  # (B, H=1, T, hd=1)
            keys, _ = cache.update(0, k, k)
            hist = keys[:, 0, :, 0].round().long()
            cache.advance(T)
        end = hist.size(1)
        rows = [
            [self.table(tuple(hist[b, : t + 1].tolist())) for t in range(end - T, end)]
            for b in range(B)
        ]
        return torch.tensor(rows, dtype=torch.float32), None


# --- temperature, top-k, top-p: the filtered distribution itself -------------------------------

CASES = [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(temperature=1.0, top_k=3),
    dict(temperature=0.5, top_k=2),
    dict(temperature=1.0, top_p=0.8),  # cumulative 0.561, 0.767, 0.892: three tokens
    dict(temperature=0.5, top_p=0.9),  # sharper: 0.829, 0.112 -> two tokens
    dict(temperature=2.0, top_p=0.6),  # flatter: 0.363, 0.583, 0.755 -> three tokens
    dict(temperature=1.0, top_k=4, top_p=0.8),  # top-p on the renormalized top-4
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_filtered_distribution_equals_reference(kw):
    """Kills: top-p dropping the token that crosses the threshold; top-k keeping k-1 or k+1; filters
    applied before the temperature; rows of a batch filtered with another row's order."""
    T = kw.get("temperature", 1.0)
    # two rows with opposite orders: the filter must sort each row on its own
    logits = torch.stack([LOGITS, LOGITS.flip(0)])
    got = filter_logits(logits / T, kw.get("top_k"), kw.get("top_p")).softmax(-1)
    for row, lg in enumerate(logits):
        want = reference_probs(lg, T, kw.get("top_k"), kw.get("top_p")).float()
        torch.testing.assert_close(got[row], want, atol=1e-6, rtol=1e-5)


def test_reference_cases_really_differ():
    """The cases above are not vacuous: each filter and temperature changes the distribution."""
    base = reference_probs(LOGITS)
    for kw in CASES[1:]:
        assert (reference_probs(LOGITS, **kw) - base).abs().max() > 0.05, kw
    # the nucleus sizes claimed in the comments
    sizes = [int((reference_probs(LOGITS, **kw) > 0).sum()) for kw in CASES[5:]]
    assert sizes == [3, 2, 3, 3]


def test_top_p_boundary_and_one_keeps_everything():
    """Kills: top_p compared with '>' (a nucleus that reaches top_p exactly must stop there);
    top_p=1.0 dropping tail tokens whose probability rounds the cumulative sum to 1."""
    exact = torch.tensor(
        [[math.log(2.0), 0.0, 0.0]]
    )  # probabilities 0.5, 0.25, 0.25, exact in float32
    assert exact.softmax(-1).tolist() == [[0.5, 0.25, 0.25]]
    assert torch.isfinite(filter_logits(exact, top_p=0.5)).tolist() == [[True, False, False]]
    assert torch.isfinite(filter_logits(exact, top_p=0.75)).tolist() == [[True, True, False]]
    tail = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, -15.0]])  # last token: p = 1.3e-9 > 0
    assert tail.softmax(-1)[0, -1] > 0
    assert torch.isfinite(filter_logits(tail, top_p=1.0)).all()


# --- sampling through generate: empirical frequencies ------------------------------------------

N_DRAWS = 40_000


@pytest.mark.parametrize(
    "kw",
    [CASES[0], CASES[1], CASES[2], CASES[4], CASES[6], CASES[8]],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_generate_samples_from_the_reference_distribution(kw):
    """Kills: temperature ignored (in next_token or not passed on by generate); top-k / top-p not
    passed on; sampling that is not from softmax of the filtered logits (e.g. argmax, or p**2)."""
    model = FixedLM(LOGITS)
    prompt = torch.zeros(N_DRAWS, 1, dtype=torch.long)  # N rows: N independent draws in one step
    out = generate(model, prompt, 1, seed=0, **kw)
    freq = torch.bincount(out[:, 1], minlength=len(LOGITS)).double() / N_DRAWS
    want = reference_probs(LOGITS, **kw)
    sigma = (want * (1 - want) / N_DRAWS).sqrt()
    assert torch.all((freq - want).abs() <= 5 * sigma + 1e-12), (freq.tolist(), want.tolist())
    assert torch.all(freq[want == 0] == 0)  # filtered tokens are never drawn


def test_temperature_zero_is_argmax_and_low_temperature_approaches_it():
    """Kills: temperature 0 sampling instead of taking the argmax, per row."""
    logits = torch.stack([LOGITS, LOGITS.flip(0), LOGITS.roll(2)])
    assert next_token(logits, 0.0).flatten().tolist() == [0, 5, 2]
    g = torch.Generator().manual_seed(0)
    assert (
        next_token(logits.repeat(100, 1), 0.01, generator=g).flatten().tolist() == [0, 5, 2] * 100
    )


# --- eos ----------------------------------------------------------------------------------------

EOS = 0
# next token after each token: row 0 (prompt 1) says 2, 3, eos; row 1 (prompt 5) says 6, 7,
# 8, 9, eos. After eos the model would go on (0 -> 4 -> 4 ...): generate must not let it.
NEXT = {1: 2, 2: 3, 3: EOS, EOS: 4, 4: 4, 5: 6, 6: 7, 7: 8, 8: 9, 9: EOS}


def chain_table(hist):
    row = [-20.0] * 10
    row[NEXT[hist[-1]]] = 0.0
    return row


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eos_rows_finish_at_different_times(use_cache, temperature):
    """Kills: finished rows not padded with eos (they go on generating); stopping when the first row
    finishes or never stopping early; eos itself not written before stopping."""
    model = TableLM(chain_table, 10)
    prompt = torch.tensor([[1], [5]])
    out = generate(
        model, prompt, 10, temperature=temperature, seed=0, eos_id=EOS, use_cache=use_cache
    )
    assert out.tolist() == [[1, 2, 3, EOS, EOS, EOS], [5, 6, 7, 8, 9, EOS]]
    # without eos_id the model runs on for all max_new_tokens, past its eos
    free = generate(model, prompt, 7, temperature=temperature, seed=0, use_cache=use_cache)
    assert free.tolist() == [[1, 2, 3, EOS, 4, 4, 4, 4], [5, 6, 7, 8, 9, EOS, 4, 4]]


def test_eos_first_token_and_unfinished_row():
    """Kills: the stop test made before the eos check (a
    one-step finish), or all() replaced by any()."""
    model = TableLM(chain_table, 10)
    out = generate(model, torch.tensor([[3]]), 5, temperature=0, eos_id=EOS)
    assert out.tolist() == [[3, EOS]]
    # a row that never emits eos keeps the batch going to max_new_tokens; the finished one is padded
    out = generate(model, torch.tensor([[3], [4]]), 4, temperature=0, eos_id=EOS)
    assert out.tolist() == [[3, EOS, EOS, EOS, EOS], [4, 4, 4, 4, 4]]


# --- beam search: the length penalty ------------------------------------------------------------

A, B, C, D = 1, 2, 3, 4
TINY = 1e-9  # eos where the tree has none
DEFAULT = {EOS: TINY, A: 0.4, B: 0.3, C: 0.2, D: 0.1}
# next-token probabilities after the prompt (D,) and the generated prefix
TREE = {
    (): {EOS: math.exp(-1.0), A: 0.45, B: 0.10, C: 0.08, D: 1 - math.exp(-1.0) - 0.63},
    (A,): {EOS: math.exp(-0.701), A: 0.1845, B: 0.15, C: 0.10, D: 1 - math.exp(-0.701) - 0.4345},
    (A, A): {EOS: TINY, A: 0.6, B: 0.2, C: 0.15, D: 0.05},
}


def tree_table(hist):
    probs = TREE.get(tuple(hist[1:]), DEFAULT)  # hist[0] is the prompt
    return [math.log(probs[t]) for t in range(5)]


def test_beam_length_penalty_changes_the_winner():
    """Kills: length_penalty ignored, applied with the wrong exponent, or the length counted from 0.

    Worked by hand with 3 beams, 3 new tokens, eos = 0. Candidates that survive to the end:
      [eos]        log p = -1.0                        (finished after 1 token)
      [A, eos]     log p = log 0.45 - 0.701 = -1.500   (finished after 2)
      [A, A, A]    log p = log 0.45 + log 0.1845 + log 0.6 = -3.000   (alive at 3; the other alive
                   beams, [A, B, A] = -3.61 and [A, B, B] = -3.90, are worse at every penalty)
    score = log p / length ** length_penalty:
      penalty 0: -1.0,  -1.5,  -3.0    -> [eos]
      penalty 1: -1.0,  -0.75, -1.0    -> [A, eos]
      penalty 2: -1.0,  -0.375, -0.333 -> [A, A, A]
    """
    lp = {
        "eos": math.log(TREE[()][EOS]),
        "A eos": math.log(TREE[()][A]) + math.log(TREE[(A,)][EOS]),
        "A A A": math.log(TREE[()][A]) + math.log(TREE[(A,)][A]) + math.log(TREE[(A, A)][A]),
    }
    assert lp["eos"] == pytest.approx(-1.0) and lp["A eos"] == pytest.approx(-1.5, abs=1e-3)
    assert lp["A A A"] == pytest.approx(-3.0, abs=1e-3)
    expected = {
        0.0: ([D, EOS], lp["eos"]),
        1.0: ([D, A, EOS], lp["A eos"] / 2),
        2.0: ([D, A, A, A], lp["A A A"] / 9),
    }
    assert (
        len({tuple(seq) for seq, _ in expected.values()}) == 3
    )  # the penalty flips the winner twice
    model = TableLM(tree_table, 5)
    for penalty, (seq, score) in expected.items():
        best, got = beam_search(
            model, torch.tensor([[D]]), 3, num_beams=3, length_penalty=penalty, eos_id=EOS
        )
        assert best.tolist() == [seq], penalty
        assert got == pytest.approx(score, abs=1e-4), penalty


def test_beam_search_without_eos_finds_the_best_sequence_greedy_misses():
    """Kills: beams ranked by the last token's log-probability instead of the summed one.

    After the prompt: A 0.5, B 0.4 (greedy takes A); after A everything is flat (0.25 each), after B
    one token has 0.9: B B scores log 0.4 + log 0.9 = -1.02 > A x = log 0.5 + log 0.25 = -2.08."""

    def table(hist):
        gen = tuple(hist[1:])
        probs = {
            (): [0.02, 0.5, 0.4, 0.04, 0.04],
            (A,): [0.2] * 5,
            (B,): [0.025, 0.025, 0.9, 0.025, 0.025],
        }
        return [math.log(p) for p in probs.get(gen, [0.2] * 5)]

    model = TableLM(table, 5)
    assert generate(model, torch.tensor([[D]]), 2, temperature=0).tolist()[0][:2] == [D, A]
    best, score = beam_search(model, torch.tensor([[D]]), 2, num_beams=2, length_penalty=0.0)
    assert best.tolist() == [[D, B, B]]
    assert score == pytest.approx(math.log(0.4) + math.log(0.9), abs=1e-5)


def test_next_token_default_temperature_is_one():
    """Kills: next_token's default temperature changed (every other test passes it explicitly).
    p(token 0) = softmax([2, 0])_0 = 0.881 at T = 1 but 0.731 at T = 2; 20,000 draws put the
    observed share within 5 standard errors (0.011) of the right one."""
    n = 20_000
    logits = torch.tensor([[2.0, 0.0]]).expand(n, 2)
    draws = next_token(logits, generator=torch.Generator().manual_seed(0))
    share = (draws == 0).float().mean().item()
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)[0].item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (share, p)


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.0001, 1.5])
def test_top_p_outside_the_unit_interval_is_refused(top_p):
    """Kills: the upper bound of top_p relaxed (``top_p <= 2``: 1.5 silently keeps everything)."""
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        filter_logits(torch.zeros(1, 4), top_p=top_p)
