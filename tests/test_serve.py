"""The HTTP server (lmkit.serve, chapter 13), tested over real HTTP on localhost: the transport
gate, the limits, the time limit and the queue, through the book's first API (``POST /generate``).
The OpenAI API is tested in tests/test_serve_openai.py, the batching engine in
tests/test_serve_engine.py, the chat page in tests/test_chat_page.py.

Every test makes its own tiny checkpoint (random GPT + CharTokenizer, saved with save_model), so no
shipped checkpoint is needed. Servers run with uvicorn in a background thread on a port the server
binds itself (port 0), so no other process can take it in between.

Deterministic by construction: greedy answers are checked against an independent plain loop
(:func:`greedy_reference`, no KV cache, no ``lmkit.generate``); every limit is tested at its exact
boundary (accepted at the limit, refused one past it); the time limit runs on a fake clock that the
model advances, and the queue limit on a model that blocks until released, so nothing depends on how
fast this machine is. Hypothesis runs under the derandomized "ci" profile (tests/conftest.py).
"""

import contextlib
import json
import math
import queue
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
import torch  # noqa: E402

import lmkit.serve.engine as engine_module  # noqa: E402
from lmkit.checkpoint import load_model, save_model  # noqa: E402
from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.generate import generate  # noqa: E402
from lmkit.models import GPT, GPTConfig  # noqa: E402
from lmkit.serve import (  # noqa: E402
    MIN_TEMPERATURE,
    BackgroundServer,
    GenerationTimeout,
    ServerLimits,
    add_serve_arguments,
    create_app,
    deadline_check,
    limits_from_args,
    run_server,
)

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"
LIMITS = ServerLimits(max_prompt_chars=200, max_new_tokens=64, max_body_bytes=8192, timeout_s=20.0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model is fastest on one thread; two
    threads on a busy 2-core machine are 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(CHARS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():  # weights of std 1, not 0.02: the default init, with tied embeddings,
        for p in model.parameters():  # mostly repeats the last token; this one says varied things
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    d = tmp_path_factory.mktemp("serve") / "tiny"
    save_model(d, model, tok, info={"note": "random weights (std 1) for tests"})
    return d


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same model and tokenizer, loaded for the expected answers."""
    model, tok, _ = load_model(checkpoint)
    return model.eval(), tok


def expected(reference, prompt, n, **kw):
    """What ``lmkit.generate`` gives: the server's documented contract for *sampled* answers (same
    seed, same tokens). Greedy answers are checked against :func:`greedy_reference` instead."""
    model, tok = reference
    out = generate(model, torch.tensor([tok.encode(prompt)]), n, **kw)[0].tolist()
    return tok.decode(out)


@torch.no_grad()
def greedy_reference(model, ids, n):
    """Greedy continuation by a plain loop, independent of ``lmkit.generate`` and of the KV cache:
    run the model on the whole window, take the argmax of the last position's logits, append.

    The window follows the policy documented in lmkit/generate.py (chapter 12): the model sees at
    most ``block_size`` tokens; when the sequence fills the window it restarts from the last
    ``block_size // 2`` tokens (a prompt of ``block_size`` tokens or more starts there too).
    """
    window = model.config.block_size
    seq = list(ids)
    start = len(seq) - window // 2 if len(seq) >= window else 0
    for _ in range(n):
        if len(seq) - start >= window:
            start = len(seq) - window // 2
        logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
    return seq


def greedy_text(reference, prompt, n):
    model, tok = reference
    return tok.decode(greedy_reference(model, tok.encode(prompt), n))


@contextlib.contextmanager
def serving(app, timeout=60):
    """An httpx client for ``app`` served by a BackgroundServer (port 0, bound by the server)."""
    with BackgroundServer(app) as base, httpx.Client(base_url=base, timeout=timeout) as c:
        yield c


def block_prompt(n):
    """A prompt of exactly ``n`` characters (= tokens for the CharTokenizer) from the vocabulary."""
    return (CHARS.replace("\n", "") * (n // 30 + 1))[:n]


@pytest.fixture(scope="module")
def url(checkpoint):
    with BackgroundServer(create_app(checkpoint, LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def post_raw(client, body: bytes, content_type="application/json"):
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post("/generate", content=body, headers=headers)


# ---------------------------------------------------------------------------------------------
# Correct answers.

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.8, seed=1),
    "top_k": dict(temperature=1.0, top_k=5, seed=2),
    "top_p": dict(temperature=1.2, top_p=0.9, seed=3),
    "top_k_top_p": dict(temperature=0.7, top_k=10, top_p=0.8, seed=4),
}


GREEDY_CASES = {  # (prompt, new tokens); block_size is 32
    "short": ("hello world", 12),
    "past_the_window": ("hello world", 40),  # the window restarts at 32 tokens
    "window_restarts_twice": ("abc", 64),
    "prompt_nearly_fills_the_window": (block_prompt(31), 10),  # restarts after one token
    "one_char": ("q", 5),
}


@pytest.mark.parametrize("name", GREEDY_CASES)
def test_greedy_matches_an_independent_loop(client, reference, name):
    """The server's greedy answer, over HTTP, equals a plain full-forward argmax loop.

    Kills: a bug in lmkit.generate or the KV cache (the expected answer does not come from them).
    """
    prompt, n = GREEDY_CASES[name]
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    want = greedy_text(reference, prompt, n)
    assert body["text"] == want
    assert body["completion"] == want[len(prompt) :]
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens"]) == (
        len(prompt),
        n,
        len(prompt) + n,
    )


def test_greedy_reference_is_not_trivial(reference):
    """The check above means something only if the model does not repeat one token forever."""
    model, tok = reference
    new = greedy_reference(model, tok.encode("hello world"), 40)[11:]
    assert len(set(new)) >= 8 and sum(a != b for a, b in zip(new, new[1:])) >= 15


@pytest.mark.parametrize("name", SETTINGS)
def test_sampled_answers_match_lmkit_generate(client, reference, name):
    kw = SETTINGS[name]
    r = client.post("/generate", json={"prompt": "hello world", "max_new_tokens": 40, **kw})
    assert r.status_code == 200, r.text
    body = r.json()
    want = (
        greedy_text(reference, "hello world", 40)
        if name == "greedy"
        else expected(reference, "hello world", 40, **kw)
    )
    assert body["text"] == want
    assert body["completion"] == want[len("hello world") :]
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens"]) == (11, 40, 51)
    assert isinstance(body["elapsed_ms"], float) and body["elapsed_ms"] >= 0
    if "seed" in kw:
        assert body["seed"] == kw["seed"]


def test_sampling_past_the_context_window(client, reference):
    # block_size is 32: the window restarts inside generate(); the server must agree.
    r = client.post("/generate", json={"prompt": "abc", "max_new_tokens": 64, "seed": 9})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == expected(reference, "abc", 64, seed=9)


def test_missing_seed_is_drawn_and_returned(client, reference):
    r = client.post("/generate", json={"prompt": "the", "max_new_tokens": 20})
    assert r.status_code == 200, r.text
    seed = r.json()["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    assert r.json()["text"] == expected(reference, "the", 20, seed=seed)
    again = client.post("/generate", json={"prompt": "the", "max_new_tokens": 20, "seed": seed})
    assert again.json()["text"] == r.json()["text"]


def test_zero_new_tokens_and_defaults(client):
    r = client.post("/generate", json={"prompt": "abc", "max_new_tokens": 0})
    assert r.status_code == 200 and r.json()["text"] == "abc" and r.json()["completion"] == ""
    r = client.post("/generate", json={"prompt": "abc"})  # every other field has a default
    assert r.status_code == 200 and r.json()["completion_tokens"] == 32


def test_health(client, reference):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok"
    assert h["model"]["block_size"] == 32 and h["model"]["n_layer"] == 1
    assert h["parameters"] == reference[0].num_params()
    assert h["tokenizer"] == {"kind": "char", "vocab_size": len(CHARS)}
    assert h["limits"]["max_new_tokens"] == 64 and h["limits"]["max_prompt_tokens"] == 31
    assert h["limits"]["max_batch"] == 64 and h["queue"] == 0 and h["running"] == 0


def test_openapi_schema(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/generate", "/health", "/v1/completions", "/v1/models"}
    op = spec["paths"]["/generate"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    req = spec["components"]["schemas"][ref]
    assert req["additionalProperties"] is False and req["required"] == ["prompt"]
    assert req["properties"]["max_new_tokens"]["maximum"] == 64
    assert req["properties"]["prompt"]["maxLength"] == 200
    assert req["properties"]["prompt"]["pattern"] == "^[\n !,.?abcdefghijklmnopqrstuvwxyz]+$"
    assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])


def test_concurrent_requests_are_all_correct(client, reference):
    jobs = [
        (p, 30, dict(temperature=0.9, top_k=8, seed=i))
        for i, p in enumerate(["a", "hello", "the cat", "one two", "zzz", "why?", "ok, go", "end."])
    ]
    results = [None] * len(jobs)

    def worker(i):
        p, n, kw = jobs[i]
        results[i] = client.post("/generate", json={"prompt": p, "max_new_tokens": n, **kw})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (p, n, kw), r in zip(jobs, results):
        assert r is not None and r.status_code == 200, r
        assert r.json()["text"] == expected(reference, p, n, **kw)


# ---------------------------------------------------------------------------------------------
# Bad input: one case per kind, each a 4xx whose message names the problem.

BAD_JSON = {
    "missing_prompt": ({"max_new_tokens": 5}, ["prompt", "Field required"]),
    "extra_field": ({"prompt": "hi", "foo": 1}, ["foo", "Extra inputs are not permitted"]),
    "prompt_not_string": ({"prompt": 123}, ["prompt", "valid string"]),
    "prompt_null": ({"prompt": None}, ["prompt"]),
    "prompt_empty": ({"prompt": ""}, ["prompt", "at least 1 character"]),
    "prompt_too_many_chars": ({"prompt": "a" * 201}, ["prompt", "at most 200 characters"]),
    "number_as_string": (
        {"prompt": "hi", "max_new_tokens": "5"},
        ["max_new_tokens", "valid integer"],
    ),
    "bool_as_number": ({"prompt": "hi", "temperature": True}, ["temperature", "valid number"]),
    "float_as_int": ({"prompt": "hi", "max_new_tokens": 5.0}, ["max_new_tokens", "valid integer"]),
    "too_many_new_tokens": (
        {"prompt": "hi", "max_new_tokens": 65},
        ["max_new_tokens", "less than or equal to 64"],
    ),
    "negative_new_tokens": (
        {"prompt": "hi", "max_new_tokens": -1},
        ["max_new_tokens", "greater than or equal to 0"],
    ),
    "huge_integer": (
        {"prompt": "hi", "max_new_tokens": 10**40},
        ["max_new_tokens", "less than or equal to 64"],
    ),
    "huge_float": (
        {"prompt": "hi", "temperature": 1e308},
        ["temperature", "less than or equal to 100"],
    ),
    "negative_temperature": (
        {"prompt": "hi", "temperature": -0.5},
        ["temperature", "greater than or equal to 0"],
    ),
    "tiny_temperature": (
        {"prompt": "hi", "temperature": 1e-300},
        ["temperature", "0 (greedy) or at least"],
    ),
    "top_k_zero": ({"prompt": "hi", "top_k": 0}, ["top_k", "greater than or equal to 1"]),
    "top_k_above_vocab": (
        {"prompt": "hi", "top_k": 1000},
        ["top_k", f"less than or equal to {len(CHARS)}"],
    ),
    "top_p_zero": ({"prompt": "hi", "top_p": 0}, ["top_p", "greater than or equal to 0.000001"]),
    "top_p_tiny": (
        {"prompt": "hi", "top_p": 5e-324},
        ["top_p", "greater than or equal to 0.000001"],
    ),
    "top_p_above_one": ({"prompt": "hi", "top_p": 1.5}, ["top_p", "less than or equal to 1"]),
    "negative_seed": ({"prompt": "hi", "seed": -1}, ["seed", "greater than or equal to 0"]),
    "seed_too_big": ({"prompt": "hi", "seed": 2**64}, ["seed", "less than or equal to"]),
    "body_is_list": (["hi"], ["body", "JSON object"]),
    "body_is_string": ("hi", ["body", "JSON object"]),
    "body_is_null": (None, ["body"]),
    "unknown_characters": (
        {"prompt": "Héllo wörld 🙂"},
        ["outside the vocabulary", "'H'", "'é'", "'ö'", "'🙂'"],
    ),
    "prompt_too_many_tokens": ({"prompt": "ab " * 12}, ["36 tokens", "limit is 31"]),
}


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_fields_get_422_naming_the_problem(client, kind):
    payload, words = BAD_JSON[kind]
    r = post_raw(client, json.dumps(payload).encode())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


BAD_BODIES = {
    "malformed_json": (b'{"prompt": "hi",}', "application/json", 400, ["malformed JSON", "line 1"]),
    "truncated_json": (b'{"prompt": "hi"', "application/json", 400, ["malformed JSON"]),
    "not_utf8": (b'{"prompt": "\xff\xfe"}', "application/json", 400, ["UTF-8"]),
    "empty_body": (b"", "application/json", 400, ["empty"]),
    "deep_nesting": (b"[" * 3000 + b"]" * 3000, "application/json", 400, ["nested too deeply"]),
    "integer_with_5000_digits": (
        b'{"prompt":"hi","seed":' + b"9" * 5000 + b"}",
        "application/json",
        400,
        ["4300"],
    ),
    "nan": (
        b'{"prompt": "hi", "temperature": NaN}',
        "application/json",
        422,
        ["temperature", "finite number"],
    ),
    "infinity": (
        b'{"prompt": "hi", "top_p": Infinity}',
        "application/json",
        422,
        ["top_p", "finite number"],
    ),
    "lone_surrogate": (b'{"prompt": "a\\ud800b"}', "application/json", 422, ["prompt", "unicode"]),
    "surrogate_key": (
        b'{"prompt": "hi", "\\udc00": 1}',
        "application/json",
        422,
        ["body", "unicode"],
    ),
    "wrong_content_type": (
        b'{"prompt": "hi"}',
        "text/plain",
        415,
        ["application/json", "text/plain"],
    ),
    "form_content_type": (
        b"prompt=hi",
        "application/x-www-form-urlencoded",
        415,
        ["application/json"],
    ),
    "no_content_type": (b'{"prompt": "hi"}', None, 415, ["application/json", "none"]),
}


@pytest.mark.parametrize("kind", BAD_BODIES)
def test_bad_bodies_get_4xx_naming_the_problem(client, kind):
    body, ctype, status, words = BAD_BODIES[kind]
    r = post_raw(client, body, ctype)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


def test_wrong_method_and_path(client):
    assert client.get("/generate").status_code == 405
    assert client.post("/nowhere", json={}).status_code == 404
    assert "detail" in client.get("/nowhere").json()


def test_body_too_large_declared(client):
    r = client.post("/generate", json={"prompt": "a" * 20000})
    assert r.status_code == 413
    assert "larger than the limit of 8192 bytes" in r.json()["detail"]


def test_body_too_large_streamed_without_content_length(client):
    def chunks():  # chunked transfer encoding: no Content-Length to check up front
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "8192 bytes" in r.json()["detail"]


def test_server_keeps_serving_after_bad_input(client, reference):
    for kind in ("malformed_json", "not_utf8", "deep_nesting", "lone_surrogate"):
        body, ctype, *_ = BAD_BODIES[kind]
        assert post_raw(client, body, ctype).status_code < 500
    r = client.post("/generate", json={"prompt": "ok", "max_new_tokens": 10, "seed": 5})
    assert r.status_code == 200 and r.json()["text"] == expected(reference, "ok", 10, seed=5)


# ---------------------------------------------------------------------------------------------
# Every limit at its exact boundary: accepted at the limit, refused one past it, with the
# documented status and message. Each test names the mutant of lmkit/serve.py it kills.


def test_prompt_tokens_limit_is_inclusive(client, reference):
    """A prompt of exactly max_prompt_tokens (default: block_size - 1 = 31, so that the whole
    prompt and the first new token fit the window) is served; 32 tokens get 422.

    Kills: ``len(ids) >= max_prompt_tokens`` (for ``>``), ``> max_prompt_tokens + 1``, and a
    default of ``block_size`` (a prompt of 32 tokens would be cut to its last 16, silently).
    """
    at, over = block_prompt(31), block_prompt(32)
    r = client.post("/generate", json={"prompt": at, "max_new_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_tokens"] == 31 and r.json()["text"] == greedy_text(reference, at, 4)
    r = client.post("/generate", json={"prompt": over, "max_new_tokens": 4})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "prompt is 32 tokens long; the limit is 31 tokens"
    assert r.json()["error"] == {
        "message": r.json()["detail"],
        "type": "invalid_request_error",
        "param": "prompt",
        "code": 422,
    }


def test_max_prompt_tokens_must_leave_room_in_the_window(reference):
    """``max_prompt_tokens=block_size`` would let a prompt in that generate() then cuts in half:
    refused when the app is built, with the largest value that fits."""
    create_app(reference, ServerLimits(max_prompt_tokens=31))
    with pytest.raises(ValueError, match="use at most 31"):
        create_app(reference, ServerLimits(max_prompt_tokens=32))


def test_explicit_max_prompt_tokens(reference):
    """``ServerLimits(max_prompt_tokens=5)``: 5 tokens served, 6 refused (and /health says 5).

    Kills: ``max_prompt_tokens = config.block_size`` (the setting ignored), ``>=`` for ``>``.
    """
    with serving(create_app(reference, ServerLimits(max_prompt_tokens=5, max_new_tokens=4))) as c:
        assert c.get("/health").json()["limits"]["max_prompt_tokens"] == 5
        r = c.post("/generate", json={"prompt": "abcde", "max_new_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["text"] == greedy_text(reference, "abcde", 2), (
            r.text
        )
        r = c.post("/generate", json={"prompt": "abcdef", "max_new_tokens": 2})
        assert (
            r.status_code == 422
            and r.json()["detail"] == "prompt is 6 tokens long; the limit is 5 tokens"
        ), r.text


def test_prompt_chars_limit_is_inclusive(reference):
    """``max_prompt_chars=10``: 10 characters served, 11 refused with 422 naming the limit.

    Kills: ``max_length=limits.max_prompt_chars - 1`` (an exclusive limit) and ``+ 1``.
    """
    with serving(create_app(reference, ServerLimits(max_prompt_chars=10, max_new_tokens=4))) as c:
        r = c.post("/generate", json={"prompt": "a" * 10, "max_new_tokens": 1, "temperature": 0})
        assert r.status_code == 200 and r.json()["prompt_tokens"] == 10, r.text
        r = c.post("/generate", json={"prompt": "a" * 11, "max_new_tokens": 1})
        assert r.status_code == 422, r.text
        assert (
            r.json()["detail"]
            == "invalid request: prompt: String should have at most 10 characters"
        )


def test_max_new_tokens_limit_is_inclusive(client, reference):
    """max_new_tokens = 64 (the limit) generates 64 tokens; 65 gets 422.

    Kills: ``le=limits.max_new_tokens - 1`` (or ``lt=``) and ``le=limits.max_new_tokens + 1``.
    """
    r = client.post("/generate", json={"prompt": "ab", "max_new_tokens": 64, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["completion_tokens"] == 64 and r.json()["text"] == greedy_text(
        reference, "ab", 64
    )
    r = client.post("/generate", json={"prompt": "ab", "max_new_tokens": 65})
    assert r.status_code == 422, r.text
    assert (
        r.json()["detail"]
        == "invalid request: max_new_tokens: Input should be less than or equal to 64"
    )


def test_default_max_new_tokens_respects_a_small_limit(reference):
    """With max_new_tokens=8 the default (32 otherwise) becomes 8, never over the limit.

    Kills: a default of 32 regardless of the limit (``Field(32, ...)``).
    """
    with serving(create_app(reference, ServerLimits(max_new_tokens=8))) as c:
        r = c.post("/generate", json={"prompt": "ab", "temperature": 0})
        assert r.status_code == 200 and r.json()["completion_tokens"] == 8, r.text


def padded_body(n: int) -> bytes:
    """A valid request of exactly ``n`` bytes (JSON allows trailing whitespace)."""
    body = b'{"prompt":"ab","max_new_tokens":1,"temperature":0}'
    assert len(body) <= n
    return body + b" " * (n - len(body))


def test_body_limit_declared_is_inclusive(client):
    """A body of exactly max_body_bytes (8192) is served; 8193 is refused from its Content-Length.

    Kills: ``int(declared) >= limit`` (for ``>``), and the Content-Length check removed (the 413
    would then come from the streaming check, whose message has no "(Content-Length: ...)").
    """
    r = post_raw(client, padded_body(8192))
    assert r.status_code == 200, r.text
    r = post_raw(client, padded_body(8193))
    assert r.status_code == 413, r.text
    assert (
        r.json()["detail"]
        == "request body is larger than the limit of 8192 bytes (Content-Length: 8193)"
    )


def test_body_limit_streamed_is_inclusive(client):
    """Chunked bodies (no Content-Length): 8192 bytes served, 8193 refused while streaming.

    Kills: ``size >= limit`` (for ``>``) and the streaming
    check removed (8193 valid bytes would be served).
    """

    def chunked(body):
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    headers = {"content-type": "application/json"}
    r = client.post("/generate", content=chunked(padded_body(8192)), headers=headers)
    assert r.status_code == 200, r.text
    r = client.post("/generate", content=chunked(padded_body(8193)), headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == "request body is larger than the limit of 8192 bytes"


NEXT_BELOW_MIN_TEMPERATURE = math.nextafter(MIN_TEMPERATURE, 0)
FIELD_BOUNDARIES = {  # field: (accepted at the boundary, refused just past it, words of the 422)
    "prompt_min_length": ({"prompt": "a"}, {"prompt": ""}, "at least 1 character"),
    "max_new_tokens_min": (
        {"max_new_tokens": 0},
        {"max_new_tokens": -1},
        "greater than or equal to 0",
    ),
    "temperature_zero": (
        {"temperature": 0.0},
        {"temperature": -5e-324},
        "greater than or equal to 0",
    ),
    "temperature_min": (
        {"temperature": 1e-3},
        {"temperature": NEXT_BELOW_MIN_TEMPERATURE},
        "0 (greedy) or at least 0.001",
    ),
    "temperature_max": (
        {"temperature": 100.0},
        {"temperature": math.nextafter(100.0, math.inf)},
        "less than or equal to 100",
    ),
    "top_k_min": ({"top_k": 1}, {"top_k": 0}, "greater than or equal to 1"),
    "top_k_max": (
        {"top_k": len(CHARS)},
        {"top_k": len(CHARS) + 1},
        f"less than or equal to {len(CHARS)}",
    ),
    "top_p_min": (
        {"top_p": 1e-6},
        {"top_p": math.nextafter(1e-6, 0)},
        "greater than or equal to 0.000001",
    ),
    "top_p_max": ({"top_p": 1.0}, {"top_p": math.nextafter(1.0, 2)}, "less than or equal to 1"),
    "seed_min": ({"seed": 0}, {"seed": -1}, "greater than or equal to 0"),
    "seed_max": ({"seed": 2**63 - 1}, {"seed": 2**63}, "less than or equal to 9223372036854775807"),
}


@pytest.mark.parametrize("name", FIELD_BOUNDARIES)
def test_field_limits_are_inclusive(client, name):
    """Every bounded field: the bound itself is served (200), the next value past it gets 422.

    Kills: ``0.0 < t <= MIN_TEMPERATURE``, ``le=vocab_size - 1``, ``gt=MIN_TOP_P`` / ``lt=1.0``,
    ``le=2**63 - 2``, ``gt=0`` for ``ge=0``, and the like (each a one-character edit of a bound).
    """
    ok, bad, words = FIELD_BOUNDARIES[name]
    base = {"prompt": "hi", "max_new_tokens": 2, "temperature": 1.0, "seed": 1}
    r = client.post("/generate", json={**base, **ok})
    assert r.status_code == 200, r.text
    field = next(iter(bad))
    r = post_raw(client, json.dumps({**base, **bad}).encode())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"invalid request: {field}: ") and words in detail, detail


@pytest.mark.parametrize(
    "name", ["max_prompt_chars", "max_new_tokens", "max_body_bytes", "max_queue", "max_batch"]
)
def test_server_limits_accept_one_refuse_zero(name):
    """ServerLimits: 1 is the smallest legal value of every integer limit, 0 is refused.

    Kills: ``value <= 1`` (for ``value < 1``) in ServerLimits.__post_init__.
    """
    assert getattr(ServerLimits(**{name: 1}), name) == 1
    with pytest.raises(ValueError, match=f"ServerLimits.{name} must be a positive integer, got 0"):
        ServerLimits(**{name: 0})
    assert ServerLimits(max_prompt_tokens=1).max_prompt_tokens == 1
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        ServerLimits(max_prompt_tokens=0)
    assert ServerLimits(timeout_s=5e-324).timeout_s == 5e-324
    with pytest.raises(ValueError, match="timeout_s"):
        ServerLimits(timeout_s=0)


# ---------------------------------------------------------------------------------------------
# Time limit and queue, on a fake clock and a model that blocks: nothing depends on speed.


class ModelClock:
    """A fake ``time`` for lmkit.serve.engine whose ``monotonic()`` moves only when the model runs:
    ``step`` seconds per model call (a forward pre-hook on ``lm_head``, which every prefill and
    every cached decode step calls once)."""

    def __init__(self, model, step: float):
        self.now, self.step, self.calls = 0.0, step, 0
        self.handle = model.lm_head.register_forward_pre_hook(self._tick)
        self.time = types.SimpleNamespace(
            monotonic=lambda: self.now, perf_counter=time.perf_counter, sleep=time.sleep
        )

    def _tick(self, module, args):
        self.calls += 1
        self.now += self.step

    def remove(self):
        self.handle.remove()


@pytest.fixture
def clocked(checkpoint, monkeypatch):
    """A server with timeout_s=10 whose clock advances 2.5 s per model call (exact in binary)."""
    model, tok, _ = load_model(checkpoint)
    with serving(create_app((model, tok), ServerLimits(max_new_tokens=20, timeout_s=10.0))) as c:
        clock = ModelClock(model, 2.5)  # the engine sees the new hook at its next step
        monkeypatch.setattr(engine_module, "time", clock.time)  # the engine's clock only
        try:
            yield c, clock
        finally:
            clock.remove()


def test_time_limit_stops_generation_at_the_deadline(clocked, reference):
    """The deadline (arrival + 10 s) is checked before every model call. Calls 1-4 bring the clock
    to 2.5, 5, 7.5, 10.0: at exactly 10.0 the time is not yet over, so call 5 runs, and the check
    before call 6 (clock 12.5) stops generation after 5 tokens with a 503 naming the limit.

    Kills: ``time.monotonic() >= deadline`` (stops after 4), the deadline not checked (200).
    """
    c, clock = clocked
    r = c.post("/generate", json={"prompt": "abc", "max_new_tokens": 20, "seed": 0})
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == (
        "time limit of 10 s reached after 5 of 20 new tokens; generation stopped. "
        "Ask for fewer tokens or retry when the server is less busy"
    )
    assert r.headers.get("retry-after") == "1"
    assert clock.calls == 5  # generation really stopped: no model call after the deadline
    # The worker is free again and a request within the limit (4 calls: clock 10.0) is served.
    clock.now, clock.calls = 0.0, 0
    r = c.post("/generate", json={"prompt": "abc", "max_new_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["text"] == greedy_text(reference, "abc", 4), r.text


def test_deadline_check_boundary(monkeypatch):
    """``deadline_check(d)`` passes at exactly ``d`` and raises just after, with the token count.

    Kills: ``time.monotonic() >= deadline``.
    """
    now = [100.0]
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    check = deadline_check(100.0)
    check(3)  # at the deadline: still in time
    now[0] = math.nextafter(100.0, math.inf)
    with pytest.raises(GenerationTimeout) as e:
        check(3)
    assert e.value.produced == 3


class Gate:
    """Blocks every model call of ``model`` until
    ``open()``; ``entered`` is set by the first call."""

    def __init__(self, model):
        self.entered, self.opened = threading.Event(), threading.Event()
        self.handle = model.lm_head.register_forward_pre_hook(self._wait)

    def _wait(self, module, args):
        self.entered.set()
        assert self.opened.wait(120), "gate never opened"

    def open(self):
        self.opened.set()
        self.handle.remove()


def wait_for(predicate, what, limit_s=60):
    """Poll until ``predicate()``; the limit only turns
    a hang into a failure, it measures nothing."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_queue_limit_is_inclusive(checkpoint, reference):
    """max_queue=2: a running and a waiting request are accepted; the third gets 503 at once.

    Kills: ``state["pending"] > limits.max_queue`` (for ``>=``; the third would be queued, hang on
    the closed gate and time out) and ``state["pending"] + 1 >= max_queue`` (the second refused).
    """
    model, tok, _ = load_model(checkpoint)
    gate = Gate(model)
    with serving(
        create_app((model, tok), ServerLimits(max_new_tokens=8, max_queue=2)), timeout=120
    ) as c:
        results = {}

        def post(key, prompt):
            results[key] = c.post(
                "/generate", json={"prompt": prompt, "max_new_tokens": 3, "temperature": 0}
            )

        workers = [threading.Thread(target=post, args=("first", "abc"))]
        try:
            workers[0].start()
            assert gate.entered.wait(60), "the first request never reached the model"
            workers.append(threading.Thread(target=post, args=("second", "xyz")))
            workers[1].start()
            wait_for(
                lambda: c.get("/health").json()["queue"] == 2 or "second" in results,
                "the second request",
            )
            assert "second" not in results, results[
                "second"
            ].text  # accepted: it waits for the worker
            r = c.post("/generate", json={"prompt": "no", "max_new_tokens": 1}, timeout=20)
            assert r.status_code == 503, r.text
            assert r.json()["detail"] == "server busy: 2 requests queued (limit 2); retry later"
            assert r.headers.get("retry-after") == "1"
        finally:
            gate.open()
            for w in workers:
                w.join(120)
        for key, prompt in (("first", "abc"), ("second", "xyz")):
            assert results[key].status_code == 200, results[key].text
            assert results[key].json()["text"] == greedy_text(reference, prompt, 3)
        assert c.get("/health").json()["queue"] == 0


def test_deadline_model_stops_generate(reference, monkeypatch):
    """A passed deadline stops generate() before its first model call; one never passed changes
    nothing (the clock is fixed at 0, so neither depends on this machine's speed)."""
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(monotonic=lambda: 0.0))
    model, tok = reference
    with pytest.raises(GenerationTimeout) as e:
        generate(model, torch.tensor([tok.encode("ab")]), 10, before_step=deadline_check(-1.0))
    assert e.value.produced == 0
    calls = []

    def counting(produced):
        calls.append(produced)
        deadline_check(0.0)(produced)  # at the deadline, never past it: exactly generate()

    a = generate(model, torch.tensor([tok.encode("ab")]), 10, seed=1, before_step=counting)
    assert torch.equal(
        a, generate(model, torch.tensor([tok.encode("ab")]), 10, seed=1)
    ) and calls == list(range(10))


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing a client sends produces a 5xx, and the server still answers correctly after.


