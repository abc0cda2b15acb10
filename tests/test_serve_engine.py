"""Continuous batching (lmkit.serve.engine, chapter 13), tested without HTTP.

The engine runs in the test's own thread (``Engine.step`` / ``run_until_idle``), so which requests
share a step is decided by the test, not by timing. The contract: every sequence gets exactly the
tokens :func:`lmkit.generate.generate` gives for its prompt, settings and seed, whether it runs
alone or in a batch with others of other lengths and settings, admitted at other steps; a
cancelled sequence gets no further model call; stop strings end the text exactly where they begin.
"""

import threading

import pytest
import torch

from lmkit.data import CharTokenizer
from lmkit.generate import generate
from lmkit.models import GPT, GPTConfig
from lmkit.serve.engine import BatchedKVCache, Engine, QueueFull, SamplingParams

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(pos_emb="learned", seed=0):
    """A random GPT whose greedy output varies (weights of std 1: the default init, with tied
    embeddings, mostly repeats the last token)."""
    torch.manual_seed(seed)
    tok = CharTokenizer.from_text(CHARS)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, pos_emb=pos_emb
    )
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval(), tok


@pytest.fixture(scope="module", params=["learned", "rope"])
def pair(request):
    return tiny_model(request.param)


class Collector:
    """A sink: every event of every sequence, by choice index."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def final(self, index=0):
        [e] = [e for e in self.events if e.index == index and e.finish_reason]
        return e

    def text(self, index=0):
        return "".join(e.text for e in self.events if e.index == index)


def expected_ids(model, tok, prompt, n, **kw):
    ids = torch.tensor([tok.encode(prompt)])
    return generate(model, ids, n, **kw)[0, ids.size(1) :].tolist()


def params(n, kw):
    return SamplingParams(
        max_tokens=n,
        temperature=kw.get("temperature", 1.0),
        top_k=kw.get("top_k"),
        top_p=kw.get("top_p"),
        seed=kw.get("seed", 0),
    )


JOBS = [  # prompts of different lengths, different settings; 70 tokens pass the window (32)
    ("hello world", 20, dict(temperature=0.0)),
    ("a", 70, dict(temperature=0.9, seed=1)),
    ("the quick brown fox jumps", 12, dict(temperature=1.0, top_k=5, seed=2)),
    ("why?", 40, dict(temperature=1.2, top_p=0.9, seed=3)),
    ("ok, go", 33, dict(temperature=0.7, top_k=10, top_p=0.8, seed=4)),
    ("zzz", 5, dict(temperature=0.0)),
]


def test_a_lone_request_equals_lmkit_generate(pair):
    """Greedy and seeded sampling, alone in the engine: generate()'s tokens, window restarts
    included (learned and rotary positions)."""
    model, tok = pair
    for prompt, n, kw in JOBS:
        engine = Engine(model, tok)
        sink = Collector()
        engine.submit(tok.encode(prompt), params(n, kw), sink)
        engine.run_until_idle()
        assert sink.final().token_ids == expected_ids(model, tok, prompt, n, **kw), (prompt, kw)
        assert sink.final().finish_reason == "length"


def test_batched_requests_get_the_tokens_they_get_alone(pair):
    """Six requests admitted at different steps, run together: each equals generate().

    Kills: a shared position for all rows, the padding not masked, one generator for the batch,
    a cache row not moved when the batch is compacted."""
    model, tok = pair
    engine = Engine(model, tok, max_batch=8)
    sinks = [Collector() for _ in JOBS]
    engine.submit(tok.encode(JOBS[0][0]), params(*JOBS[0][1:]), sinks[0])
    engine.submit(tok.encode(JOBS[1][0]), params(*JOBS[1][1:]), sinks[1])
    for _ in range(3):
        engine.step()
    for i in range(2, len(JOBS)):  # the others join a running batch, one step apart
        engine.submit(tok.encode(JOBS[i][0]), params(*JOBS[i][1:]), sinks[i])
        engine.step()
    assert engine.running == len(JOBS)  # really one batch
    engine.run_until_idle()
    for (prompt, n, kw), sink in zip(JOBS, sinks):
        assert sink.final().token_ids == expected_ids(model, tok, prompt, n, **kw), (prompt, kw)
    assert engine.pending == 0 and engine.running == 0


def test_one_decode_call_carries_the_whole_batch():
    """The lm_head sees rows of several sequences at once (one call per step, not per request)."""
    model, tok = tiny_model()
    sizes = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: sizes.append(out.shape[0]))
    try:
        engine = Engine(model, tok)
        for prompt, n, kw in JOBS[:3]:
            engine.submit(tok.encode(prompt), params(n, kw), Collector())
        engine.run_until_idle()
    finally:
        handle.remove()
    assert 3 in sizes  # a decode step over three rows
    assert engine.steps == 70  # the longest request: one step per token


def test_max_batch_bounds_the_running_batch(pair):
    model, tok = pair
    engine = Engine(model, tok, max_batch=2)
    sinks = [Collector() for _ in JOBS[:4]]
    for (prompt, n, kw), sink in zip(JOBS, sinks):
        engine.submit(tok.encode(prompt), params(n, kw), sink)
    seen = []
    while engine.pending:
        engine.step()
        seen.append(engine.running)
    assert max(seen) == 2
    for (prompt, n, kw), sink in zip(JOBS, sinks):
        assert sink.final().token_ids == expected_ids(model, tok, prompt, n, **kw)


def test_batch_of_one_is_serial_and_still_correct():
    model, tok = tiny_model()
    engine = Engine(model, tok, max_batch=1)
    sinks = [Collector() for _ in JOBS]
    for (prompt, n, kw), sink in zip(JOBS, sinks):
        engine.submit(tok.encode(prompt), params(n, kw), sink)
    engine.run_until_idle()
    assert engine.steps == sum(n for _, n, _ in JOBS)
    for (prompt, n, kw), sink in zip(JOBS, sinks):
        assert sink.final().token_ids == expected_ids(model, tok, prompt, n, **kw)


def test_n_choices_sample_with_consecutive_seeds():
    model, tok = tiny_model()
    engine = Engine(model, tok)
    sink = Collector()
    seqs = engine.submit(tok.encode("abc"), SamplingParams(10, temperature=1.0, seed=7), sink, n=3)
    assert [s.seed for s in seqs] == [7, 8, 9]
    engine.run_until_idle()
    for i in range(3):
        want = expected_ids(model, tok, "abc", 10, temperature=1.0, seed=7 + i)
        assert sink.final(i).token_ids == want


def test_a_missing_seed_is_drawn_and_reproduces():
    model, tok = tiny_model()
    engine = Engine(model, tok)
    sink = Collector()
    [seq] = engine.submit(tok.encode("abc"), SamplingParams(12, temperature=1.0), sink)
    engine.run_until_idle()
    assert 0 <= seq.seed < 2**63
    assert sink.final().token_ids == expected_ids(
        model, tok, "abc", 12, temperature=1.0, seed=seq.seed
    )


def test_queue_limit_counts_waiting_and_running():
    model, tok = tiny_model()
    engine = Engine(model, tok, max_batch=1, max_queue=3)
    engine.submit(tok.encode("a"), SamplingParams(3), Collector(), n=2)
    engine.step()  # one runs, one waits
    engine.submit(tok.encode("b"), SamplingParams(3), Collector())
    with pytest.raises(QueueFull) as e:
        engine.submit(tok.encode("c"), SamplingParams(3), Collector())
    assert (e.value.pending, e.value.limit) == (3, 3)
    with pytest.raises(QueueFull):  # all or nothing: n=2 does not fit either
        engine.submit(tok.encode("c"), SamplingParams(3), Collector(), n=2)
    engine.run_until_idle()
    assert engine.pending == 0
    engine.submit(tok.encode("d"), SamplingParams(3), Collector(), n=3)  # room again


def test_cancel_stops_the_model_calls_at_the_next_step():
    """A cancelled sequence is retired before its next model call; the others go on unchanged."""
    model, tok = tiny_model()
    calls = []
    engine = Engine(model, tok)
    handle = model.lm_head.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    try:
        a, b = Collector(), Collector()
        [seq] = engine.submit(tok.encode("abc"), SamplingParams(30, temperature=0.0), a)
        engine.submit(tok.encode("xyz"), SamplingParams(30, temperature=0.9, seed=1), b)
        for _ in range(5):
            engine.step()
        seq.cancel()
        engine.step()  # retires it: this step's decode carries one row
        assert engine.running == 1 and calls[-1] == 1
        engine.run_until_idle()
    finally:
        handle.remove()
    assert a.final().finish_reason == "cancelled" and len(a.final().token_ids) == 5
    assert b.final().token_ids == expected_ids(model, tok, "xyz", 30, temperature=0.9, seed=1)
    assert sum(calls) == 5 + 30  # model rows: one per token, none for it after the cancel


def test_cancel_while_waiting_never_runs():
    model, tok = tiny_model()
    engine = Engine(model, tok, max_batch=1)
    engine.submit(tok.encode("abc"), SamplingParams(4), Collector())
    later = Collector()
    [seq] = engine.submit(tok.encode("xyz"), SamplingParams(4), later)
    seq.cancel()
    engine.run_until_idle()
    assert later.final().finish_reason == "cancelled" and later.final().token_ids == []
    assert engine.steps == 4


def greedy_text(model, tok, prompt, n):
    return tok.decode(expected_ids(model, tok, prompt, n, temperature=0.0))


def test_stop_string_ends_the_completion_before_it():
    """The completion is the text before the first occurrence of any stop string; the streamed
    pieces add up to it and never contain the beginning of a stop string that then completes."""
    model, tok = tiny_model()
    full = greedy_text(model, tok, "hello world", 40)
    stop = full[20:23]
    cut = full.find(stop)
    engine = Engine(model, tok)
    sink = Collector()
    engine.submit(tok.encode("hello world"), SamplingParams(40, 0.0, stop=("zzzz", stop)), sink)
    engine.run_until_idle()
    final = sink.final()
    assert final.finish_reason == "stop" and final.completion == full[:cut]
    assert sink.text() == full[:cut]
    assert len(final.token_ids) == cut + len(stop)  # tokens up to the end of the stop string
    for e in sink.events:
        assert stop not in e.text


def test_stop_string_never_seen_releases_everything():
    model, tok = tiny_model()
    full = greedy_text(model, tok, "hello world", 25)
    engine = Engine(model, tok)
    sink = Collector()
    engine.submit(tok.encode("hello world"), SamplingParams(25, 0.0, stop=(full[-1] + "#",)), sink)
    engine.run_until_idle()
    assert sink.final().finish_reason == "length"
    assert sink.text() == full == sink.final().completion
    # the last character could begin the stop string, so it waited for the end
    assert [e.text for e in sink.events][-1].endswith(full[-1])


def test_zero_max_tokens_finishes_without_a_model_call():
    model, tok = tiny_model()
    engine = Engine(model, tok)
    sink = Collector()
    engine.submit(tok.encode("abc"), SamplingParams(0), sink)
    engine.run_until_idle()
    assert sink.final().finish_reason == "length" and sink.final().token_ids == []
    assert engine.steps == 0


@torch.no_grad()
def test_logprobs_are_the_model_distribution():
    model, tok = tiny_model()
    engine = Engine(model, tok)
    sink = Collector()
    engine.submit(tok.encode("abc"), SamplingParams(6, 0.0, logprobs=3), sink)
    engine.run_until_idle()
    entries = [lp for e in sink.events for lp in e.logprobs]
    ids = tok.encode("abc") + sink.final().token_ids
    logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), -1)
    assert [e.offset for e in entries] == list(range(6))
    for i, e in enumerate(entries):
        row = logp[len("abc") - 1 + i]
        assert e.token == tok.decode([ids[3 + i]])
        assert e.logprob == pytest.approx(float(row[ids[3 + i]]), abs=1e-4)
        top = torch.topk(row, 3)
        assert list(e.top) == [tok.decode([j]) for j in top.indices.tolist()]
        assert max(e.top.values()) == pytest.approx(e.logprob, abs=1e-4)  # greedy: the top one


def test_hooks_added_after_the_engine_are_called():
    """A forward hook registered while the engine exists (a test clock, a counter) runs at the
    next step: the engine re-reads modules that gained hooks."""
    model, tok = tiny_model()
    engine = Engine(model, tok)
    engine.submit(tok.encode("abc"), SamplingParams(5, 0.0), Collector())
    engine.step()
    engine.step()
    calls = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        engine.run_until_idle()
    finally:
        handle.remove()
    assert len(calls) == 3


def test_the_loop_thread_survives_a_failing_step():
    """An exception inside a step ends the running sequences with ``error``; the loop goes on."""
    model, tok = tiny_model()
    engine = Engine(model, tok)
    done = threading.Event()
    sinks = [Collector(), Collector()]
    fail = [True]

    def boom(m, a):
        if fail[0]:
            fail[0] = False
            raise RuntimeError("planted")

    handle = model.lm_head.register_forward_pre_hook(boom)
    engine.start()
    try:
        engine.submit(
            tok.encode("abc"), SamplingParams(5, 0.0), lambda e: (sinks[0](e), done.set())
        )
        assert done.wait(60)
        done.clear()
        engine.submit(
            tok.encode("abc"), SamplingParams(5, 0.0), lambda e: (sinks[1](e), done.set())
        )
        while not any(e.finish_reason for e in sinks[1].events):
            assert done.wait(60)
            done.clear()
    finally:
        handle.remove()
        engine.stop()
    assert sinks[0].final().finish_reason == "error" and "planted" in sinks[0].final().error
    assert sinks[1].final().token_ids == expected_ids(model, tok, "abc", 5, temperature=0.0)


def test_batched_cache_grows_and_keeps_its_rows():
    model, _ = tiny_model()
    cache = BatchedKVCache(model.config, 2)
    cache.k[:, 1, :, :3] = 1.5
    cache.grow(5)
    assert cache.capacity == 5 and cache.k.shape[1] == 5
    assert bool((cache.k[:, 1, :, :3] == 1.5).all()) and float(cache.k[:, 2:].abs().sum()) == 0
    cache.move(1, 4, 3)
    assert bool((cache.k[:, 4, :, :3] == 1.5).all())


def test_sampling_params_are_checked():
    for bad in (dict(max_tokens=-1), dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=("",))


def test_batched_draws_reproduce_torch_multinomial():
    """The engine draws a batch's tokens with one argmax over p / Exp(1) noise (each row from
    its own generator) where that reproduces torch.multinomial; the check says so on this
    machine, and the fallback (one multinomial per row) gives the same tokens."""
    from lmkit.serve.engine import exponential_draws_match

    model, tok = tiny_model()
    assert exponential_draws_match("cpu")
    answers = []
    for batched in (True, False):
        engine = Engine(model, tok)
        engine.exponential_draws = batched
        sinks = [Collector() for _ in JOBS]
        for (prompt, n, kw), sink in zip(JOBS, sinks):
            engine.submit(tok.encode(prompt), params(n, kw), sink)
        engine.run_until_idle()
        answers.append([s.final().token_ids for s in sinks])
    assert answers[0] == answers[1]
    assert answers[0] == [expected_ids(model, tok, p, n, **kw) for p, n, kw in JOBS]


def test_a_large_batch_hands_events_over_every_other_step():
    """From ``coalesce_from`` running sequences on, each sequence's events are handed over every
    other step (two tokens per delivery); first tokens and ends go at once; nothing is lost."""
    model, tok = tiny_model()
    engine = Engine(model, tok)
    engine.coalesce_from = 2
    deliveries = []
    engine.deliver = deliveries.append
    for prompt in ("abc", "hello", "why?"):
        engine.submit(tok.encode(prompt), SamplingParams(9, 0.0), Collector())
    engine.run_until_idle()
    assert engine.steps == 9 and len(deliveries) < 9
    assert [e.tokens for _, e in deliveries[0]] == [1, 1, 1]  # the first tokens at once
    by_sink = {}
    for batch in deliveries:
        for sink, e in batch:
            by_sink.setdefault(sink, []).append(e)
    for prompt, events in zip(("abc", "hello", "why?"), by_sink.values()):
        assert [e.tokens for e in events] == list(range(1, 10))  # every token, in order
        assert "".join(e.text for e in events) == greedy_text(model, tok, prompt, 9)
        assert events[-1].finish_reason == "length"
    assert max(len(batch) for batch in deliveries[1:]) == 6  # two events of each of three
