"""The Viewer's Voila template (voila_templates/carnet), rendered in-process by Voila's own exporter.

The installed template is rendered exactly as the Viewer renders it (VoilaExporter, template "carnet", the
lab template's cell loop), with the kernel replaced by cells whose outputs are given: what is checked is the
page's structure (skeleton, tabs, filters bar, error message, branding), not the execution. The stack's
Viewer and a real browser render it in tests/test_branding.py and tests/test_viewer_tabs_browser.py; the
last test here renders a failing app through the stack's Viewer.
"""

from __future__ import annotations

import asyncio
import json
import re

import nbformat
import pytest
import requests
from bs4 import BeautifulSoup
from voila.exporter import VoilaExporter
from voila.paths import collect_template_paths

from carnet.extension.html_fragments import EXPORTER_FILTERS, balanced
from tests.api_support import auth, publish_notebook

SECRET_PATH = "/srv/carnet/orgs/1/secret.csv"  # noqa: S108 - only text inside a fake traceback
BRANDING = {
    "org_name": "Acme",
    "color": "#aa3300",
    "custom_css": ".jp-RenderedHTMLCommon > h1 { letter-spacing: 1px }",
    "logo": "data:image/png;base64,iVBORw0KGgo=",
}


def notebook(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def code(source: str, *tags: str):
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def markdown(source: str, *tags: str):
    return nbformat.v4.new_markdown_cell(source, metadata={"tags": list(tags)} if tags else {})


def output_of(cell) -> list:
    """What the fake kernel answers: "fail" raises (with a path in its traceback), others display text."""
    if cell.source == "fail":
        return [
            nbformat.v4.new_output(
                "error",
                ename="FileNotFoundError",
                evalue=SECRET_PATH,
                traceback=[f"Traceback (most recent call last): open({SECRET_PATH!r})"],
            )
        ]
    return [nbformat.v4.new_output("display_data", data={"text/plain": f"output of {cell.source}"})]


def render(nb, branding: dict | None = None, outputs=output_of) -> BeautifulSoup:
    """The page Voila streams for ``nb`` with Carnet's template (all parts joined); ``outputs(cell)`` gives
    each code cell's outputs."""

    async def kernel_start(_nb):
        return "kernel-1"

    async def cell_generator(nb, _kernel_id):
        for cell in nb.cells:
            cell = cell.copy()
            if cell.cell_type == "code":
                cell.outputs = outputs(cell)
            yield cell

    async def generate() -> str:
        exporter = VoilaExporter(
            template_paths=collect_template_paths(["voila", "nbconvert"], "carnet"),
            template_name="carnet",
            base_url="/services/carnet-viewer/",
            filters=EXPORTER_FILTERS,  # as extension/viewer_config.py sets them
        )
        exporter.exclude_input = True  # the Viewer's strip_sources
        parts = []
        async for part, _ in exporter.generate_from_notebook_node(
            nb,
            resources={"base_url": "/services/carnet-viewer/", "theme": "light", "metadata": {"name": "t"}},
            extra_context={
                "frontend": "voila",
                "main_js": "voila.js",
                "kernel_start": kernel_start,
                "cell_generator": cell_generator,
            },
            page_config={"carnetBranding": branding} if branding else {},
        ):
            parts.append(part)
        return "".join(parts)

    return BeautifulSoup(asyncio.run(generate()), "html.parser")


def parts_of(page) -> list[tuple[str, str]]:
    """(where, displayed text) of each cell in page order: "pre", "filters" or the tab's index."""
    return [(c["data-carnet-part"], c.get_text(" ", strip=True)) for c in page.select(".carnet-cell")]


def test_headings_start_tabs_and_the_filters_cell_goes_to_the_bar():
    page = render(
        notebook(
            code("setup"),
            code("filters widgets", "filters"),
            markdown("# Sales\nBy month.\n```\n# a comment in a fence, not a tab\n```"),
            code("sales chart"),
            markdown("## A sub-heading stays in its tab"),
            markdown("# Costs"),
            code("costs chart"),
        )
    )
    tabs = page.select('[role="tablist"] [role="tab"]')
    assert [t.get_text(strip=True) for t in tabs] == ["Sales", "Costs"]
    assert all(t.name == "button" and t["type"] == "button" for t in tabs)
    assert [t["aria-selected"] for t in tabs] == ["true", "false"]
    assert [t["tabindex"] for t in tabs] == ["0", "-1"]

    panels = page.select('[role="tabpanel"]')
    assert [p["data-carnet-tab"] for p in panels] == ["0", "1"]
    assert [tab["aria-controls"] for tab in tabs] == [p["id"] for p in panels]
    assert [p["aria-labelledby"] for p in panels] == ["carnet-tab-0", "carnet-tab-1"]
    # The first tab is shown; the other is rendered (its outputs are in the page) but hidden.
    assert "carnet-tab-hidden" not in panels[0]["class"] and "carnet-tab-hidden" in panels[1]["class"]
    assert panels[1]["aria-hidden"] == "true"
    assert "output of costs chart" in panels[1].get_text()  # text outputs are drawn on the server

    assert parts_of(page)[:2] == [("pre", "output of setup"), ("filters", "output of filters widgets")]
    assert [p for p, _ in parts_of(page)[2:]] == ["0", "0", "0", "1", "1"]
    assert "A sub-heading stays in its tab" in panels[0].get_text()
    assert "a comment in a fence" in panels[0].get_text()
    # The filters cell (its widget output) sits in the sticky bar, outside every tab.
    (bar,) = page.select(".carnet-filters")
    assert bar.find_parent(attrs={"role": "tabpanel"}) is None
    assert "output of filters widgets" in str(bar)
    # The tab bar comes before the tabs' content, all inside the page container.
    container = page.select_one("#rendered_cells > .carnet-page")
    assert container.select_one('[role="tablist"]').find_parent(class_="carnet-page") is container


def test_tab_tags_gather_cells_wherever_they_are():
    page = render(
        notebook(
            code("intro"),
            code("map", "tab:Map"),
            code("table", "tab:Table"),
            code("legend", "tab:Map"),
            markdown("# Ignored as a tab name", "tab:Table"),
        )
    )
    tabs = page.select('[role="tab"]')
    assert [t.get_text(strip=True) for t in tabs] == ["Map", "Table"]
    segments = page.select('[role="tabpanel"]')
    # Cells of one tab that are not contiguous are two segments of that tab; its button controls both.
    assert [s["data-carnet-tab"] for s in segments] == ["0", "1", "0", "1"]
    assert tabs[0]["aria-controls"].split() == [segments[0]["id"], segments[2]["id"]]
    assert "output of legend" in str(segments[2])
    assert [p for p, _ in parts_of(page)] == ["pre", "0", "1", "0", "1"]


@pytest.mark.parametrize(
    "cells",
    [
        [markdown("Just text"), code("chart"), markdown("## Only sub-headings")],
        [markdown("# One title"), code("chart")],  # one tab is no choice
    ],
    ids=["no-heading-no-tag", "single-heading"],
)
def test_no_tab_bar_without_two_tabs(cells):
    page = render(notebook(*cells))
    assert page.select('[role="tablist"]') == [] and page.select('[role="tabpanel"]') == []
    assert "output of chart" in str(page.select_one("#rendered_cells"))


def test_skeleton_and_progress_are_there_from_the_first_bytes():
    page = render(notebook(markdown("# A"), code("one"), markdown("# B"), code("two")))
    skeleton = page.select_one("#loading.carnet-skeleton")
    assert skeleton is not None and skeleton["role"] == "status"
    assert skeleton.select_one("#loading_text").get_text(strip=True) == "Loading your dashboard…"
    assert len(skeleton.select(".carnet-skeleton-block")) >= 3
    # Shown before the cells (hidden until Voila shows them), and the script that updates and removes it
    # is a file of the template, loaded after Voila's helpers (which it wraps; carnet-boot.js, a file too:
    # the page's Content-Security-Policy refuses inline scripts).
    assert page.select_one("#rendered_cells")["style"].replace(" ", "") == "display:none"
    scripts = [s.get("src", "") for s in page.find_all("script")]
    carnet_js = scripts.index("/services/carnet-viewer/voila/templates/carnet/static/carnet.js")
    helpers = scripts.index("/services/carnet-viewer/voila/templates/carnet/static/carnet-boot.js")
    assert helpers < carnet_js
    assert skeleton.sourceline < page.select_one("#rendered_cells").sourceline


def test_failing_cell_shows_a_generic_message_without_traceback_or_path():
    page = render(notebook(markdown("# Tab"), code("fail"), code("after")))
    text = str(page)
    assert SECRET_PATH not in text and "Traceback" not in text and "FileNotFoundError" not in text
    (message,) = page.select(".carnet-cell-error")
    assert message["role"] == "alert"
    assert message.get_text(strip=True).startswith("This part of the dashboard could not be displayed")


def test_code_is_not_in_the_page():
    page = render(notebook(code("secret_variable = compute_the_secret()")))
    cells = page.select_one("#rendered_cells")
    assert cells.select(".jp-InputArea, .jp-Cell-inputWrapper") == []
    for output in cells.select(".jp-OutputArea"):
        output.decompose()  # the fake kernel's output repeats the cell's source
    assert "compute_the_secret" not in cells.get_text()


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def shown(mime: str, value, text: str = "the text form") -> list:
    return [nbformat.v4.new_output("display_data", data={mime: value, "text/plain": text})]


def voila_front_end(page) -> bool:
    return any(s["src"].endswith("/voila.js") for s in page.select("script[src]"))


def test_a_page_of_text_tables_and_images_is_static_drawn_on_the_server():
    """No output needs Voila's front end: the page comes without it (no voila.js, so no widget manager and no
    plotly.js), every output drawn here, and marked static for carnet-boot.js (which then shows the cells)."""
    outputs = {
        "a": [nbformat.v4.new_output("stream", name="stdout", text="Total ordered 1,203\n")],
        "b": shown("text/html", "<table class='dataframe'><tr><td>Sku07A</td></tr></table>"),
        "c": shown("image/png", PNG),
        "d": [nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1)],
        "e": shown("text/markdown", "**Bold** words"),
    }
    page = render(
        notebook(*(code(k) for k in outputs), markdown("# Notes")), outputs=lambda c: outputs[c.source]
    )
    assert not voila_front_end(page)
    assert page.select("#carnet-static-page")
    assert page.select('script[type="application/vnd.voila.cell-output+json"]') == []
    text = page.select_one("#rendered_cells").get_text(" ", strip=True)
    assert "Total ordered 1,203" in text and "42" in text and "Notes" in text
    assert page.select_one("#rendered_cells table.dataframe td").get_text() == "Sku07A"
    assert page.select_one("#rendered_cells img")["src"] == f"data:image/png;base64,{PNG}"
    assert page.select_one("#rendered_cells strong").get_text() == "Bold"
    assert "the text form" not in text  # the richest form is drawn, once


