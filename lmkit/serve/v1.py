"""The OpenAI-compatible API: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Explained in chapter 13. The official ``openai`` client works against it unchanged::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="char-gpt", prompt="The for statement", max_tokens=32)

Answers follow the OpenAI objects (``choices``, ``finish_reason`` ``stop`` or ``length``,
``usage``), plus ``seed``: the seed used, which reproduces the answer (choice ``i`` sampled with
``seed + i``). With ``"stream": true`` the answer is a stream of server-sent events, one
``data: {chunk}`` per decoding step (several tokens when the client reads slower than the server
writes), then ``data: [DONE]``; with ``stream_options.include_usage`` a last chunk carries the
token counts. A sequence that runs out of time mid-stream ends with ``data: {"error": ...}``.

``logprobs`` (completions) gives, per token, its text, its log-probability under the model (before
temperature and filtering), the ``logprobs`` most likely alternatives, and its character offset in
the completion (``text_offset``).
"""

import json
import secrets
import time

from lmkit.serve.engine import Event, SamplingParams
from lmkit.serve.service import ApiError, Service, sequence_stream
from lmkit.serve.transport import error_body, json_bytes

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for completions


class _Head:
    """The fields every chunk and answer of one request shares, serialised once."""

    def __init__(self, kind: str, obj: str, model: str, seed: int):
        self.id, self.created = f"{kind}-{secrets.token_hex(12)}", int(time.time())
        self.fields = {"id": self.id, "object": obj, "created": self.created, "model": model}
        self.fields["seed"] = seed
        self.prefix = _compact(self.fields)[:-1]  # without the closing brace

    def chunk(self, choices: list, usage: dict | None = None) -> str:
        body = self.prefix + ',"choices":' + _compact(choices)
        if usage is not None:
            body += ',"usage":' + _compact(usage)
        return "data: " + body + "}\n\n"


def _compact(value) -> str:
    """JSON without spaces, ASCII only (a stream never fails to encode)."""
    return json.dumps(value, separators=(",", ":"))


