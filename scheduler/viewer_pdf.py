"""PDFs of apps as the Viewer shows them: the Carnet Voila template, live widgets and carnet.dash blocks,
plotly charts drawn, a carnet.dash ``Tabs`` one page per tab (``@media print`` in the template's carnet.css).

The scheduler mints a print token (carnet.print_pages) and one persistent headless Chromium opens the
Viewer's ``print/<token>`` page in a fresh browser context per PDF, waits for the page's own "render
finished" mark (``<body data-carnet-render>``, set by the template's carnet.js) and for plotly to finish
drawing, emulates print media and prints. The page may reach only the Viewer's origin: every other request
(other hosts, other ports of this machine, the cloud metadata address, ``file:``) is aborted, so an app's
outputs cannot make the printing browser fetch anything else.
"""

from __future__ import annotations

import html
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from traitlets import Enum, Float, Unicode, default
from traitlets.config import Configurable

from carnet.errors import CarnetError

log = logging.getLogger("carnet.scheduler")

# Paper sizes Chromium knows, in inches (short side, long side).
PAPER_INCHES = {
    "A3": (11.69, 16.54),
    "A4": (8.27, 11.69),
    "A5": (5.83, 8.27),
    "Letter": (8.5, 11.0),
    "Legal": (8.5, 14.0),
    "Tabloid": (11.0, 17.0),
}
CSS_PX_PER_INCH = 96
SIDE_MARGIN_IN = 0.4
BAND_MARGIN_IN = 0.6  # top and bottom: room for the header and the footer
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]
# Every plotly chart on the page has drawn (an SVG, a layout, no transition running; a map its shapes).
PLOTLY_DRAWN = """() => Array.from(document.querySelectorAll('.jp-RenderedPlotly, .js-plotly-plot')).every(
  (gd) => gd.classList.contains('js-plotly-plot') && gd._fullLayout && !gd._transitioning
    && gd.querySelector('.main-svg') !== null
    && (gd.querySelector('.geo') === null || gd.querySelector('.geo path') !== null))"""

SHUT_KERNEL_DOWN = """async () => {
  const data = document.getElementById('jupyter-config-data');
  if (!data) return;
  const config = JSON.parse(data.textContent);
  const xsrf = document.cookie.match(/\\b_xsrf=([^;]*)\\b/);
  const form = new FormData();
  form.append('_xsrf', xsrf ? xsrf[1] : '');
  const stop = new AbortController();
  setTimeout(() => stop.abort(), 10000);
  await fetch(config.baseUrl + 'voila/api/shutdown/' + config.kernelId,
              {method: 'POST', body: form, signal: stop.signal}).catch(() => null);
  return config.kernelId;
}"""


class PdfRenderError(CarnetError):
    """The app's page could not be printed (a cell failed, the page or the browser failed)."""

    status = 500


class PdfTimeBudgetExceeded(PdfRenderError):
    """The page did not finish rendering within the PDF's time budget."""


class ViewerPdfSettings(Configurable):
    """How the scheduler prints apps (its ``--ViewerPdfSettings.<name>`` options, or the environment)."""

    page_format = Enum(
        list(PAPER_INCHES),
        help="Paper size of app PDFs. Environment: CARNET_PDF_PAGE_FORMAT. Default: A4.",
    ).tag(config=True)

    @default("page_format")
    def _default_page_format(self):
        return os.environ.get("CARNET_PDF_PAGE_FORMAT", "A4")

    orientation = Enum(
        ["landscape", "portrait"],
        help="Orientation of app PDFs. Environment: CARNET_PDF_ORIENTATION. Default: landscape.",
    ).tag(config=True)

    @default("orientation")
    def _default_orientation(self):
        return os.environ.get("CARNET_PDF_ORIENTATION", "landscape")

    time_budget = Float(
        help="""Seconds one app PDF may take, from opening the page to the written file (the app's cells run
        in that time). Beyond it the run fails with a time-budget error. Environment: CARNET_PDF_TIME_BUDGET.
        Default: 300.""",
    ).tag(config=True)

    @default("time_budget")
    def _default_time_budget(self):
        return float(os.environ.get("CARNET_PDF_TIME_BUDGET", "300"))

    viewer_url = Unicode(
        help="""Base URL of the Viewer service as this machine's browser reaches it; the printing browser may
        reach this origin only. Environment: CARNET_PDF_VIEWER_URL. Default:
        <CARNET_PUBLIC_URL>services/carnet-viewer/.""",
    ).tag(config=True)

    @default("viewer_url")
    def _default_viewer_url(self):
        public = os.environ.get("CARNET_PUBLIC_URL", "http://127.0.0.1:8000/")
        return os.environ.get("CARNET_PDF_VIEWER_URL") or public.rstrip("/") + "/services/carnet-viewer/"

    def paper(self) -> dict:
        """page.pdf's size arguments and the viewport of the printable area (plotly does not re-layout for
        print: charts are laid out for the width they will be printed at)."""
        short, long = PAPER_INCHES[self.page_format]
        width, height = (long, short) if self.orientation == "landscape" else (short, long)
        viewport = {
            "width": round((width - 2 * SIDE_MARGIN_IN) * CSS_PX_PER_INCH),
            "height": round((height - 2 * BAND_MARGIN_IN) * CSS_PX_PER_INCH),
        }
        return {
            "format": self.page_format,
            "landscape": self.orientation == "landscape",
            "viewport": viewport,
        }


