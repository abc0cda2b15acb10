"""Debian's Chromium driven by Playwright, shared by the browser tests (the book, the chat page).

``browser`` (a fixture in conftest.py) skips when Chromium or Playwright is missing, and fails
instead when ``LMKIT_REQUIRE_BROWSER=1`` (CI sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = os.environ.get("LMKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 60_000


def browser_missing_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None