def _usage(prompt_tokens: int, finals: list[Event]) -> dict:
    completion = sum(e.tokens for e in finals)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _logprobs(entries) -> dict:
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [e.top for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def _stops(stop) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def sampling_params(req, max_tokens: int, extra_stops=(), logprobs=None) -> SamplingParams:
    """The engine's settings for an OpenAI request (temperature defaults to 1, as OpenAI's)."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        seed=req.seed,
        stop=_stops(req.stop) + tuple(s for s in extra_stops if s not in _stops(req.stop)),
        logprobs=logprobs,
    )


def _merge(batch: list[Event]) -> dict[int, tuple[str, list, Event | None]]:
    """Events of one wake-up, per choice: (text, logprobs, the final event or None)."""
    merged: dict[int, list] = {}
    for e in batch:
        text, lps, final = merged.setdefault(e.index, ["", [], None])
        merged[e.index] = [text + e.text, lps + e.logprobs, e if e.finish_reason else final]
    return {i: tuple(v) for i, v in merged.items()}


def _failure(service: Service, final: Event, max_tokens: int) -> str | None:
    """The SSE error event for a sequence that ended badly mid-stream, else None."""
    if final.finish_reason == "timeout":
        message = service.timeout_message(final, max_tokens)
    elif final.finish_reason == "error":
        message = f"generation failed: {final.error}"
    else:
        return None
    return "data: " + _compact({"error": error_body(503, message)["error"]}) + "\n\n"


async def _stream(service: Service, sink, seqs, head: _Head, include_usage, make_choice):
    """SSE text: one chunk per wake-up, ``make_choice(index, text, logprobs, final)`` shaping a
    choice; then the usage chunk (if asked) and ``data: [DONE]``."""
    finals: list[Event] = []
    max_tokens = seqs[0].params.max_tokens
    async for batch in service.events(sink, len(seqs)):
        out = []
        for index, (text, lps, final) in sorted(_merge(batch).items()):
            failure = None if final is None else _failure(service, final, max_tokens)
            if failure is not None:  # the text it produced in time, then the error
                if text or lps:
                    out.append(head.chunk([make_choice(index, text, lps, None)]))
                yield "".join(out) + failure + "data: [DONE]\n\n"
                return
            if final is not None:
                finals.append(final)
            if text or lps or final is not None:
                out.append(head.chunk([make_choice(index, text, lps, final)]))
        if out:
            yield "".join(out)
    if include_usage:
        yield head.chunk([], usage=_usage(len(seqs[0].prompt), finals))
    service.served += 1
    yield "data: [DONE]\n\n"


def _json(body: dict):
    from starlette.responses import Response

    return Response(json_bytes(body), media_type="application/json")


def _model_card(service: Service) -> dict:
    return {"id": service.name, "object": "model", "created": service.created, "owned_by": "lmkit"}


def add_openai_routes(app, service: Service, errors: dict) -> None:
    """Add ``/v1/models``, ``/v1/models/{id}``, ``/v1/completions`` and ``/v1/chat/completions``
    to ``app``. ``errors``: the error answers for the schema."""
    s = service.schemas

    @app.get("/v1/models", response_model=s.ModelList)
    async def list_models():
        """The model this server serves (one)."""
        return _json({"object": "list", "data": [_model_card(service)]})

    @app.get("/v1/models/{model_id}", responses={404: errors[404]})
    async def retrieve_model(model_id: str):
        """One model by id (404 for any other)."""
        service.check_model(model_id)
        return _json(_model_card(service))

    _add_completions(app, service, errors)
    _add_chat(app, service, errors)


def _streamed(model) -> dict:
    return {
        "model": model,
        "description": "The answer, or with stream=true server-sent events (chunks)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }


def _add_completions(app, service: Service, errors: dict) -> None:
    from fastapi import Request

    s = service.schemas
    CompletionRequest = s.Completion
    limit = service.limits.max_new_tokens

    @app.post("/v1/completions", responses={200: _streamed(s.CompletionResponse), **errors})
    async def completions(req: CompletionRequest, request: Request):
        """Continue ``prompt`` (OpenAI's completions API); ``stream: true`` for SSE chunks."""
        service.check_model(req.model)
        ids = service.encode(req.prompt)
        max_tokens = (
            min(DEFAULT_COMPLETION_TOKENS, limit) if req.max_tokens is None else req.max_tokens
        )
        params = sampling_params(req, max_tokens, logprobs=req.logprobs)
        sink, seqs = service.submit(ids, params, req.n or 1)
        head = _Head("cmpl", "text_completion", service.name, seqs[0].seed)
        want_lp = req.logprobs is not None

        def choice(index, text, lps, final):
            return {
                "index": index,
                "text": text,
                "logprobs": _logprobs(lps) if want_lp else None,
                "finish_reason": None if final is None else final.finish_reason,
            }

        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return sequence_stream(_stream(service, sink, seqs, head, usage, choice), seqs)
        choices = await service.collect(request, sink, seqs)
        service.served += 1
        return _json(
            {
                **head.fields,
                "choices": [
                    choice(i, c.final.completion, c.logprobs, c.final)
                    for i, c in enumerate(choices)
                ],
                "usage": _usage(len(ids), [c.final for c in choices]),
            }
        )


def _chat_max_tokens(req, limit: int) -> int:
    a, b = req.max_tokens, req.max_completion_tokens
    if a is not None and b is not None and a != b:
        raise ApiError(
            422,
            f"max_tokens ({a}) and max_completion_tokens ({b}) differ; send one of them",
            "max_completion_tokens",
        )
    chosen = a if a is not None else b
    return limit if chosen is None else chosen


def _add_chat(app, service: Service, errors: dict) -> None:
    from fastapi import Request

    s = service.schemas
    ChatRequest = s.Chat
    template = service.template

    @app.post("/v1/chat/completions", responses={200: _streamed(s.ChatResponse), **errors})
    async def chat_completions(req: ChatRequest, request: Request):
        """Answer the conversation ``messages`` through the chat template (lmkit.serve.protocol
        .ChatTemplate); ``stream: true`` for SSE chunks."""
        service.check_model(req.model)
        prompt = template.render([(m.role, m.content) for m in req.messages])
        ids = service.encode(prompt, "messages (with the chat template)", "messages")
        max_tokens = _chat_max_tokens(req, service.limits.max_new_tokens)
        params = sampling_params(req, max_tokens, extra_stops=template.stop)
        sink, seqs = service.submit(ids, params, req.n or 1)
        if req.stream:
            head = _Head("chatcmpl", "chat.completion.chunk", service.name, seqs[0].seed)
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return sequence_stream(_chat_stream(service, sink, seqs, head, usage), seqs)
        choices = await service.collect(request, sink, seqs)
        service.served += 1
        head = _Head("chatcmpl", "chat.completion", service.name, seqs[0].seed)
        return _json(
            {
                **head.fields,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": c.final.completion},
                        "logprobs": None,
                        "finish_reason": c.final.finish_reason,
                    }
                    for i, c in enumerate(choices)
                ],
                "usage": _usage(len(ids), [c.final for c in choices]),
            }
        )


async def _chat_stream(service: Service, sink, seqs, head: _Head, include_usage: bool):
    """Chat chunks: first ``delta: {"role": "assistant", "content": ""}`` for every choice, then
    ``delta: {"content": ...}``, and an empty ``delta`` with the ``finish_reason``."""

    def choice(index, text, lps, final):
        delta = {"content": text} if text else {}
        return {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": None if final is None else final.finish_reason,
        }

    yield "".join(
        head.chunk(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        for i in range(len(seqs))
    )
    async for piece in _stream(service, sink, seqs, head, include_usage, choice):
        yield piece
