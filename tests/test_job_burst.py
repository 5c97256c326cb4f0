"""Burst jobs (scheduler/kinds/burst.py) on the real stack with the real Chromium and a real SMTP server: one
PDF per recipient, printed for that recipient's row-rule attributes, mailed to that recipient only; the
recipients as an explicit list (50 customers) or read from a warehouse table at run time (bad and repeated
rows skipped and reported); a try that finds some PDFs made prints only the others; bad definitions are
400s naming the field."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, MailStatus, OutboxMail, RunStatus, utcnow
from carnet.scheduler.executor import JobExecutor, JobRunError, RunContext, TransientRunError
from carnet.scheduler.kinds import kind_named
from carnet.scheduler.viewer_pdf import Letterhead, PdfRenderError, ViewerPdfSettings, ViewerPrinter
from tests.api_support import api_url, assert_json_error, unique
from tests.helpers import free_port, wait_until
from tests.test_row_security import load, people  # noqa: F401 - people is a fixture
from tests.test_viewer_browser import CHROMIUM
from tests.test_viewer_pdf import needs_tools, notebook, pdf_pages, publish  # noqa: F401 - needs_tools

pytestmark = pytest.mark.slow

CUSTOMERS = [f"C{i:02d}" for i in range(1, 51)]
# Two rows per customer, each with a product code no other customer has (Sku07A is not in Sku17A).
ORDERS = {
    "customer": [c for c in CUSTOMERS for _ in "AB"],
    "sku": [f"Sku{c[1:]}{half}" for c in CUSTOMERS for half in "AB"],
    "amount": [int(c[1:]) * 100 + offset for c in CUSTOMERS for offset in (1, 2)],
}
SKU = re.compile(r"Sku\d\d[AB]")
# A plain app (no carnet.dash, whose imports cost each recipient's kernel ~0.6 s: 50 of them run here; the
# report path of dashboards is tested in tests/test_viewer_pdf.py): a total and the rows the reader may see.
APP = """\
import carnet
rows = carnet.sources[{source!r}].df(order_by=["sku"])
print(f"Total ordered {{rows['amount'].sum():,}}")
print(rows[["customer", "sku", "amount"]].to_string(index=False))
"""


def own_skus(customer: str) -> set[str]:
    return {f"Sku{customer[1:]}A", f"Sku{customer[1:]}B"}


@pytest.fixture(scope="module")
def orders(carnet_stack, people, created, needs_tools):  # noqa: F811 - the imported fixtures
    """A table of every customer's orders and an app over it, whose source keeps the rows of the reader's
    "customer" attribute."""
    table, name = unique("burst_orders").replace("-", "_"), unique("burst-orders")
    load(carnet_stack, people["studio"], table, ORDERS)
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
        json={"rules": [{"column": "customer", "attribute": "customer"}]},
        headers=people["studio"],
        timeout=30,
    )
    assert ruled.status_code == 200, ruled.text
    app_id = publish(
        carnet_stack, people["studio"], created, "Your orders", notebook(APP.format(source=name))
    )
    return {"app": app_id, "table": table}


def make_job(stack, headers, created, app_id: int, config: dict, **fields) -> int:
    body = {"name": unique("burst"), "kind": "burst", "cron": None, "app_id": app_id, "config": config}
    made = requests.post(
        api_url(stack, "jobs"),
        json={**body, **fields},
        headers=headers,
        timeout=60,
    )
    assert made.status_code == 201, made.text
    created.jobs.add(made.json()["id"])
    return made.json()["id"]


def run_now(stack, headers, job_id: int, timeout: float) -> dict:
    """Queues a run and waits for it to end; returns the run with its mail and outputs."""
    queued = requests.post(api_url(stack, f"jobs/{job_id}/runs"), headers=headers, timeout=30)
    assert queued.status_code == 202, queued.text
    run_url = api_url(stack, f"jobs/{job_id}/runs/{queued.json()['id']}")

    def finished():
        run = requests.get(run_url, headers=headers, timeout=30).json()
        return run if run["status"] in ("succeeded", "failed") else None

    try:
        return wait_until(finished, timeout=timeout, interval=2, what="the burst's run")
    except TimeoutError:
        steps = [line for line in stack.log_tail(600).splitlines() if "scheduler" in line.lower()]
        raise AssertionError("the run did not finish:\n" + "\n".join(steps[-40:])) from None


def report_of(stack, headers, job_id: int, run_id: int) -> list[dict]:
    got = requests.get(
        api_url(stack, f"jobs/{job_id}/runs/{run_id}/outputs/burst-recipients.csv"),
        headers=headers,
        timeout=30,
    )
    assert got.status_code == 200, got.text
    return list(csv.DictReader(io.StringIO(got.text)))


def mails_to(smtp_server, addresses: set[str]) -> list:
    return [m for m in smtp_server.messages if m["X-Envelope-To"] in addresses]


def pdf_text(message, folder: Path) -> str:
    (attachment,) = [part for part in message.walk() if part.get_filename()]
    assert attachment.get_content_type() == "application/pdf"
    path = folder / f"{message['X-Envelope-To']}.pdf"
    path.write_bytes(attachment.get_payload(decode=True))
    return " ".join(pdf_pages(path))


def test_fifty_recipients_each_get_one_pdf_of_only_their_own_rows(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
    smtp_server,
    tmp_path,
):
    domain = unique("burst") + ".example"
    address = {c: f"buyer-{c.lower()}@{domain}" for c in CUSTOMERS}
    job_id = make_job(
        carnet_stack,
        people["studio"],
        created,
        orders["app"],
        {"recipients": [{"email": address[c], "attributes": {"customer": [c]}} for c in CUSTOMERS]},
    )
    started = time.monotonic()
    run = run_now(carnet_stack, people["studio"], job_id, timeout=1500)
    elapsed = time.monotonic() - started
    assert run["status"] == "succeeded", (run["error"], carnet_stack.log_tail())
    assert [m["status"] for m in run["mail"]] == ["sent"] * 50
    report = report_of(carnet_stack, people["studio"], job_id, run["id"])
    assert [(line["email"], line["state"]) for line in report] == [(address[c], "printed") for c in CUSTOMERS]
    seconds = [float(line["seconds"]) for line in report]
    mean, slowest = sum(seconds) / len(seconds), max(seconds)
    print(f"\nburst of 50: run {elapsed:.0f} s; per PDF mean {mean:.2f} s, slowest {slowest:.2f} s")
    # Several pages were printed at once (ViewerPdfSettings.concurrency, 2): their times overlap.
    assert sum(seconds) > 1.3 * elapsed, (sum(seconds), elapsed)

    mailed = mails_to(smtp_server, set(address.values()))
    assert sorted(m["X-Envelope-To"] for m in mailed) == sorted(address.values())  # one mail each
    for customer in CUSTOMERS:
        (message,) = [m for m in mailed if m["X-Envelope-To"] == address[customer]]
        assert message["To"] == address[customer]
        text = pdf_text(message, tmp_path)
        assert "Your orders" in text
        # Their own two rows, and no code of any other customer.
        assert set(SKU.findall(text)) == own_skus(customer), (customer, text[:1500])
        assert f"Total ordered {int(customer[1:]) * 200 + 3:,}" in text  # the sum of their two amounts


def test_recipients_from_a_warehouse_table_skip_bad_and_repeated_rows(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
    smtp_server,
    tmp_path,
):
    domain = unique("burstfrom") + ".example"
    table = unique("burst_people").replace("-", "_")
    load(
        carnet_stack,
        people["studio"],
        table,
        {
            "mail": [f"a@{domain}", "not-an-address", f"b@{domain}", f"A@{domain}", f"c@{domain}"],
            "cust": ["C03", "C04", "C05", "C06", "C07"],
            "region_code": ["x", "y", "z", "w", "v"],
        },
    )
    job_id = make_job(
        carnet_stack,
        people["studio"],
        created,
        orders["app"],
        {
            "recipients_from": {
                "table": table,
                "email_column": "mail",
                "attribute_columns": {"customer": "cust"},
                "variable_columns": {"region": "region_code"},
            },
            "file_name": "Orders {{date:%Y}}",
        },
    )
    run = run_now(carnet_stack, people["studio"], job_id, timeout=600)
    assert run["status"] == "succeeded", (run["error"], carnet_stack.log_tail())
    expected = {f"a@{domain}": "C03", f"b@{domain}": "C05", f"c@{domain}": "C07"}
    assert sorted(m["recipient"] for m in run["mail"]) == sorted(expected)
    year = time.strftime("%Y", time.gmtime())
    assert {tuple(m["attachments"]) for m in run["mail"]} == {(f"Orders {year}.pdf",)}
    report = report_of(carnet_stack, people["studio"], job_id, run["id"])
    skipped = {line["email"]: line["detail"] for line in report if line["state"] == "skipped"}
    assert set(skipped) == {"not-an-address", f"A@{domain}"}
    assert "Invalid email" in skipped["not-an-address"] and "earlier row" in skipped[f"A@{domain}"]

    mailed = mails_to(smtp_server, set(expected))
    assert sorted(m["X-Envelope-To"] for m in mailed) == sorted(expected)
    for message in mailed:
        text = pdf_text(message, tmp_path)
        assert set(SKU.findall(text)) == own_skus(expected[message["X-Envelope-To"]]), text[:1500]


def test_a_try_that_finds_some_pdfs_made_prints_only_the_others(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
    smtp_server,
):
    """What a try after a crash at recipient N does (the executor, in process, with the real printer): the
    frozen recipient list is read back, PDFs already renamed into place are kept as they are, the missing
    ones are printed, and every recipient gets a mail planned with their own PDF."""
    domain = unique("burstresume") + ".example"
    chosen = ["C11", "C12", "C13"]
    address = {c: f"r-{c.lower()}@{domain}" for c in chosen}
    job_id = make_job(
        carnet_stack,
        people["studio"],
        created,
        orders["app"],
        {"recipients": [{"email": address[c], "attributes": {"customer": [c]}} for c in chosen]},
    )
    run = run_now(carnet_stack, people["studio"], job_id, timeout=600)
    assert run["status"] == "succeeded", run["error"]
    with session_scope(carnet_stack.settings.db_url) as session:
        folder = Path(session.scalar(select(JobRun.output_dir).where(JobRun.id == run["id"])))
    pdfs = sorted(folder.glob("burst/*/*.pdf"))
    assert [p.relative_to(folder).parts[:2] for p in pdfs] == [("burst", "1"), ("burst", "2"), ("burst", "3")]
    kept = {p: p.stat().st_mtime_ns for p in pdfs[:2]}
    pdfs[2].unlink()  # as if the scheduler died while printing the third

    printer = ViewerPrinter(CHROMIUM, printer_settings(carnet_stack))
    try:
        mails = try_in_process(carnet_stack, printer, run["id"], folder)
    finally:
        printer.close()
    assert {p: p.stat().st_mtime_ns for p in pdfs[:2]} == kept
    assert pdfs[2].exists()
    assert [(m.recipients, m.attachments) for m in mails] == [
        ([address[c]], [pdf]) for c, pdf in zip(chosen, pdfs, strict=True)
    ]
    assert set(SKU.findall(" ".join(pdf_pages(pdfs[2])))) == own_skus("C13")
    report = report_of(carnet_stack, people["studio"], job_id, run["id"])
    assert [line["state"] for line in report] == ["printed by an earlier try"] * 2 + ["printed"]


def printer_settings(stack) -> ViewerPdfSettings:
    return ViewerPdfSettings(viewer_url=f"{stack.url}/services/carnet-viewer/", time_budget=180)


def try_in_process(stack, printer, run_id: int, folder: Path, api_base: str = "") -> list:
    """One try of a burst run as the executor makes it (prepare in a database session, then execute),
    in this process with ``printer``, writing into ``folder``; what execute returns. ``api_base``: the
    Carnet service's URL, if not the stack's."""
    settings = stack.settings
    # As the stack's scheduler has it: mail goes to the test's SMTP server, the service is at its port.
    settings.smtp_host, settings.smtp_port = "127.0.0.1", int(stack.env["CARNET_SMTP_PORT"])
    settings.api_url = api_base or f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/"
    executor = JobExecutor(settings, run_id, printer=printer)
    kind = kind_named("burst")
    with session_scope(stack.settings.db_url) as session:
        run = session.get(JobRun, run_id)
        job = run.job
        context = RunContext(
            run_id=run.id,
            job_id=job.id,
            job_name=job.name,
            kind=job.kind,
            org_id=job.org_id,
            owner_id=job.owner_id,
            owner_email=job.owner.email,
            app_id=job.app_id,
            config=dict(job.config),
            parameters={},
            recipients=[],
            timezone=job.timezone,
            scheduled_for=run.scheduled_for,
            trigger=run.trigger,
            attempt=run.attempt,
            output_dir=folder,
            timeout=600,
        )
        kind.prepare(executor, session, job, run, context)
    return kind.execute(executor, context)


def unplayed_run(stack, job_id: int) -> int:
    """A run row the stack's scheduler leaves alone (not queued, not running): the test plays its tries."""
    with session_scope(stack.settings.db_url) as session:
        run = JobRun(job_id=job_id, status=RunStatus.succeeded, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        return run.id


def test_the_recipients_table_is_read_through_the_service_unreachable_is_retried_gone_is_final(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
    tmp_path,
):
    """The scheduler reads a recipients table through the service's warehouse routes with the run's job
    token, never the warehouse file itself (only the service opens it): with the service unreachable the
    try fails as transient and freezes no recipient list; a table gone since the job was made (the
    service's 404) fails the run for good."""
    table = unique("burst_gone").replace("-", "_")
    load(carnet_stack, people["studio"], table, {"mail": ["gone@x.example"], "cust": ["C01"]})
    spec = {"table": table, "email_column": "mail", "attribute_columns": {"customer": "cust"}}
    job_id = make_job(carnet_stack, people["studio"], created, orders["app"], {"recipients_from": spec})
    run_id = unplayed_run(carnet_stack, job_id)
    folder = tmp_path / "run"
    folder.mkdir()
    printer = ViewerPrinter(CHROMIUM, printer_settings(carnet_stack))
    try:
        closed = f"http://127.0.0.1:{free_port()}/services/carnet/"
        with pytest.raises(TransientRunError) as unreachable:
            try_in_process(carnet_stack, printer, run_id, folder, api_base=closed)
        assert "the Carnet service did not answer" in unreachable.value.message
        assert not (folder / ".burst.json").exists()  # the next try reads the table again

        with session_scope(carnet_stack.settings.db_url) as session:
            job = session.get(Job, job_id)
            job.config = {"recipients_from": {**spec, "table": "burst_no_such_table"}}
        with pytest.raises(JobRunError) as gone:
            try_in_process(carnet_stack, printer, run_id, folder)
        assert gone.value.message == "The recipients table 'burst_no_such_table' is gone"
    finally:
        printer.close()
    assert printer.launches == 0  # no recipient, no page


class PrinterFailingSome(ViewerPrinter):
    """The real printer, except that the pages numbered in ``failing`` (1, 2, ...: the order print_many
    finishes them in, which is the order of its jobs) fail as a page whose app failed does, after their
    page really opened: the fault a burst must survive without losing the other recipients."""

    def __init__(self, chromium: str, settings: ViewerPdfSettings, failing: set[int]):
        super().__init__(chromium, settings)
        self.failing, self.calls = failing, 0

    def _finish(self, printing, pdf_path, letterhead=Letterhead()):
        self.calls += 1
        if self.calls in self.failing:
            raise PdfRenderError("A part of the app failed while rendering; the PDF was not made")
        return super()._finish(printing, pdf_path, letterhead)


def test_a_failed_pdf_is_retried_alone_and_the_last_try_mails_the_others_then_fails_naming_it(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
    smtp_server,
    tmp_path,
):
    domain = unique("burstfail") + ".example"
    chosen = ["C21", "C22", "C23"]
    address = {c: f"f-{c.lower()}@{domain}" for c in chosen}
    job_id = make_job(
        carnet_stack,
        people["studio"],
        created,
        orders["app"],
        {"recipients": [{"email": address[c], "attributes": {"customer": [c]}} for c in chosen]},
        max_retries=1,
    )
    run_id = unplayed_run(carnet_stack, job_id)
    folder = tmp_path / "run"
    folder.mkdir()
    # C22's page fails on both of its tries (print calls 2 and 4).
    printer = PrinterFailingSome(CHROMIUM, printer_settings(carnet_stack), failing={2, 4})
    try:
        with pytest.raises(TransientRunError) as first:
            try_in_process(carnet_stack, printer, run_id, folder)
        assert address["C22"] in first.value.message and "next try prints only those" in first.value.message
        made = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("burst/*/*.pdf")}
        assert set(made) == {"1", "3"}
        assert not mails_to(smtp_server, set(address.values()))  # nobody is mailed while tries are left

        with session_scope(carnet_stack.settings.db_url) as session:
            session.get(JobRun, run_id).attempt = 2  # the last try (max_retries=1)
        with pytest.raises(JobRunError) as last:
            try_in_process(carnet_stack, printer, run_id, folder)
    finally:
        printer.close()
    assert printer.calls == 4  # the last try printed only C22's PDF again
    assert {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("burst/*/*.pdf")} == made
    message = last.value.message
    assert f"1 of 3 recipients failed ({address['C22']})" in message and "2 recipients were mailed" in message
    mailed = mails_to(smtp_server, set(address.values()))
    assert sorted(m["X-Envelope-To"] for m in mailed) == [address["C21"], address["C23"]]
    for message in mailed:
        customer = next(c for c in chosen if address[c] == message["X-Envelope-To"])
        assert set(SKU.findall(pdf_text(message, tmp_path))) == own_skus(customer)
    with session_scope(carnet_stack.settings.db_url) as session:
        rows = session.scalars(select(OutboxMail).where(OutboxMail.run_id == run_id)).all()
        assert sorted((row.recipient, row.status) for row in rows) == [
            (address["C21"], MailStatus.sent),
            (address["C23"], MailStatus.sent),
        ]
    states = {
        line["email"]: line["state"] for line in csv.DictReader((folder / "burst-recipients.csv").open())
    }
    assert states == {
        address["C21"]: "printed by an earlier try",
        address["C22"]: "failed",
        address["C23"]: "printed by an earlier try",
    }


