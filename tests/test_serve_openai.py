"""The OpenAI-compatible API of lmkit.serve (chapter 13), driven by the official ``openai`` client
against a real server on localhost (uvicorn in a thread, on a port it binds itself).

Each answer is checked against :func:`lmkit.generate.generate` with the same prompt, settings and
seed: completions, chat (through the documented template), streaming (the chunks add up to the
non-streamed answer), ``n`` choices, stop strings, logprobs. Errors come back as the client's
exceptions with the server's message. Cancellation, the time limit and batching over HTTP are
driven by models that wait for the test (a forward pre-hook), so nothing depends on speed.
"""

import contextlib
import json
import string
import threading
import time
import types

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
import torch  # noqa: E402

import lmkit.serve.engine as engine_module  # noqa: E402
from lmkit.checkpoint import load_model, save_model  # noqa: E402
from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.generate import generate  # noqa: E402
from lmkit.models import GPT, GPTConfig  # noqa: E402
from lmkit.serve import BackgroundServer, ChatTemplate, ServerLimits, create_app  # noqa: E402

CHARS = string.ascii_letters + " .,!?:\n"
LIMITS = ServerLimits(max_prompt_chars=200, max_new_tokens=64, max_body_bytes=8192, timeout_s=20.0)
MODEL = "tiny"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(CHARS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():  # std 1: the greedy output varies (the default init repeats itself)
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    d = tmp_path_factory.mktemp("openai") / MODEL
    save_model(d, model, tok)
    return d


@pytest.fixture(scope="module")
def reference(checkpoint):
    model, tok, _ = load_model(checkpoint)
    return model.eval(), tok


@pytest.fixture(scope="module")
def url(checkpoint):
    with BackgroundServer(create_app(checkpoint, LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def expected(reference, prompt, n, stop=(), **kw):
    """generate()'s completion, cut before the first stop string: (text, finish_reason)."""
    model, tok = reference
    ids = torch.tensor([tok.encode(prompt)])
    text = tok.decode(generate(model, ids, n, **kw)[0, ids.size(1) :].tolist())
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], "stop") if cuts else (text, "length")


def chat_prompt(messages):
    return ChatTemplate().render([(m["role"], m["content"]) for m in messages])


# ---------------------------------------------------------------------------------------------
# Models, completions, chat.


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    m = client.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "lmkit")
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.models.retrieve("gpt-4")


SETTINGS = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.8, seed=1),
    "top_p": dict(temperature=1.2, top_p=0.9, seed=3),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_completion_equals_lmkit_generate(client, reference, name):
    kw = SETTINGS[name]
    r = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=40, **kw)
    text, reason = expected(reference, "Hello world", 40, **kw)
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    assert [c.text for c in r.choices] == [text] and r.choices[0].finish_reason == reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 40, 51)


def test_top_k_through_extra_body(client, reference):
    r = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=20, seed=4, extra_body={"top_k": 5}
    )
    assert r.choices[0].text == expected(reference, "abc", 20, top_k=5, seed=4)[0]


def test_missing_seed_is_returned_and_reproduces(client, reference):
    r = client.completions.create(model=MODEL, prompt="The", max_tokens=20)
    seed = r.model_extra["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    assert r.choices[0].text == expected(reference, "The", 20, seed=seed)[0]


def test_n_choices_use_consecutive_seeds(client, reference):
    r = client.completions.create(model=MODEL, prompt="Why", max_tokens=12, n=3, seed=10)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [
        expected(reference, "Why", 12, seed=10 + i)[0] for i in range(3)
    ]
    assert r.usage.completion_tokens == 36 and r.usage.prompt_tokens == 3


def test_stop_sequences(client, reference):
    full, _ = expected(reference, "Hello world", 50, temperature=0.0)
    stops = [full[30:33], full[12:14]]  # the earlier one wins, wherever it is in the list
    r = client.completions.create(
        model=MODEL, prompt="Hello world", max_tokens=50, temperature=0, stop=stops
    )
    assert r.choices[0].text == full[: full.find(stops[1])]
    assert r.choices[0].finish_reason == "stop"
    one = client.completions.create(
        model=MODEL, prompt="Hello world", max_tokens=50, temperature=0, stop=full[20:22]
    )
    assert one.choices[0].text == full[: full.find(full[20:22])]


def test_logprobs(client, reference):
    r = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=8, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 8
    assert lp.text_offset == list(range(8))
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and chosen == pytest.approx(max(top.values()))  # greedy: the top
        assert chosen <= 0


def test_chat_completion_uses_the_template(client, reference):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Tell me more"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, seed=2)
    assert chat_prompt(messages) == (
        "Be brief.\n\nUser: Hi there\nAssistant: Hello\nUser: Tell me more\nAssistant: "
    )
    text, reason = expected(reference, chat_prompt(messages), 30, stop=("\nUser:",), seed=2)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, reason)
    assert r.usage.prompt_tokens == len(chat_prompt(messages))


