"""A fix for notebooks whose cell "hangs" until its timeout although the kernel has finished it.

The cause (jupyter/nbclient#312): nbclient emulates ipywidgets' Output widget, which every
``ipywidgets.interactive`` contains. While a cell runs, nbclient's IOPub task *sends* widget
updates on the shell socket, and its main task is parked in ``await socket.poll(timeout)`` on
that same zmq socket, waiting for the ``execute_reply``. A zmq socket signals readiness through
an edge-triggered file descriptor, and the send consumes the edge: the reply is already in the
socket's queue, but the poll is never woken, so the cell waits out its whole timeout (600 s in
the book build) before nbclient gives up. Polling in short slices re-checks the socket's queue
each time, so a lost wake-up costs at most one slice.

``install()`` patches jupyter_client's asyncio shell/control channels in this process. The
notebook runners call it: ``scripts/execute_notebook.py``, ``scripts/build_book.py`` (through
``python scripts/nbclient_fix.py jupyter-book ...``) and ``tests/papermill_run.py``.
"""

from __future__ import annotations

import runpy
import sys
from queue import Empty
from time import monotonic

from jupyter_client.channels import AsyncZMQSocketChannel

POLL_SLICE_S = 0.5


async def _get_msg_sliced(self, timeout: float | None = None):
    """``AsyncZMQSocketChannel.get_msg`` with the same contract, polling at most POLL_SLICE_S
    at a time: returns the next message, or raises ``queue.Empty`` once ``timeout`` passes."""
    assert self.socket is not None
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        remaining = POLL_SLICE_S if deadline is None else max(0.0, deadline - monotonic())
        if await self.socket.poll(int(min(POLL_SLICE_S, remaining) * 1000)):
            return await self._recv()
        if deadline is not None and monotonic() >= deadline:
            raise Empty


def install() -> None:
    AsyncZMQSocketChannel.get_msg = _get_msg_sliced


if __name__ == "__main__":  # python scripts/nbclient_fix.py PROGRAM ARGS...: run PROGRAM patched
    install()
    program = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(program, run_name="__main__")
