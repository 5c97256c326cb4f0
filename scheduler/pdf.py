"""Executed notebook -> HTML (nbconvert, code hidden) -> PDF (headless Chromium through Playwright): the
PDF of a job with papermill parameters (scheduler/executor.py ``PdfRenderer.notebook``); other jobs print
the app as the Viewer shows it (viewer_pdf.py).

nbconvert's own webpdf exporter cannot be pointed at the system's Chromium and drops plotly charts;
printing the HTML ourselves keeps charts (job kernels emit self-contained plotly HTML).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from carnet.errors import CarnetError

PLOTLY_MIME = "application/vnd.plotly.v1+json"


class PdfExportError(CarnetError):
    status = 500


def notebook_to_html(notebook_path: Path) -> tuple[str, int]:
    """The report HTML and the number of plotly charts it should show once rendered."""
    notebook = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(
        template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    html, _ = exporter.from_notebook_node(notebook)
    charts = sum(
        1
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if PLOTLY_MIME in output.get("data", {}) and "text/html" in output.get("data", {})
    )
    return html, charts


def _local_only(route) -> None:
    if route.request.url.startswith(("file:", "data:", "blob:")):
        route.continue_()
    else:
        route.abort()


def html_to_pdf(
    html_path: Path, pdf_path: Path, browser, expected_charts: int = 0, timeout_s: float = 60
) -> None:
    """Prints a local HTML file in a fresh context of ``browser`` (the scheduler's one Chromium,
    viewer_pdf.ViewerPrinter: Playwright's sync API allows one instance per thread)."""
    from playwright.sync_api import Error as PlaywrightError

    context = None
    try:
        # ~A4 landscape at 96 dpi: plotly does not re-layout for print, so size the page first.
        context = browser.new_context(viewport={"width": 1122, "height": 793})
        page = context.new_page()
        # The report is self-contained: any network fetch (CDN scripts nbconvert's template names)
        # is refused at once rather than left to hang or to leak what is being printed.
        page.route("**/*", _local_only)
        page.goto(html_path.resolve().as_uri(), wait_until="load", timeout=timeout_s * 1000)
        if expected_charts:
            page.wait_for_function(
                "n => document.querySelectorAll('.js-plotly-plot').length >= n",
                arg=expected_charts,
                timeout=timeout_s * 1000,
            )
        page.pdf(path=str(pdf_path), format="A4", landscape=True, print_background=True)
    except PlaywrightError as exc:
        raise PdfExportError(f"Printing the report to PDF failed: {exc.message.splitlines()[0]}") from None
    finally:
        if context is not None:
            context.close()


def notebook_to_pdf(notebook_path: Path, pdf_path: Path, browser) -> None:
    html, charts = notebook_to_html(notebook_path)
    html_path = pdf_path.with_suffix(".html")
    html_path.write_text(html, encoding="utf-8")
    html_to_pdf(html_path, pdf_path, browser, expected_charts=charts)
