"""scripts/nbclient_fix.py: a reply whose wake-up was lost is still read within one slice.

The fake socket below behaves like a zmq socket whose edge-triggered wake-up was consumed by a
concurrent send: a message is queued, but a poll that is already waiting is never woken and
returns only at its timeout. jupyter_client's own get_msg would wait the whole timeout.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import nbclient_fix  # noqa: E402


class LostWakeupSocket:
    """poll(ms): True at once if a message was queued before the call; otherwise sleep the whole
    timeout (the message arriving meanwhile does not wake it) and report False."""

    def __init__(self, arrives_after_s: float | None):
        self.start = time.monotonic()
        self.arrives_after_s = arrives_after_s
        self.polls: list[int] = []

    def queued(self) -> bool:
        return self.arrives_after_s is not None and (
            time.monotonic() - self.start >= self.arrives_after_s
        )

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if self.queued():
            return True
        await asyncio.sleep(timeout_ms / 1000)
        return False


class Channel:
    get_msg = nbclient_fix._get_msg_sliced
    original_get_msg = AsyncZMQSocketChannel.get_msg

    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


def test_a_reply_with_a_lost_wake_up_is_read_within_one_slice():
    channel = Channel(LostWakeupSocket(arrives_after_s=0.2))
    t = time.monotonic()
    msg = asyncio.run(channel.get_msg(timeout=30))
    assert msg["msg_type"] == "execute_reply"
    assert time.monotonic() - t < 0.2 + 2 * nbclient_fix.POLL_SLICE_S
    assert max(channel.socket.polls) <= nbclient_fix.POLL_SLICE_S * 1000


def test_without_the_fix_the_same_reply_waits_out_the_timeout():
    """The control: jupyter_client's get_msg polls once for the whole timeout."""
    channel = Channel(LostWakeupSocket(arrives_after_s=0.2))
    t = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.original_get_msg(timeout=1.5))
    assert time.monotonic() - t >= 1.5
    assert channel.socket.polls == [1500]


@pytest.mark.parametrize("timeout", [0, 0.3, 1.2])
def test_no_message_raises_empty_at_the_timeout(timeout):
    channel = Channel(LostWakeupSocket(arrives_after_s=None))
    t = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=timeout))
    assert timeout <= time.monotonic() - t < timeout + nbclient_fix.POLL_SLICE_S


def test_install_patches_the_async_channel():
    before = AsyncZMQSocketChannel.get_msg
    try:
        nbclient_fix.install()
        assert AsyncZMQSocketChannel.get_msg is nbclient_fix._get_msg_sliced
    finally:
        AsyncZMQSocketChannel.get_msg = before