def test_chat_stops_where_the_model_starts_the_next_turn(reference):
    """The template's stop string ends the reply; a template with another stop is used as is."""
    model, tok = reference
    messages = [{"role": "user", "content": "Hi"}]
    full, _ = expected(reference, chat_prompt(messages), 40, temperature=0.0)
    template = ChatTemplate(stop=(full[10:12],))
    with BackgroundServer(create_app((model, tok), LIMITS, chat_template=template)) as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="GPT", messages=messages, max_tokens=40, temperature=0)
    assert r.choices[0].message.content == full[: full.find(full[10:12])]
    assert r.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------
# Streaming.


def test_streamed_completion_adds_up_to_the_answer(client, reference):
    stream = client.completions.create(
        model=MODEL,
        prompt="Hello world",
        max_tokens=40,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, _ = expected(reference, "Hello world", 40, seed=5)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == text and len(pieces) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert len({c.id for c in chunks}) == 1


def test_streamed_chat(client, reference):
    messages = [{"role": "user", "content": "Hi"}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=30, seed=6, stream=True
        )
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text, reason = expected(reference, chat_prompt(messages), 30, stop=("\nUser:",), seed=6)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason


def test_streamed_stop_never_shows_the_stop_string(client, reference):
    full, _ = expected(reference, "Hello world", 50, temperature=0.0)
    stop = full[25:28]
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="Hello world", max_tokens=50, temperature=0, stop=stop, stream=True
        )
    ]
    assert "".join(pieces) == full[: full.find(stop)]
    assert all(stop not in p for p in pieces)


def test_streamed_n_choices(client, reference):
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Why", max_tokens=10, n=2, seed=20, stream=True
        )
    )
    for i in range(2):
        got = "".join(ch.text for c in chunks for ch in c.choices if ch.index == i)
        assert got == expected(reference, "Why", 10, seed=20 + i)[0]


