"""The HTTP server (lmkit.serve, chapter 13), tested over real HTTP on localhost.

Every test makes its own tiny checkpoint (random GPT + CharTokenizer, saved with save_model), so no
shipped checkpoint is needed. Servers run with uvicorn in a background thread on a free port.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
import torch  # noqa: E402

from lmkit.checkpoint import save_model  # noqa: E402
from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.generate import generate  # noqa: E402
from lmkit.models import GPT, GPTConfig  # noqa: E402
from lmkit.serve import (  # noqa: E402
    BackgroundServer,
    GenerationTimeout,
    ServerLimits,
    deadline_check,
    add_serve_arguments,
    create_app,
    limits_from_args,
    main,
)

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"
LIMITS = ServerLimits(max_prompt_chars=200, max_new_tokens=64, max_body_bytes=8192, timeout_s=20.0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model is fastest on one thread; two threads on a busy 2-core machine are 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(CHARS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    d = tmp_path_factory.mktemp("serve") / "tiny"
    save_model(d, model, tok, info={"note": "random init for tests"})
    return d


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same model and tokenizer, loaded for direct calls to lmkit.generate."""
    from lmkit.checkpoint import load_model

    model, tok, _ = load_model(checkpoint)
    return model, tok


def expected(reference, prompt, n, **kw):
    model, tok = reference
    out = generate(model, torch.tensor([tok.encode(prompt)]), n, **kw)[0].tolist()
    return tok.decode(out)


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


@pytest.mark.parametrize("name", SETTINGS)
def test_generate_matches_lmkit_generate(client, reference, name):
    kw = SETTINGS[name]
    r = client.post("/generate", json={"prompt": "hello world", "max_new_tokens": 40, **kw})
    assert r.status_code == 200, r.text
    body = r.json()
    want = expected(reference, "hello world", 40, **kw)
    assert body["text"] == want
    assert body["completion"] == want[len("hello world"):]
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens"]) == (11, 40, 51)
    assert body["elapsed_ms"] > 0
    if "seed" in kw:
        assert body["seed"] == kw["seed"]


def test_generation_past_the_context_window(client, reference):
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
    assert h["limits"]["max_new_tokens"] == 64 and h["limits"]["max_prompt_tokens"] == 32


def test_openapi_schema(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/generate", "/health"}
    op = spec["paths"]["/generate"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    req = spec["components"]["schemas"][ref]
    assert req["additionalProperties"] is False and req["required"] == ["prompt"]
    assert req["properties"]["max_new_tokens"]["maximum"] == 64
    assert req["properties"]["prompt"]["maxLength"] == 200
    assert req["properties"]["prompt"]["pattern"] == "^[\n !,.?abcdefghijklmnopqrstuvwxyz]+$"
    assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])


