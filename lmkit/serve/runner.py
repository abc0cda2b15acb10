"""Running the server: uvicorn in the foreground (``python -m lmkit serve``) or in a thread
(:class:`BackgroundServer`, for notebooks and tests), and the command-line flags. Chapter 13."""

import argparse
import socket
import threading
import time

from lmkit.serve.app import create_app
from lmkit.serve.limits import ServerLimits


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


def _no_delay(sock: socket.socket) -> None:
    """Send every write at once (TCP_NODELAY) on the connections ``sock`` accepts.

    Without it, a streamed token or the body after the headers waits for the client's delayed
    ACK (about 40 ms on Linux) once a kept-alive connection leaves TCP's quick-ACK start. asyncio
    sets the option itself only on sockets created with ``proto=IPPROTO_TCP``, and uvicorn's
    sockets have ``proto=0``; Linux copies the option of a listening socket to the accepted ones.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
    _no_delay(sock)
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

    ``with BackgroundServer(app) as url: httpx.post(url + "/v1/completions", json=...)``

    The socket is bound here (``port=0``: the operating system picks a free one) and handed to
    uvicorn, so ``self.port`` is the port actually served, with no window for another process to
    take it between choosing and binding.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _no_delay(self.sock)
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
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="default: the model's block_size - 1 (one slot left for a new token)",
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
        help="sequences waiting or running at once (default %(default)s)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help="sequences decoded together; 1 = no batching (default %(default)s)",
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
        max_batch=args.max_batch,
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
