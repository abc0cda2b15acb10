"""The FastAPI app: routes, error handlers, the engine's start and stop. Explained in chapter 13.

Every request passes three gates, each answering a 4xx with a message saying what is wrong, so
that no input produces a 5xx or stops the server:

1. transport (:class:`lmkit.serve.transport.RequestGate`, before anything is parsed): body size
   (413), content type (415), UTF-8 and JSON well-formedness (400);
2. schema (pydantic, 422): types (strict: ``"1"`` is not a number), ranges, NaN/infinity, unknown
   and unsupported fields, prompt length in characters;
3. model (422; 404 for an unknown model id): characters the tokenizer cannot encode, prompt
   length in tokens.

Past the gates a request can still be refused for capacity, not for what it says: 503 with
``Retry-After`` when the queue is full or when its time limit runs out.
"""

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from lmkit.checkpoint import load_model
from lmkit.serve.engine import Engine, SamplingParams
from lmkit.serve.limits import ServerLimits
from lmkit.serve.metrics import MetricsMiddleware, ServerMetrics
from lmkit.serve.page import CHAT_HTML, CHAT_PAGE_HEADERS
from lmkit.serve.protocol import ChatTemplate, request_models
from lmkit.serve.service import ApiError, Service, connect
from lmkit.serve.transport import RequestGate, error_response, short, validation_message
from lmkit.serve.v1 import add_openai_routes

ROUTES = {
    "/",
    "/generate",
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
}


def _load(checkpoint, device: str):
    """(model, tokenizer, info, name) from a checkpoint directory or a (model, tokenizer) pair."""
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
    return model, tokenizer, info, name


def create_app(
    checkpoint,
    limits: ServerLimits | None = None,
    device: str = "cpu",
    model_name: str | None = None,
    chat_template: ChatTemplate | None = None,
):
    """Build the FastAPI app for a checkpoint directory or a ``(model, tokenizer)`` pair.

    Explained in chapter 13. The checkpoint is read by :func:`lmkit.checkpoint.load_model`
    (safetensors + JSON only). ``model_name`` is the id of ``/v1/models`` (default: the
    checkpoint directory's name, or ``"GPT"`` for a pair). The decoding loop starts with the app
    (its lifespan) and stops with it.
    """
    from fastapi import FastAPI

    limits = limits or ServerLimits()
    model, tokenizer, info, name = _load(checkpoint, device)
    max_prompt_tokens = limits.prompt_tokens_for(model.config.block_size)
    metrics = ServerMetrics()
    engine = Engine(model, tokenizer, limits.max_batch, limits.max_queue, metrics)
    service = Service(
        model=model,
        tokenizer=tokenizer,
        engine=engine,
        limits=limits,
        max_prompt_tokens=max_prompt_tokens,
        name=model_name or name,
        schemas=request_models(limits, tokenizer, max_prompt_tokens),
        template=chat_template or ChatTemplate(),
        metrics=metrics,
        created=int(time.time()),
        info=info,
    )

    @asynccontextmanager
    async def lifespan(app):
        connect(engine, asyncio.get_running_loop())
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="lmkit GPT server",
        version="2.0",
        description="Text generation with an lmkit GPT: the OpenAI API (completions, chat, "
        "models) with streaming and continuous batching. Explained in chapter 13 of the book.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestGate, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    _add_error_handlers(app)
    errors = _error_docs(service.schemas.Error)
    _add_generate_route(app, service, errors)
    add_openai_routes(app, service, errors)
    _add_info_routes(app, service)
    app.state.model, app.state.tokenizer, app.state.info = model, tokenizer, info
    app.state.limits, app.state.engine, app.state.service = limits, engine, service
    app.state.metrics = metrics
    return app


def _error_docs(error_model) -> dict:
    """The error answers, for the OpenAPI schema."""
    said = {
        400: "Body is not UTF-8 JSON",
        404: "No such model",
        413: "Body larger than the limit",
        415: "Content-Type is not application/json",
        422: "A field is missing, unknown, unsupported, of the wrong type or out of range",
        503: "Too many requests queued, or the time limit reached",
    }
    return {code: {"model": error_model, "description": text} for code, text in said.items()}


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, items = validation_message(list(exc.errors()))
        return error_response(422, message, items, param=items[0]["field"] if items else None)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, headers=exc.headers, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug, not bad input; keep serving
        return error_response(500, f"internal error: {type(exc).__name__}: {short(str(exc), 200)}")


def _add_generate_route(app, service: Service, errors: dict) -> None:
    """``POST /generate``: the book's first, minimal API (same tokens as lmkit.generate)."""
    from fastapi import Request

    s = service.schemas
    GenerateRequest, GenerateResponse = s.Generate, s.GenerateResponse
    tokenizer = service.tokenizer
    generate_errors = {k: v for k, v in errors.items() if k != 404}

    @app.post("/generate", response_model=GenerateResponse, responses=generate_errors)
    async def generate_endpoint(req: GenerateRequest, request: Request):
        """Continue the prompt; the same seed gives the
        same answer as ``lmkit.generate.generate``."""
        start = time.perf_counter()
        ids = service.encode(req.prompt)
        params = SamplingParams(
            max_tokens=req.max_new_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
        )
        sink, seqs = service.submit(ids, params)
        [choice] = await service.collect(request, sink, seqs)
        service.served += 1
        new = choice.final.token_ids
        return GenerateResponse(
            completion=tokenizer.decode(new),
            text=tokenizer.decode(ids + new),
            prompt_tokens=len(ids),
            completion_tokens=len(new),
            total_tokens=len(ids) + len(new),
            elapsed_ms=round((time.perf_counter() - start) * 1000, 3),
            seed=seqs[0].seed,
        )


def _add_info_routes(app, service: Service) -> None:
    """``/health``, ``/metrics`` and the chat page ``/``."""
    from starlette.responses import HTMLResponse, Response

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is being served: model config, parameter count, tokenizer, limits."""
        engine = service.engine
        return {
            "status": "ok",
            "checkpoint": service.name,
            "model": service.model.config.to_dict(),
            "parameters": service.model.num_params(),
            "tokenizer": {
                "kind": getattr(service.tokenizer, "kind", type(service.tokenizer).__name__),
                "vocab_size": service.tokenizer.vocab_size,
            },
            "device": str(engine.device),
            "limits": {**asdict(service.limits), "max_prompt_tokens": service.max_prompt_tokens},
            "queue": engine.pending,
            "running": engine.running,
            "served": service.served,
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        """Prometheus text format (lmkit.serve.metrics)."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def chat_page():
        """The chat page: plain HTML and JavaScript, streaming from /v1/chat/completions."""
        return HTMLResponse(CHAT_HTML, headers=CHAT_PAGE_HEADERS)
