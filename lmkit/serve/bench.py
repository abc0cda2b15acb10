"""The load test of ``python -m lmkit bench --serve``. Explained in chapter 13 and the performance
appendix.

It starts ``python -m lmkit serve`` in a subprocess (so that the clients do not share its Python
interpreter), then drives it over real HTTP with 1, 4, 16 and 64 concurrent streaming clients (each
on its own keep-alive connection, sending its requests one after another; a small HTTP/1.1 client
on asyncio streams, so that the load generator takes little of the CPU it shares with the
server), first with continuous batching (``--max-batch 64``), then without (``--max-batch 1``: one
sequence at a time). Per level it reports:

* ``throughput_tok_s``: completion tokens of every request / wall time of the level;
* ``ttft_ms``: time to first token, from sending the request to the first chunk with text;
* ``tpot_ms``: time per output token after the first, ``(last - first) / (tokens - 1)``;
* ``e2e_ms``: the whole request; ``errors``: answers by status other than 200 (and transport
  failures), ``status_5xx`` their 5xx count.
"""

import asyncio
import contextlib
import json
import os
import platform
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from lmkit.assets import checkpoint_path

CONCURRENCY = (1, 4, 16, 64)
PROMPTS = (
    "The for statement",
    "def read_config(path):",
    "Return a new list",
    "The class of an object",
    "import os\n",
    "If the value is not",
    "A dictionary maps",
    "raise ValueError(",
)


class ServerProcess:
    """``python -m lmkit serve ... --port 0`` in a subprocess; ``with ServerProcess(...) as url``.

    The port is read from the server's first line (``lmkit serve: listening on http://...``).
    """

    def __init__(self, checkpoint, max_batch: int, max_queue: int, threads: int = 1):
        self.cmd = [
            sys.executable,
            "-m",
            "lmkit",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
            "--max-queue",
            str(max_queue),
            "--log-level",
            "warning",
        ]
        self.proc = None

    def __enter__(self) -> str:
        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        url = f"http://127.0.0.1:{_listening_port(self.proc)}"
        httpx.get(url + "/health", timeout=120).raise_for_status()  # waits in the backlog
        return url

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _listening_port(proc, limit_s: float = 120) -> int:
    lines: queue.Queue[str] = queue.Queue()

    def read():
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=limit_s)
        if not line:
            raise RuntimeError(f"the server exited (rc={proc.wait()}):\n" + "".join(seen))
        seen.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))


_TEXT = re.compile(rb'"text":"[^"]')  # a chunk whose text is not empty


class _Connection:
    """One client's keep-alive HTTP/1.1 connection, on asyncio streams.

    The load generator shares the machine's cores with the server, so it is kept small: a request
    is written in one piece, and a streamed answer is read chunk by chunk (chunked transfer
    encoding) and scanned for text, not parsed; only its last event (``usage``) is decoded.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _open(self):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.reader = self.writer = None

    async def stream(self, path: str, body: dict):
        """POST ``body``; yields the status code, then each chunk of the answer (bytes)."""
        await self._open()
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        yield int(lines[0].split()[1])
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if fields.get("transfer-encoding") == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                yield (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            yield await self.reader.readexactly(int(fields.get("content-length", 0)))
        if fields.get("connection") == "close":
            await self.close()


async def _one_request(conn: _Connection, model: str, prompt: str, max_tokens: int, seed: int):
    """One streamed completion: status, tokens, and the times of its first and last chunk with
    text."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = status = None
    tail = b""
    try:
        async for item in conn.stream("/v1/completions", body):
            if status is None:
                status = item
            elif status == 200:
                if _TEXT.search(item):
                    last = time.perf_counter()
                    first = first or last
                tail = (tail + item)[-4096:]
    except Exception as e:  # a transport failure counts as an error, named by its type
        await conn.close()
        return {"status": type(e).__name__}
    if status != 200:
        return {"status": status}
    end = time.perf_counter()
    usage = [line for line in tail.split(b"\n") if line.startswith(b"data: {") and b"usage" in line]
    tokens = json.loads(usage[-1][6:])["usage"]["completion_tokens"] if usage else 0
    return {"status": 200, "tokens": tokens, "t0": t0, "first": first, "last": last, "end": end}


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {"p50": None, "p90": None, "p99": None}
    p = np.percentile(np.array(values) * 1000, [50, 90, 99])
    return {
        "p50": round(float(p[0]), 3),
        "p90": round(float(p[1]), 3),
        "p99": round(float(p[2]), 3),
    }


