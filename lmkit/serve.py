"""Serving a GPT over HTTP: FastAPI app, production limits, uvicorn runner. Explained in chapter 13.

``python -m lmkit serve --checkpoint DIR`` (or ``python -m lmkit.serve --checkpoint DIR``) loads a
checkpoint written by :func:`lmkit.checkpoint.save_model` (safetensors + JSON, nothing unpickled)
and answers:

* ``POST /generate``: ``{"prompt": "...", "max_new_tokens": 32, "temperature": 1.0, "top_k": null,
  "top_p": null, "seed": null}`` -> completion, full text, token counts, elapsed milliseconds and
  the seed used. The output equals :func:`lmkit.generate.generate` called with the same arguments
  and seed (a missing seed is drawn at random and returned, so every answer can be reproduced).
* ``GET /health``: status, model configuration, parameter count, tokenizer, limits.
* ``GET /openapi.json`` (and the interactive ``/docs``): the schema FastAPI derives from the models.

Every request passes three gates, each answering a 4xx with a ``detail`` message saying what is
wrong, so that no input can produce a 5xx or stop the server:

1. transport (:class:`RequestGate`, before anything is parsed): body size (413), content type
   (415), UTF-8 and JSON well-formedness (400);
2. schema (pydantic, 422): types (strict: ``"1"`` is not a number), ranges, NaN/infinity, unknown
   fields, prompt length in characters;
3. model (422): characters the tokenizer cannot encode, prompt length in tokens.

Generation runs in one worker thread (model calls are serialised, so concurrent requests queue and
all get correct answers); a per-request deadline is checked before every model call, so a request
that runs out of time stops generating and gets a 503 with a message.
"""

import argparse
import asyncio
import json
import math
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmkit.checkpoint import load_model
from lmkit.generate import generate
from lmkit.nn import device_of

# torch, FastAPI and uvicorn are imported where used: building the CLI parser stays instant.

MIN_TEMPERATURE = 1e-3  # below this (but above 0), logits / temperature overflow float32
MAX_TEMPERATURE = 100.0
MIN_TOP_P = 1e-6  # a top_p that rounds to 0 in float32 would drop every token in filter_logits


