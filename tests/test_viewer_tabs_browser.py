"""An app with two tabs and a filters bar, in a real headless Chromium, as a viewer: the skeleton is shown
and then removed, the first tab is shown and the second hidden, clicking (or the arrow keys) switches tabs,
and the filter widget still drives an output of the second tab after switching. Saves the screenshot of the
docs (docs/screenshots/viewer-tabs.png)."""

from __future__ import annotations

import uuid
from pathlib import Path

import nbformat
import pytest
import requests

from tests.api_support import api_url, auth
from tests.test_viewer_browser import browser, sign_in  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "viewer-tabs.png"
ACME_VIEWER = "viewer@acme.example"
STUDIO = "studio@acme.example"
# Each tab's panels (a tab's cells split by the filters cell make two segments of that tab).
FIRST, SECOND = '[role="tabpanel"][data-carnet-tab="0"]', '[role="tabpanel"][data-carnet-tab="1"]'


def chart_title(panels: str) -> str:
    return f"document.querySelector('{panels} .js-plotly-plot .gtitle')?.textContent"


def tabbed_notebook() -> dict:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(
        cells=[
            md("# Overview\nHow the regions compare."),
            code(
                "import ipywidgets as widgets\n"
                "import plotly.express as px\n"
                "region = widgets.Dropdown(options=['North', 'South'], value='North', description='Region')\n"
                "region"
            ),
            code("px.bar(x=['North', 'South'], y=[3, 5], title='Sales by region', height=300)"),
            md("# Details\nThe numbers behind the overview."),
            code("px.line(x=[1, 2, 3], y=[2, 4, 3], title='Monthly detail', height=300)"),
            code(
                "def detail(region):\n"
                "    print(f'Details for {region}')\n"
                "widgets.interactive_output(detail, {'region': region})"
            ),
        ]
    )
    notebook.cells[1].metadata["tags"] = ["filters"]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def tabbed_app(carnet_stack, hub_token):
    studio = auth(hub_token(STUDIO))
    response = requests.post(
        api_url(carnet_stack, "apps"),
        json={
            "slug": f"tabs-{uuid.uuid4().hex[:8]}",
            "title": "Regional sales",
            "notebook": tabbed_notebook(),
        },
        headers=studio,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    app_id = response.json()["id"]
    yield app_id
    requests.delete(api_url(carnet_stack, f"apps/{app_id}"), headers=studio, timeout=30)


def visible(page, selector: str) -> bool:
    return page.locator(selector).first.is_visible()


def test_tabs_filters_and_skeleton_in_a_browser(browser, carnet_stack, tabbed_app):  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        page.goto(f"{carnet_stack.url}/services/carnet-viewer/apps/{tabbed_app}", wait_until="commit")
        # The skeleton comes with the first bytes, says what is happening, and goes once outputs are shown.
        page.wait_for_selector("#loading.carnet-skeleton", state="visible", timeout=60_000)
        assert page.locator("#loading_text").inner_text().startswith("Loading your dashboard")
        page.wait_for_selector("#loading", state="detached", timeout=120_000)
        page.wait_for_selector("body.carnet-ready", timeout=30_000)

        tabs = page.get_by_role("tab")
        assert tabs.all_inner_texts() == ["Overview", "Details"]
        overview, details = tabs.nth(0), tabs.nth(1)
        assert overview.get_attribute("aria-selected") == "true"
        assert details.get_attribute("aria-selected") == "false"

        # First tab: its chart is drawn and shown; the second tab's content is rendered but hidden.
        page.wait_for_function(f"() => {chart_title(FIRST)} == 'Sales by region'", timeout=60_000)
        assert page.locator(f"{FIRST} .js-plotly-plot").is_visible()
        assert page.get_by_text("How the regions compare.").is_visible()
        assert not page.get_by_text("The numbers behind the overview.").is_visible()
        assert page.locator(f"{SECOND} .js-plotly-plot").count() == 1
        assert not page.locator(f"{SECOND} .js-plotly-plot").is_visible()

        # The filters bar sits above the tabs, outside them.
        dropdown = page.locator(".carnet-filters .widget-dropdown select")
        # Widgets are drawn once the kernel's websocket is up, which may be after the charts.
        dropdown.wait_for(state="visible", timeout=30_000)
        bar_box, tabs_box = (
            page.locator(".carnet-filters").bounding_box(),
            page.locator(".carnet-tabs").bounding_box(),
        )
        assert bar_box["y"] + bar_box["height"] <= tabs_box["y"] + 1

        details.click()
        assert details.get_attribute("aria-selected") == "true"
        assert overview.get_attribute("aria-selected") == "false"
        page.wait_for_function(f"() => {chart_title(SECOND)} == 'Monthly detail'", timeout=30_000)
        assert page.locator(f"{SECOND} .js-plotly-plot").is_visible()
        assert page.get_by_text("The numbers behind the overview.").is_visible()
        assert not page.locator(f"{FIRST} .js-plotly-plot").is_visible()
        assert not page.get_by_text("How the regions compare.").is_visible()

        # Widgets still work after switching: the filter drives an output of the second tab.
        assert page.get_by_text("Details for North").is_visible()
        dropdown.select_option("South")
        page.get_by_text("Details for South").wait_for(state="visible", timeout=30_000)

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000

        # Keyboard: the selected tab has the focus stop; arrows move the selection.
        details.focus()
        page.keyboard.press("ArrowLeft")
        assert overview.get_attribute("aria-selected") == "true"
        assert page.evaluate("document.activeElement.id") == overview.get_attribute("id")
        assert page.locator(f"{FIRST} .js-plotly-plot").is_visible()
        assert not page.locator(f"{SECOND} .js-plotly-plot").is_visible()
        page.keyboard.press("End")
        assert details.get_attribute("aria-selected") == "true"
    finally:
        page.close(run_before_unload=True)
        context.close()