def test_concurrent_requests_are_all_correct(client, reference):
    jobs = [(p, 30, dict(temperature=0.9, top_k=8, seed=i)) for i, p in enumerate(
        ["a", "hello", "the cat", "one two", "zzz", "why?", "ok, go", "end."])]
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
    "number_as_string": ({"prompt": "hi", "max_new_tokens": "5"}, ["max_new_tokens", "valid integer"]),
    "bool_as_number": ({"prompt": "hi", "temperature": True}, ["temperature", "valid number"]),
    "float_as_int": ({"prompt": "hi", "max_new_tokens": 5.0}, ["max_new_tokens", "valid integer"]),
    "too_many_new_tokens": ({"prompt": "hi", "max_new_tokens": 65}, ["max_new_tokens", "less than or equal to 64"]),
    "negative_new_tokens": ({"prompt": "hi", "max_new_tokens": -1}, ["max_new_tokens", "greater than or equal to 0"]),
    "huge_integer": ({"prompt": "hi", "max_new_tokens": 10**40}, ["max_new_tokens", "less than or equal to 64"]),
    "huge_float": ({"prompt": "hi", "temperature": 1e308}, ["temperature", "less than or equal to 100"]),
    "negative_temperature": ({"prompt": "hi", "temperature": -0.5}, ["temperature", "greater than or equal to 0"]),
    "tiny_temperature": ({"prompt": "hi", "temperature": 1e-300}, ["temperature", "0 (greedy) or at least"]),
    "top_k_zero": ({"prompt": "hi", "top_k": 0}, ["top_k", "greater than or equal to 1"]),
    "top_k_above_vocab": ({"prompt": "hi", "top_k": 1000}, ["top_k", f"less than or equal to {len(CHARS)}"]),
    "top_p_zero": ({"prompt": "hi", "top_p": 0}, ["top_p", "greater than or equal to 0.000001"]),
    "top_p_tiny": ({"prompt": "hi", "top_p": 5e-324}, ["top_p", "greater than or equal to 0.000001"]),
    "top_p_above_one": ({"prompt": "hi", "top_p": 1.5}, ["top_p", "less than or equal to 1"]),
    "negative_seed": ({"prompt": "hi", "seed": -1}, ["seed", "greater than or equal to 0"]),
    "seed_too_big": ({"prompt": "hi", "seed": 2**64}, ["seed", "less than or equal to"]),
    "body_is_list": (["hi"], ["body", "JSON object"]),
    "body_is_string": ("hi", ["body", "JSON object"]),
    "body_is_null": (None, ["body"]),
    "unknown_characters": ({"prompt": "Héllo wörld 🙂"}, ["outside the vocabulary", "'H'", "'é'", "'ö'", "'🙂'"]),
    "prompt_too_many_tokens": ({"prompt": "ab " * 12}, ["36 tokens", "limit is 32"]),
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
    "integer_with_5000_digits": (b'{"prompt":"hi","seed":' + b"9" * 5000 + b"}", "application/json", 400, ["4300"]),
    "nan": (b'{"prompt": "hi", "temperature": NaN}', "application/json", 422, ["temperature", "finite number"]),
    "infinity": (b'{"prompt": "hi", "top_p": Infinity}', "application/json", 422, ["top_p", "finite number"]),
    "lone_surrogate": (b'{"prompt": "a\\ud800b"}', "application/json", 422, ["prompt", "unicode"]),
    "surrogate_key": (b'{"prompt": "hi", "\\udc00": 1}', "application/json", 422, ["body", "unicode"]),
    "wrong_content_type": (b'{"prompt": "hi"}', "text/plain", 415, ["application/json", "text/plain"]),
    "form_content_type": (b"prompt=hi", "application/x-www-form-urlencoded", 415, ["application/json"]),
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
# Time limit and queue.


@pytest.fixture(scope="module")
def slow_url(checkpoint):
    limits = ServerLimits(max_new_tokens=10**6, timeout_s=0.5)
    with BackgroundServer(create_app(checkpoint, limits)) as base:
        yield base


def test_time_limit_stops_generation(slow_url, reference):
    with httpx.Client(base_url=slow_url, timeout=30) as c:
        t0 = time.monotonic()
        r = c.post("/generate", json={"prompt": "abc", "max_new_tokens": 10**6, "seed": 0})
        took = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert "time limit of 0.5 s" in r.json()["detail"] and "generation stopped" in r.json()["detail"]
        assert r.headers.get("retry-after") == "1"
        assert took < 10  # without the deadline: minutes
        # The worker is free again at once: generation really stopped.
        t0 = time.monotonic()
        r = c.post("/generate", json={"prompt": "abc", "max_new_tokens": 5, "seed": 0})
        assert r.status_code == 200 and r.json()["text"] == expected(reference, "abc", 5, seed=0)
        assert time.monotonic() - t0 < 5


def test_full_queue_gets_503(checkpoint):
    limits = ServerLimits(max_new_tokens=10**6, timeout_s=1.5, max_queue=1)
    with BackgroundServer(create_app(checkpoint, limits)) as base, httpx.Client(base_url=base, timeout=30) as c:
        slow = threading.Thread(target=c.post, args=("/generate",), kwargs={"json": {"prompt": "a", "max_new_tokens": 10**6}})
        slow.start()
        end = time.monotonic() + 5
        while c.get("/health").json()["queue"] < 1 and time.monotonic() < end:
            time.sleep(0.01)
        r = c.post("/generate", json={"prompt": "b", "max_new_tokens": 1})
        slow.join(10)
        assert r.status_code == 503 and "server busy" in r.json()["detail"]