@dataclass
class ServerLimits:
    """Production limits of the server. Explained in chapter 13.

    ``max_prompt_tokens=None`` means the model's context window (``block_size``). ``timeout_s``
    counts from the arrival of the request, so time spent waiting in the queue counts too.
    """

    max_prompt_chars: int = 4000
    max_prompt_tokens: int | None = None
    max_new_tokens: int = 256
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    max_queue: int = 64  # requests waiting or running at once; more get 503

    def __post_init__(self):
        for name in ("max_prompt_chars", "max_new_tokens", "max_body_bytes", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerLimits.{name} must be a positive integer, got {value!r}")
        if self.max_prompt_tokens is not None and (
            not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1
        ):
            raise ValueError(
                "ServerLimits.max_prompt_tokens must be a positive "
                f"integer or None, got {self.max_prompt_tokens!r}"
            )
        if not (
            isinstance(self.timeout_s, (int, float))
            and math.isfinite(self.timeout_s)
            and self.timeout_s > 0
        ):
            raise ValueError(
                "ServerLimits.timeout_s must be a positive "
                f"number of seconds, got {self.timeout_s!r}"
            )


class GenerationTimeout(Exception):
    """Raised inside the worker thread when a request's deadline passes. Chapter 13."""

    def __init__(self, produced: int):
        super().__init__(produced)
        self.produced = produced


def deadline_check(deadline: float):
    """``before_step`` for :func:`lmkit.generate.generate`: raise once ``time.monotonic()`` passes
    ``deadline``. ``generate`` calls it before every model call, so generation stops within one
    token of the deadline while the tokens themselves are exactly those ``generate`` would pick.
    """

    def check(produced: int):
        if time.monotonic() > deadline:
            raise GenerationTimeout(produced)

    return check


# --------------------------------------------------------------------------------------------
# Responses: every error is {"detail": message} (plus "errors" for schema violations).


def _json_bytes(content: Any) -> bytes:
    """JSON that never fails to encode: lone surrogates (legal in JSON escapes) fall back to \\u."""
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return json.dumps(content, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode(
            "ascii"
        )


def _short(value: Any, n: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _error_response(
    status: int, message: str, errors: list | None = None, headers: dict | None = None
):
    from starlette.responses import Response

    content: dict[str, Any] = {"detail": message}
    if errors is not None:
        content["errors"] = errors
    return Response(
        _json_bytes(content), status_code=status, headers=headers, media_type="application/json"
    )


class RequestGate:
    """ASGI middleware: the transport gate in front of the app. Explained in chapter 13.

    For requests with a body (POST, PUT, PATCH) it rejects, before the app parses anything: a
    declared ``Content-Length`` over ``max_body_bytes`` (413, without reading the body); a body that
    grows over the limit while streaming (413); a content type other than JSON (415); bytes that are
    not UTF-8 or not JSON (400, with the position). Accepted bodies are replayed to the app.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.max_body_bytes
        too_large = f"request body is larger than the limit of {limit} bytes"
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _error_response(413, f"{too_large} (Content-Length: {_short(declared, 20)})")(
                scope, receive, send
            )
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if not (
            media == "application/json"
            or (media.startswith("application/") and media.endswith("+json"))
        ):
            shown = f"'{_short(media, 40)}'" if media else "none"
            message = f"Content-Type must be application/json, got {shown}"
            await _error_response(415, message)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _error_response(413, too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _json_problem(body)
        if problem is not None:
            await _error_response(400, problem)(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _json_problem(body: bytes) -> str | None:
    """None if ``body`` is UTF-8 JSON, else a message saying where it is broken."""
    if not body.strip():
        return 'request body is empty; send a JSON object such as {"prompt": "Hello"}'
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 encoded JSON"
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    except ValueError as e:  # e.g. an integer with more than 4300 digits
        return f"malformed JSON: {_short(str(e), 200)}"
    return None


def _validation_message(errors: list[dict]) -> tuple[str, list[dict]]:
    """Turn pydantic errors into one readable line and a short JSON-safe list (input not echoed)."""
    items = []
    for err in errors[:20]:
        loc = [_short(p, 40) if isinstance(p, str) else p for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind, msg = str(err.get("type", "")), str(err.get("msg", ""))
        if not loc and kind == "model_attributes_type":
            msg = 'the body must be a JSON object such as {"prompt": "Hello"}'
        items.append({"field": ".".join(str(p) for p in loc) or "body", "msg": msg, "type": kind})
    parts = [f"{it['field']}: {it['msg']}" for it in items]
    more = f" (and {len(errors) - len(items)} more)" if len(errors) > len(items) else ""
    return "invalid request: " + "; ".join(parts) + more, items


# --------------------------------------------------------------------------------------------
# The app.


def _vocabulary_pattern(tokenizer) -> str | None:
    """A regex of the prompts a character tokenizer (without ``unk``) accepts, for the schema."""
    chars = getattr(tokenizer, "chars", None)
    if (
        getattr(tokenizer, "kind", None) != "char"
        or getattr(tokenizer, "unk", None) is not None
        or not chars
    ):
        return None
    return "^[" + "".join("\\" + c if c in "\\[]^-" else c for c in chars) + "]+$"


def _request_models(limits: ServerLimits, tokenizer, max_prompt_tokens: int):
    """Pydantic models of the request and the answers; the limits appear in the OpenAPI schema.

    For a character tokenizer the schema also documents the accepted characters as a ``pattern``;
    the server checks them itself, so that the 422 names the offending characters.
    """
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    vocab_size = tokenizer.vocab_size
    pattern = _vocabulary_pattern(tokenizer)

    class GenerateRequest(BaseModel):
        """What to generate. Unknown fields, wrong types
        and out-of-range values are rejected (422)."""

        model_config = ConfigDict(extra="forbid", strict=True)

        prompt: str = Field(
            min_length=1,
            max_length=limits.max_prompt_chars,
            description=f"Text to continue: 1 to {limits.max_prompt_chars} characters and at most "
            f"{max_prompt_tokens} tokens, every character known to the tokenizer.",
            json_schema_extra={"pattern": pattern} if pattern else None,
        )
        max_new_tokens: int = Field(min(32, limits.max_new_tokens), ge=0, le=limits.max_new_tokens)
        temperature: float = Field(
            1.0,
            ge=0.0,
            le=MAX_TEMPERATURE,
            allow_inf_nan=False,
            description=f"0 = greedy decoding; otherwise at least {MIN_TEMPERATURE}.",
        )
        top_k: int | None = Field(
            None, ge=1, le=vocab_size, description="Keep the k most likely tokens."
        )
        top_p: float | None = Field(
            None, ge=MIN_TOP_P, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass."
        )
        seed: int | None = Field(
            None, ge=0, le=2**63 - 1, description="Random seed; drawn and returned if missing."
        )

        @field_validator("temperature")
        @classmethod
        def _not_tiny(cls, t: float) -> float:
            if 0.0 < t < MIN_TEMPERATURE:
                raise ValueError(
                    f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {t}"
                )
            return t

    class GenerateResponse(BaseModel):
        completion: str = Field(description="The generated text only.")
        text: str = Field(description="Prompt and completion, decoded together.")
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int
        elapsed_ms: float
        seed: int = Field(description="The seed used; send it back to reproduce this answer.")

    class ErrorResponse(BaseModel):
        detail: str = Field(description="What is wrong and how to fix it.")
        errors: list[dict] | None = None

    return GenerateRequest, GenerateResponse, ErrorResponse


def create_app(checkpoint, limits: ServerLimits | None = None, device: str = "cpu"):
    """Build the FastAPI app for a checkpoint directory
    or a ``(model, tokenizer)`` pair. Chapter 13.

    The checkpoint is read by :func:`lmkit.checkpoint.load_model` (safetensors + JSON only).
    """
    import torch
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServerLimits()
    if isinstance(checkpoint, (str, Path)):
        model, tokenizer, info = load_model(checkpoint, device=device)
        name = Path(checkpoint).name
    else:
        model, tokenizer = checkpoint
        info, name = {}, type(model).__name__
    if tokenizer is None:
        raise ValueError(
            f"checkpoint {checkpoint} has no tokenizer.json; "
            "the server needs a tokenizer to read prompts"
        )
    model.eval()
    device = device_of(model)
    config = model.config
    max_prompt_tokens = limits.max_prompt_tokens or config.block_size
    GenerateRequest, GenerateResponse, ErrorResponse = _request_models(
        limits, tokenizer, max_prompt_tokens
    )
    executor: ThreadPoolExecutor | None = None
    state = {"pending": 0, "served": 0}

    @asynccontextmanager
    async def lifespan(app):
        nonlocal executor
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmkit-generate")
        try:
            yield
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="lmkit GPT server",
        version="1.0",
        description="Text generation with an lmkit GPT. Explained in chapter 13 of the book.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestGate, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, items = _validation_message(list(exc.errors()))
        return _error_response(422, message, items)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _error_response(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug, not bad input; keep serving
        return _error_response(
            500, f"internal error: {type(exc).__name__}: {_short(str(exc), 200)}"
        )

    def run_generation(ids: list[int], req, seed: int, deadline: float):
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = generate(
            model,
            idx,
            req.max_new_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=seed,
            before_step=deadline_check(deadline),
        )
        return out[0].tolist()

    errors = {
        400: {"model": ErrorResponse, "description": "Body is not UTF-8 JSON"},
        413: {"model": ErrorResponse, "description": "Body larger than the limit"},
        415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
        422: {
            "model": ErrorResponse,
            "description": "A field is missing, unknown, of the wrong type or out of range",
        },
        503: {
            "model": ErrorResponse,
            "description": "Time limit reached or too many requests queued",
        },
    }

    @app.post("/generate", response_model=GenerateResponse, responses=errors)
    async def generate_endpoint(req: GenerateRequest):
        """Continue the prompt; the same seed gives the
        same answer as ``lmkit.generate.generate``."""
        start = time.perf_counter()
        deadline = time.monotonic() + limits.timeout_s
        try:
            ids = tokenizer.encode(req.prompt)
        except Exception as e:  # e.g. CharTokenizer: characters outside the vocabulary
            raise HTTPException(422, f"prompt cannot be tokenized: {_short(str(e), 400)}") from e
        if not ids:
            raise HTTPException(422, "prompt encodes to zero tokens; send some text")
        if len(ids) > max_prompt_tokens:
            raise HTTPException(
                422, f"prompt is {len(ids)} tokens long; the limit is {max_prompt_tokens} tokens"
            )
        if state["pending"] >= limits.max_queue:
            raise HTTPException(
                503,
                f"server busy: {state['pending']} requests "
                f"queued (limit {limits.max_queue}); retry later",
                headers={"Retry-After": "1"},
            )
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        state["pending"] += 1
        try:
            out = await asyncio.wrap_future(
                executor.submit(run_generation, ids, req, seed, deadline)
            )
        except GenerationTimeout as e:
            raise HTTPException(
                503,
                f"time limit of {limits.timeout_s:g} s reached after "
                f"{e.produced} of {req.max_new_tokens} new tokens; "
                "generation stopped. Ask for fewer tokens or retry when the server is less busy",
                headers={"Retry-After": "1"},
            ) from e
        finally:
            state["pending"] -= 1
        state["served"] += 1
        new = out[len(ids) :]
        return GenerateResponse(
            completion=tokenizer.decode(new),
            text=tokenizer.decode(out),
            prompt_tokens=len(ids),
            completion_tokens=len(new),
            total_tokens=len(out),
            elapsed_ms=round((time.perf_counter() - start) * 1000, 3),
            seed=seed,
        )

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is being served: model config, parameter count, tokenizer, limits."""
        return {
            "status": "ok",
            "checkpoint": name,
            "model": config.to_dict(),
            "parameters": model.num_params(),
            "tokenizer": {
                "kind": getattr(tokenizer, "kind", type(tokenizer).__name__),
                "vocab_size": tokenizer.vocab_size,
            },
            "device": str(device),
            "limits": {**asdict(limits), "max_prompt_tokens": max_prompt_tokens},
            "queue": state["pending"],
            "served": state["served"],
        }

    app.state.model, app.state.tokenizer, app.state.info, app.state.limits = (
        model,
        tokenizer,
        info,
        limits,
    )
    return app


# --------------------------------------------------------------------------------------------
# Running it.


def serve(
    checkpoint,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    device: str = "cpu",
    log_level: str = "info",
) -> None:
    """Serve a checkpoint with uvicorn until interrupted (Ctrl-C). Explained in chapter 13.

    ``port=0`` lets the operating system pick a free port; the line printed at start names it.
    """
    app = create_app(checkpoint, limits, device=device)
    _serve_forever(app, host, port, log_level)


def _serve_forever(app, host: str, port: int, log_level: str) -> None:
    """Bind ``host:port`` here, print ``lmkit serve: listening
    on http://HOST:PORT``, serve until interrupted.

    The socket is bound and listening before the line is printed, so with ``port=0`` a caller reads
    the real port from the first line of stdout: no "find a free port, close it, bind it again"
    race. Connections that arrive before the app has started wait in the listen backlog.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    sock = config.bind_socket()  # exits with uvicorn's message if the port is taken
    try:
        sock.listen(config.backlog)
        shown = f"[{host}]" if ":" in host else host
        print(f"lmkit serve: listening on http://{shown}:{sock.getsockname()[1]}", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the app failed to start (uvicorn logged why), as uvicorn.run does
        raise SystemExit(3)


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread
    on a free port (notebooks, tests). Chapter 13.

    ``with BackgroundServer(app) as url: httpx.post(url + "/generate", json=...)``

    The socket is bound here (``port=0``: the operating system picks a free one) and handed to
    uvicorn, so ``self.port`` is the port actually served, with no window for another process to
    take it between choosing and binding.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 10.0) -> str:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"uvicorn did not start on {self.url} within {timeout} s")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``python -m lmkit serve`` to ``parser``. Explained in chapter 13."""
    d = ServerLimits()
    parser.add_argument(
        "--checkpoint", required=True, help="directory written by lmkit.checkpoint.save_model"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (0.0.0.0 = all; default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="TCP port; 0 = a free port, printed at start (default %(default)s)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for the model (default %(default)s)"
    )
    parser.add_argument(
        "--max-prompt-chars", type=int, default=d.max_prompt_chars, help="default %(default)s"
    )
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="default: the model's block_size"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=d.max_new_tokens, help="default %(default)s"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="default %(default)s"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=d.timeout_s,
        help="seconds per request (default %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help="requests queued at once (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The :class:`ServerLimits` named by parsed ``serve`` flags."""
    return ServerLimits(
        max_prompt_chars=args.max_prompt_chars,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        max_body_bytes=args.max_body_bytes,
        timeout_s=args.timeout,
        max_queue=args.max_queue,
    )


def run_server(args: argparse.Namespace) -> None:
    """Start the server from flags parsed with :func:`add_serve_arguments`. Explained in chapter 13.

    Bad limits or an unreadable checkpoint raise ``ValueError``/``FileNotFoundError``, which the
    command line (:func:`lmkit.cli.main`) reports as one line with exit status 2.
    """
    try:
        import torch
        import uvicorn  # noqa: F401  (missing server extras: say so before loading the model)

        limits = limits_from_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        app = create_app(args.checkpoint, limits, device=args.device)
    except ImportError as e:
        raise SystemExit(
            f"lmkit serve: {e}; install the server extras: pip install 'lmkit[serve]'"
        ) from None

    _serve_forever(app, args.host, args.port, args.log_level)