def test_a_display_without_data_leaves_the_page_static():
    """Nothing for the front end to draw: the page stays static and sends no output for a front end that is
    not there (such an element would keep the page from ever being marked rendered)."""
    outputs = {
        "empty": [nbformat.v4.new_output("display_data", data={})],
        "text": [nbformat.v4.new_output("display_data", data={"text/plain": "shown"})],
    }
    page = render(notebook(code("empty"), code("text")), outputs=lambda c: outputs[c.source])
    assert not voila_front_end(page) and page.select("#carnet-static-page")
    assert page.select('script[type="application/vnd.voila.cell-output+json"]') == []
    assert "shown" in page.select_one("#rendered_cells").get_text()


@pytest.mark.parametrize(
    "mime,value",
    [
        (
            "application/vnd.jupyter.widget-view+json",
            {"model_id": "m1", "version_major": 2, "version_minor": 0},
        ),
        ("application/vnd.plotly.v1+json", {"data": [], "layout": {}}),
        ("application/javascript", "console.log(1)"),
        ("text/latex", "$x^2$"),
    ],
    ids=["widget", "plotly", "javascript", "latex"],
)
def test_an_output_the_server_cannot_draw_brings_voilas_front_end(mime, value):
    outputs = {"text": shown("text/html", "<p id='drawn-here'>drawn here</p>"), "rich": shown(mime, value)}
    page = render(notebook(code("text"), code("rich")), outputs=lambda c: outputs[c.source])
    assert voila_front_end(page)
    assert page.select("#carnet-static-page") == []
    (sent,) = page.select('script[type="application/vnd.voila.cell-output+json"]')
    assert mime in json.loads(sent.get_text())["data"]  # for the front end to draw
    assert page.select_one("#rendered_cells #drawn-here").get_text() == "drawn here"  # the other one, here


