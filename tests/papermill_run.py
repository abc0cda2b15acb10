"""papermill's command line, with a diagnosis of cell
timeouts (used by test_notebooks_papermill.py).

    python tests/papermill_run.py IN.ipynb OUT.ipynb [papermill options]

When a cell runs past ``--execution-timeout``, this prints one line that tells the two causes apart:

- ``lmkit-papermill: STALL ...``: the kernel had finished the cell (its IOPub ``idle`` status for
  the request arrived) but the ``execute_reply`` never reached the client's shell channel. That is
  the lost-reply stall of jupyter/nbclient#312, seen with widget cells under load: the kernel sits
  idle while the client waits. Running the notebook again is a fair retry.
- ``lmkit-papermill: BUSY ...``: the kernel was still executing the cell. The cell is too slow (or
  hangs); that is a failure, never retried.

nbclient keeps the IOPub poller private, so this wraps two of its methods (nbclient 0.11, pinned by
requirements/lock.txt). A test hook, ``LMKIT_PAPERMILL_DROP_REPLY`` set to a marker string, makes
the client ignore the reply of cells whose source contains the marker: the stall, on demand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nbclient import NotebookClient

STALL = "lmkit-papermill: STALL"
BUSY = "lmkit-papermill: BUSY"

_poll_output = NotebookClient._async_poll_output_msg
_poll_reply = NotebookClient._async_poll_for_reply
_handle_timeout = NotebookClient._async_handle_timeout


async def _poll_output_traced(self, parent_msg_id, cell, cell_index):
    self._lmkit_idle_seen = False
    await _poll_output(self, parent_msg_id, cell, cell_index)
    self._lmkit_idle_seen = True  # the kernel reported the request done (status: idle)


async def _poll_reply_maybe_dropped(self, msg_id, cell, timeout, *args, **kwargs):
    marker = os.environ.get("LMKIT_PAPERMILL_DROP_REPLY")
    if marker and marker in cell.source:
        msg_id = "lmkit-test-dropped-reply"  # the real reply then goes unmatched, as if lost
    return await _poll_reply(self, msg_id, cell, timeout, *args, **kwargs)


async def _handle_timeout_diagnosed(self, timeout, cell=None):
    if getattr(self, "_lmkit_idle_seen", False):
        print(
            f"{STALL}: the kernel finished the cell but its execute_reply never arrived "
            "(jupyter/nbclient#312)",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"{BUSY}: the kernel was still executing the cell after {timeout} s",
            file=sys.stderr,
            flush=True,
        )
    return await _handle_timeout(self, timeout, cell)


def install() -> None:
    """Patch nbclient in this process (only the papermill subprocess calls this): the lost
    wake-up fix of scripts/nbclient_fix.py, then the diagnosis above for any stall left."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from nbclient_fix import install as install_nbclient_fix

    install_nbclient_fix()
    NotebookClient._async_poll_output_msg = _poll_output_traced
    NotebookClient._async_poll_for_reply = _poll_reply_maybe_dropped
    NotebookClient._async_handle_timeout = _handle_timeout_diagnosed


if __name__ == "__main__":
    from papermill.cli import papermill

    install()
    papermill()
