"""A Viewer at its kernel cap answers its "busy" page (503): the scheduler's printer (real Chromium) says so
with PdfViewerBusy, leaves no file, and a report run treats it as a transient failure (retried with the job's
backoff) instead of waiting out the PDF's time budget or failing for good. The "Viewer" here is a loopback
server answering 503 like the Viewer's busy page (extension/render_pool.py); no stack is needed."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carnet.scheduler.executor import PdfRenderer, RunContext, TransientRunError
from carnet.scheduler.kinds import kinds
from carnet.scheduler.viewer_pdf import PdfViewerBusy, ViewerPdfSettings, ViewerPrinter
from tests.test_viewer_browser import CHROMIUM

pytestmark = pytest.mark.slow


@pytest.fixture
def busy_viewer():
    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"<html><body>The app is busy, try again in a moment</body></html>"
            self.send_response(503)
            self.send_header("Retry-After", "30")
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/carnet-viewer/"
    server.shutdown()


@pytest.fixture
def printer(busy_viewer):
    printer = ViewerPrinter(CHROMIUM, ViewerPdfSettings(viewer_url=busy_viewer, time_budget=60))
    yield printer
    printer.close()


def test_a_busy_viewer_is_reported_at_once_and_leaves_no_file(printer, tmp_path):
    pdf = tmp_path / "report.pdf"
    with pytest.raises(PdfViewerBusy) as busy:
        printer.print_token("some.token", pdf)
    assert busy.value.status == 503 and "kernel cap" in busy.value.message
    assert not pdf.exists()
    [outcome] = list(printer.print_many([("other.token", tmp_path / "burst.pdf")]))
    assert isinstance(outcome.error, PdfViewerBusy) and not (tmp_path / "burst.pdf").exists()


def test_a_report_run_meeting_a_busy_viewer_is_retried(printer, tmp_path, settings_env):
    class Executor:  # the executor's part a report's execute uses: its printer
        def printer_of(self):
            return printer

    context = RunContext(
        run_id=1,
        job_id=1,
        job_name="Busy report",
        kind="report",
        org_id=1,
        owner_id=1,
        owner_email="ana@acme.example",
        app_id=1,
        config={},
        parameters={},
        recipients=["x@acme.example"],
        timezone="UTC",
        scheduled_for=datetime.now(UTC),
        trigger="schedule",
        attempt=1,
        output_dir=Path(tmp_path),
        timeout=60,
        renderer=PdfRenderer.viewer,
        print_token="some.token",
    )
    with pytest.raises(TransientRunError) as retried:
        kinds()["report"].execute(Executor(), context)
    assert "kernel cap" in retried.value.message
    assert list(tmp_path.iterdir()) == []
