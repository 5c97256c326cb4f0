"""The ``data_email`` and ``alert`` job kinds (scheduler/kinds/data_email.py, alert.py).

In-process runs of the real executor on a fresh SQLite database and DuckDB warehouse (a table loaded with
carnet's load code); the runs read their data through the real Carnet service's routes on a loopback port
(tests/test_job_notebook.py ``platform``) with their job token, and mail through a real SMTP server
(aiosmtpd) on loopback. The checks at creation go through the kinds' ``validate`` and, for a few, through the
real REST API of the stack; one stack test runs both kinds end to end (tests using ``carnet_stack``: run them
under ``flock /tmp/carnet-stack.lock``).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from openpyxl import load_workbook
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import (
    DataSource,
    Job,
    JobRun,
    MailStatus,
    Membership,
    Organization,
    OutboxMail,
    Role,
    RunStatus,
    Token,
    TokenKind,
    User,
    utcnow,
)
from carnet.errors import NotFound, PermissionDenied, ValidationError
from carnet.loads.engine import load_table
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.kinds import kind_named
from carnet.settings import CarnetSettings
from carnet.sharing import member_reader
from tests.api_support import NEVER_CRON, api_url, auth, unique
from tests.helpers import SmtpCatcher, free_port
from tests.test_job_notebook import platform  # noqa: F401 - the fixture: the service on a loopback port

SALES = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "region": ["north", "south", "north", "east"],
        "amount": [12.5, 7.25, 30.0, 100.0],
        "day": pa.array(
            [date(2026, 1, 5), date(2026, 1, 6), date(2026, 2, 1), date(2026, 3, 9)], pa.date32()
        ),
        "note": ['Zürich, "quoted"', "=1+1", None, "plain"],
    }
)


def sales_with(amounts: dict[int, float]) -> pa.Table:
    """SALES with some amounts changed (id -> amount)."""
    values = [
        amounts.get(i, a) for i, a in zip(SALES["id"].to_pylist(), SALES["amount"].to_pylist(), strict=True)
    ]
    return SALES.set_column(2, "amount", pa.array(values, pa.float64()))


# -- a platform of our own -------------------------------------------------------------------------------
@pytest.fixture
def smtp():
    catcher = SmtpCatcher()
    catcher.start()
    yield catcher
    catcher.stop()


@pytest.fixture
def settings(platform, smtp, monkeypatch):  # noqa: F811 - pytest's fixture argument
    """The in-process service's settings (the same object the service reads with), mailing to this test's
    own SMTP catcher (the session's one collects every test's mail). Settings made from the environment (the
    kinds' ``validate``, a test's own) reach the same service and mail server."""
    settings, _service = platform
    settings.smtp_host, settings.smtp_port = "127.0.0.1", smtp.port
    monkeypatch.setenv("CARNET_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CARNET_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("CARNET_API_URL", settings.api_url)
    return settings


@pytest.fixture
def world(settings):
    """acme: sam (studio: rules do not narrow), rita (analyst, region north), ana (analyst, no region),
    vic (viewer); source ``sales`` (warehouse table, row rule region -> region). globex: its own source
    ``ledger``."""
    with session_scope(settings.db_url) as session:
        acme, globex = Organization(slug="acme", name="Acme"), Organization(slug="globex", name="Globex")
        people = {name: User(email=f"{name}@acme.example") for name in ("sam", "rita", "ana", "vic")}
        session.add_all([acme, globex, *people.values()])
        session.flush()
        session.add_all(
            [
                Membership(user_id=people["sam"].id, org_id=acme.id, role=Role.studio),
                Membership(
                    user_id=people["rita"].id,
                    org_id=acme.id,
                    role=Role.analyst,
                    attributes={"region": ["north"]},
                ),
                Membership(user_id=people["ana"].id, org_id=acme.id, role=Role.analyst),
                Membership(user_id=people["vic"].id, org_id=acme.id, role=Role.viewer),
                Membership(user_id=people["ana"].id, org_id=globex.id, role=Role.analyst),
                DataSource(
                    org_id=acme.id,
                    name="sales",
                    kind="warehouse_table",
                    options={"table": "sales"},
                    row_rules=[{"column": "region", "attribute": "region"}],
                ),
                DataSource(
                    org_id=globex.id, name="ledger", kind="warehouse_table", options={"table": "ledger"}
                ),
            ]
        )
        ids = {name: user.id for name, user in people.items()}
        ids.update(acme=acme.id, globex=globex.id)
    load_table(settings, ids["acme"], "sales", SALES, actor="test")
    load_table(settings, ids["globex"], "ledger", SALES, actor="test")
    return ids


def validated(settings, world, kind: str, config: dict, user="sam", org="acme", **body) -> dict:
    with session_scope(settings.db_url) as session:
        principal = member_reader(session, world[user], world[org], "hub")
        return kind_named(kind).validate(session, settings, principal, {"config": config, **body})


def add_job(settings, world, kind: str, config: dict, owner="sam", timezone="UTC", recipients=None) -> int:
    config = validated(settings, world, kind, config, user=owner, timezone=timezone)
    with session_scope(settings.db_url) as session:
        job = Job(
            org_id=world["acme"],
            name=f"{kind} {uuid.uuid4().hex[:6]}",
            kind=kind,
            config=config,
            cron=None,
            timezone=timezone,
            recipients=recipients or ["board@acme.example", "cfo@acme.example"],
            owner_id=world[owner],
        )
        session.add(job)
        session.flush()
        return job.id


def run_job(settings, job_id: int, scheduled_for: datetime | None = None) -> JobRun:
    with session_scope(settings.db_url) as session:
        run = JobRun(
            job_id=job_id, status=RunStatus.running, trigger="manual", scheduled_for=scheduled_for or utcnow()
        )
        session.add(run)
        session.flush()
        run_id = run.id
    JobExecutor(settings, run_id).run()
    return run_of(settings, run_id)


def run_of(settings, run_id: int) -> JobRun:
    with session_scope(settings.db_url) as session:
        run = session.get(JobRun, run_id)
        session.expunge(run)
        return run


def job_of(settings, job_id: int) -> Job:
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def name_of(settings, job_id: int) -> str:
    return job_of(settings, job_id).name


def attachments_of(message) -> dict[str, bytes]:
    return {
        part.get_filename(): part.get_payload(decode=True) for part in message.walk() if part.get_filename()
    }


def text_of(message) -> str:
    return next(
        part.get_payload(decode=True).decode()
        for part in message.walk()
        if part.get_content_type() == "text/plain"
    )


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


# -- data by email -------------------------------------------------------------------------------------------
def test_a_csv_attachment_holds_the_query_result_and_goes_to_every_recipient(settings, world, smtp):
    job = add_job(
        settings,
        world,
        "data_email",
        {"source": "sales", "query": {"where": [["amount", ">", 10]], "order_by": [["amount", "desc"]]}},
    )
    run = run_job(settings, job, scheduled_for=datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    assert (run.status, run.error) == (RunStatus.succeeded, None)
    assert sorted(m["X-Envelope-To"] for m in smtp.messages) == ["board@acme.example", "cfo@acme.example"]
    for message in smtp.messages:
        assert message["Subject"] == f"[Carnet] {name_of(settings, job)}"
        assert "3 rows of the source 'sales'" in text_of(message)
        files = attachments_of(message)
        assert list(files) == ["sales_2026-05-04.csv"]
        # sam is studio: the row rule does not narrow; the spec's filter and order apply.
        assert csv_rows(files["sales_2026-05-04.csv"]) == [
            ["id", "region", "amount", "day", "note"],
            ["4", "east", "100.0", "2026-03-09", "plain"],
            ["3", "north", "30.0", "2026-02-01", ""],
            ["1", "north", "12.5", "2026-01-05", 'Zürich, "quoted"'],
        ]
        assert (
            files["sales_2026-05-04.csv"].decode("utf-8").splitlines()[3]
            == '1,north,12.5,2026-01-05,"Zürich, ""quoted"""'
        )
    # The attachment is the run's output, under its final name only (no partial file left).
    assert sorted(p.name for p in Path(run.output_dir).iterdir()) == ["sales_2026-05-04.csv"]


