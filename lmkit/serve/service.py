"""What every route shares: the model, the engine, the limits, and the bridge between the engine's
thread and the web server's event loop. Explained in chapter 13.

A route tokenizes and checks the prompt (:meth:`Service.encode`), submits sequences to the engine
(:meth:`Service.submit`: 503 with ``Retry-After`` when the queue is full), then either waits for
their ends (:meth:`Service.collect`) or streams their events (:meth:`Service.events`). Both cancel
the sequences when the client goes away, so that its slot in the batch is freed at the next step.
"""

import asyncio
import collections
from dataclasses import dataclass, field

from lmkit.serve.engine import Engine, Event, QueueFull, SamplingParams, Sequence
from lmkit.serve.limits import ServerLimits
from lmkit.serve.protocol import ChatTemplate
from lmkit.serve.transport import short


class ApiError(Exception):
    """An answer with an error status; ``param`` names the field at fault (OpenAI's ``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


class AsyncSink:
    """A sequence's events, received on the event loop (the engine's ``deliver`` puts them
    there from its thread)."""

    def __init__(self):
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)


class _Mailbox:
    """Events from the engine's thread to the event loop. The loop is woken (a write to its
    self-pipe, which also takes the GIL back and forth) only when no wake-up is pending: when
    the loop is behind, the events of several steps wait in one box and are handed over in one
    go, and each stream then sends one chunk for several tokens."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.pending = loop, collections.deque(), False

    def post(self, batch: list) -> None:  # the engine's thread
        self.items.extend(batch)
        if not self.pending:
            self.pending = True
            self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:  # the event loop
        self.pending = False  # before reading: what arrives from now on schedules a new drain
        items = self.items
        while items:
            sink, event = items.popleft()
            sink(event)


def connect(engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
    """Deliver the engine's events on ``loop`` (see :class:`_Mailbox`)."""
    engine.deliver = _Mailbox(loop).post


@dataclass
class Choice:
    """What one sequence produced, gathered from its events."""

    final: Event | None = None
    logprobs: list = field(default_factory=list)


async def _cancel_on_disconnect(request, seqs: list[Sequence]) -> None:
    """Wait for the client to go away (``http.disconnect``), then cancel its sequences."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for seq in seqs:
                seq.cancel()
            return


@dataclass
class Service:
    """The state behind the routes of one app."""

    model: object
    tokenizer: object
    engine: Engine
    limits: ServerLimits
    max_prompt_tokens: int
    name: str
    schemas: object
    template: ChatTemplate
    metrics: object
    created: int
    info: dict = field(default_factory=dict)
    served: int = 0

    def encode(self, text: str, what: str = "prompt", param: str = "prompt") -> list[int]:
        """Token ids of ``text``, or a 422 saying why it cannot be served."""
        try:
            ids = self.tokenizer.encode(text)
        except Exception as e:  # e.g. CharTokenizer: characters outside the vocabulary
            raise ApiError(422, f"{what} cannot be tokenized: {short(str(e), 400)}", param) from e
        if not ids:
            raise ApiError(422, f"{what} encodes to zero tokens; send some text", param)
        if len(ids) > self.max_prompt_tokens:
            raise ApiError(
                422,
                f"{what} is {len(ids)} tokens long; the limit is {self.max_prompt_tokens} tokens",
                param,
            )
        return ids

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ApiError(
                404,
                f"model {short(model, 60)!r} not found; this server serves {self.name!r} "
                "(GET /v1/models)",
                "model",
            )

    def submit(self, ids: list[int], params: SamplingParams, n: int = 1):
        """Queue ``n`` sequences: (their sink, the sequences); 503 when the queue is full."""
        sink = AsyncSink()
        try:
            seqs = self.engine.submit(ids, params, sink, n=n, timeout_s=self.limits.timeout_s)
        except QueueFull as e:
            raise ApiError(
                503,
                f"server busy: {e.pending} requests queued (limit {e.limit}); retry later",
                headers={"Retry-After": "1"},
            ) from None
        return sink, seqs

    async def collect(self, request, sink: AsyncSink, seqs: list[Sequence]) -> list[Choice]:
        """Wait for every sequence's end (cancelling them if the client disconnects); a sequence
        that ran out of time or failed turns the whole answer into an error (503)."""
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, seqs))
        choices = [Choice() for _ in seqs]
        try:
            done = 0
            while done < len(seqs):
                event = await sink.queue.get()
                choice = choices[event.index]
                choice.logprobs += event.logprobs
                if event.finish_reason is not None:
                    choice.final, done = event, done + 1
        finally:
            watcher.cancel()
            for seq in seqs:
                seq.cancel()
        for choice in choices:
            self.raise_for(choice.final, seqs[0].params.max_tokens)
        return choices

    def raise_for(self, event: Event, max_tokens: int) -> None:
        """The error of a sequence that ended badly (timeout: 503 saying how far it got)."""
        if event.finish_reason == "timeout":
            raise ApiError(
                503, self.timeout_message(event, max_tokens), headers={"Retry-After": "1"}
            )
        if event.finish_reason == "error":
            raise ApiError(503, f"generation failed: {event.error}", headers={"Retry-After": "1"})

    def timeout_message(self, event: Event, max_tokens: int) -> str:
        return (
            f"time limit of {self.limits.timeout_s:g} s reached after {event.tokens} of "
            f"{max_tokens} new tokens; generation stopped. Ask for fewer tokens or retry when "
            "the server is less busy"
        )

    async def events(self, sink: AsyncSink, n: int):
        """The events of ``n`` sequences as they come, several at a time when the client is slower
        than the engine (one chunk then carries several tokens)."""
        done = 0
        while done < n:
            batch = [await sink.queue.get()]
            while not sink.queue.empty():
                batch.append(sink.queue.get_nowait())
            done += sum(e.finish_reason is not None for e in batch)
            yield batch


def sequence_stream(content, seqs: list[Sequence]):
    """A server-sent-events response that cancels ``seqs`` when it ends, however it ends (the
    client disconnecting included: Starlette then cancels the response)."""
    from starlette.responses import StreamingResponse

    class SequenceStream(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                for seq in seqs:
                    seq.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return SequenceStream(content, media_type="text/event-stream", headers=headers)
