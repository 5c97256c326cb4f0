"""A viewer in a real headless Chromium: sign in at the Hub, open the demo app from the gallery, use a widget.

This is the check that widgets work under the Viewer's kernel-message allow-list (comm messages pass,
execute_request does not): the scatter inside the ``Output`` widget is redrawn by the kernel when the
dropdown changes. It also checks that the page shows no code and that closing the page ends its kernel.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
import requests

from tests.api_support import publish_notebook, tiny_notebook
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Where the brief wants it, for a person to look at after the run.
SCREENSHOT = Path("/tmp/carnet-viewer.png")  # noqa: S108
ACME_VIEWER = "viewer@acme.example"
CHARTS = ".js-plotly-plot"
CHART_TITLES = f"[...document.querySelectorAll('{CHARTS} .gtitle')].map(e => e.textContent)"
# What a person sees: charts laid out on the page (a replaced Output's old node may linger hidden).
VISIBLE_CHART_TITLES = (
    f"[...document.querySelectorAll('{CHARTS}')].filter(c => c.offsetParent !== null)"
    ".map(c => c.querySelector('.gtitle')?.textContent)"
)
# Fragments of the demo notebook's code (carnet.demo.demo_notebook): none may be on screen.
CODE_FRAGMENTS = (
    "import carnet",
    "carnet.sources[",
    "px.scatter",
    "widgets.Dropdown",
    "groupby(",
    "def render",
)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(page, stack, email: str):
    """Through the Hub's login form, as a person would; a viewer lands on Carnet's gallery."""
    page.goto(f"{stack.url}/hub/login")
    page.fill("#username_input", email)
    page.fill("#password_input", stack.passwords[email])
    page.click("#login_submit")
    page.wait_for_url(f"{stack.url}/services/carnet/viewer/", timeout=30_000)


def kernel_id_of(page) -> str:
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def kernel_status(stack, token: str, kernel_id: str) -> int:
    return requests.get(
        f"{stack.url}/services/carnet-viewer/api/kernels/{kernel_id}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    ).status_code


def test_viewer_uses_the_demo_app_in_a_browser(browser, carnet_stack, hub_token):
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    closed = False
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        assert page.locator("header").first.inner_text().startswith("Carnet")
        # Other tests may have published apps of their own: the demo's card is the one to open.
        assert "World development" in page.locator(".card a").all_inner_texts()
        card = page.locator(f'.card[data-app-id="{carnet_stack.app_id}"] a')
        assert card.inner_text() == "World development"
        card.click()
        page.wait_for_url(
            re.compile(rf".*/services/carnet-viewer/apps/{carnet_stack.app_id}$"), wait_until="commit"
        )
        page.wait_for_function(f"() => document.querySelectorAll('{CHARTS}').length >= 2", timeout=60_000)
        # Both charts drawn: the static line chart and, inside the Output widget, the scatter.
        page.wait_for_function(f"() => {CHART_TITLES}.length == 2", timeout=20_000)
        rendered = time.monotonic()
        assert page.evaluate(CHART_TITLES) == ["Life expectancy in Europe", "Wealth and health in Europe"]

        # Carnet's frame: the header, styled by the template's stylesheet.
        header = page.locator(".carnet-app-header")
        assert header.is_visible()
        assert header.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(36, 59, 83)"

        # The KPI table and the five richest countries of the report's continent.
        tables = page.locator("#rendered_cells table")
        assert tables.count() == 2
        assert tables.nth(0).is_visible() and tables.nth(1).is_visible()
        assert "Oceania" in tables.nth(0).inner_text()
        assert "Norway" in tables.nth(1).inner_text()

        # No code: code cells have no input area at all, and no code is anywhere on screen.
        code_inputs = page.locator(".jp-CodeCell .jp-InputArea")
        assert [code_inputs.nth(i).is_visible() for i in range(code_inputs.count())] == []
        text = page.locator("body").inner_text()
        assert [fragment for fragment in CODE_FRAGMENTS if fragment in text] == []

        # The widget: its change travels as comm messages, the kernel redraws the chart in the Output.
        dropdown = page.locator(".widget-dropdown select")
        assert dropdown.input_value() == "Europe"
        assert "Asia" in dropdown.locator("option").all_inner_texts()
        dropdown.select_option("Asia")
        changed_from = time.monotonic()
        page.wait_for_function(
            f"() => {CHART_TITLES}.includes('Wealth and health in Asia')", timeout=20_000, polling=100
        )
        changed = time.monotonic()
        # clear_output(wait=True) keeps the old scatter until the new one is drawn: then it is replaced.
        # The static chart is plain output of the render: it stays on the report's continent. (Waited for:
        # plotly may draw the new scatter a moment before the old one's node is gone.)
        expected = ["Life expectancy in Europe", "Wealth and health in Asia"]
        expected_json = json.dumps(json.dumps(expected, separators=(",", ":")))  # as JSON.stringify writes it
        same_titles = f"JSON.stringify({VISIBLE_CHART_TITLES}) == {expected_json}"
        try:
            page.wait_for_function("() => " + same_titles, timeout=10_000, polling=100)
        except Exception:
            raise AssertionError(
                f"charts: {page.evaluate(CHART_TITLES)}, visible: {page.evaluate(VISIBLE_CHART_TITLES)}"
            ) from None

        # The kernel behind the page is the viewer's and still running.
        token = hub_token(ACME_VIEWER)
        kernel_id = kernel_id_of(page)
        assert kernel_status(carnet_stack, token, kernel_id) == 200

        height = page.evaluate("document.querySelector('#rendered_cells').scrollHeight")
        page.set_viewport_size({"width": 1280, "height": min(max(height + 80, 900), 4000)})
        page.wait_for_timeout(500)  # plotly re-lays out responsive charts after a resize
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 20_000

        # Leaving the page shuts its kernel down (Voila's beforeunload -> our owned shutdown handler).
        page.close(run_before_unload=True)
        closed = True
        wait_until(
            lambda: kernel_status(carnet_stack, token, kernel_id) == 403,
            timeout=20,
            what="the page's kernel to be shut down",
        )
        print(
            f"\nbrowser: sign-in + gallery + render {rendered - started:.1f}s, dropdown -> redrawn chart "
            f"{changed - changed_from:.2f}s, total {time.monotonic() - started:.1f}s"
        )
    finally:
        if not closed:
            page.close(run_before_unload=True)
        context.close()


def test_markdown_headings_of_the_app_are_visible(browser, carnet_stack):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        page.goto(
            f"{carnet_stack.url}/services/carnet-viewer/apps/{carnet_stack.app_id}", wait_until="commit"
        )
        page.wait_for_function(f"() => document.querySelectorAll('{CHARTS}').length >= 2", timeout=60_000)
        for heading in ("World development", "Latest year, by continent", "Explore"):
            assert page.get_by_role("heading", name=heading).is_visible(), heading
        # The header names the app by its title, not by its snapshot file.
        assert page.locator(".carnet-app-title").inner_text().strip() == "World development"
    finally:
        page.close(run_before_unload=True)
        context.close()


# An app with nothing for Voila's front end to draw: text, a table, a markdown heading.
STATIC_APP = (
    "import pandas as pd\n"
    "print('Orders this week: 1,203')\n"
    "pd.DataFrame({'sku': ['Sku07A', 'Sku07B'], 'amount': [701, 702]})"
)


def test_a_page_with_nothing_for_the_front_end_comes_without_it_and_ends_its_kernel(
    browser, carnet_stack, hub_token, created
):
    """The template leaves Voila's front end out of a page none of whose outputs needs it (a "static page",
    voila_templates/carnet): the browser loads no Voila bundle, no widget manager and no plotly.js, the cells
    are shown and the page marked rendered, and its kernel, of no further use, is shut down by the page at
    once (not when the page is left, nor by the idle culler)."""
    studio = {"Authorization": f"token {hub_token('studio@acme.example')}"}
    notebook = tiny_notebook()
    notebook.cells = [notebook.cells[0], nbformat.v4.new_code_cell(STATIC_APP)]
    app_id = publish_notebook(carnet_stack, studio, notebook, created, "Static page", slug="static-page")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        requested.clear()
        page.goto(f"{carnet_stack.url}/services/carnet-viewer/apps/{app_id}", wait_until="commit")
        page.wait_for_selector("body[data-carnet-render]", timeout=60_000)
        assert page.evaluate("document.body.getAttribute('data-carnet-render')") == "done"
        assert page.locator("body.carnet-ready").count() == 1  # the skeleton gone, the cells shown
        assert page.get_by_role("heading", name="Tiny").is_visible()
        assert page.get_by_text("Orders this week: 1,203").is_visible()
        table = page.locator("#rendered_cells table.dataframe")
        assert table.is_visible() and "Sku07B" in table.inner_text()
        scripts = [url for url in requested if url.split("?")[0].endswith(".js")]
        assert scripts and all("/voila/templates/carnet/static/" in url for url in scripts), scripts
        assert not [url for url in requested if "labextensions" in url or "/voila/static/" in url]

        # The kernel that ran the cells is ended by the page itself, while the page is still open.
        token = hub_token(ACME_VIEWER)
        kernel_id = kernel_id_of(page)
        wait_until(
            lambda: kernel_status(carnet_stack, token, kernel_id) == 403,
            timeout=20,
            what="the static page's kernel to be shut down",
        )
        assert page.get_by_text("Orders this week: 1,203").is_visible()
    finally:
        page.close(run_before_unload=True)
        context.close()
