"""Open every page of the built book in a real headless browser, offline.

Debian's Chromium (/usr/bin/chromium, ``apt-get install chromium``) driven by Playwright; no
browser is ever downloaded. The built HTML is served from a localhost HTTP server started here,
and every request to another host is blocked and reported. For each page of the table of
contents: no console errors, no failed or outgoing requests, math typeset by MathJax, every image
decoded, a Colab link to the page's notebook on the main branch (notebook pages), every
widget rendered from its saved state (pages that have widgets), and every solution collapsed.

Where Chromium is missing the tests are skipped, unless LMKIT_REQUIRE_BROWSER=1 (.ci/run sets
it), which turns the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from book_toc import read_notebook, repository_branch, repository_url, source_of, toc_docnames
from chromium import LOCAL_HOSTS, TIMEOUT_MS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(book_html):
    handler = functools.partial(_QuietHandler, directory=str(book_html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class PageVisit:
    """Loads one page and records what happened on the wire and in the console."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.outgoing: list[str] = []
        self.failed: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on(
            "requestfailed",
            lambda req: (
                self.failed.append(f"{req.url} ({req.failure})") if _is_local(req.url) else None
            ),
        )
        self.page.on(
            "response",
            lambda resp: (
                self.failed.append(f"{resp.url} (HTTP {resp.status})")
                if resp.status >= 400
                else None
            ),
        )
        self.page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
        self.page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)

    def _route(self, route):
        url = route.request.url
        if _is_local(url):
            route.continue_()
        else:
            self.outgoing.append(url)
            route.abort()

    def _console(self, message):
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def close(self):
        self.context.close()


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "about") or parsed.hostname in LOCAL_HOSTS


def _colab_url(docname: str) -> str:
    repo = urlparse(repository_url()).path.strip("/")
    return (
        f"https://colab.research.google.com/github/{repo}/blob/"
        f"{repository_branch()}/{docname}.ipynb"
    )


def _widget_models_in_view(state: dict, view_ids: list[str]) -> dict:
    """The widget models reachable from the displayed views (children, links, layouts...)."""
    seen, todo = {}, list(view_ids)
    while todo:
        model_id = todo.pop()
        if model_id in seen or model_id not in state:
            continue
        seen[model_id] = state[model_id]
        todo.extend(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[model_id]["state"])))
    return seen


DOCNAMES = toc_docnames()
# Widgets whose value is drawn, not written (a bar's length, a play button): rendered, not read.
VALUE_NOT_AS_TEXT = ("Progress", "Play")


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page(docname, server, browser):
    source = source_of(docname)
    assert source is not None, f"{docname} is in _toc.yml but has no source file"
    visit = PageVisit(browser, f"{server}/{docname}.html")
    page = visit.page
    try:
        # MathJax: every math element of the page typeset, with no TeX errors.
        n_math = page.locator(".math").count()
        if n_math:
            page.wait_for_function(
                "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                timeout=TIMEOUT_MS,
            )
            page.evaluate("() => MathJax.startup.promise")
            untypeset = page.evaluate(
                "() => [...document.querySelectorAll('.math')]"
                ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent)"
            )
            assert not untypeset, f"math not rendered by MathJax: {untypeset[:5]}"
            assert page.locator("mjx-merror").count() == 0, "MathJax reports a TeX error"

        # Figures: every image decoded (naturalWidth > 0).
        images = page.evaluate("""async () => {
            const imgs = [...document.querySelectorAll('img')];
            imgs.forEach(i => { i.loading = 'eager'; });
            await Promise.all(imgs.map(i => i.decode().catch(() => null)));
            return imgs.map(i => [i.getAttribute('src'), i.naturalWidth]);
        }""")
        broken = [src for src, width in images if not width]
        assert not broken, f"images that did not load: {broken}"

        if source.suffix == ".ipynb":
            # Colab launch button: this notebook on the main branch.
            colab = _colab_url(docname)
            assert page.locator(f'a[href="{colab}"]').count() >= 1, f"no link to {colab}"
            _check_widgets(page, source)
            _check_solutions_collapsed(page, source)

        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        assert not visit.outgoing, f"requests leaving the machine: {visit.outgoing}"
        assert not visit.failed, f"failed requests: {visit.failed}"
        assert not visit.errors, f"console errors: {visit.errors}"
    finally:
        visit.close()


def _check_solutions_collapsed(page, notebook: Path) -> None:
    """Solutions (code cells tagged 'hide-cell', prose in a {dropdown}) are on the page, closed:
    neither their code, nor its output, nor the prose is visible until the reader opens them."""
    nb = read_notebook(notebook)
    hidden = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code" and "hide-cell" in c["metadata"].get("tags", [])
    ]
    dropdowns = sum(
        "".join(c["source"]).count("{dropdown}")
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
    )
    cells = page.locator("div.cell.tag_hide-cell")
    assert cells.count() == len(hidden), (
        f"{cells.count()} hidden cells on the page, {len(hidden)} in the notebook"
    )
    for i in range(cells.count()):
        cell = cells.nth(i)
        assert cell.locator("details").first.get_attribute("open") is None, f"solution {i} is open"
        assert not cell.locator(".cell_input").first.is_visible(), f"solution {i}'s code is shown"
        outputs = cell.locator(".cell_output")
        assert outputs.count() == 0 or not outputs.first.is_visible(), (
            f"solution {i}'s output is shown"
        )
    boxes = page.locator("details.sd-dropdown")
    assert boxes.count() == dropdowns, (
        f"{boxes.count()} dropdowns on the page, {dropdowns} in the notebook"
    )
    for i in range(boxes.count()):
        body = boxes.nth(i).locator(".sd-summary-content")
        assert not body.first.is_visible(), f"dropdown {i}'s text is shown before it is opened"
    if hidden:  # the toggle works: opening the first solution shows its code
        cells.first.locator("summary").first.click()
        assert cells.first.locator(".cell_input").first.is_visible(), "the solution does not open"


def _check_widgets(page, notebook: Path) -> None:
    """Widgets in the notebook's outputs must be rendered from the saved state, with its values."""
    nb = read_notebook(notebook)
    state = (
        nb.get("metadata", {})
        .get("widgets", {})
        .get("application/vnd.jupyter.widget-state+json", {})
        .get("state", {})
    )
    view_ids = [
        out["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]
    n_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if not view_ids and not n_views:
        return
    assert state, f"{notebook.name} displays widgets but saved no widget state"
    shown = [v for v in view_ids if v in state]
    assert n_views >= len(shown), "widget views missing from the page"
    page.wait_for_function(
        f"() => document.querySelectorAll('.widget-subarea .jupyter-widgets').length >= {n_views}",
        timeout=TIMEOUT_MS,
    )
    texts = page.evaluate("""() => {
        const root = [...document.querySelectorAll('.widget-subarea')];
        const out = [];
        for (const area of root) {
            out.push(area.innerText);
            area.querySelectorAll('input, select, textarea').forEach(e => out.push(e.value));
        }
        return out;
    }""")
    numbers = [
        float(x) for t in texts for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", t)
    ]
    for model_id, model in _widget_models_in_view(state, shown).items():
        value = model["state"].get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if model["state"].get("readout") is False or any(
            kind in model["state"].get("_model_name", "") for kind in VALUE_NOT_AS_TEXT
        ):
            continue
        tolerance = 0 if isinstance(value, int) else 0.01 * max(1.0, abs(value))
        assert any(abs(n - value) <= tolerance for n in numbers), (
            f"{model['state'].get('_model_name')} {model_id}: saved value {value} not shown; "
            f"page shows {texts}"
        )
