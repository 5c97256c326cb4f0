"""PDFs of apps as the Viewer shows them: the Carnet Voila template, live widgets and carnet.dash blocks,
plotly charts drawn, a carnet.dash ``Tabs`` one page per tab (``@media print`` in the template's carnet.css).

The scheduler mints a print token (carnet.print_pages) and one persistent headless Chromium opens the
Viewer's ``print/<token>`` page in a fresh browser context per PDF, waits for the page's own "render
finished" mark (``<body data-carnet-render>``, set by the template's carnet.js) and for plotly to finish
drawing, emulates print media and prints. The page may reach only the Viewer's origin: every other request
(other hosts, other ports of this machine, the cloud metadata address, ``file:``) is aborted, so an app's
outputs cannot make the printing browser fetch anything else.

A burst job prints many pages of one app (``print_many``): several at once, each still in its own browser
context with its own print token, so its own Viewer kernel holding only that recipient's attributes (a kernel
or a page is never reused from one recipient to the next). The Viewer's kernels start and run the app in
parallel while the browser loads the other pages.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from traitlets import Enum, Float, Integer, Unicode, default, validate
from traitlets.config import Configurable

from carnet.errors import CarnetError
from carnet.scheduler.attachments import written_then_renamed

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

# The page's Viewer kernel and the _xsrf value its shutdown call needs (voila/api/shutdown/<id>, as Voila's
# beforeunload does): the printer asks for the shutdown itself, after the PDF, off the PDF's time. A static
# page (no output needs Voila's front end: voila_templates/carnet) has asked for it on load.
KERNEL_OF_PAGE = """() => {
  const data = document.getElementById('jupyter-config-data');
  if (!data) return null;
  const config = JSON.parse(data.textContent);
  const xsrf = document.cookie.match(/\\b_xsrf=([^;]*)\\b/);
  return {baseUrl: config.baseUrl, kernelId: config.kernelId, xsrf: xsrf ? xsrf[1] : '',
          userAgent: navigator.userAgent, static: document.getElementById('carnet-static-page') !== null};
}"""
# Seconds a kernel shutdown request may take (it runs in a thread of its own, after the PDF is written).
SHUTDOWN_TIMEOUT = 10.0


def shut_kernel_down(url: str, xsrf: str, cookies: dict[str, str], user_agent: str) -> None:
    """POSTs the Viewer's kernel shutdown for a printed page, with the page's own cookies (its visitor
    identity: only the page's owner may end its kernel) and User-Agent (JupyterHub ties an anonymous
    visitor's _xsrf to it). Failures are only logged: culling ends the kernel later."""
    import requests

    try:
        answer = requests.post(
            url,
            data={"_xsrf": xsrf},
            cookies=cookies,
            headers={"User-Agent": user_agent},
            timeout=SHUTDOWN_TIMEOUT,
        )
        if answer.status_code >= 400:
            log.warning("PDF printer: the page's kernel shutdown answered %s", answer.status_code)
    except requests.RequestException as exc:
        log.warning("PDF printer: shutting the page's kernel down failed: %s", type(exc).__name__)


class PdfRenderError(CarnetError):
    """The app's page could not be printed (a cell failed, the page or the browser failed)."""

    status = 500


class PdfTimeBudgetExceeded(PdfRenderError):
    """The page did not finish rendering within the PDF's time budget."""


class PdfViewerBusy(PdfRenderError):
    """The Viewer answered its "busy" page (503: at its kernel cap for the app or the organization): worth
    trying again later, unlike a page that failed."""

    status = 503


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

    concurrency = Integer(
        help="""Pages a burst job prints at once, each in its own browser context with its own Viewer kernel
        (ViewerPrinter.print_many). While one page's kernel starts and runs the app, the browser loads and
        draws the others. Measured on 2 cores (burst of a KPI + Table app): 1 at a time 3.8 s per PDF, 2 at
        a time 2.8 s, 3 at a time 3.1 s, 4 at a time 3.2 s: the browser's drawing (about half of all CPU)
        then competes with the kernels. More cores: more at once. Each page holds a Viewer kernel
        (~150 MB). Environment: CARNET_PDF_CONCURRENCY. Default: 2.""",
    ).tag(config=True)

    @default("concurrency")
    def _default_concurrency(self):
        return int(os.environ.get("CARNET_PDF_CONCURRENCY", "2"))

    @validate("concurrency")
    def _validate_concurrency(self, proposal):
        if not 1 <= proposal["value"] <= 16:
            raise ValueError("ViewerPdfSettings.concurrency must be 1-16")
        return proposal["value"]

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


@dataclass
class PrintOutcome:
    """How one page of ``ViewerPrinter.print_many`` ended: its seconds, or the error that stopped it."""

    path: Path
    seconds: float = 0.0
    error: CarnetError | None = None


@dataclass(eq=False)  # compared by identity (ViewerPrinter._ahead)
class _Printing:
    """A page being printed: its browser context, and the deadline of its time budget."""

    url: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    context: object = None
    page: object = None
    error: PdfRenderError | None = None  # opening it failed (print_many reports it in the page's turn)

    def left_ms(self) -> float:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise PlaywrightTimeout("time budget spent")
        return remaining * 1000


def same_origin(url: str, origin: tuple[str, str]) -> bool:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return (scheme, parts.netloc.lower()) == origin


class ViewerPrinter:
    """One headless Chromium for the scheduler process (launched on first use, launched again if it died),
    a fresh browser context per PDF (several at once in ``print_many``). Use from one thread (Playwright's
    sync API: while it waits for one page, the others load and their requests are filtered)."""

    def __init__(self, chromium: str, settings: ViewerPdfSettings | None = None):
        self.chromium = chromium
        self.settings = settings or ViewerPdfSettings()
        self.launches = 0
        self.last_kernel_id = None  # the Viewer kernel of the last page printed (shut down after it)
        self._shutdowns: list[threading.Thread] = []  # kernel shutdowns still under way
        self._marker = f"--carnet-printer={uuid.uuid4().hex}"  # finds the browser's process (browser_pid)
        self._playwright = None
        self._browser = None
        self._ahead: list[_Printing] = []  # pages opened ahead of their print (open_page), not printed yet

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
        for printing in list(self._ahead):
            self.discard(printing)
        for thread in self._shutdowns:  # the last pages' kernels end before the printer does
            thread.join(SHUTDOWN_TIMEOUT)
        self._shutdowns = []
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
        return self.print_url(self.url_of(token), pdf_path, letterhead)

    def url_of(self, token: str) -> str:
        return self.settings.viewer_url.rstrip("/") + "/print/" + token

    def print_url(self, url: str, pdf_path: Path, letterhead: Letterhead = Letterhead()) -> float:
        """Opens ``url`` (its origin is the only one the page may reach), waits for the rendered page and
        prints it. Raises PdfTimeBudgetExceeded past the time budget, PdfRenderError otherwise."""
        printing = self._open(url)
        try:
            return self._finish(printing, pdf_path, letterhead)
        finally:
            self._end(printing)

    # -- pages opened ahead of their print (the scheduler's report pages, scheduler/kinds/report.py) -------
    def open_page(self, url: str) -> _Printing:
        """Opens ``url`` now (returns once its response has begun) so that it loads, runs and draws before
        it is printed with ``finish_page``; its time budget counts from now. While the caller does anything
        else than call the browser, the page's requests wait: ``pump`` lets it go on. An opening that failed
        is kept as such (``finish_page`` raises its error)."""
        self._drop_overdue()
        printing = self._open(url, defer_errors=True)
        self._ahead.append(printing)
        return printing

    def _drop_overdue(self) -> None:
        # A page whose run never printed it (the run failed before its print) is closed once its time
        # budget is spent, rather than held until the printer closes.
        for printing in [p for p in self._ahead if p.deadline <= time.monotonic()]:
            log.info("PDF printer: a page opened ahead was never printed; closed")
            self.discard(printing)

    @property
    def pages_ahead(self) -> int:
        return len(self._ahead)

    def finish_page(
        self, printing: _Printing, pdf_path: Path, letterhead: Letterhead = Letterhead()
    ) -> float:
        """Prints a page of ``open_page`` (waiting for its render if it is not done) to ``pdf_path`` and
        closes it; the seconds this call took."""
        started = time.monotonic()
        try:
            self._finish(printing, pdf_path, letterhead)
        finally:
            self.discard(printing)
        return time.monotonic() - started

    def discard(self, printing: _Printing) -> None:
        """Closes a page of ``open_page`` unprinted (its Viewer kernel is shut down as after a print)."""
        if printing in self._ahead:
            self._ahead.remove(printing)
        self._end(printing)

    def pump(self, seconds: float) -> None:
        """Waits ``seconds`` inside the browser's driver, so that the pages opened ahead go on loading
        (Playwright's sync API answers their requests, filtered by ``_only``, only while it is called); a
        plain sleep when there are none."""
        from playwright.sync_api import Error as PlaywrightError

        self._drop_overdue()
        live = [p for p in self._ahead if p.page is not None and p.error is None]
        if not live:
            time.sleep(seconds)
            return
        try:
            live[0].page.wait_for_timeout(seconds * 1000)
        except PlaywrightError as exc:  # the page or browser is gone: finish_page reports it
            log.warning("PDF printer: a page opened ahead is gone: %s", exc.message.splitlines()[0])
            live[0].error = PdfRenderError("The page opened ahead was closed by the browser")
            time.sleep(seconds)

    def print_many(
        self, jobs: Iterable[tuple[str, Path]], letterhead: Letterhead = Letterhead(), concurrency: int = 0
    ) -> Iterator[PrintOutcome]:
        """Prints the print page of each ``(token, final path)`` of ``jobs``, ``concurrency`` pages at a time
        (default: the ``concurrency`` setting), each in its own browser context, so its own Viewer kernel,
        each with its own time budget, each written then renamed to its final path. ``jobs`` is read only
        when a page can start, so a caller may sign each token just before its page opens. Yields one
        outcome per job, in the order of ``jobs``, as each ends: a failed page does not stop the others.

        Why several at a time: a page spends most of its time in its Viewer kernel (start, imports, the
        app's cells) and in the browser loading the page's scripts; pages printed one after another leave
        one of the two waiting. Several pages keep both busy."""
        window = max(1, concurrency or self.settings.concurrency)
        pending = iter(jobs)
        # (the page or the error that stopped it opening, the final path, its partial file, its writer)
        opened: deque[tuple[_Printing | CarnetError, Path, Path, contextlib.AbstractContextManager]] = deque()

        def open_next() -> bool:
            job = next(pending, None)
            if job is None:
                return False
            token, final = job
            writing = written_then_renamed(final)
            partial = writing.__enter__()
            try:
                printing = self._open(self.url_of(token), defer_errors=True)
            except CarnetError as exc:
                printing = exc
            opened.append((printing, Path(final), partial, writing))
            return True

        try:
            while len(opened) < window and open_next():
                pass
            while opened:
                printing, final, partial, writing = opened.popleft()
                try:
                    try:
                        if isinstance(printing, CarnetError):
                            raise printing
                        seconds = self._finish(printing, partial, letterhead)
                    except CarnetError as exc:
                        writing.__exit__(type(exc), exc, None)  # the partial file is removed
                        outcome = PrintOutcome(final, error=exc)
                    except BaseException as exc:
                        writing.__exit__(type(exc), exc, None)
                        raise
                    else:
                        writing.__exit__(None, None, None)  # renamed into place
                        outcome = PrintOutcome(final, seconds=seconds)
                    # The next page starts loading while this one's kernel shuts down.
                    open_next()
                finally:
                    if not isinstance(printing, CarnetError):
                        self._end(printing)
                yield outcome
        finally:
            # The caller stopped early (an exception, a closed generator): end every page still open.
            while opened:
                printing, _final, _partial, writing = opened.popleft()
                if not isinstance(printing, CarnetError):
                    self._end(printing)
                writing.__exit__(PdfRenderError, PdfRenderError("not printed"), None)

    def _open(self, url: str, defer_errors: bool = False) -> _Printing:
        """A fresh browser context whose page has started loading ``url`` (its response has begun)."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        printing = _Printing(url, time.monotonic() + self.settings.time_budget)
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc.lower())
        try:
            printing.context = self.new_context(
                viewport=self.settings.paper()["viewport"], service_workers="block", accept_downloads=False
            )
            printing.context.route("**/*", lambda route: self._only(route, origin))
            printing.context.route_web_socket(re.compile(".*"), lambda ws: self._only_ws(ws, origin))
            printing.page = printing.context.new_page()
            response = printing.page.goto(url, wait_until="commit", timeout=printing.left_ms())
            if response is not None and response.status == 503:
                raise PdfViewerBusy(
                    "The Viewer is at its kernel cap (too many app pages open at once); the PDF was not made"
                )
        except PdfViewerBusy as busy:
            if not defer_errors:
                self._end(printing)
                raise
            printing.error = busy
        except (PlaywrightTimeout, PlaywrightError) as exc:
            error = self._error(printing, exc)
            if not defer_errors:
                self._end(printing)
                raise error from None
            printing.error = error
        return printing

    def _finish(self, printing: _Printing, pdf_path: Path, letterhead: Letterhead) -> float:
        """Waits for ``printing``'s page to finish rendering and prints it to ``pdf_path``; its seconds."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        if printing.error is not None:
            raise printing.error
        paper = self.settings.paper()
        page, left_ms = printing.page, printing.left_ms
        try:
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
        except (PlaywrightTimeout, PlaywrightError) as exc:
            raise self._error(printing, exc) from None
        return time.monotonic() - printing.started

    def _error(self, printing: _Printing, exc) -> PdfRenderError:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        if isinstance(exc, PlaywrightTimeout):
            return PdfTimeBudgetExceeded(
                f"The app's page did not finish rendering within {self.settings.time_budget:g} s"
            )
        # The URL holds the print token, a credential: never in the run's error (shown by the API).
        detail = exc.message.splitlines()[0].replace(printing.url, "the app's print page")
        return PdfRenderError(f"Printing the app failed: {detail}")

    def _end(self, printing: _Printing) -> None:
        if printing.context is not None:
            self._close_context(printing.context)
            printing.context = None

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
        # The page's kernel ends now, not when the Viewer culls it: its shutdown is asked for with the page's
        # cookies in a thread of its own, so the PDF (already written) does not wait for it (~0.9 s).
        shutdowns = []
        try:
            path = lambda cookie: len(cookie.get("path") or "")  # noqa: E731 - the most specific path last
            cookies = {c["name"]: c["value"] for c in sorted(context.cookies(), key=path)}
            for page in context.pages:
                kernel = page.evaluate(KERNEL_OF_PAGE)
                if kernel and kernel.get("kernelId"):
                    self.last_kernel_id = kernel["kernelId"]
                    if not kernel.get("static"):  # a static page asked for its kernel's shutdown on load
                        origin = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
                        url = f"{origin}{kernel['baseUrl']}voila/api/shutdown/{kernel['kernelId']}"
                        shutdowns.append((url, kernel["xsrf"], kernel["userAgent"]))
                page.close()
        except Exception as exc:  # noqa: BLE001 - the page or browser may be gone; culling ends the kernel
            log.warning("PDF printer: reading the page's kernel failed: %s", exc)
        try:
            context.close()
        except Exception as exc:  # noqa: BLE001 - the browser may be gone; the next PDF relaunches it
            log.warning("PDF printer: closing the browser context failed: %s", exc)
        for url, xsrf, user_agent in shutdowns:
            # The page's own _xsrf (the context may hold others, e.g. the Hub's on another path).
            sent = {**cookies, "_xsrf": xsrf}
            args = (url, xsrf, sent, user_agent)
            thread = threading.Thread(target=shut_kernel_down, args=args, daemon=True)
            thread.start()
            self._shutdowns = [t for t in self._shutdowns if t.is_alive()] + [thread]
