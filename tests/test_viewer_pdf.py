"""PDFs of apps as the Viewer shows them (scheduler/viewer_pdf.py, carnet/print_pages.py), on the real stack
with the real Chromium: a carnet.dash app with three tabs printed by a report job through the scheduler and
by the printer for a recipient's row-rule attributes; hostile outputs reach nothing but the Viewer; one
browser serves many PDFs; a page that never finishes fails with the time-budget error."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import nbformat
import pytest
import requests
from sqlalchemy import select

from carnet.app_links import sign_embed
from carnet.db import session_scope
from carnet.db.models import App, Job, JobRun
from carnet.print_pages import sign_print
from carnet.scheduler.executor import PdfRenderer, pdf_renderer_for
from carnet.scheduler.viewer_pdf import (
    Letterhead,
    PdfRenderError,
    PdfTimeBudgetExceeded,
    ViewerPdfSettings,
    ViewerPrinter,
)
from tests.api_support import api_url, unique
from tests.helpers import wait_until
from tests.test_row_security import load, people  # noqa: F401 - people is a fixture
from tests.test_viewer_browser import CHROMIUM

pytestmark = pytest.mark.slow

SALES = {
    "region": ["EU", "EU", "US", "APAC", "US", "EU"],
    "product": ["Alpenbrot", "Baguette", "Cornbread", "Dumpling", "Eggroll", "Focaccia"],
    "amount": [110, 220, 330, 440, 550, 660],
}
EU_PRODUCTS, OTHER_PRODUCTS = ("Alpenbrot", "Baguette", "Focaccia"), ("Cornbread", "Dumpling", "Eggroll")
TABS = ("Key figures", "Chart", "Rows")
APP = """\
from carnet import dash
dash.Dashboard(
    dash.Tabs({{
        "Key figures": dash.KPI("Total sales", {{"amount": "sum"}}),
        "Chart": dash.Chart("bar", x="product", y="amount", title="Sales by product"),
        "Rows": dash.Table(["region", "product", "amount"], order_by=("amount", "asc")),
    }}),
    source={source!r},
)
"""
HOSTILE = """\
from IPython.display import HTML
HTML('''<p>Hostile outputs below</p>
<iframe src="file:///etc/passwd" width="600" height="200"></iframe>
<img src="http://169.254.169.254/latest/meta-data/" alt="metadata">
<img src="http://127.0.0.1:{port}/img" alt="local">
<iframe src="http://127.0.0.1:{port}/frame"></iframe>
<link rel="stylesheet" href="http://127.0.0.1:{port}/css">
<script>fetch("http://127.0.0.1:{port}/fetch")</script>''')
"""
NEVER_ENDS = "import time\ntime.sleep(3600)"


def notebook(*sources: str) -> dict:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def publish(stack, headers, created, title: str, nb: dict) -> int:
    made = requests.post(
        api_url(stack, "apps"),
        json={"slug": unique("pdf"), "title": title, "notebook": nb},
        headers=headers,
        timeout=60,
    )
    assert made.status_code == 201, made.text
    created.apps.add(made.json()["id"])
    return made.json()["id"]


def pdf_pages(path: Path) -> list[str]:
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [" ".join(page.split()) for page in text.split("\f")]


def tab_pages(pages: list[str]) -> dict[str, int]:
    """The page each tab starts on (its title, shown only in print, opens the page after the letterhead)."""
    found = {}
    for title in TABS:
        starts = [i for i, page in enumerate(pages) if page.startswith(f"Acme Sales report {title} ")]
        assert len(starts) == 1, (title, [p[:120] for p in pages])
        found[title] = starts[0]
    return found


def assert_no_code(text: str) -> None:
    for leak in ("Traceback", "dash.Dashboard", "from carnet import", "Error"):
        assert leak not in text, (leak, text[:2000])


@pytest.fixture(scope="module")
def needs_tools():
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (apt-get install -y poppler-utils)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")


@pytest.fixture(scope="module")
def sales_app(carnet_stack, people, created, needs_tools):  # noqa: F811 - the imported fixture
    """A three-tab carnet.dash app over a source whose rows are filtered by region."""
    table, name = unique("pdf_sales").replace("-", "_"), unique("pdf-sales")
    load(carnet_stack, people["studio"], table, SALES)
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    ruled = requests.put(
        api_url(carnet_stack, f"sources/{name}/row-rules"),
        json={"rules": [{"column": "region", "attribute": "region"}]},
        headers=people["studio"],
        timeout=30,
    )
    assert ruled.status_code == 200, ruled.text
    return publish(carnet_stack, people["studio"], created, "Sales report", notebook(APP.format(source=name)))


@pytest.fixture(scope="module")
def printer(carnet_stack, needs_tools):
    settings = ViewerPdfSettings(viewer_url=f"{carnet_stack.url}/services/carnet-viewer/", time_budget=180)
    printer = ViewerPrinter(CHROMIUM, settings)
    yield printer
    printer.close()


def print_app(stack, printer, app_id: int, path: Path, **payload) -> float:
    with session_scope(stack.settings.db_url) as session:
        app = session.get(App, app_id)
        token = sign_print(session, stack.settings, app, **payload)
        title = app.title
    return printer.print_token(token, path, Letterhead("Acme", "#0b7285", title))


class HitRecorder(http.server.ThreadingHTTPServer):
    """A tiny HTTP server on another loopback port that remembers every request it gets."""

    def __init__(self, page: bytes = b"<p>nothing</p>"):
        recorder = self
        self.hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                recorder.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


def kernel_processes(connection_file: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and connection_file.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_job_now(stack, headers, keep_in: Path, **fields) -> tuple[dict, Path]:
    """Makes a job, runs it now through the scheduler, deletes it; returns its run and a copy of its PDF in
    ``keep_in`` (the job's files go with it)."""
    made = requests.post(
        api_url(stack, "jobs"),
        json={"name": unique("pdf-job"), "cron": "0 6 * * 1", **fields},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    runs_url = api_url(stack, f"jobs/{job_id}/runs")
    try:
        queued = requests.post(runs_url, headers=headers, timeout=30)
        assert queued.status_code == 202, queued.text
        run_id = queued.json()["id"]

        def finished():
            run = next(
                r
                for r in requests.get(runs_url, headers=headers, timeout=30).json()["runs"]
                if r["id"] == run_id
            )
            return run if run["status"] in ("succeeded", "failed") else None

        try:
            run = wait_until(finished, timeout=300, interval=1, what="the job's run")
        except TimeoutError:
            steps = [line for line in stack.log_tail(600).splitlines() if "scheduler" in line.lower()]
            raise AssertionError("the run did not finish:\n" + "\n".join(steps[-40:])) from None
        assert run["status"] == "succeeded", (run, stack.log_tail())
        with session_scope(stack.settings.db_url) as session:
            output_dir = Path(session.scalar(select(JobRun.output_dir).where(JobRun.id == run_id)))
        run["papermill"] = (output_dir / "executed.ipynb").exists()
        (pdf,) = output_dir.glob("*.pdf")
        kept = keep_in / pdf.name
        shutil.copyfile(pdf, kept)
        return run, kept
    finally:
        requests.delete(api_url(stack, f"jobs/{job_id}"), headers=headers, timeout=30)


def test_a_report_job_mails_the_app_as_the_viewer_shows_it(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    sales_app,
    smtp_server,
    tmp_path,
):
    recipients = ["boss@acme.example"]
    run, pdf = run_job_now(carnet_stack, people["studio"], tmp_path, app_id=sales_app, recipients=recipients)
    assert run["pdf_renderer"] == "viewer" and not run["papermill"]  # the Viewer rendered the app
    mailed = [m for m in smtp_server.messages if "boss@acme.example" in m["X-Envelope-To"]]
    attachment = next(part for part in mailed[-1].walk() if part.get_filename() == pdf.name)
    assert attachment.get_payload(decode=True) == pdf.read_bytes()

    pages = pdf_pages(pdf)
    starts = tab_pages(pages)
    kpi, chart, rows = (starts[t] for t in TABS)
    assert kpi < chart < rows
    everything = " ".join(pages)
    assert_no_code(everything)
    # Every page carries the letterhead: the org's name and the app's title.
    assert all(page.startswith("Acme Sales report") for page in pages if page), pages
    # The job's owner (a studio user, not restricted by row rules) sees every region.
    assert "2,310" in pages[kpi]  # 110 + 220 + ... + 660
    chart_text = " ".join(pages[chart:rows])
    assert "Sales by product" in chart_text and "amount" in chart_text and "Eggroll" in chart_text
    rows_text = " ".join(pages[rows:])
    assert all(product in rows_text for product in EU_PRODUCTS + OTHER_PRODUCTS), rows_text
    assert "Sales by product" not in rows_text and "Eggroll" not in pages[kpi]


def test_a_job_with_parameters_keeps_the_notebook_path_in_the_same_scheduler(carnet_stack, people, tmp_path):  # noqa: F811
    """papermill injects the parameters, nbconvert's HTML is printed, by the scheduler's one browser (the
    Viewer path above launched it: a second Playwright in the scheduler's thread would fail)."""
    run, pdf = run_job_now(
        carnet_stack,
        people["studio"],
        tmp_path,
        app_id=carnet_stack.app_id,
        parameters={"continent": "Asia"},
        recipients=["board@acme.example"],
    )
    assert run["pdf_renderer"] == "notebook" and run["papermill"]
    assert "Asia" in " ".join(pdf_pages(pdf))


def test_a_recipients_attributes_restrict_the_rows_and_one_browser_prints_them_all(
    carnet_stack, sales_app, printer, tmp_path
):
    first, second = tmp_path / "eu.pdf", tmp_path / "us.pdf"
    print_app(carnet_stack, printer, sales_app, first, attributes={"region": ["EU"]})
    pid = printer.browser_pid()
    assert pid is not None
    print_app(carnet_stack, printer, sales_app, second, attributes={"region": ["US"]})
    assert printer.launches == 1 and printer.browser_pid() == pid  # the same Chromium made both
    # Each page's kernel ended with its PDF (no wait for the Viewer's culling).
    assert printer.last_kernel_id
    kernel = f"kernel-{printer.last_kernel_id}.json"
    wait_until(lambda: not kernel_processes(kernel), timeout=30, what="the printed page's kernel to end")

    pages = pdf_pages(first)
    starts = tab_pages(pages)
    everything = " ".join(pages)
    assert_no_code(everything)
    assert "990" in pages[starts["Key figures"]]  # 110 + 220 + 660
    assert all(product in everything for product in EU_PRODUCTS)
    assert not any(product in everything for product in OTHER_PRODUCTS), everything
    us = " ".join(pdf_pages(second))
    assert "880" in us and "Cornbread" in us and "Eggroll" in us  # 330 + 550
    assert not any(product in us for product in EU_PRODUCTS + ("Dumpling",)), us


def test_hostile_outputs_reach_nothing_but_the_viewer(carnet_stack, people, created, printer, tmp_path):  # noqa: F811
    recorder = HitRecorder()
    try:
        app_id = publish(
            carnet_stack, people["studio"], created, "Hostile", notebook(HOSTILE.format(port=recorder.port))
        )
        path = tmp_path / "hostile.pdf"
        print_app(carnet_stack, printer, app_id, path)
        text = " ".join(pdf_pages(path))
        assert "Hostile outputs below" in text
        assert "root:" not in text and "/bin/" not in text
        assert recorder.hits == []
    finally:
        recorder.shutdown()


def test_the_printer_aborts_every_request_outside_the_pages_origin(printer, tmp_path):
    """Without the Viewer's Content-Security-Policy in the way, the routing alone keeps the page in."""
    outside = HitRecorder()
    page = f"""<html><body data-carnet-render="done"><p>Printed from the allowed origin</p>
<iframe src="file:///etc/passwd"></iframe>
<iframe src="data:text/html,<iframe src='file:///etc/passwd'></iframe>"></iframe>
<img src="http://169.254.169.254/latest/meta-data/">
<img src="http://127.0.0.1:{outside.port}/img"><iframe src="http://127.0.0.1:{outside.port}/frame"></iframe>
<script>fetch("http://127.0.0.1:{outside.port}/fetch"); new WebSocket("ws://127.0.0.1:{outside.port}/ws");
</script></body></html>""".encode()
    allowed = HitRecorder(page)
    try:
        path = tmp_path / "routing.pdf"
        printer.print_url(f"http://127.0.0.1:{allowed.port}/page", path)
        text = " ".join(pdf_pages(path))
        assert "Printed from the allowed origin" in text
        assert "root:" not in text
        assert allowed.hits == ["/page"]
        assert outside.hits == []
    finally:
        outside.shutdown()
        allowed.shutdown()


def test_a_page_that_never_finishes_fails_within_the_time_budget(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    printer,
    tmp_path,
):
    app_id = publish(carnet_stack, people["studio"], created, "Never ends", notebook(NEVER_ENDS))
    budget = printer.settings.time_budget
    printer.settings.time_budget = 12
    try:
        started = time.monotonic()
        with pytest.raises(PdfTimeBudgetExceeded, match="within 12 s"):
            print_app(carnet_stack, printer, app_id, tmp_path / "never.pdf")
        assert time.monotonic() - started < 12 + 10  # the budget, and closing the page
        assert not (tmp_path / "never.pdf").exists()
    finally:
        printer.settings.time_budget = budget
    # The browser survived the failed page: the next PDF needs no new launch.
    assert printer.launches == 1 and printer.browser_pid() is not None


def test_jobs_with_papermill_parameters_keep_the_notebook_path():
    assert pdf_renderer_for(Job(parameters={})) == PdfRenderer.viewer
    assert pdf_renderer_for(Job(parameters={"continent": "Asia"})) == PdfRenderer.notebook


def test_print_and_embed_tokens_open_only_their_own_page(carnet_stack, sales_app, admin):
    """Signed with the same key, told apart by their payload: each is unknown (404) on the other's page."""
    org = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()
    allowed = org.get("settings", org).get("allow_public_apps", False)
    on = requests.patch(
        api_url(carnet_stack, "org"), json={"allow_public_apps": True}, headers=admin, timeout=30
    )
    assert on.status_code == 200, on.text
    viewer = f"{carnet_stack.url}/services/carnet-viewer"
    try:
        with session_scope(carnet_stack.settings.db_url) as session:
            app = session.get(App, sales_app)
            printed = sign_print(session, carnet_stack.settings, app, attributes={"region": ["EU"]})
            expired = sign_print(session, carnet_stack.settings, app, expires_in=1)
            embedded, _ = sign_embed(carnet_stack.settings, app, {}, {}, 600)
        assert requests.get(f"{viewer}/embed/{printed}", timeout=60).status_code == 404
        assert requests.get(f"{viewer}/print/{embedded}", timeout=60).status_code == 404
        body, _, signature = printed.partition(".")
        assert requests.get(f"{viewer}/print/{body}x.{signature}", timeout=60).status_code == 404
        # Once its one second of life is over (asked only then: a live token would render the app), the
        # print token is refused as expired.
        expiry = json.loads(base64.urlsafe_b64decode(expired.partition(".")[0] + "=="))["exp"]
        wait_until(lambda: time.time() > expiry + 0.1, timeout=15, interval=0.1, what="the token's expiry")
        assert requests.get(f"{viewer}/print/{expired}", timeout=60).status_code == 403
    finally:
        requests.patch(
            api_url(carnet_stack, "org"), json={"allow_public_apps": allowed}, headers=admin, timeout=30
        )


def test_print_tokens_stay_out_of_errors_and_the_viewers_log(carnet_stack, printer, tmp_path):
    """The print page's URL is a credential: a failure names the page, not the URL; a refused visit is
    logged without it."""
    secret = f"pr{uuid.uuid4().hex}.sig{uuid.uuid4().hex}"
    closed = HitRecorder()
    closed.shutdown()
    closed.server_close()  # nothing listens there any more: the browser's request is refused
    with pytest.raises(PdfRenderError) as refused:
        printer.print_url(f"http://127.0.0.1:{closed.port}/print/{secret}", tmp_path / "refused.pdf")
    assert "the app's print page" in refused.value.message and secret not in refused.value.message
    assert (
        requests.get(f"{carnet_stack.url}/services/carnet-viewer/print/{secret}", timeout=60).status_code
        == 404
    )
    logged = "/services/carnet-viewer/print/[secret]"
    wait_until(lambda: logged in carnet_stack.log_tail(400), timeout=10, what="the refused visit's log line")
    assert secret.split(".")[0] not in carnet_stack.log_path.read_text(errors="replace")


def test_a_browser_that_died_is_launched_again(carnet_stack, sales_app, printer, tmp_path):
    printer.browser()
    pid = printer.browser_pid()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: printer.browser_pid() is None, timeout=10, what="the browser to be gone")
    launches = printer.launches
    print_app(carnet_stack, printer, sales_app, tmp_path / "again.pdf", attributes={"region": ["APAC"]})
    assert printer.launches == launches + 1 and printer.browser_pid() not in (None, pid)
    assert "Dumpling" in " ".join(pdf_pages(tmp_path / "again.pdf"))