def test_sse_wire_format(url):
    """Raw bytes: ``data: {json}`` events separated by blank lines, ``data: [DONE]`` last."""
    body = {"model": MODEL, "prompt": "ab", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: {") and json.loads(e[6:])["object"] == "text_completion"


# ---------------------------------------------------------------------------------------------
# Errors, as the official client reports them.


ERRORS = {
    "unknown_model": (
        dict(model="gpt-4", prompt="hi"),
        openai.NotFoundError,
        "model 'gpt-4' not found; this server serves 'tiny'",
    ),
    "unsupported_field": (
        dict(model=MODEL, prompt="hi", presence_penalty=0.5),
        openai.UnprocessableEntityError,
        "presence_penalty: not supported by this server",
    ),
    "unknown_field": (
        dict(model=MODEL, prompt="hi", extra_body={"temprature": 1}),
        openai.UnprocessableEntityError,
        "temprature: Extra inputs are not permitted",
    ),
    "too_many_tokens": (
        dict(model=MODEL, prompt="hi", max_tokens=65),
        openai.UnprocessableEntityError,
        "max_tokens: Input should be less than or equal to 64",
    ),
    "prompt_over_the_context": (
        dict(model=MODEL, prompt="a" * 96),
        openai.UnprocessableEntityError,
        "prompt is 96 tokens long; the limit is 95 tokens",
    ),
    "unknown_characters": (
        dict(model=MODEL, prompt="naïve 🙂"),
        openai.UnprocessableEntityError,
        "outside the vocabulary",
    ),
    "too_many_stops": (
        dict(model=MODEL, prompt="hi", stop=["a", "b", "c", "d", "e"]),
        openai.UnprocessableEntityError,
        "stop",
    ),
    "temperature_over_two": (
        dict(model=MODEL, prompt="hi", temperature=2.5),
        openai.UnprocessableEntityError,
        "temperature: Input should be less than or equal to 2",
    ),
    "too_many_logprobs": (
        dict(model=MODEL, prompt="hi", logprobs=6),
        openai.UnprocessableEntityError,
        "logprobs: Input should be less than or equal to 5",
    ),
}


@pytest.mark.parametrize("name", ERRORS)
def test_errors_reach_the_client_with_the_message(client, name):
    kwargs, error, words = ERRORS[name]
    with pytest.raises(error) as e:
        client.completions.create(**kwargs)
    assert words in e.value.message, e.value.message
    assert e.value.body["message"] == e.value.response.json()["detail"]


CHAT_ERRORS = {
    "no_messages": (dict(messages=[]), "messages: List should have at least 1 item"),
    "bad_role": (
        dict(messages=[{"role": "robot", "content": "hi"}]),
        "messages.0.role: Input should be 'system', 'developer', 'user' or 'assistant'",
    ),
    "tools": (
        dict(messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function"}]),
        "tools: not supported by this server",
    ),
    "chat_logprobs": (
        dict(messages=[{"role": "user", "content": "hi"}], logprobs=True),
        "logprobs: not supported by this server",
    ),
    "two_max_tokens": (
        dict(messages=[{"role": "user", "content": "hi"}], max_tokens=3, max_completion_tokens=4),
        "max_tokens (3) and max_completion_tokens (4) differ",
    ),
    "template_over_the_context": (
        dict(messages=[{"role": "user", "content": "a" * 90}]),
        "messages (with the chat template) is 108 tokens long; the limit is 95 tokens",
    ),
}


@pytest.mark.parametrize("name", CHAT_ERRORS)
def test_chat_errors(client, name):
    kwargs, words = CHAT_ERRORS[name]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model=MODEL, **kwargs)
    assert words in e.value.message, e.value.message


def test_a_no_op_value_of_an_unsupported_field_is_accepted(client, reference):
    r = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=5, temperature=0, presence_penalty=0, echo=False
    )
    assert r.choices[0].text == expected(reference, "abc", 5, temperature=0.0)[0]


def test_bad_bodies_still_get_4xx_with_both_messages(url):
    for body, ctype, status in [
        (b'{"model": "tiny", "prompt": "hi",}', "application/json", 400),
        (b'{"model": "tiny"}', "text/plain", 415),
        (b'{"model": "tiny", "prompt": "hi", "stream": "yes"}', "application/json", 422),
        (b'{"model": "tiny", "prompt": "hi", "n": 9}', "application/json", 422),
        (b"[1, 2]", "application/json", 422),
        (b'{"model": "tiny", "prompt": "hi", "stream_options": {}}', "application/json", 422),
    ]:
        r = httpx.post(
            url + "/v1/completions", content=body, headers={"content-type": ctype}, timeout=30
        )
        assert r.status_code == status, r.text
        assert r.json()["detail"] == r.json()["error"]["message"] and r.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Batching, cancellation, time limit and queue over HTTP: models that wait for the test.


class Stepper:
    """Each model call of ``model`` waits for a permit from the test (``allow(n)``, or ``run()``
    to stop waiting); ``calls`` counts the calls and ``rows`` the sequences they carried."""

    def __init__(self, model):
        self.permits, self.free = threading.Semaphore(0), threading.Event()
        self.calls, self.rows = 0, 0
        self.handle = model.lm_head.register_forward_pre_hook(self._wait)

    def _wait(self, module, args):
        while not self.free.is_set() and not self.permits.acquire(timeout=0.05):
            pass
        self.calls += 1
        self.rows += args[0].shape[0]

    def allow(self, n: int) -> None:
        for _ in range(n):
            self.permits.release()

    def run(self) -> None:
        self.free.set()

    def remove(self) -> None:
        self.free.set()
        self.handle.remove()


@contextlib.contextmanager
def stepped_server(checkpoint, limits=LIMITS):
    model, tok, _ = load_model(checkpoint)
    stepper = Stepper(model)
    app = create_app((model, tok), limits, model_name=MODEL)
    try:
        with BackgroundServer(app) as base:
            yield base, stepper, app
    finally:
        stepper.remove()


def wait_for(predicate, what, limit_s=60):
    """Poll until ``predicate()``; the limit turns a hang into a failure, it measures nothing."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def finished(app, reason):
    return app.state.metrics.ends.labels(reason)._value.get()


def cancelled(app) -> bool:
    """Has the server flagged every running sequence as cancelled (client gone)?"""
    active = app.state.engine.active()
    return bool(active) and all(s.cancelled for s in active)


def test_a_disconnected_stream_frees_its_slot_at_the_next_step(checkpoint):
    """The client reads three tokens and goes away while the engine is inside its 4th model
    call: the server flags the sequence, the engine retires it (reason ``cancelled``) before the
    5th call, and makes no further call for it, far from its 60 tokens."""
    with stepped_server(checkpoint) as (base, stepper, app):
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 60, "stream": True, "seed": 1}
        stepper.allow(3)
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
            text = ""  # one chunk may carry several tokens (one character each)
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
                if len(text) == 3:
                    break
        wait_for(lambda: cancelled(app), "the server to see the disconnect")
        stepper.allow(1)  # the 4th call ends; the sweep before the 5th retires the sequence
        wait_for(lambda: finished(app, "cancelled") == 1, "the sequence to be retired")
        stepper.run()
        time.sleep(0.2)
        assert stepper.rows == 4  # three tokens read, the call under way; none after
        assert app.state.engine.pending == 0 and app.state.engine.running == 0
        assert finished(app, "length") == 0


def test_a_client_that_gives_up_cancels_a_plain_request(checkpoint):
    with stepped_server(checkpoint) as (base, stepper, app):
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 60}
        stepper.allow(2)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
        wait_for(lambda: cancelled(app), "the server to see the disconnect")
        stepper.allow(1)
        wait_for(lambda: finished(app, "cancelled") == 1, "the sequence to be retired")
        stepper.run()
        assert stepper.rows == 3 and app.state.engine.pending == 0


def test_concurrent_streams_are_batched_and_correct(checkpoint, reference):
    """Eight streams started while the model is held: the engine takes them into one batch
    (a decode call carries several rows) and each answer equals generate()'s."""
    jobs = [("abc", dict(seed=i, temperature=0.9)) for i in range(4)] + [
        ("Hello", dict(temperature=0.0)),
        ("Why not", dict(seed=7, top_p=0.8)),
        ("a", dict(seed=8)),
        ("The end", dict(seed=9, temperature=1.3)),
    ]
    results = [None] * len(jobs)
    with stepped_server(checkpoint) as (base, stepper, app):
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)

        def run(i):
            prompt, kw = jobs[i]
            stream = c.completions.create(
                model=MODEL, prompt=prompt, max_tokens=20, stream=True, **kw
            )
            results[i] = "".join(ch.choices[0].text for ch in stream if ch.choices)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        wait_for(lambda: app.state.engine.pending == len(jobs), "every request to arrive")
        stepper.run()
        for t in threads:
            t.join(60)
        assert stepper.calls < stepper.rows  # several sequences per model call
    for (prompt, kw), got in zip(jobs, results):
        assert got == expected(reference, prompt, 20, **kw)[0]