def test_branding_from_the_viewer_is_in_the_head_and_not_in_the_front_end_config():
    page = render(notebook(code("x")), BRANDING)
    assert page.select_one("#carnet-brand-color").get_text() == ":root { --carnet-primary: #aa3300; }"
    assert page.select_one("#carnet-custom-css").get_text() == BRANDING["custom_css"]
    logo = page.select_one("header.carnet-app-header img.carnet-logo")
    assert logo["src"] == BRANDING["logo"] and logo["alt"] == "Acme"
    config = json.loads(page.select_one("#jupyter-config-data").get_text())
    assert "carnetBranding" not in config and config["kernelId"] == "kernel-1"


def test_no_branding_means_carnets_own_look():
    page = render(notebook(code("x")))
    assert page.select("#carnet-brand-color, #carnet-custom-css, img.carnet-logo") == []
    assert page.select_one("header.carnet-app-header .carnet-app-title").get_text(strip=True) == "t"


def test_failing_cell_in_the_stacks_viewer_shows_the_generic_message(carnet_stack, hub_token, created):
    """The same through the real Viewer (kernel, Voila's error stripping): nothing of the error reaches the
    page, the generic message does."""
    studio = auth(hub_token("studio@acme.example"))
    failing = notebook(
        markdown("# Broken"), code("open('/nonexistent/carnet-secret-dir/data.csv')"), code("print('after')")
    )
    app_id = publish_notebook(carnet_stack, studio, failing, created, "Failing app", slug="failing")
    viewer = auth(hub_token("viewer@acme.example"))
    page = requests.get(
        f"{carnet_stack.url}/services/carnet-viewer/apps/{app_id}", headers=viewer, timeout=120
    )
    assert page.status_code == 200, page.text[:500]
    assert "carnet-secret-dir" not in page.text and "FileNotFoundError" not in page.text
    assert "Traceback" not in page.text and "open(" not in page.text
    assert page.text.count('class="carnet-cell-error"') == 1
    kernel = json.loads(BeautifulSoup(page.text, "html.parser").select_one("#jupyter-config-data").text)
    requests.post(
        f"{carnet_stack.url}/services/carnet-viewer/voila/api/shutdown/{kernel['kernelId']}",
        headers=viewer,
        timeout=60,
    )


