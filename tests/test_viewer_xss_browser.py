"""Notebook outputs and app metadata cannot run script on the platform's origin, checked in a real Chromium.

An app is published whose markdown, HTML, SVG, JavaScript, Markdown-output and widget outputs, title,
description and tags each carry a payload that would record its name in ``window.top.__xss`` and call a
loopback catcher. In the gallery and on the app page nothing may run and the catcher must stay silent; the
browser's own ``securitypolicyviolation`` events show the payloads did reach the page and were refused by the
Content-Security-Policy (extension/viewer_csp.py, carnet/service/page_policy.py), not lost on the way. The
same page opened with the policy switched off runs them: the corpus is live. The demo app still draws its
charts and answers its dropdown under the policy, with no violation but Voila's MathJax load from a CDN.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
import uuid

import nbformat
import pytest
import requests

from carnet.extension.viewer_csp import HEARTBEAT_SCRIPT, app_page_policy
from tests.api_support import api_url, auth
from tests.helpers import free_port
from tests.test_viewer_browser import CHART_TITLES, CHARTS, browser, sign_in  # noqa: F401

pytestmark = pytest.mark.slow

ACME_VIEWER, ANALYST = "viewer@acme.example", "analyst@acme.example"
# Recorded by the browser itself, before any page script (Playwright's init scripts are not subject to CSP).
RECORD_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', (e) => {
  (window.__csp = window.__csp || []).push(
    {directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample || ''});
});
"""
# The one load Voila's front end still asks of a CDN, refused by the policy (MathJax; no network here). Font
# Awesome, which its lab template linked from a CDN, is served by the Viewer itself.
CDN = re.compile(r"^https://cdnjs\.cloudflare\.com/")


class Catcher:
    """An HTTP server on loopback that records every request: a payload that ran would call it."""

    def __init__(self):
        self.port, self.hits = free_port(), []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                hits.append(self.path)
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def js(self, name: str) -> str:
        """JavaScript (single quotes only, fits a double-quoted attribute) that reports ``name``; the name
        comes first, so that the browser's 40-character sample of a refused script shows it."""
        return (
            f"/*{name}*/top.__xss=(top.__xss||[]).concat(['{name}']);"
            f"fetch('http://127.0.0.1:{self.port}/{name}').catch(()=>0);"
            f"new Image().src='http://127.0.0.1:{self.port}/img-{name}'"
        )


@pytest.fixture(scope="module")
def catcher():
    catcher = Catcher()
    yield catcher
    catcher.server.shutdown()