def test_fuzz_openapi_with_schemathesis(url, client, reference):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    op = schema["/generate"]["POST"]
    strategy = op.as_strategy(
        generation_mode=schemathesis.GenerationMode.POSITIVE
    ) | op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    statuses = []

    @settings(
        max_examples=100, suppress_health_check=list(HealthCheck)
    )  # + the "ci" profile: derandomized
    @given(case=strategy)
    def run(case):
        response = case.call(base_url=url, timeout=30)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    run()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)
    r = client.post("/generate", json={"prompt": "after", "max_new_tokens": 12, "seed": 7})
    assert r.status_code == 200 and r.json()["text"] == expected(reference, "after", 12, seed=7)


def test_fuzz_arbitrary_json_and_bytes(client, reference):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    )
    fields = st.sampled_from(
        ["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "extra"]
    )
    small_valid = {
        "prompt": st.text(alphabet=CHARS, min_size=1, max_size=20),
        "max_new_tokens": st.integers(0, 8),
    }
    bodies = (
        st.dictionaries(fields, values, max_size=6).map(
            lambda d: json.dumps(d, allow_nan=True).encode()
        )
        | st.fixed_dictionaries(
            small_valid,
            optional={"temperature": values, "top_k": values, "top_p": values, "seed": values},
        ).map(lambda d: json.dumps(d, allow_nan=True).encode())
        | values.map(lambda v: json.dumps(v, allow_nan=True).encode())
        | st.binary(max_size=200)
    )
    ctypes = st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "text/plain",
            None,
        ]
    )

    @settings(
        max_examples=150, suppress_health_check=list(HealthCheck)
    )  # + the "ci" profile: derandomized
    @given(body=bodies, ctype=ctypes)
    def run(body, ctype):
        r = post_raw(client, body, ctype)
        assert r.status_code < 500, (body, ctype, r.text)
        assert isinstance(r.json()["detail" if r.status_code >= 400 else "text"], str)

    run()
    r = client.post("/generate", json={"prompt": "still here", "max_new_tokens": 12, "seed": 8})
    assert r.status_code == 200 and r.json()["text"] == expected(
        reference, "still here", 12, seed=8
    )