def test_queue_full_is_503_with_retry_after(checkpoint):
    limits = ServerLimits(max_new_tokens=8, max_queue=2)
    with stepped_server(checkpoint, limits) as (base, stepper, app):
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        done = []
        t = threading.Thread(
            target=lambda: done.append(
                c.completions.create(model=MODEL, prompt="a", max_tokens=4, n=2)
            )
        )
        t.start()
        wait_for(lambda: app.state.engine.pending == 2, "the first request")
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=MODEL, prompt="b", max_tokens=4)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert "server busy: 2 requests queued (limit 2)" in e.value.message
        stepper.run()
        t.join(60)
        assert len(done[0].choices) == 2


class Clock:
    """The engine's clock: 2.5 s per model call (a pre-hook on lm_head)."""

    def __init__(self, model):
        self.now = 0.0
        self.handle = model.lm_head.register_forward_pre_hook(self._tick)
        self.time = types.SimpleNamespace(
            monotonic=lambda: self.now, perf_counter=time.perf_counter
        )

    def _tick(self, module, args):
        self.now += 2.5


def test_time_limit_mid_stream_ends_with_an_error_event(checkpoint, monkeypatch):
    """timeout 10 s, 2.5 s per model call: five tokens, then an error event the client raises."""
    model, tok, _ = load_model(checkpoint)
    clock = Clock(model)
    monkeypatch.setattr(engine_module, "time", clock.time)
    limits = ServerLimits(max_new_tokens=20, timeout_s=10.0)
    try:
        with BackgroundServer(create_app((model, tok), limits, model_name=MODEL)) as base:
            c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
            pieces = []
            with pytest.raises(openai.APIError, match="time limit of 10 s reached after 5 of 20"):
                for chunk in c.completions.create(
                    model=MODEL, prompt="abc", max_tokens=20, seed=0, stream=True
                ):
                    pieces.append(chunk.choices[0].text)
            assert len("".join(pieces)) == 5
            clock.now = 0.0
            with pytest.raises(openai.InternalServerError, match="time limit"):
                c.completions.create(model=MODEL, prompt="abc", max_tokens=20)
    finally:
        clock.handle.remove()