@pytest.mark.parametrize(
    "option, expected_notes",
    [
        pytest.param(
            {},
            ['\'=HYPERLINK("http://x")', "'+1", "'-2+3", "'@SUM(A1)", "'\tx", "plain -1", ""],
            id="neutralized-by-default",
        ),
        pytest.param(
            {"csv_formulas": "keep"},
            ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "plain -1", ""],
            id="kept-when-asked",
        ),
    ],
)
def test_csv_text_that_a_spreadsheet_would_run_is_neutralized_unless_kept(
    settings, world, smtp, option, expected_notes
):
    notes = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "plain -1", None]
    risky = pa.table(
        {"n": pa.array([-5, -1, 0, 1, 2, 3, 4], pa.int64()), "note": notes, "=x": list("abcdefg")}
    )
    load_table(settings, world["acme"], "risky", risky, actor="test")
    with session_scope(settings.db_url) as session:
        session.add(
            DataSource(org_id=world["acme"], name="risky", kind="warehouse_table", options={"table": "risky"})
        )
    job = add_job(settings, world, "data_email", {"source": "risky", "query": {"order_by": ["n"]}, **option})
    assert run_job(settings, job).status == RunStatus.succeeded
    [data] = attachments_of(smtp.messages[0]).values()
    rows = csv_rows(data)
    assert [row[1] for row in rows[1:]] == expected_notes
    # Numbers are never text: a negative number stays a number either way.
    assert [row[0] for row in rows[1:]] == ["-5", "-1", "0", "1", "2", "3", "4"]
    assert rows[0] == ["n", "note", "'=x" if not option else "=x"]