# ---------------------------------------------------------------------------------------------
# Construction, CLI.


def test_create_app_from_model_and_tokenizer(reference):
    model, tok = reference
    with BackgroundServer(create_app((model, tok), ServerLimits(max_new_tokens=8))) as base:
        r = httpx.post(
            base + "/generate",
            json={"prompt": "ab", "max_new_tokens": 8, "temperature": 0},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["text"] == greedy_text(reference, "ab", 8)


def test_create_app_needs_a_tokenizer(reference):
    with pytest.raises(ValueError, match="tokenizer"):
        create_app((reference[0], None))


def test_server_limits_are_checked():
    with pytest.raises(ValueError, match="max_new_tokens"):
        ServerLimits(max_new_tokens=0)
    with pytest.raises(ValueError, match="timeout_s"):
        ServerLimits(timeout_s=float("nan"))
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        ServerLimits(max_prompt_tokens=-3)


def test_cli_flags_and_errors(tmp_path, capsys):
    import argparse

    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(
        ["--checkpoint", "x", "--port", "9001", "--max-new-tokens", "7", "--timeout", "2.5"]
    )
    assert (args.checkpoint, args.host, args.port) == ("x", "127.0.0.1", 9001)
    limits = limits_from_args(args)
    assert (
        limits.max_new_tokens == 7 and limits.timeout_s == 2.5 and limits.max_prompt_tokens is None
    )
    parser = add_serve_arguments(argparse.ArgumentParser())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        run_server(parser.parse_args(["--checkpoint", str(tmp_path / "missing")]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_server(parser.parse_args(["--checkpoint", str(tmp_path), "--max-new-tokens", "0"]))


def read_listening_line(proc, limit_s=120):
    """The port from ``lmkit serve: listening on http://127.0.0.1:PORT``, read from the child's
    output by a thread (the limit turns a hang into a failure; it measures nothing)."""
    lines = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, "")] + [lines.put("")],
        daemon=True,
    ).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=limit_s)
        except queue.Empty:
            raise AssertionError("no 'listening on' line:\n" + "".join(seen)) from None
        assert line, f"server exited (rc={proc.wait()}):\n" + "".join(seen)
        seen.append(line)
        m = re.fullmatch(r"lmkit serve: listening on http://127\.0\.0\.1:(\d+)\n", line)
        if m:
            return int(m.group(1))


