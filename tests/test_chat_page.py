"""The chat page of ``lmkit serve`` (lmkit/serve/page.py, chapter 13) in a real headless browser.

Debian's Chromium (/usr/bin/chromium) driven by Playwright, as in tests/test_browser.py; no browser
is downloaded. The server runs on localhost with a tiny model whose every call waits for the test
(a forward pre-hook), so the test lets the reply grow one token at a time and checks, after each,
that the page shows exactly one more character: the tokens are shown as they arrive, not at the
end. Every request to another host is blocked and reported; the page must make none.

Where Chromium is missing the tests are skipped, unless LMKIT_REQUIRE_BROWSER=1 (.ci/run sets it),
which turns the skip into a failure.
"""

from __future__ import annotations

import string
import threading
import time
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import torch  # noqa: E402
from chromium import LOCAL_HOSTS, TIMEOUT_MS  # noqa: E402

from lmkit.data import CharTokenizer  # noqa: E402
from lmkit.models import GPT, GPTConfig  # noqa: E402
from lmkit.serve import BackgroundServer, ChatTemplate, ServerLimits, create_app  # noqa: E402

CHARS = string.ascii_letters + " .,!?:"  # no newline: every token is one visible character
MAX_TOKENS = 12
TURNS = "() => document.querySelectorAll('.turn.assistant').length"
LAST_REPLY = """() => {
  const all = document.querySelectorAll('.turn.assistant');
  const e = all[all.length - 1];
  return {text: e.textContent, state: e.dataset.state || null, finish: e.dataset.finish || null};
}"""


class Stepper:
    """Each model call waits for a permit from the test (``allow``); ``run()`` stops waiting."""

    def __init__(self, model):
        self.permits, self.free = threading.Semaphore(0), threading.Event()
        self.handle = model.lm_head.register_forward_pre_hook(self._wait)

    def _wait(self, module, args):
        while not self.free.is_set() and not self.permits.acquire(timeout=0.05):
            pass

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def run(self) -> None:
        self.free.set()


@pytest.fixture
def server():
    """A tiny random GPT behind the real app; its chat template has no newline (not in this
    vocabulary) and no stop string, so that no character is held back: each token shows at once."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(CHARS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    stepper = Stepper(model.eval())
    app = create_app(
        (model, tok),
        ServerLimits(max_new_tokens=MAX_TOKENS),
        model_name="tiny-chat",
        chat_template=ChatTemplate(system_end=" ", turn_end=" ", stop=()),
    )
    try:
        with BackgroundServer(app) as url:
            yield url, stepper, app
    finally:
        stepper.run()
        stepper.handle.remove()


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "about") or parsed.hostname in LOCAL_HOSTS


class ChatVisit:
    """The chat page in a fresh context, every non-local request blocked and recorded."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.outgoing: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.goto(url + "/", wait_until="load", timeout=TIMEOUT_MS)
        self.poll(lambda: self.page.text_content("#status") == "model: tiny-chat", "the model id")

    def poll(self, predicate, what: str) -> None:
        """Poll from Python: the page's Content-Security-Policy (no eval) stays in force, and
        Playwright's wait_for_function would need eval."""
        end = time.monotonic() + TIMEOUT_MS / 1000
        while not predicate():
            assert time.monotonic() < end, f"gave up waiting for {what}"
            time.sleep(0.01)

    def _route(self, route):
        url = route.request.url
        self.requests.append(url)
        if _is_local(url):
            route.continue_()
        else:
            self.outgoing.append(url)
            route.abort()

    def send(self, text: str) -> None:
        before = self.page.evaluate(TURNS)
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")
        self.poll(lambda: self.page.evaluate(TURNS) == before + 1, "the reply to start")

    def reply(self) -> dict:
        """The last reply: its text and its data-state / data-finish attributes."""
        return self.page.evaluate(LAST_REPLY)

    def wait_reply(self, what: str, predicate) -> dict:
        self.poll(lambda: predicate(self.reply()), what)
        return self.reply()

    def close(self) -> None:
        self.context.close()


def wait_for(predicate, what, limit_s=60):
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_the_reply_streams_token_by_token(browser, server):
    url, stepper, app = server
    visit = ChatVisit(browser, url)
    try:
        visit.send("Hello there")
        assert visit.page.text_content(".turn.user") == "Hello there"
        seen = [visit.reply()["text"]]
        assert seen == [""]
        for n in range(1, MAX_TOKENS):  # one model call, one more character on the page
            stepper.allow()
            r = visit.wait_reply(f"{n} characters", lambda r, n=n: len(r["text"]) >= n)
            assert len(r["text"]) == n and r["text"].startswith(seen[-1]), (seen, r)
            assert r["state"] == "streaming"
            seen.append(r["text"])
        stepper.allow()
        final = visit.wait_reply("the end of the reply", lambda r: r["state"] == "done")
        assert len(final["text"]) == MAX_TOKENS and final["text"].startswith(seen[-1])
        assert final["finish"] == "length"
        assert visit.outgoing == [] and visit.errors == []
        assert {urlparse(u).path for u in visit.requests} == {
            "/",
            "/v1/models",
            "/v1/chat/completions",
        }
        requests = app.state.metrics.requests
        assert requests.labels("/v1/chat/completions", "200")._value.get() == 1
    finally:
        visit.close()


def test_stop_button_cancels_the_request(browser, server):
    url, stepper, app = server
    visit = ChatVisit(browser, url)
    try:
        visit.send("Go on")
        stepper.allow(3)
        visit.wait_reply("3 characters", lambda r: len(r["text"]) >= 3)
        visit.page.click("#stop")
        visit.wait_reply("the stop", lambda r: r["state"] == "stopped")
        ends, active = app.state.metrics.ends, app.state.engine.active
        wait_for(lambda: all(s.cancelled for s in active()), "the server to see the abort")
        stepper.run()
        wait_for(lambda: ends.labels("cancelled")._value.get() == 1, "the sequence to end")
        assert ends.labels("length")._value.get() == 0
        assert visit.outgoing == [] and visit.errors == []
        visit.send("Again")  # the page is usable again: the next message gets a whole reply
        final = visit.wait_reply("the second reply", lambda r: r["state"] == "done")
        assert len(final["text"]) == MAX_TOKENS
    finally:
        visit.close()