def test_deadline_model_stops_generate(reference):
    model, tok = reference
    with pytest.raises(GenerationTimeout) as e:
        generate(model, torch.tensor([tok.encode("ab")]), 10, before_step=deadline_check(time.monotonic() - 1))
    assert e.value.produced == 0
    calls = []

    def counting(produced):
        calls.append(produced)
        deadline_check(time.monotonic() + 60)(produced)  # no deadline hit: exactly generate()

    a = generate(model, torch.tensor([tok.encode("ab")]), 10, seed=1, before_step=counting)
    assert torch.equal(a, generate(model, torch.tensor([tok.encode("ab")]), 10, seed=1)) and calls == list(range(10))


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing a client sends produces a 5xx, and the server still answers correctly after.


def test_fuzz_openapi_with_schemathesis(url, client, reference):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    op = schema["/generate"]["POST"]
    strategy = op.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE) | op.as_strategy(
        generation_mode=schemathesis.GenerationMode.NEGATIVE
    )
    statuses = []

    @settings(max_examples=100, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
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
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
    fields = st.sampled_from(["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "extra"])
    small_valid = {"prompt": st.text(alphabet=CHARS, min_size=1, max_size=20), "max_new_tokens": st.integers(0, 8)}
    bodies = (
        st.dictionaries(fields, values, max_size=6).map(lambda d: json.dumps(d, allow_nan=True).encode())
        | st.fixed_dictionaries(small_valid, optional={"temperature": values, "top_k": values, "top_p": values, "seed": values})
        .map(lambda d: json.dumps(d, allow_nan=True).encode())
        | values.map(lambda v: json.dumps(v, allow_nan=True).encode())
        | st.binary(max_size=200)
    )
    ctypes = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/problem+json", "text/plain", None])

    @settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, ctype=ctypes)
    def run(body, ctype):
        r = post_raw(client, body, ctype)
        assert r.status_code < 500, (body, ctype, r.text)
        assert isinstance(r.json()["detail" if r.status_code >= 400 else "text"], str)

    run()
    r = client.post("/generate", json={"prompt": "still here", "max_new_tokens": 12, "seed": 8})
    assert r.status_code == 200 and r.json()["text"] == expected(reference, "still here", 12, seed=8)


# ---------------------------------------------------------------------------------------------
# Construction, CLI.


def test_create_app_from_model_and_tokenizer(reference):
    model, tok = reference
    with BackgroundServer(create_app((model, tok), ServerLimits(max_new_tokens=8))) as base:
        r = httpx.post(base + "/generate", json={"prompt": "ab", "max_new_tokens": 8, "temperature": 0}, timeout=30)
        assert r.status_code == 200 and r.json()["text"] == expected(reference, "ab", 8, temperature=0)


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
        ["--checkpoint", "x", "--port", "9001", "--max-new-tokens", "7", "--timeout", "2.5"])
    assert (args.checkpoint, args.host, args.port) == ("x", "127.0.0.1", 9001)
    limits = limits_from_args(args)
    assert limits.max_new_tokens == 7 and limits.timeout_s == 2.5 and limits.max_prompt_tokens is None
    with pytest.raises(SystemExit, match="model.safetensors"):
        main(["--checkpoint", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="max_new_tokens"):
        main(["--checkpoint", str(tmp_path), "--max-new-tokens", "0"])


def test_cli_serves_in_a_subprocess(checkpoint, reference):
    """``python -m lmkit serve`` (the CLI wires add_serve_arguments + run_server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--threads", "1", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 40
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "server did not start"
            time.sleep(0.1)
        r = httpx.post(base + "/generate", json={"prompt": "cli", "max_new_tokens": 10, "seed": 11}, timeout=30)
        assert r.status_code == 200 and r.json()["text"] == expected(reference, "cli", 10, seed=11)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