def test_the_page_loads_no_stylesheet_or_script_from_another_site():
    page = render(notebook(code("x")))
    remote = [
        tag.get("href") or tag.get("src")
        for tag in page.select("link[href], script[src]")
        if "//" in (tag.get("href") or tag.get("src"))
    ]
    assert remote == []
    icons = [link["href"] for link in page.select("link[rel=stylesheet]") if "fontawesome" in link["href"]]
    assert icons == [
        "/services/carnet-viewer/carnet/fontawesome/css/all.min.css",
        "/services/carnet-viewer/carnet/fontawesome/css/v4-shims.min.css",
    ]


def test_the_viewer_serves_its_icon_font_and_nothing_else_from_that_folder(carnet_stack, hub_token):
    viewer = auth(hub_token("viewer@acme.example"))
    base = f"{carnet_stack.url}/services/carnet-viewer/carnet/fontawesome/"
    css = requests.get(base + "css/all.min.css", headers=viewer, timeout=30)
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
    fonts = sorted({url for url in re.findall(r"url\(([^)]+\.woff2)\)", css.text)})
    assert fonts, "the stylesheet names its web fonts"
    font = requests.get(base + "css/" + fonts[0], headers=viewer, timeout=30)
    assert font.status_code == 200 and font.content[:4] == b"wOF2"
    for path in ("package.json", "README.md", "../../../jupyterhub_config.py", "css/%2e%2e/package.json"):
        assert requests.get(base + path, headers=viewer, timeout=30).status_code == 404, path


@pytest.mark.parametrize(
    "fragment,expected",
    [
        ("<div>open", "<div>open</div>"),
        ("</div></div>escaped", "escaped"),
        ("<b>bold<i>both</b>after", "<b>bold<i>both</i></b>after"),
        ("<table><tr><td>1</td></tr></table>", "<table><tr><td>1</td></tr></table>"),
        ("a < b &amp; c &#62;", "a &lt; b &amp; c &#62;"),
        ("text<!-- never closed", "text&lt;!-- never closed"),
        ("<script>if (a<b) {}</script>", "<script>if (a<b) {}</script>"),
        ("<style>td {} </div>", "<style></style>"),  # never closed: its text is dropped
        ("<plaintext>the rest of the page", "the rest of the page"),
        ("<br><img src='x.png'><hr/>", "<br><img src='x.png'><hr/>"),
    ],
    ids=[
        "unclosed",
        "stray-end",
        "misnested",
        "table",
        "text",
        "comment",
        "script",
        "style",
        "plaintext",
        "void",
    ],
)
def test_an_html_output_is_balanced_into_a_fragment_of_its_own(fragment, expected):
    assert balanced(fragment) == expected


def test_an_html_output_cannot_close_or_swallow_the_pages_own_elements():
    """Drawn on the server, an output's stray ``</div>`` would close the tab panel around it and its unclosed
    ``<div>`` would take the next cells in: balanced, each stays inside its own output."""
    outputs = {
        "breaks out": shown("text/html", "</div></div></div><div class='mine'>unclosed"),
        "next": [nbformat.v4.new_output("display_data", data={"text/plain": "the next cell"})],
    }
    page = render(
        notebook(markdown("# One"), code("breaks out"), code("next"), markdown("# Two"), code("next")),
        outputs=lambda c: outputs[c.source],
    )
    panels = page.select('[role="tabpanel"]')
    assert [p["data-carnet-tab"] for p in panels] == ["0", "1"]
    mine = panels[0].select_one(".mine")
    assert mine.get_text() == "unclosed" and mine.find_parent(attrs={"data-mime-type": "text/html"})
    assert "the next cell" in panels[0].get_text() and "the next cell" in panels[1].get_text()
    assert [p for p, _ in parts_of(page)] == ["0", "0", "0", "1", "1"]
