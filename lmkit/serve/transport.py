"""The transport gate and error answers of the server. Explained in chapter 13.

Every error the server sends is JSON of one shape, readable both by people and by OpenAI clients::

    {"detail": "what is wrong and how to fix it",
     "error": {"message": <the same>, "type": "invalid_request_error",
               "param": <the field at fault>, "code": 422}}

``detail`` is FastAPI's convention (and the book's first examples read it); ``error`` is the
OpenAI API's, from which the official ``openai`` client builds its exception message.
"""

import json
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_overloaded",
}


def json_bytes(content: Any) -> bytes:
    """JSON that never fails to encode: lone surrogates (legal in JSON escapes) fall back to \\u."""
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return json.dumps(content, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode(
            "ascii"
        )


def short(value: Any, n: int = 60) -> str:
    """``value`` as text of at most ``n`` characters (long input is never echoed whole)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON of an error answer: ``detail`` and the OpenAI ``error`` object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "detail": message,
        "error": {"message": message, "type": kind, "param": param, "code": status},
    }


def error_response(
    status: int,
    message: str,
    errors: list | None = None,
    headers: dict | None = None,
    param: str | None = None,
):
    """A JSON error answer (``errors``: the per-field list of a 422)."""
    from starlette.responses import Response

    content = error_body(status, message, param)
    if errors is not None:
        content["errors"] = errors
    return Response(
        json_bytes(content), status_code=status, headers=headers, media_type="application/json"
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
            await error_response(413, f"{too_large} (Content-Length: {short(declared, 20)})")(
                scope, receive, send
            )
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if not (
            media == "application/json"
            or (media.startswith("application/") and media.endswith("+json"))
        ):
            shown = f"'{short(media, 40)}'" if media else "none"
            message = f"Content-Type must be application/json, got {shown}"
            await error_response(415, message)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await error_response(413, too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _json_problem(body)
        if problem is not None:
            await error_response(400, problem)(scope, receive, send)
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
        return f"malformed JSON: {short(str(e), 200)}"
    return None


def validation_message(errors: list[dict]) -> tuple[str, list[dict]]:
    """Turn pydantic errors into one readable line and a short JSON-safe list (input not echoed)."""
    items = []
    for err in errors[:20]:
        loc = [short(p, 40) if isinstance(p, str) else p for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind, msg = str(err.get("type", "")), str(err.get("msg", ""))
        if kind == "unsupported_field":  # raised for the body, about one field of it
            loc = [short(str((err.get("ctx") or {}).get("field", "")), 40)]
        if not loc and kind == "model_attributes_type":
            msg = 'the body must be a JSON object such as {"prompt": "Hello"}'
        items.append({"field": ".".join(str(p) for p in loc) or "body", "msg": msg, "type": kind})
    parts = [f"{it['field']}: {it['msg']}" for it in items]
    more = f" (and {len(errors) - len(items)} more)" if len(errors) > len(items) else ""
    return "invalid request: " + "; ".join(parts) + more, items