def test_an_xlsx_attachment_keeps_types_and_a_bold_header(settings, world, smtp):
    job = add_job(
        settings,
        world,
        "data_email",
        {
            "source": "sales",
            "format": "xlsx",
            "file_name": "Sales {{date:%d.%m.%Y}}",
            "query": {"order_by": ["id"]},
        },
    )
    run = run_job(settings, job, scheduled_for=datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    assert run.status == RunStatus.succeeded, run.error
    files = attachments_of(smtp.messages[0])
    assert list(files) == ["Sales 04.05.2026.xlsx"]
    sheet = load_workbook(io.BytesIO(files["Sales 04.05.2026.xlsx"])).active
    rows = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert rows[0] == ["id", "region", "amount", "day", "note"]
    assert all(cell.font.bold for cell in sheet[1])
    assert not sheet["A2"].font.bold
    assert rows[1:] == [
        [1, "north", 12.5, datetime(2026, 1, 5), 'Zürich, "quoted"'],
        [2, "south", 7.25, datetime(2026, 1, 6), "=1+1"],
        [3, "north", 30, datetime(2026, 2, 1), None],
        [4, "east", 100, datetime(2026, 3, 9), "plain"],
    ]
    assert sheet["A2"].data_type == "n" and sheet["C3"].data_type == "n"
    assert sheet["D2"].is_date
    # Data that looks like a formula stays text: it never runs in the reader's spreadsheet.
    assert sheet["E3"].data_type == "s"


def test_the_file_name_date_is_the_runs_day_in_the_jobs_time_zone(settings, world, smtp):
    template = {"source": "sales", "format": "xlsx", "file_name": "sales_{{date:%Y-%m-%d}}.xlsx"}
    paris = add_job(
        settings, world, "data_email", template, timezone="Europe/Paris", recipients=["p@acme.example"]
    )
    utc_job = add_job(settings, world, "data_email", template, timezone="UTC", recipients=["u@acme.example"])
    near_midnight = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)  # 00:30 on the 15th in Paris
    assert run_job(settings, paris, near_midnight).status == RunStatus.succeeded
    assert run_job(settings, utc_job, near_midnight).status == RunStatus.succeeded
    names = {m["X-Envelope-To"]: list(attachments_of(m)) for m in smtp.messages}
    assert names == {"p@acme.example": ["sales_2026-03-15.xlsx"], "u@acme.example": ["sales_2026-03-14.xlsx"]}