def recipients(*entries) -> dict:
    return {"recipients": list(entries)}


@pytest.mark.parametrize(
    "config,field",
    [
        (
            recipients({"email": "not-an-address", "attributes": {"customer": ["C01"]}}),
            "config.recipients[0].email",
        ),
        (
            recipients(
                {"email": "a@x.example"}, {"email": "b@x.example", "attributes": {"bad name": ["C01"]}}
            ),
            "config.recipients[1].attributes",
        ),
        (
            recipients({"email": "a@x.example", "attributes": {"customer": [""]}}),
            "config.recipients[0].attributes.customer",
        ),
        (
            recipients({"email": "a@x.example", "variables": {"region": {"nested": 1}}}),
            "config.recipients[0].variables.region",
        ),
        (recipients({"email": "a@x.example"}, {"email": "A@x.example"}), "config.recipients[1].email"),
        (recipients({"email": "a@x.example", "extra": 1}), "config.recipients[0]"),
        ({"recipients": []}, "config.recipients"),
        ({"recipients": [{"email": f"p{i}@x.example"} for i in range(1001)]}, "config.recipients"),
        ({}, "config"),
        ({"recipients": [{"email": "a@x.example"}], "recipients_from": {}}, "config"),
        ({"recipients": [{"email": "a@x.example"}], "file_name": "{{email}}.pdf"}, "config.file_name"),
        (
            {"recipients_from": {"table": "no_such_table", "email_column": "mail"}},
            "config.recipients_from.table",
        ),
        ({"recipients_from": {"table": "bad name!", "email_column": "mail"}}, "config.recipients_from.table"),
        (
            {"recipients_from": {"table": "{orders}", "email_column": "no_such_column"}},
            "config.recipients_from.email_column",
        ),
        (
            {
                "recipients_from": {
                    "table": "{orders}",
                    "email_column": "customer",
                    "attribute_columns": {"c": "nope"},
                }
            },
            "config.recipients_from.attribute_columns.c",
        ),
        (
            {
                "recipients_from": {
                    "table": "{orders}",
                    "email_column": "customer",
                    "variable_columns": {"v": "nope"},
                }
            },
            "config.recipients_from.variable_columns.v",
        ),
    ],
)
def test_a_bad_definition_is_a_400_naming_the_field(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    orders,
    config,
    field,
):
    source = config.get("recipients_from")
    if isinstance(source, dict) and source.get("table") == "{orders}":
        config = {**config, "recipients_from": {**source, "table": orders["table"]}}
    response = requests.post(
        api_url(carnet_stack, "jobs"),
        json={
            "name": unique("burst-bad"),
            "kind": "burst",
            "cron": None,
            "app_id": orders["app"],
            "config": config,
        },
        headers=people["studio"],
        timeout=60,
    )
    assert assert_json_error(response, 400)["field"] == field


