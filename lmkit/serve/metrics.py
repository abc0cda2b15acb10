"""``GET /metrics``: the server's measurements in the Prometheus text format. Chapter 13.

Each app has its own :class:`prometheus_client.CollectorRegistry`, so that several servers in one
process (tests, a notebook) keep separate counts. What is measured:

=============================================  =================================================
``lmkit_http_requests_total{route,status}``    HTTP answers, by route and status code
``lmkit_queue_length``                         sequences waiting for a slot in the batch
``lmkit_running_batch_size``                   sequences in the running batch
``lmkit_time_to_first_token_seconds``          submission to first generated token (TTFT)
``lmkit_time_per_output_token_seconds``        mean time between a sequence's tokens (TPOT)
``lmkit_e2e_request_latency_seconds``          submission to the end of the sequence
``lmkit_generated_tokens_total``               completion tokens generated
``lmkit_prompt_tokens_total``                  prompt tokens read
``lmkit_sequences_finished_total{reason}``     ends by reason: stop, length, cancelled, timeout,
                                               error
=============================================  =================================================
"""

from lmkit.serve.engine import NullMetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)


class ServerMetrics(NullMetrics):
    """The Prometheus metrics of one app; the engine calls ``queue``, ``first_token`` and
    ``finished``, the HTTP middleware ``request``. ``render()`` -> (body bytes, content type)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lmkit_http_requests", "HTTP answers by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.queue_length = Gauge("lmkit_queue_length", "Sequences waiting for a slot", registry=r)
        self.batch_size = Gauge(
            "lmkit_running_batch_size", "Sequences in the running batch", registry=r
        )
        self.ttft = Histogram(
            "lmkit_time_to_first_token_seconds",
            "Submission to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lmkit_time_per_output_token_seconds",
            "Mean time between the tokens of a sequence",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lmkit_e2e_request_latency_seconds",
            "Submission to the end of a sequence",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            "lmkit_generated_tokens", "Completion tokens generated", registry=r
        )
        self.prompt = Counter("lmkit_prompt_tokens", "Prompt tokens read", registry=r)
        self.ends = Counter(
            "lmkit_sequences_finished", "Sequences ended, by reason", ["reason"], registry=r
        )

    def queue(self, waiting: int, running: int) -> None:
        self.queue_length.set(waiting)
        self.batch_size.set(running)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, reason, prompt_tokens, completion_tokens, seconds, per_token) -> None:
        self.ends.labels(reason).inc()
        self.prompt.inc(prompt_tokens)
        self.generated.inc(completion_tokens)
        self.e2e.observe(seconds)
        if per_token is not None:
            self.tpot.observe(per_token)

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware, outermost: counts every HTTP answer by route and status, including the
    transport gate's refusals. Paths that are no route count as ``other`` (a fuzzer's random
    paths must not create a label each)."""

    def __init__(self, app, metrics: ServerMetrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        status = [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.request(route, status[0])