def test_moments_show_in_the_jobs_time_zone_and_decimals_stay_numbers(settings, world, smtp):
    from decimal import Decimal

    events = pa.table(
        {
            "at": pa.array([datetime(2026, 3, 14, 23, 30, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
            "price": pa.array([Decimal("19.99")], pa.decimal128(10, 2)),
            "paid": [True],
        }
    )
    load_table(settings, world["acme"], "events", events, actor="test")
    with session_scope(settings.db_url) as session:
        session.add(
            DataSource(
                org_id=world["acme"], name="events", kind="warehouse_table", options={"table": "events"}
            )
        )
    for fmt in ("xlsx", "csv"):
        job = add_job(
            settings, world, "data_email", {"source": "events", "format": fmt}, timezone="Europe/Paris"
        )
        assert run_job(settings, job).status == RunStatus.succeeded
    xlsx, csv_file = (next(iter(attachments_of(m).values())) for m in mails_to(smtp)[:2])
    sheet = load_workbook(io.BytesIO(xlsx)).active
    # Excel has no time zones: the moment is the Paris wall-clock time; the decimal is a number cell.
    assert [cell.value for cell in sheet[2]] == [datetime(2026, 3, 15, 0, 30), 19.99, True]
    assert sheet["B2"].data_type == "n"
    # CSV keeps the moment exact, with its offset.
    assert csv_rows(csv_file)[1] == ["2026-03-14T23:30:00+00:00", "19.99", "true"]


@pytest.mark.parametrize(
    "owner, ids",
    [
        pytest.param("sam", ["1", "2", "3", "4"], id="studio-sees-all"),
        pytest.param("rita", ["1", "3"], id="analyst-gets-her-region"),
        pytest.param("ana", [], id="analyst-without-the-attribute-gets-no-rows"),
    ],
)
def test_the_job_reads_as_its_owner_through_the_row_rules(settings, world, smtp, owner, ids):
    job = add_job(
        settings, world, "data_email", {"source": "sales", "query": {"order_by": ["id"]}}, owner=owner
    )
    assert run_job(settings, job).status == RunStatus.succeeded
    (message,) = [m for m in smtp.messages if m["X-Envelope-To"] == "board@acme.example"]
    (data,) = attachments_of(message).values()
    assert [row[0] for row in csv_rows(data)[1:]] == ids
    assert f"{len(ids)} row" in text_of(message)


def test_a_result_past_the_row_cap_fails_the_run_and_mails_nobody(settings, world, smtp):
    job = add_job(settings, world, "data_email", {"source": "sales", "max_rows": 3})
    run = run_job(settings, job)
    assert run.status == RunStatus.failed
    assert "more than 3 rows" in run.error and "filter" in run.error
    assert [m for m in smtp.messages if m["X-Envelope-To"] == "board@acme.example"] == []
    assert list(Path(run.output_dir).iterdir()) == []


def test_an_owner_demoted_to_viewer_gets_no_data(settings, world, smtp):
    job = add_job(settings, world, "data_email", {"source": "sales"}, owner="rita")
    with session_scope(settings.db_url) as session:
        session.scalar(select(Membership).where(Membership.user_id == world["rita"])).role = Role.viewer
    run = run_job(settings, job)
    assert run.status == RunStatus.failed and "may no longer query sources" in run.error
    assert [m for m in smtp.messages if m["X-Envelope-To"] == "board@acme.example"] == []


def test_the_run_reads_through_the_service_with_its_own_job_token(settings, world, smtp, monkeypatch):
    from carnet.service.api import query as query_routes

    # Who the service's query route served: the run's job token, acting as the job's owner.
    callers = []
    real_run_query = query_routes.run_query

    def recorded(session, service_settings, principal, *args, **kwargs):
        callers.append((principal.via, principal.user_id, principal.org_id))
        return real_run_query(session, service_settings, principal, *args, **kwargs)

    monkeypatch.setattr(query_routes, "run_query", recorded)
    job = add_job(settings, world, "data_email", {"source": "sales"}, owner="rita")
    run = run_job(settings, job)
    assert (run.status, run.error) == (RunStatus.succeeded, None)
    assert callers == [(TokenKind.job, world["rita"], world["acme"])]
    with session_scope(settings.db_url) as session:
        (token,) = session.scalars(select(Token).where(Token.job_run_id == run.id)).all()
        assert (token.kind, token.user_id, token.org_id) == (TokenKind.job, world["rita"], world["acme"])


def test_a_source_deleted_after_the_job_was_made_fails_the_run_without_retry(settings, world, smtp):
    job = add_job(settings, world, "alert", on_sales())
    with session_scope(settings.db_url) as session:
        session.delete(session.scalar(select(DataSource).where(DataSource.name == "sales")))
    run = run_job(settings, job)
    # The service's 404, with its message: not retried (attempt 1, failed), nobody alerted.
    assert (run.status, run.attempt) == (RunStatus.failed, 1)
    assert run.error == "The query failed: No source named 'sales'"
    assert mails_to(smtp) == []


def test_sql_the_source_no_longer_fits_fails_with_the_services_message(settings, world, smtp):
    job = add_job(settings, world, "alert", on_sql("SELECT note FROM {sales}"))
    load_table(settings, world["acme"], "sales", SALES.drop_columns(["note"]), actor="test")
    run = run_job(settings, job)
    # The service's 400 (the SQL no longer binds): not retried, its message once.
    assert (run.status, run.attempt) == (RunStatus.failed, 1)
    assert run.error.startswith("The query failed: ") and "note" in run.error
    assert run.error.count("The query failed") == 1
    assert mails_to(smtp) == []


def test_the_services_row_cap_fails_the_run_with_its_message(settings, world, smtp):
    # The service's own cap (source_max_rows: the same settings object the in-process service reads).
    settings.source_max_rows = 2
    job = add_job(settings, world, "alert", on_sql("SELECT id FROM {sales}"))
    run = run_job(settings, job)
    assert (run.status, run.attempt) == (RunStatus.failed, 1)
    assert run.error == "The query returns more than 2 rows: add a filter, a limit or an aggregate"
    assert mails_to(smtp) == []


def test_a_service_that_does_not_answer_is_retried_and_the_retry_mails(settings, world, smtp):
    job = add_job(settings, world, "data_email", {"source": "sales", "query": {"order_by": ["id"]}})
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        run_id = run.id
    unreachable = CarnetSettings()
    unreachable.api_url = f"http://127.0.0.1:{free_port()}/services/carnet/"
    assert JobExecutor(unreachable, run_id).run() == RunStatus.queued
    first = run_of(settings, run_id)
    assert first.attempt == 2 and "The Carnet service did not answer" in first.error
    assert smtp.messages == [] and list(Path(first.output_dir).iterdir()) == []
    # The service is back: the retry mints its own token and mails the data.
    assert JobExecutor(settings, run_id).run() == RunStatus.succeeded
    assert len(mails_to(smtp)) == 1
    (data,) = attachments_of(mails_to(smtp)[0]).values()
    assert [row[0] for row in csv_rows(data)[1:]] == ["1", "2", "3", "4"]
    with session_scope(settings.db_url) as session:
        assert len(session.scalars(select(Token).where(Token.job_run_id == run_id)).all()) == 2


def test_a_run_resumed_after_its_mail_was_recorded_neither_queries_nor_renders_again(
    settings, world, smtp, monkeypatch
):
    from carnet.service.api import query as query_routes

    # Counted where the service answers: the run reads through it.
    queries = []
    real_run_query = query_routes.run_query
    monkeypatch.setattr(
        query_routes, "run_query", lambda *a, **k: queries.append(1) or real_run_query(*a, **k)
    )
    job = add_job(settings, world, "data_email", {"source": "sales", "query": {"order_by": ["id"]}})
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        run_id = run.id
    # First try: the mail server is down after the attachment was written and the mail recorded.
    down = CarnetSettings()
    down.smtp_port = free_port()
    assert JobExecutor(down, run_id).run() == RunStatus.queued
    assert len(queries) == 1 and smtp.messages == []
    # The data changes before the retry: the retry mails what the first try rendered, without a query.
    load_table(settings, world["acme"], "sales", sales_with({1: 999.0}), actor="test")
    assert JobExecutor(settings, run_id).run() == RunStatus.succeeded
    assert len(queries) == 1
    assert len(smtp.messages) == 2
    for message in smtp.messages:
        (data,) = attachments_of(message).values()
        assert csv_rows(data)[1][2] == "12.5"
    # Once more (a crash after delivery): nothing is sent twice.
    assert JobExecutor(settings, run_id).run() == RunStatus.succeeded
    assert len(queries) == 1 and len(smtp.messages) == 2
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(OutboxMail).where(OutboxMail.run_id == run_id)).all()
        assert sorted((r.recipient, r.status) for r in rows) == [
            ("board@acme.example", MailStatus.sent),
            ("cfo@acme.example", MailStatus.sent),
        ]


# -- alerts --------------------------------------------------------------------------------------------------
def alert_record(run: JobRun) -> dict:
    return json.loads((Path(run.output_dir) / "alert.json").read_text())


def mails_to(smtp, recipient="board@acme.example") -> list:
    return [m for m in smtp.messages if m["X-Envelope-To"] == recipient]


def test_an_alert_mails_when_it_becomes_true_not_while_true_and_again_after_the_cool_down(
    settings, world, smtp
):
    # sum(amount) of the north: 42.5 now; the alert is "above 100".
    condition = {"aggregate": "sum", "column": "amount", "op": ">", "threshold": 100}
    job = add_job(
        settings,
        world,
        "alert",
        {"source": "sales", "query": {"where": [["region", "=", "north"]]}, "condition": condition},
    )

    def check(amount_of_1: float) -> tuple[JobRun, dict]:
        load_table(settings, world["acme"], "sales", sales_with({1: amount_of_1}), actor="test")
        run = run_job(settings, job)
        assert (run.status, run.error) == (RunStatus.succeeded, None)
        return run, alert_record(run)

    _, record = check(12.5)
    assert (record["value"], record["condition_true"], record["alerted"]) == (42.5, False, False)
    assert smtp.messages == []

    run, record = check(80.0)  # becomes true: 110 > 100
    assert (record["value"], record["condition_true"], record["alerted"]) == (110.0, True, True)
    assert sorted(m["X-Envelope-To"] for m in smtp.messages) == ["board@acme.example", "cfo@acme.example"]
    message = mails_to(smtp)[0]
    assert message["Subject"] == f"[Carnet] Alert: {name_of(settings, job)}"
    body = text_of(message)
    assert "the sum of amount of the source 'sales' is 110, > 100" in body
    assert attachments_of(message) == {}
    with session_scope(settings.db_url) as session:
        purposes = session.scalars(select(OutboxMail.purpose).where(OutboxMail.run_id == run.id)).all()
        assert purposes == ["alert", "alert"]

    _, record = check(90.0)  # still true: no mail
    assert (record["condition_true"], record["alerted"]) == (True, False)
    assert len(mails_to(smtp)) == 1

    _, record = check(12.5)  # false again
    assert (record["condition_true"], record["alerted"]) == (False, False)
    assert job_of(settings, job).alert_active is False

    _, record = check(95.0)  # true again, but within the hour's cool-down of the last mail: no mail
    assert (record["condition_true"], record["alerted"]) == (True, False)
    assert len(mails_to(smtp)) == 1 and job_of(settings, job).alert_active is True

    check(12.5)  # false again...
    with session_scope(settings.db_url) as session:  # ...and the last alert mail was two hours ago
        session.get(Job, job).alert_sent_at = utcnow() - timedelta(hours=2)
    _, record = check(95.0)
    assert (record["condition_true"], record["alerted"]) == (True, True)
    assert len(mails_to(smtp)) == 2
    assert "is 125" in text_of(mails_to(smtp)[1])


@pytest.mark.parametrize(
    "owner, alerted",
    [
        pytest.param("sam", True, id="studio-counts-every-row"),
        pytest.param("rita", False, id="analyst-counts-hers"),
    ],
)
def test_an_alert_counts_the_rows_its_owner_may_see(settings, world, smtp, owner, alerted):
    condition = {"aggregate": "count", "op": ">=", "threshold": 3}
    job = add_job(settings, world, "alert", {"source": "sales", "condition": condition}, owner=owner)
    run = run_job(settings, job)
    record = alert_record(run)
    assert record["value"] == (4 if owner == "sam" else 2)
    assert record["alerted"] is alerted
    assert len(mails_to(smtp)) == (1 if alerted else 0)


def test_an_alert_over_a_grouped_query_aggregates_its_result_rows(settings, world, smtp):
    # The largest regional total: north 42.5, south 7.25, east 100.
    query = {"group_by": ["region"], "aggregates": {"amount": "sum"}}
    condition = {"aggregate": "max", "column": "amount", "op": ">=", "threshold": 100}
    config = {"source": "sales", "query": query, "condition": condition, "cooldown_seconds": 0}
    job = add_job(settings, world, "alert", config)
    record = alert_record(run_job(settings, job))
    assert (record["value"], record["alerted"]) == (100.0, True)


def test_an_alert_on_sql_over_sources_reads_through_the_owners_rules(settings, world, smtp):
    sql = "SELECT region, sum(amount) AS total FROM {sales} GROUP BY region"
    condition = {"aggregate": "max", "column": "total", "op": ">", "threshold": 50}
    sam = add_job(
        settings, world, "alert", {"sql": sql, "condition": condition}, recipients=["s@acme.example"]
    )
    rita = add_job(
        settings,
        world,
        "alert",
        {"sql": sql, "condition": condition},
        owner="rita",
        recipients=["r@acme.example"],
    )
    assert alert_record(run_job(settings, sam))["value"] == 100.0
    assert alert_record(run_job(settings, rita))["value"] == 42.5
    assert [m["X-Envelope-To"] for m in smtp.messages] == ["s@acme.example"]
    assert "its SQL query is 100" in text_of(smtp.messages[0])


def test_an_alert_resumed_after_its_mail_was_recorded_does_not_check_or_mail_again(settings, world, smtp):
    condition = {"aggregate": "count", "op": ">", "threshold": 0}
    job = add_job(settings, world, "alert", {"source": "sales", "condition": condition})
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        run_id = run.id
    down = CarnetSettings()
    down.smtp_port = free_port()
    assert JobExecutor(down, run_id).run() == RunStatus.queued
    first = alert_record(run_of(settings, run_id))
    assert first["alerted"] is True and smtp.messages == []
    assert JobExecutor(settings, run_id).run() == RunStatus.succeeded
    assert len(mails_to(smtp)) == 1
    # The retry did not check again (a check now would find the alert active and not mail).
    assert alert_record(run_of(settings, run_id)) == first


# -- checks when a job is made -------------------------------------------------------------------------------
def on_sales(query=None, cooldown=None, **condition) -> dict:
    """An alert config on ``sales``: a count above 1 unless ``condition`` says otherwise."""
    config = {"source": "sales", "condition": {"aggregate": "count", "op": ">", "threshold": 1, **condition}}
    if query is not None:
        config["query"] = query
    if cooldown is not None:
        config["cooldown_seconds"] = cooldown
    return config


def on_sql(sql: str, **extra) -> dict:
    return {"sql": sql, "condition": {"aggregate": "count", "op": ">", "threshold": 1}, **extra}


GROUPED = {"group_by": ["region"], "aggregates": {"amount": "sum"}}


@pytest.mark.parametrize(
    "kind, config, field",
    [
        ("data_email", {"source": "sales", "format": "pdf"}, "config.format"),
        ("data_email", {"source": "sales", "file_name": "x_{{day}}.csv"}, "config.file_name"),
        ("data_email", {"source": "sales", "file_name": "x" * 200}, "config.file_name"),
        ("data_email", {"source": "sales", "file_name": " .. "}, "config.file_name"),
        ("data_email", {"source": "sales", "file_name": 7}, "config.file_name"),
        ("data_email", {"source": "sales", "max_rows": 0}, "config.max_rows"),
        ("data_email", {"source": "sales", "max_rows": 10**6}, "config.max_rows"),
        ("data_email", {"source": ""}, "config.source"),
        ("data_email", {"source": "sales", "query": {"columns": ["nope"]}}, "config.query.columns"),
        ("data_email", {"source": "sales", "query": {"where": [["amount", "~", 1]]}}, "config.query.where"),
        ("data_email", {"source": "sales", "query": {"select": "*"}}, "config.query.select"),
        ("data_email", {"source": "sales", "query": "SELECT 1"}, "config.query"),
        ("data_email", {"source": "sales", "to": "x"}, "config.to"),
        ("alert", {"source": "sales"}, "config.condition"),
        ("alert", on_sales(aggregate="median"), "config.condition.aggregate"),
        ("alert", on_sales(aggregate="sum", column="nope"), "config.condition.column"),
        ("alert", on_sales(aggregate="sum"), "config.condition.column"),
        ("alert", on_sales(column="id"), "config.condition.column"),
        ("alert", on_sales(op="=>"), "config.condition.op"),
        ("alert", on_sales(threshold="1"), "config.condition.threshold"),
        ("alert", on_sales(threshold=True), "config.condition.threshold"),
        ("alert", on_sales(cooldown=-1), "config.cooldown_seconds"),
        ("alert", on_sales(cooldown=31 * 86400), "config.cooldown_seconds"),
        # A grouped query's result has only its group and aggregate columns.
        ("alert", on_sales(GROUPED, aggregate="max", column="id"), "config.condition.column"),
        ("alert", on_sql("DELETE FROM {sales}"), "config.sql"),
        ("data_email", {"source": "sales", "csv_formulas": "strip"}, "config.csv_formulas"),
        ("alert", on_sql("SELECT * FROM sales"), "config.sql"),
        ("alert", on_sql("SELECT 1 FROM {sales}", source="sales"), "config.source"),
        ("alert", {"condition": {"aggregate": "count", "op": ">", "threshold": 1}}, "config.source"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(settings, world, kind, config, field):
    with pytest.raises(ValidationError) as caught:
        validated(settings, world, kind, config)
    assert caught.value.status == 400
    assert caught.value.fields["field"] == field, caught.value.message


@pytest.mark.parametrize(
    "kind, config",
    [
        ("data_email", {"source": "ledger"}),
        ("data_email", {"source": "nope"}),
        ("alert", {"source": "ledger", "condition": {"aggregate": "count", "op": ">", "threshold": 1}}),
        (
            "alert",
            {"sql": "SELECT * FROM {ledger}", "condition": {"aggregate": "count", "op": ">", "threshold": 1}},
        ),
    ],
)
def test_another_orgs_source_is_unknown(settings, world, kind, config):
    with pytest.raises(NotFound) as caught:
        validated(settings, world, kind, config, user="ana")
    assert caught.value.status == 404 and caught.value.message.startswith("No such source")
    # In globex, where ana is an analyst too, its own source is fine.
    assert (
        validated(settings, world, kind, config, user="ana", org="globex")
        if "nope" not in str(config)
        else True
    )


def test_a_viewer_may_not_make_a_job_on_a_source(settings, world):
    with pytest.raises(PermissionDenied):
        validated(settings, world, "data_email", {"source": "sales"}, user="vic")


def test_a_valid_config_is_stored_with_its_defaults(settings, world):
    assert validated(settings, world, "data_email", {"source": "sales", "format": "xlsx"}) == {
        "source": "sales",
        "query": None,
        "format": "xlsx",
        "file_name": "sales_{{date:%Y-%m-%d}}.xlsx",
        "max_rows": 100_000,
        "csv_formulas": "neutralize",
    }
    condition = {"aggregate": "avg", "column": "amount", "op": "<=", "threshold": 2.5}
    assert validated(settings, world, "alert", {"source": "sales", "condition": condition}) == {
        "source": "sales",
        "query": None,
        "condition": condition,
        "cooldown_seconds": 3600,
    }


# -- through the REST API (a real stack: run under flock /tmp/carnet-stack.lock) ---------------------------
def on_gapminder(**condition) -> dict:
    condition = {"aggregate": "max", "column": "lifeExp", "op": ">", "threshold": 80, **condition}
    return {"source": "gapminder", "condition": condition}


def post_job(stack, headers, kind: str, config: dict) -> requests.Response:
    body = {
        "name": unique(kind),
        "kind": kind,
        "cron": NEVER_CRON,
        "recipients": ["x@acme.example"],
        "config": config,
    }
    return requests.post(api_url(stack, "jobs"), json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "kind, config, status, field",
    [
        ("data_email", {"source": "no-such-source"}, 404, "config.source"),
        ("data_email", {"source": "gapminder", "format": "docx"}, 400, "config.format"),
        ("data_email", {"source": "gapminder", "file_name": "gdp_{{year}}.csv"}, 400, "config.file_name"),
        ("data_email", {"source": "gapminder", "query": {"limit": -1}}, 400, "config.query.limit"),
        ("alert", on_gapminder(aggregate="median"), 400, "config.condition.aggregate"),
        ("alert", on_gapminder(column="gdp"), 400, "config.condition.column"),
    ],
)
def test_the_jobs_api_refuses_bad_configs(carnet_stack, hub_token, kind, config, status, field):
    response = post_job(carnet_stack, auth(hub_token("analyst@acme.example")), kind, config)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["status"] == status and answer["message"] and answer["field"] == field


def test_the_jobs_api_makes_data_and_alert_jobs(carnet_stack, hub_token):
    headers = auth(hub_token("analyst@acme.example"))
    configs = {
        "data_email": {"source": "gapminder", "format": "xlsx", "query": {"where": [["year", "=", 2007]]}},
        "alert": on_gapminder(),
    }
    for kind, config in configs.items():
        response = post_job(carnet_stack, headers, kind, config)
        assert response.status_code == 201, response.text
        job = response.json()
        try:
            assert job["kind"] == kind
        finally:
            deleted = requests.delete(api_url(carnet_stack, f"jobs/{job['id']}"), headers=headers, timeout=30)
            assert deleted.status_code == 204


def test_data_and_alert_jobs_in_the_stack_read_through_the_service(
    carnet_stack, hub_token, created, smtp_server
):
    """The scheduler reads as the job's owner through the service's REST API (its own job token): the CSV
    mailed holds what the same query answers the owner through the API, and a holding alert mails once."""
    from carnet.client import ApiClient
    from carnet.demo import DEMO_SOURCE
    from tests.helpers import wait_until

    email = "analyst@acme.example"
    headers = auth(hub_token(email))
    spec = {
        "columns": ["country", "year", "lifeExp"],
        "where": [["continent", "=", "Oceania"], ["year", ">=", 1997]],
        "order_by": ["country", "year"],
    }

    def make_job(kind: str, config: dict, recipient: str) -> int:
        body = {"name": unique(kind), "kind": kind, "cron": None, "recipients": [recipient], "config": config}
        response = requests.post(api_url(carnet_stack, "jobs"), json=body, headers=headers, timeout=60)
        assert response.status_code == 201, response.text
        created.jobs.add(response.json()["id"])
        return response.json()["id"]

    def run_now(job_id: int) -> dict:
        queued = requests.post(api_url(carnet_stack, f"jobs/{job_id}/runs"), headers=headers, timeout=60)
        assert queued.status_code == 202, queued.text
        path = f"jobs/{job_id}/runs/{queued.json()['id']}"

        def finished():
            run = requests.get(api_url(carnet_stack, path), headers=headers, timeout=60).json()
            return run if run["status"] in ("succeeded", "failed") else None

        run = wait_until(finished, timeout=180, interval=0.5, what=f"the run of job {job_id}")
        assert (run["status"], run["error"]) == ("succeeded", None)
        return run

    def mails_for(recipient: str) -> list:
        return [m for m in smtp_server.messages if m["X-Envelope-To"] == recipient]

    data_to = f"{unique('data')}@acme.example"
    data_job = make_job("data_email", {"source": DEMO_SOURCE, "query": spec}, data_to)
    run = run_now(data_job)
    assert {mail["status"] for mail in run["mail"]} == {"sent"}
    # The scheduler read with the run's own job token (minted in the kind's prepare).
    with session_scope(carnet_stack.settings.db_url) as session:
        tokens = session.scalars(select(Token).where(Token.job_run_id == run["id"])).all()
        assert [token.kind for token in tokens] == [TokenKind.job]
    (message,) = wait_until(lambda: mails_for(data_to) or None, timeout=60, what="the data mail")
    ((name, data),) = attachments_of(message).items()
    assert name.endswith(".csv")
    rows = csv_rows(data)
    # The same query through the API, as the same person: the CSV holds exactly its rows.
    owner_api = ApiClient(f"{carnet_stack.url}/services/carnet/", token=hub_token(email))
    expected = owner_api.post_arrow(f"api/v1/sources/{DEMO_SOURCE}/query", spec).to_pylist()
    assert len(expected) >= 4  # Australia and New Zealand, 1997 onwards
    assert rows[0] == ["country", "year", "lifeExp"]
    assert rows[1:] == [[r["country"], str(r["year"]), str(r["lifeExp"])] for r in expected]

    alert_to = f"{unique('alert')}@acme.example"
    alert_job = make_job("alert", on_gapminder(), alert_to)  # max(lifeExp) > 80: holds in the demo data
    first = run_now(alert_job)
    assert [(m["recipient"], m["status"]) for m in first["mail"]] == [(alert_to, "sent")]
    (alert,) = wait_until(lambda: mails_for(alert_to) or None, timeout=60, what="the alert mail")
    highest = (
        owner_api.post_arrow(f"api/v1/sources/{DEMO_SOURCE}/query", {"aggregates": {"lifeExp": "max"}})
        .column(0)[0]
        .as_py()
    )
    assert f"is {highest:g}, > 80" in text_of(alert)
    # Still true at the next check: no second mail.
    second = run_now(alert_job)
    assert second["mail"] == [] and len(mails_for(alert_to)) == 1