# ---------------------------------------------------------------------------------------------
# Metrics.


def test_metrics_in_prometheus_format(checkpoint):
    from prometheus_client.parser import text_string_to_metric_families

    with BackgroundServer(create_app(checkpoint, LIMITS)) as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        r1 = c.completions.create(model=MODEL, prompt="abc", max_tokens=7)
        list(c.completions.create(model=MODEL, prompt="abc", max_tokens=5, stream=True))
        with pytest.raises(openai.UnprocessableEntityError):
            c.completions.create(model=MODEL, prompt="abc", max_tokens=100)
        httpx.post(base + "/v1/completions", content=b"{", headers={"content-type": "text/x"})
        text = httpx.get(base + "/metrics", timeout=30).text
        other = create_app(checkpoint, LIMITS)  # its own registry: counts start at zero
        assert b"lmkit_generated_tokens_total 0.0" in other.state.metrics.render()[0]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    route = "/v1/completions"
    assert value("lmkit_http_requests_total", route=route, status="200") == 2
    assert value("lmkit_http_requests_total", route=route, status="422") == 1
    assert value("lmkit_http_requests_total", route=route, status="415") == 1
    assert value("lmkit_generated_tokens_total") == r1.usage.completion_tokens + 5 == 12
    assert value("lmkit_prompt_tokens_total") == 6
    assert value("lmkit_sequences_finished_total", reason="length") == 2
    assert value("lmkit_time_to_first_token_seconds_count") == 2
    assert value("lmkit_time_per_output_token_seconds_count") == 2
    assert value("lmkit_e2e_request_latency_seconds_count") == 2
    assert value("lmkit_queue_length") == 0 and value("lmkit_running_batch_size") == 0


# ---------------------------------------------------------------------------------------------
# The schema, fuzzed: nothing a client sends to the OpenAI routes produces a 5xx.


def test_openapi_schema_documents_the_v1_routes(url):
    spec = httpx.get(url + "/openapi.json", timeout=30).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/generate"} <= set(
        spec["paths"]
    )
    op = spec["paths"]["/v1/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    req = spec["components"]["schemas"][ref]
    assert req["additionalProperties"] is False and set(req["required"]) == {"model", "prompt"}
    assert {"200", "400", "404", "413", "415", "422", "503"} <= set(op["responses"])
    assert "text/event-stream" in op["responses"]["200"]["content"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_fuzz_openai_routes_with_schemathesis(url, client, reference, path):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    op = schema[path]["POST"]
    strategy = op.as_strategy(
        generation_mode=schemathesis.GenerationMode.POSITIVE
    ) | op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    statuses = []

    @settings(max_examples=60, suppress_health_check=list(HealthCheck))  # + the "ci" profile
    @given(case=strategy)
    def run(case):
        response = case.call(base_url=url, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"]

    run()
    assert any(400 <= s < 500 for s in statuses)
    r = client.completions.create(model=MODEL, prompt="after", max_tokens=12, seed=7)
    assert r.choices[0].text == expected(reference, "after", 12, seed=7)[0]