def corpus_notebook(c: Catcher, marker: str) -> dict:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    srcdoc = "&lt;script&gt;" + c.js("md-srcdoc") + "&lt;/script&gt;"
    html_output = (
        f"<script>{c.js('html-script')}</script>"
        f'<img src="x-missing" onerror="{c.js("html-onerror")}">'
        f'<iframe srcdoc="<script>{c.js("html-srcdoc")}</script>"></iframe>'
        f'<a id="html-js-link" href="javascript:{c.js("html-link")}">html link</a>'
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" onload="{c.js("svg-onload")}">'
        f"<script>{c.js('svg-script')}</script><rect width='10' height='10'/></svg>"
    )

    def broken_img(name: str) -> str:
        return f'<img src=x-missing onerror="{c.js(name)}">'

    cells = [
        md(
            "# Corpus\n\n"
            f'<img src="x-missing" onerror="{c.js("md-onerror")}">\n\n'
            f"<script>{c.js('md-script')}</script>\n\n"
            f'<svg onload="{c.js("md-svg")}"></svg>\n\n'
            f'<details open ontoggle="{c.js("md-details")}"><summary>more</summary>x</details>\n\n'
            f'<a id="md-js-link" href="javascript:{c.js("md-link")}">md link</a>\n\n'
            f'<iframe srcdoc="{srcdoc}"></iframe>\n'
        ),
        code(
            "from IPython.display import HTML, Javascript, Markdown, display\n"
            "import ipywidgets as widgets\n"
            f"display(HTML({html_output!r}))\n"
            f"display({{'image/svg+xml': {svg!r}}}, raw=True)\n"
            f"display(Javascript({c.js('javascript-output')!r}))\n"
            f"display(Markdown({broken_img('markdown-output')!r}))\n"
            f"display(widgets.HTML(value={broken_img('widget-html')!r}))"
        ),
        code(f"print('corpus-' + '{marker}')"),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def corpus_app(carnet_stack, hub_token, catcher):
    marker = uuid.uuid4().hex[:8]
    title = f'<img src=x onerror="{catcher.js("title")}"> Corpus {marker}'
    answer = requests.post(
        api_url(carnet_stack, "apps"),
        json={
            "slug": f"xss-{marker}",
            "title": title,
            "description": f"<script>{catcher.js('description')}</script> described",
            "tags": ["<svg/onload=top.__xss=['tag']>"],
            "notebook": corpus_notebook(catcher, marker),
        },
        headers=auth(hub_token(ANALYST)),
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    app = answer.json()
    yield {**app, "marker": marker, "title": title}
    requests.delete(api_url(carnet_stack, f"apps/{app['id']}"), headers=auth(hub_token(ANALYST)), timeout=30)


def script_violations(page) -> list[dict]:
    found = []
    for frame in page.frames:
        with contextlib.suppress(Exception):  # a frame that went away
            found += frame.evaluate("window.__csp || []")
    return [v for v in found if v["directive"].startswith("script-src")]


def ran(page) -> list[str]:
    return page.evaluate("window.__xss || []")


def open_corpus(page, stack, app, click_links: bool = True) -> None:
    page.goto(f"{stack.url}/services/carnet-viewer/apps/{app['id']}")
    page.wait_for_selector("body.carnet-ready", timeout=120_000)
    page.get_by_text(f"corpus-{app['marker']}").wait_for(state="visible", timeout=30_000)
    page.locator(".widget-html").first.wait_for(state="attached", timeout=30_000)
    for link in ("#md-js-link", "#html-js-link") if click_links else ():
        page.click(link, no_wait_after=True)
    time.sleep(2)  # onerror/onload handlers and the catcher's calls would be done by now


def test_no_payload_runs_on_the_app_page_or_in_the_gallery(browser, carnet_stack, corpus_app, catcher):  # noqa: F811
    context = browser.new_context()
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        # The gallery: title, description and tag are shown as text.
        page.goto(f"{carnet_stack.url}/services/carnet/viewer/?q={corpus_app['marker']}")
        card = page.locator(f'.card[data-app-id="{corpus_app["id"]}"]')
        assert corpus_app["title"] in card.inner_text()
        assert "<script>" in card.inner_text() and "<svg/onload=" in card.inner_text()
        time.sleep(1)
        assert ran(page) == []

        open_corpus(page, carnet_stack, corpus_app)
        assert page.locator(".carnet-app-title").inner_text() == corpus_app["title"]
        assert ran(page) == []
        assert [f.evaluate("typeof window.__xss") for f in page.frames] == ["undefined"] * len(page.frames)
        refused = script_violations(page)
        # The payloads reached the page and the policy refused them (inline scripts, handlers, javascript:).
        samples = " ".join(v["sample"] for v in refused)
        for name in ("md-onerror", "md-script", "md-link", "html-onerror", "html-link", "widget-html"):
            assert name in samples, (name, refused)
        assert len(refused) >= 8, refused
    finally:
        context.close()
    assert catcher.hits == []


def test_the_corpus_runs_without_the_policy(browser, carnet_stack, corpus_app, catcher):  # noqa: F811
    """The control: with the policy switched off in the browser, the same page runs payloads (so the test
    above would see a hole in the policy)."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        # (Without the policy, the payloads' own effects may reorder the page: no clicks here.)
        open_corpus(page, carnet_stack, corpus_app, click_links=False)
        assert {"md-onerror", "md-script", "html-onerror", "widget-html"} <= set(ran(page)), ran(page)
    finally:
        context.close()
    assert catcher.hits, "the payloads that ran did not reach the catcher"
    catcher.hits.clear()


def test_the_demo_app_works_under_the_policy(browser, carnet_stack):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        response = page.goto(f"{carnet_stack.url}/services/carnet-viewer/apps/{carnet_stack.app_id}")
        assert "script-src 'self' 'report-sample' 'sha256-" in response.headers["content-security-policy"]
        # Playwright's string predicates use eval, which the page refuses: functions it is.
        expected = json.dumps(
            ["Life expectancy in Europe", "Wealth and health in Europe"], separators=(",", ":")
        )
        page.wait_for_function(
            f"() => JSON.stringify({CHART_TITLES}) == {json.dumps(expected)}", timeout=60_000
        )
        page.locator(".widget-dropdown select").first.select_option("Asia")
        page.wait_for_function(f"() => {CHART_TITLES}.includes('Wealth and health in Asia')", timeout=30_000)
        assert page.locator(CHARTS).count() >= 2
        violations = [v for f in page.frames for v in f.evaluate("window.__csp || []")]
        # Nothing the app needs is refused: no eval (plotly, widgets), no inline script of the template.
        assert [v for v in violations if not CDN.match(v["blocked"])] == []
    finally:
        context.close()


def test_the_policy_admits_voilas_heartbeat_and_nothing_like_it(browser):  # noqa: F811
    """Voila writes ``<script>window.voila_heartbeat()</script>`` while a cell runs long: its hash is in the
    policy, so that exact script runs and any other inline script does not."""
    pages = {
        "/": (
            "text/html",
            '<script src="/boot.js"></script>'
            f"<script>{HEARTBEAT_SCRIPT}</script>\n"
            f"<script>{HEARTBEAT_SCRIPT};</script>"
            "<script>window.voila_heartbeat(); window.voila_heartbeat()</script>",
        ),
        "/boot.js": (
            "text/javascript",
            "window.beats = 0; window.voila_heartbeat = () => { window.beats += 1; };",
        ),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            kind, body = pages[self.path]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Security-Policy", app_page_policy())
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        assert page.evaluate("window.beats") == 1
    finally:
        context.close()
        server.shutdown()