def test_cli_serves_in_a_subprocess(checkpoint, reference):
    """``python -m lmkit serve --port 0``: the server binds a free port itself and prints it, so
    there is no window between choosing the port and binding it (the CLI wires add_serve_arguments
    + run_server). The child runs in the checkout the tests belong to, so it imports the same lmkit
    as this process (under mutmut: the mutated copy in mutants/, with its configuration)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmkit",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            "0",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = read_listening_line(proc)
        assert port != 0
        base = f"http://127.0.0.1:{port}"
        # The socket is listening already: this request waits in the backlog until the app is up.
        assert httpx.get(base + "/health", timeout=120).json()["status"] == "ok"
        r = httpx.post(
            base + "/generate",
            json={"prompt": "cli", "max_new_tokens": 10, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["text"] == greedy_text(reference, "cli", 10), (
            r.text
        )
        r = httpx.post(
            base + "/generate", json={"prompt": "cli", "max_new_tokens": 10, "seed": 11}, timeout=60
        )
        assert r.status_code == 200 and r.json()["text"] == expected(
            reference, "cli", 10, seed=11
        ), r.text
        body = {"model": "tiny", "prompt": "cli", "max_tokens": 10, "seed": 11}
        r = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert "cli" + r.json()["choices"][0]["text"] == expected(reference, "cli", 10, seed=11)
        assert httpx.get(base + "/metrics", timeout=30).text.count("lmkit_http_requests_total{")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_background_server_binds_its_own_port(reference):
    """BackgroundServer(port=0) serves on the port its own socket holds (no free-port helper)."""
    server = BackgroundServer(create_app(reference, ServerLimits(max_new_tokens=2)))
    assert server.port != 0 and server.sock.getsockname()[1] == server.port
    with server as base:
        assert base == f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + "/health", timeout=30).json()["status"] == "ok"