@dataclass(frozen=True)
class Letterhead:
    """What the header and footer of every page show."""

    org_name: str = ""
    color: str = ""  # #rrggbb (checked by carnet.branding), or empty
    title: str = ""

    def header(self) -> str:
        color = self.color if re.fullmatch(r"#[0-9a-fA-F]{6}", self.color or "") else "#444444"
        return (
            f'<div style="width:100%;font-size:9px;padding:0 {SIDE_MARGIN_IN}in;display:flex;'
            f'justify-content:space-between;border-bottom:2px solid {color};color:#333">'
            f'<span style="font-weight:bold;color:{color}">{html.escape(self.org_name)}</span>'
            f"<span>{html.escape(self.title)}</span></div>"
        )

    def footer(self) -> str:
        return (
            f'<div style="width:100%;font-size:8px;padding:0 {SIDE_MARGIN_IN}in;display:flex;'
            'justify-content:space-between;color:#666">'
            f'<span>{html.escape(self.org_name)}</span><span class="date"></span>'
            '<span><span class="pageNumber"></span> / <span class="totalPages"></span></span></div>'
        )


def same_origin(url: str, origin: tuple[str, str]) -> bool:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return (scheme, parts.netloc.lower()) == origin


class ViewerPrinter:
    """One headless Chromium for the scheduler process (launched on first use, launched again if it died),
    a fresh browser context per PDF. Use from one thread (Playwright's sync API)."""

    def __init__(self, chromium: str, settings: ViewerPdfSettings | None = None):
        self.chromium = chromium
        self.settings = settings or ViewerPdfSettings()
        self.launches = 0
        self.last_kernel_id = None  # the Viewer kernel of the last page printed (shut down after it)
        self._marker = f"--carnet-printer={uuid.uuid4().hex}"  # finds the browser's process (browser_pid)
        self._playwright = None
        self._browser = None

    # -- the browser ----------------------------------------------------------------------------------------
    def browser(self):
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if not self.chromium or not Path(self.chromium).exists():
            raise PdfRenderError(f"No Chromium executable at {self.chromium!r}: set CARNET_CHROMIUM")
        from playwright.sync_api import sync_playwright

        self.close()
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=self.chromium, args=[*CHROMIUM_ARGS, self._marker]
        )
        self.launches += 1
        log.info("PDF printer: Chromium launched (launch %s)", self.launches)
        return self._browser

    def new_context(self, **options):
        """A fresh context of the browser; if the browser died since the last PDF (killed, crashed), a new
        one is launched first."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            return self.browser().new_context(**options)
        except PlaywrightError as exc:
            log.warning(
                "PDF printer: the browser is gone (%s); launching it again", exc.message.splitlines()[0]
            )
            self.close()
            return self.browser().new_context(**options)

    def browser_pid(self) -> int | None:
        """The pid of this printer's Chromium (its main process), if it runs."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if self._marker.encode() in args and not any(a.startswith(b"--type=") for a in args):
                return int(entry.name)
        return None

    def close(self) -> None:
        for closing in (self._browser, self._playwright):
            if closing is None:
                continue
            try:
                closing.close() if closing is self._browser else closing.stop()
            except Exception as exc:  # noqa: BLE001 - a dead browser or driver has nothing left to close
                log.debug("PDF printer: closing: %s", exc)
        self._browser = self._playwright = None

    # -- printing -------------------------------------------------------------------------------------------
    def print_token(self, token: str, pdf_path: Path, letterhead: Letterhead = Letterhead()) -> float:
        """Prints the Viewer's print page of ``token`` (carnet.print_pages) to ``pdf_path``; returns its
        duration in seconds."""
        url = self.settings.viewer_url.rstrip("/") + "/print/" + token
        return self.print_url(url, pdf_path, letterhead)

    def print_url(self, url: str, pdf_path: Path, letterhead: Letterhead = Letterhead()) -> float:
        """Opens ``url`` (its origin is the only one the page may reach), waits for the rendered page and
        prints it. Raises PdfTimeBudgetExceeded past the time budget, PdfRenderError otherwise."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        started = time.monotonic()
        deadline = started + self.settings.time_budget

        def left_ms() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PlaywrightTimeout("time budget spent")
            return remaining * 1000

        paper = self.settings.paper()
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc.lower())
        context = None
        try:
            context = self.new_context(
                viewport=paper["viewport"], service_workers="block", accept_downloads=False
            )
            context.route("**/*", lambda route: self._only(route, origin))
            context.route_web_socket(re.compile(".*"), lambda ws: self._only_ws(ws, origin))
            page = context.new_page()
            page.goto(url, wait_until="commit", timeout=left_ms())
            page.wait_for_selector("body[data-carnet-render]", state="attached", timeout=left_ms())
            if page.get_attribute("body", "data-carnet-render") != "done":
                raise PdfRenderError("A part of the app failed while rendering; the PDF was not made")
            page.wait_for_function(PLOTLY_DRAWN, timeout=left_ms())
            page.emulate_media(media="print")
            # Charts of tabs that were hidden on screen are shown in print: they lay themselves out again.
            page.evaluate("() => window.dispatchEvent(new Event('resize'))")
            page.wait_for_function(PLOTLY_DRAWN, timeout=left_ms())
            page.pdf(
                path=str(pdf_path),
                format=paper["format"],
                landscape=paper["landscape"],
                print_background=True,
                display_header_footer=True,
                header_template=letterhead.header(),
                footer_template=letterhead.footer(),
                margin={
                    "top": f"{BAND_MARGIN_IN}in",
                    "bottom": f"{BAND_MARGIN_IN}in",
                    "left": f"{SIDE_MARGIN_IN}in",
                    "right": f"{SIDE_MARGIN_IN}in",
                },
            )
            left_ms()
        except PlaywrightTimeout:
            raise PdfTimeBudgetExceeded(
                f"The app's page did not finish rendering within {self.settings.time_budget:g} s"
            ) from None
        except PlaywrightError as exc:
            # The URL holds the print token, a credential: never in the run's error (shown by the API).
            detail = exc.message.splitlines()[0].replace(url, "the app's print page")
            raise PdfRenderError(f"Printing the app failed: {detail}") from None
        finally:
            if context is not None:
                self._close_context(context)
        return time.monotonic() - started

    @staticmethod
    def _only(route, origin) -> None:
        if same_origin(route.request.url, origin):
            route.continue_()
        else:
            log.info("PDF printer: refused %s", route.request.url[:200])
            route.abort("blockedbyclient")

    @staticmethod
    def _only_ws(ws, origin) -> None:
        if same_origin(ws.url, origin):
            ws.connect_to_server()
        else:
            log.info("PDF printer: refused websocket %s", ws.url[:200])
            ws.close()

    def _close_context(self, context) -> None:
        try:
            for page in context.pages:
                # As Voila's beforeunload does (a beacon, which closing the context at once could drop), but
                # waited for: the page's kernel ends now, not when the Viewer culls it.
                self.last_kernel_id = page.evaluate(SHUT_KERNEL_DOWN)
                page.close()
        except Exception as exc:  # noqa: BLE001 - the page or browser may be gone; culling ends the kernel
            log.warning("PDF printer: shutting the page's kernel down failed: %s", exc)
        try:
            context.close()
        except Exception as exc:  # noqa: BLE001 - the browser may be gone; the next PDF relaunches it
            log.warning("PDF printer: closing the browser context failed: %s", exc)