def test_a_burst_needs_its_recipients_in_config_an_openable_app_and_the_studio_role(
    carnet_stack,
    people,  # noqa: F811 - the imported fixture
    created,
    orders,
):
    body = {"kind": "burst", "cron": None, "config": recipients({"email": "a@x.example"})}
    url = api_url(carnet_stack, "jobs")
    top_level = requests.post(
        url,
        json={**body, "name": unique("b"), "app_id": orders["app"], "recipients": ["a@x.example"]},
        headers=people["studio"],
        timeout=30,
    )
    assert assert_json_error(top_level, 400)["field"] == "recipients"
    no_app = requests.post(url, json={**body, "name": unique("b")}, headers=people["studio"], timeout=30)
    assert_json_error(no_app, 404)
    globex_app = created.publish_app("globex", title="Globex burst app")
    other_org = requests.post(
        url, json={**body, "name": unique("b"), "app_id": globex_app}, headers=people["studio"], timeout=30
    )
    assert assert_json_error(other_org, 404)["message"] == "No such app"
    # An analyst reads through row rules: choosing whose rows a PDF shows is for studio members and admins.
    analyst = requests.post(
        url,
        json={**body, "name": unique("b"), "app_id": orders["app"]},
        headers=people["analyst"],
        timeout=30,
    )
    assert_json_error(analyst, 403)
