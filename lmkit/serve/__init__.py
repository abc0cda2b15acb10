"""Serving a GPT over HTTP as practitioners do: the OpenAI API, streaming, continuous batching,
metrics and a chat page. Explained in chapter 13.

``python -m lmkit serve --checkpoint DIR`` loads a checkpoint written by
:func:`lmkit.checkpoint.save_model` (safetensors + JSON, nothing unpickled) and answers:

* ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``: the OpenAI API
  (:mod:`lmkit.serve.v1`), streamed with ``"stream": true``; the official ``openai`` client works
  against ``base_url="http://HOST:PORT/v1"``;
* ``POST /generate``: the book's first, minimal API (``prompt``, ``max_new_tokens``,
  ``temperature``, ``top_k``, ``top_p``, ``seed`` -> completion, text, token counts, milliseconds,
  seed);
* ``GET /health`` (model, limits, queue), ``GET /metrics`` (Prometheus,
  :mod:`lmkit.serve.metrics`), ``GET /`` (the chat page, :mod:`lmkit.serve.page`),
  ``GET /openapi.json`` and ``/docs``.

Every answer equals :func:`lmkit.generate.generate` with the same settings and seed (a missing
seed is drawn and returned), whether the request ran alone or batched with others: one decoding
loop (:class:`lmkit.serve.engine.Engine`) runs every request in one batch over a KV cache in which
each sequence has its own length, admitting and retiring requests between steps.

The package: ``limits`` (ServerLimits), ``transport`` (the gate before parsing, error answers),
``protocol`` (request schemas, chat template), ``engine`` (batching), ``service`` (what routes
share), ``v1`` (the OpenAI routes), ``app`` (create_app), ``metrics``, ``page``, ``runner``
(uvicorn, BackgroundServer, flags) and ``bench`` (the load test of ``lmkit bench --serve``).
"""

from lmkit.serve.app import create_app
from lmkit.serve.engine import (
    BatchedKVCache,
    Engine,
    Event,
    GenerationTimeout,
    QueueFull,
    SamplingParams,
    deadline_check,
)
from lmkit.serve.limits import MAX_TEMPERATURE, MIN_TEMPERATURE, MIN_TOP_P, ServerLimits
from lmkit.serve.protocol import ChatTemplate
from lmkit.serve.runner import (
    BackgroundServer,
    add_serve_arguments,
    limits_from_args,
    run_server,
    serve,
)
from lmkit.serve.transport import RequestGate

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "MIN_TOP_P",
    "BackgroundServer",
    "BatchedKVCache",
    "ChatTemplate",
    "Engine",
    "Event",
    "GenerationTimeout",
    "QueueFull",
    "RequestGate",
    "SamplingParams",
    "ServerLimits",
    "add_serve_arguments",
    "create_app",
    "deadline_check",
    "limits_from_args",
    "run_server",
    "serve",
]
