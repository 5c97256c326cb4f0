"""The sample carnet.dash dashboard (carnet/demo_dash.py) in a real headless Chromium, as a viewer: it opens
with the URL's continent; choosing another continent changes the KPIs, the text and the charts (and the
address) and the world map draws (outlines from the Viewer); the table's tab pages on the server with "Next",
sorts by a click on a column's header and downloads its rows as CSV in that order.
Screenshots: /tmp/carnet-dash*.png."""

from __future__ import annotations

from pathlib import Path

import plotly
import pytest

from carnet.demo_dash import PAGE_SIZE
from tests.test_dash_stack import dash_app, expected  # noqa: F401 - dash_app is a fixture (the seeded app)
from tests.test_viewer_browser import browser, sign_in  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.slow

SCREENSHOT = Path("/tmp/carnet-dash.png")  # noqa: S108
CHARTS_SCREENSHOT = Path("/tmp/carnet-dash-charts.png")  # noqa: S108
ACME_VIEWER = "viewer@acme.example"
KPI_VALUE = ".carnet-kpi-value"
CHARTS = ".carnet-dash-chart .js-plotly-plot"
# The first chart shown in the "Charts" tab is the bar chart by continent (a redrawn Output's old node may
# linger hidden: only charts laid out on the page count).
BAR_TICKS = (
    "[...[...document.querySelectorAll('.carnet-dash-chart .js-plotly-plot')].filter(c => c.offsetParent)[0]"
    ".querySelectorAll('.xtick text')].map(e => e.textContent)"
)