async def _drive(url: str, model: str, concurrency: int, per_client: int, max_tokens: int):
    """``concurrency`` clients, each with its own connection, sending ``per_client`` requests in
    a row: the level's figures."""
    host, port = url.split("//")[1].rsplit(":", 1)
    clients = [_Connection(host, int(port)) for _ in range(concurrency)]

    async def worker(w: int):
        out = []
        for i in range(per_client):
            k = w * per_client + i
            out.append(await _one_request(clients[w], model, PROMPTS[k % 8], max_tokens, k))
        return out

    try:
        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*map(worker, range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
    finally:
        for client in clients:
            await client.close()
    ok = [r for r in results if r["status"] == 200]
    errors: dict[str, int] = {}
    for r in results:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    tokens = sum(r["tokens"] for r in ok)
    timed = [r for r in ok if r["first"] is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "throughput_tok_s": round(tokens / wall, 1),
        "ttft_ms": _percentiles([r["first"] - r["t0"] for r in timed]),
        "tpot_ms": _percentiles(
            [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in timed if r["tokens"] > 1]
        ),
        "e2e_ms": _percentiles([r["end"] - r["t0"] for r in ok]),
        "errors": errors,
        "status_5xx": sum(n for s, n in errors.items() if s.isdigit() and int(s) >= 500),
    }


def _best_of(runs: list[dict]) -> dict:
    """The run with the highest throughput (the one least disturbed by other work on the
    machine), with every run's throughput and the errors and 5xx of all runs."""
    best = dict(max(runs, key=lambda r: r["throughput_tok_s"]))
    best["throughput_runs_tok_s"] = [r["throughput_tok_s"] for r in runs]
    errors: dict[str, int] = {}
    for r in runs:
        for status, n in r["errors"].items():
            errors[status] = errors.get(status, 0) + n
    best["errors"], best["status_5xx"] = errors, sum(r["status_5xx"] for r in runs)
    best["requests_all_runs"] = sum(r["requests"] for r in runs)
    best["completed_all_runs"] = sum(r["completed"] for r in runs)
    return best


def _run_mode(checkpoint, model, max_batch, concurrency, per_client, max_tokens, threads, repeats):
    with ServerProcess(checkpoint, max_batch, max(concurrency), threads) as url:
        asyncio.run(_drive(url, model, 2, 2, max_tokens))  # warm-up, not reported
        runs: dict[int, list[dict]] = {c: [] for c in concurrency}
        for _ in range(repeats):  # levels interleaved, so that a slow spell hits all of them
            for c in concurrency:
                runs[c].append(asyncio.run(_drive(url, model, c, per_client(c), max_tokens)))
        return [_best_of(runs[c]) for c in concurrency]


def _summary(on: list[dict], off: list[dict]) -> dict:
    by_c = {r["concurrency"]: r for r in on}
    lo, hi = by_c[min(by_c)], by_c[max(by_c)]
    speedup = hi["throughput_tok_s"] / lo["throughput_tok_s"] if lo["throughput_tok_s"] else None
    off_hi = {r["concurrency"]: r for r in off}.get(max(by_c))
    ttft = lo["ttft_ms"]["p50"]
    all_5xx = sum(r["status_5xx"] for r in on + off)
    return {
        f"throughput_{lo['concurrency']}_tok_s": lo["throughput_tok_s"],
        f"throughput_{hi['concurrency']}_tok_s": hi["throughput_tok_s"],
        f"speedup_{hi['concurrency']}_vs_{lo['concurrency']}": round(speedup, 2)
        if speedup
        else None,
        f"batching_gain_at_{hi['concurrency']}": (
            round(hi["throughput_tok_s"] / off_hi["throughput_tok_s"], 2) if off_hi else None
        ),
        "ttft_p50_ms_single_client": ttft,
        "status_5xx": all_5xx,
        "targets": {
            "speedup_at_least_5x": bool(speedup and speedup >= 5),
            "zero_5xx": all_5xx == 0,
            "single_client_ttft_p50_under_20ms": bool(ttft is not None and ttft < 20),
        },
    }


def run_serve_bench(
    checkpoint: str = "char-gpt",
    concurrency=CONCURRENCY,
    max_tokens: int = 64,
    requests_per_client: int | None = None,
    threads: int = 1,
    batching_off: bool = True,
    repeats: int = 3,
) -> dict:
    """Load-test ``lmkit serve`` (batching on, then off) and return the figures as a dict.

    Explained in chapter 13. ``checkpoint``: a shipped name or a directory. Each level sends
    ``requests_per_client`` requests per client (default: enough for at least 16 requests and
    2 per client) of ``max_tokens`` tokens, sampled at temperature 0.8 with seeds 0, 1, ...
    Each level runs ``repeats`` times, interleaved with the others; the run with the highest
    throughput is reported (with every run's throughput, and the errors of all runs): on a
    machine whose cores other work shares, it is the one that work disturbed least. Its
    ``errors`` and ``status_5xx`` count every run.
    """
    import torch

    path = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoint_path(checkpoint)
    name = path.name

    def per_client(c: int) -> int:
        return requests_per_client or max(2, -(-16 // c))

    args = (path, name)
    load_before = os.getloadavg()
    on = _run_mode(*args, 64, concurrency, per_client, max_tokens, threads, repeats)
    off = (
        _run_mode(*args, 1, concurrency, per_client, max_tokens, threads, repeats)
        if batching_off
        else []
    )
    return {
        "benchmark": "lmkit serve: streaming /v1/completions over HTTP",
        "command": "python -m lmkit bench --serve",
        "checkpoint": name,
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "server": {"threads": threads, "max_batch_on": 64, "max_batch_off": 1},
        "load_average": {  # of the whole machine, whose cores other work may share
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "prompts": list(PROMPTS),
            "requests_per_level_and_run": {str(c): c * per_client(c) for c in concurrency},
            "runs_per_level": repeats,
        },
        "batching_on": on,
        "batching_off": off,
        "summary": _summary(on, off) if on else {},
    }
