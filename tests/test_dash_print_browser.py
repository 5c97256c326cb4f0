"""Printing the sample carnet.dash dashboard (the demo's seeded "World dashboard") from the Viewer page in a
real headless Chromium, the way PDFs of pages are made (Playwright ``page.pdf``, STACK-NOTES' recipe): a
``dash.Tabs`` prints every panel on a page of its own, each starting with its title, without the tab bar
(voila_templates/carnet/static/carnet.css ``@media print``). The PDF's text is read with pdftotext."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from carnet.demo_dash import PAGE_SIZE
from tests.test_dash_stack import dash_app, expected  # noqa: F401 - dash_app is a fixture (the seeded app)
from tests.test_viewer_browser import browser, sign_in  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.slow

ACME_VIEWER = "viewer@acme.example"
TABS = ("Charts", "Rows")
HEADER = ["country", "continent", "pop", "lifeExp", "gdpPercap"]  # the demo table's columns
CHART_TITLES = ("Population by continent", "Population over time", "Life expectancy by country")


def pdf_pages(pdf: bytes, tmp_path) -> list[list[str]]:
    """Each page's non-empty lines."""
    path = tmp_path / "dashboard.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [[line.strip() for line in page.splitlines() if line.strip()] for page in text.split("\f")]


def test_printing_a_dashboard_gives_each_tab_its_own_pages(browser, carnet_stack, dash_app, tmp_path):  # noqa: F811
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (apt-get install -y poppler-utils)")
    europe = expected("Europe")
    # The PDF recipe's viewport: about an A4 landscape page, plotly does not re-layout for print.
    context = browser.new_context(viewport={"width": 1122, "height": 793})
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        page.goto(
            f"{carnet_stack.url}/services/carnet-viewer/apps/{dash_app}?continent=Europe", wait_until="commit"
        )
        page.wait_for_selector("body.carnet-ready", timeout=180_000)
        page.locator(".carnet-kpi-value").first.wait_for(state="visible", timeout=60_000)
        page.wait_for_function(
            "() => document.querySelectorAll('.carnet-dash-chart .js-plotly-plot').length >= 3"
            " && document.querySelectorAll('.carnet-dash-chart .choroplethlayer path').length > 0"
            " && document.querySelector('.carnet-dash-table table') !== null",
            timeout=60_000,
        )
        # On screen: one panel at a time under the tab bar, the titles only in the bar.
        assert page.locator(".carnet-dash-tab-title:visible").count() == 0
        assert page.locator(".carnet-dash-table table").is_hidden()
        page.emulate_media(media="print")
        assert page.locator(".carnet-dash-tabs > .lm-TabBar").is_hidden()
        assert page.locator(".carnet-dash-tab-title:visible").all_inner_texts() == list(TABS)
        # The table's header buttons print as a header row: no button background or frame, a rule below.
        looks = page.locator(".carnet-dash-table-header button").evaluate_all(
            "bs => bs.map(b => { const s = getComputedStyle(b);"
            " return [b.textContent, s.backgroundColor, s.borderTopStyle, s.borderBottomStyle] })"
        )
        assert [text for text, *_ in looks] == [*HEADER[:2], "pop ↓", *HEADER[3:]]
        assert all(look[1:] == ["rgba(0, 0, 0, 0)", "none", "solid"] for look in looks), looks
        pdf = page.pdf(format="A4", landscape=True, print_background=True)
    finally:
        page.close(run_before_unload=True)
        context.close()

    pages = pdf_pages(pdf, tmp_path)
    starts = {title: [i for i, lines in enumerate(pages) if lines[:1] == [title]] for title in TABS}
    assert all(len(found) == 1 for found in starts.values()), (starts, [p[:3] for p in pages])
    charts, rows = starts["Charts"][0], starts["Rows"][0]
    assert 0 < charts < rows, [p[:3] for p in pages]
    before = " ".join(" ".join(p) for p in pages[:charts])
    charts_text = " ".join(" ".join(p) for p in pages[charts:rows])
    rows_text = " ".join(" ".join(p) for p in pages[rows:])
    # Above the tabs: the KPIs with the URL's continent.
    assert europe["pop"] in before and europe["countries"] in before
    # Each tab's content on its own pages: every chart of "Charts", the table's first page in "Rows".
    assert all(title in charts_text for title in CHART_TITLES), charts_text[:2000]
    assert all(country in rows_text for country in europe["first_page"]), rows_text[:2000]
    assert f"Rows 1–{PAGE_SIZE} of {europe['count']}" in rows_text
    # The header row, once, above the first row (not the hidden <thead> kept for screen readers).
    rows_lines = [line.split() for page in pages[rows:] for line in page]
    header_at = [i for i, words in enumerate(rows_lines) if words[:2] == HEADER[:2]]
    assert len(header_at) == 1 and rows_lines[header_at[0]] == [*HEADER[:3], "↓", *HEADER[3:]], rows_lines
    assert rows_lines[header_at[0] + 1][0] == europe["first_page"][0]
    assert "Population by continent" not in rows_text and europe["first_page"][-1] not in charts_text