def test_a_dash_dashboard_in_a_browser(browser, carnet_stack, dash_app):  # noqa: F811
    europe, asia = expected("Europe"), expected("Asia")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        page.goto(
            f"{carnet_stack.url}/services/carnet-viewer/apps/{dash_app}?continent=Europe", wait_until="commit"
        )
        page.wait_for_selector("body.carnet-ready", timeout=180_000)
        first_kpi = page.locator(KPI_VALUE).first
        first_kpi.wait_for(state="visible", timeout=60_000)
        assert first_kpi.inner_text() == europe["pop"]
        assert page.locator(KPI_VALUE).nth(1).inner_text() == europe["countries"]
        page.wait_for_function(f"() => JSON.stringify({BAR_TICKS}) == '[\"Europe\"]'", timeout=60_000)
        assert page.get_by_text(europe["life"]).is_visible()

        continent = page.locator(".carnet-dash-filters .widget-dropdown").filter(has_text="Continent")
        continent.locator("select").select_option("Asia")
        page.wait_for_function(
            f"() => document.querySelector('{KPI_VALUE}').textContent == '{asia['pop']}'", timeout=60_000
        )
        assert asia["change"] in page.locator(".carnet-kpi-delta").first.inner_text()
        page.wait_for_function(f"() => JSON.stringify({BAR_TICKS}) == '[\"Asia\"]'", timeout=60_000)
        assert page.get_by_text(asia["life"]).is_visible()
        page.wait_for_function("() => location.search.includes('continent=Asia')", timeout=30_000)
        # Two charts side by side (a Grid of 2 columns), each filling its half of the tab; the trend is
        # redrawn for Asia too.
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{CHARTS}')].filter(c => c.offsetParent"
            " && c.querySelector('.legendtext')?.textContent == 'Asia').length == 1",
            timeout=60_000,
        )
        # The map draws its countries with outlines the Viewer serves itself (no CDN: the page's policy
        # refuses it); its colour scale follows the filter too.
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{CHARTS}')].filter(c => c.offsetParent"
            f" && c.data?.[0]?.type == 'choropleth' && c.data[0].locations.length == {asia['count']}"
            " && c.querySelectorAll('.choroplethlayer path').length >= 20).length == 1",
            timeout=60_000,
        )
        assert not page.locator(".carnet-dash-chart .carnet-dash-error").count()
        # Both boxes read in the page at one moment, once both charts have a size (a chart being redrawn
        # for the new filter can have no box for an instant: Playwright's bounding_box() then gave None).
        boxes = page.wait_for_function(
            f"() => {{ const shown = [...document.querySelectorAll('{CHARTS}')].filter(c => c.offsetParent)"
            ".slice(0, 2).map(c => c.getBoundingClientRect());"
            " return shown.length == 2 && shown.every(r => r.width > 0)"
            " ? shown.map(r => ({x: r.x, y: r.y, width: r.width})) : null; }",
            timeout=30_000,
        )
        bar, line = boxes.json_value()
        assert bar["width"] > 450 and line["width"] > 450 and line["x"] > bar["x"] + bar["width"] - 5
        assert abs(bar["y"] - line["y"]) < 5
        page.screenshot(path=str(CHARTS_SCREENSHOT), full_page=True)

        # The filters cell is the Viewer's sticky bar, above the dashboard's content.
        bar_box = page.locator(".carnet-filters").bounding_box()
        assert bar_box["y"] + bar_box["height"] <= page.locator(KPI_VALUE).first.bounding_box()["y"]

        page.get_by_role("tab", name="Rows").click()
        table = page.locator(".carnet-dash-table table")
        table.wait_for(state="visible", timeout=30_000)
        assert table.locator("tbody tr td").first.inner_text() == asia["first_page"][0]
        page.locator(".carnet-dash-table").get_by_role("button", name="Next").click()
        page.get_by_text(f"Rows {PAGE_SIZE + 1}–{2 * PAGE_SIZE} of {asia['count']}").wait_for(
            state="visible", timeout=60_000
        )
        assert table.locator("tbody tr td").first.inner_text() == asia["second_page"][0]

        # A click on a column's header sorts by it from the first page, ascending then descending; the
        # header shows the order (marker, tooltip) and the table's header cell says it to screen readers.
        life = plotly.data.gapminder().query("continent == 'Asia' and year == 2007").sort_values("lifeExp")
        header = page.locator(".carnet-dash-table .carnet-dash-table-header")
        header.get_by_role("button", name="lifeExp").click()
        first_row = table.locator("tbody tr").first.locator("td")
        page.wait_for_function(
            "() => document.querySelector('.carnet-dash-table tbody td')?.textContent"
            f" == {life['country'].iloc[0]!r}",
            timeout=60_000,
        )
        assert first_row.nth(3).inner_text() == f"{life['lifeExp'].iloc[0]:.1f}"
        assert page.get_by_text(f"Rows 1–{PAGE_SIZE} of {asia['count']}").is_visible()
        sorted_header = header.locator(".carnet-dash-sorted")
        assert sorted_header.inner_text() == "lifeExp ↑"
        assert "ascending" in sorted_header.get_attribute("title")
        assert table.locator("th[aria-sort]").evaluate_all(
            "ths => ths.map(t => [t.textContent, t.ariaSort])"
        ) == [["lifeExp", "ascending"]]
        header.get_by_role("button", name="lifeExp").click()
        page.wait_for_function(
            "() => document.querySelector('.carnet-dash-table tbody td')?.textContent"
            f" == {life['country'].iloc[-1]!r}",
            timeout=60_000,
        )
        assert first_row.nth(3).inner_text() == f"{life['lifeExp'].iloc[-1]:.1f}"
        assert sorted_header.inner_text() == "lifeExp ↓"
        # Each header button stands above its column.
        buttons = header.locator("button").evaluate_all("bs => bs.map(b => b.getBoundingClientRect().x)")
        cells = first_row.evaluate_all("tds => tds.map(t => t.getBoundingClientRect().x)")
        assert len(buttons) == len(cells) == 5 and all(
            abs(b - c) < 3 for b, c in zip(buttons, cells, strict=True)
        )

        # CSV download of every matching row, built in the kernel and offered as a link.
        page.locator(".carnet-dash-table").get_by_role("button", name="CSV").click()
        link = page.get_by_role("link", name="Download gapminder.csv")
        link.wait_for(state="visible", timeout=60_000)
        with page.expect_download() as download:
            link.click()
        assert download.value.suggested_filename == "gapminder.csv"
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0] == "country,continent,pop,lifeExp,gdpPercap" and len(lines) == asia["count"] + 1
        assert lines[1].startswith(f"{life['country'].iloc[-1]},Asia,")  # in the order chosen on the page
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        page.close(run_before_unload=True)
        context.close()
