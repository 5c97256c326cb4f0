"""Job mail is sent once per (run, recipient) and failures are retried, in process against a real SMTP server
(aiosmtpd on loopback) and the platform database (carnet/scheduler/outbox.py, executor.py, run_queue.py):

- a run whose mail server is down is retried with a doubling backoff and, once the server answers, mails
  each recipient once without rendering again; a server refusing one recipient for a while gets only that
  one again;
- a transient failure of the work itself is retried, a permanent one is not; the final failure mails the
  job's owner the error and a link to the run, once;
- a run interrupted after its mail was recorded is resumed (only unsent mail goes), and a run executed twice
  sends nothing twice;
- fire times recorded as missed tell the owner, once;
- the job's own timeout is the run's limit.
"""

from __future__ import annotations

import email
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, MailStatus, OutboxMail, RunStatus, utcnow
from carnet.scheduler.executor import JobExecutor, run_link
from carnet.scheduler.kinds import kinds, register
from carnet.scheduler.outbox import deliver_due_notices, message_id
from carnet.scheduler.run_queue import claim_next_run, enqueue_due_runs, recover_interrupted_runs
from tests.helpers import free_port
from tests.job_kinds_for_tests import EchoKind
from tests.test_units import add_job, queue_run, runs_of, settings, world  # noqa: F401 - fixtures

RECIPIENTS = ["ann@client.example", "bob@client.example", "cyd@client.example"]


class Smtp:
    """A real SMTP server on loopback that keeps messages and can refuse chosen recipients (451)."""

    def __init__(self):
        self.port = free_port()
        self.messages: list[email.message.Message] = []
        self.refuse: set[str] = set()
        self.controller = None

    def start(self):
        from aiosmtpd.controller import Controller

        catcher = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
                if address in catcher.refuse:
                    return "451 4.3.0 Try again later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                message = email.message_from_bytes(envelope.content)
                message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                catcher.messages.append(message)
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    def to(self, recipient: str) -> list[email.message.Message]:
        return [m for m in self.messages if m["X-Envelope-To"] == recipient]


@pytest.fixture
def smtp(settings):  # noqa: F811
    server = Smtp().start()
    settings.smtp_host, settings.smtp_port = "127.0.0.1", server.port
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def echo_kind():
    kinds()  # the built-in kinds first, then this test's
    register(EchoKind)


def echo_job(settings, world, **config) -> int:  # noqa: F811
    job_id = add_job(settings, world)
    retries = config.pop("max_retries", 3)
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        job.kind, job.app_id, job.config, job.recipients = "test_echo", None, config, RECIPIENTS
        job.max_retries, job.retry_backoff_seconds = retries, 30
    return job_id


def claim_and_run(settings, now=None) -> tuple[int, RunStatus]:  # noqa: F811
    run_id = claim_next_run(settings.db_url, now=now)
    assert run_id is not None, "a run should be ready to start"
    return run_id, JobExecutor(settings, run_id).run()


def run_of(settings, run_id) -> JobRun:  # noqa: F811
    with session_scope(settings.db_url) as session:
        run = session.get(JobRun, run_id)
        session.expunge(run)
        return run


def outbox(settings, run_id) -> dict[tuple[str, str], OutboxMail]:  # noqa: F811
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(OutboxMail).where(OutboxMail.run_id == run_id)).all()
        for row in rows:
            session.expunge(row)
        return {(row.purpose, row.recipient): row for row in rows}


def executions(run: JobRun) -> int:
    log = Path(run.output_dir) / "executions.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_mail_server_down_retries_with_backoff_then_mails_each_recipient_once(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world)
    queue_run(settings, job)
    smtp.stop()  # the server is down

    run_id, status = claim_and_run(settings)
    assert status == RunStatus.queued
    run = run_of(settings, run_id)
    assert run.attempt == 2 and "retried in 30 s" in run.error and "not delivered" in run.error
    assert 29 <= (run.not_before - utcnow()).total_seconds() <= 31
    assert (Path(run.output_dir) / "echo.txt").exists()  # rendered once, kept for the retry
    assert {row.status for row in outbox(settings, run_id).values()} == {MailStatus.pending}
    # Not before its time...
    assert claim_next_run(settings.db_url) is None
    # ...and the second try, still down, waits twice as long.
    _, status = claim_and_run(settings, now=run.not_before)
    second = run_of(settings, run_id)
    assert status == RunStatus.queued and second.attempt == 3
    assert 59 <= (second.not_before - utcnow()).total_seconds() <= 61

    smtp.start()
    settings.smtp_port = smtp.port
    _, status = claim_and_run(settings, now=second.not_before)
    assert status == RunStatus.succeeded
    done = run_of(settings, run_id)
    assert done.error is None and done.finished_at is not None
    assert executions(done) == 1, "the retries only delivered the recorded mail"
    for recipient in RECIPIENTS:
        [message] = smtp.to(recipient)
        assert message["Subject"] == f"Echo of run {run_id}"
        assert message["Message-ID"] == message_id(run_id, "report", recipient)
        [attachment] = [part for part in message.walk() if part.get_filename()]
        assert attachment.get_filename() == "echo.txt"
        assert attachment.get_payload(decode=True).decode().startswith(f"run {run_id} for ")
    rows = outbox(settings, run_id)
    assert all(row.status == MailStatus.sent and row.sent_at for row in rows.values())

    # The same run executed again (at-least-once execution) sends nothing more.
    with session_scope(settings.db_url) as session:
        session.get(JobRun, run_id).status = RunStatus.running
    assert JobExecutor(settings, run_id).run() == RunStatus.succeeded
    assert len(smtp.messages) == len(RECIPIENTS)


def test_a_recipient_refused_for_a_while_is_the_only_one_sent_again(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world)
    queue_run(settings, job)
    smtp.refuse = {"bob@client.example"}
    run_id, status = claim_and_run(settings)
    assert status == RunStatus.queued
    rows = outbox(settings, run_id)
    assert rows["report", "ann@client.example"].status == MailStatus.sent
    assert rows["report", "bob@client.example"].status == MailStatus.pending
    assert "451" in rows["report", "bob@client.example"].last_error
    smtp.refuse = set()
    _, status = claim_and_run(settings, now=run_of(settings, run_id).not_before)
    assert status == RunStatus.succeeded
    assert [len(smtp.to(r)) for r in RECIPIENTS] == [1, 1, 1]
    assert outbox(settings, run_id)["report", "bob@client.example"].attempts == 2


def test_the_final_failure_mails_the_owner_once_with_the_error_and_the_runs_link(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world, fail_tries=99, max_retries=1)
    queue_run(settings, job)
    run_id, status = claim_and_run(settings)
    assert status == RunStatus.queued
    _, status = claim_and_run(settings, now=run_of(settings, run_id).not_before)
    assert status == RunStatus.failed
    run = run_of(settings, run_id)
    assert run.attempt == 2 and run.error == "The source's server did not answer"
    assert executions(run) == 2
    assert deliver_due_notices(settings) == 1
    assert deliver_due_notices(settings) == 0  # once
    [notice] = smtp.to("ana@acme.example")
    assert "failed" in notice["Subject"] and notice["Subject"].startswith("[Carnet] Job 'job ")
    body = notice.get_payload(decode=True).decode()
    assert "failed after 2 tries" in body and "The source's server did not answer" in body
    assert run_link(settings, job, run_id) in body
    assert not any(smtp.to(r) for r in RECIPIENTS), "a failed run mails no report"


def test_a_permanent_failure_is_not_retried(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world, fail_tries=1, failure="permanent")
    queue_run(settings, job)
    run_id, status = claim_and_run(settings)
    assert status == RunStatus.failed
    run = run_of(settings, run_id)
    assert (run.attempt, run.error, run.not_before) == (1, "The data is wrong", None)
    assert claim_next_run(settings.db_url, now=utcnow() + timedelta(days=1)) is None
    assert deliver_due_notices(settings) == 1
    assert "The data is wrong" in smtp.to("ana@acme.example")[0].get_payload(decode=True).decode()


def test_an_interrupted_run_with_recorded_mail_resumes_without_rendering_again(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world)
    queue_run(settings, job)
    smtp.refuse = set(RECIPIENTS[1:])
    run_id, _ = claim_and_run(settings)
    # As if the scheduler had been killed during its retry: the run is left 'running', one row 'sending'.
    with session_scope(settings.db_url) as session:
        session.get(JobRun, run_id).status = RunStatus.running
        row = session.scalar(
            select(OutboxMail).where(OutboxMail.run_id == run_id, OutboxMail.recipient == RECIPIENTS[1])
        )
        row.status = MailStatus.sending
    smtp.refuse = set()
    assert recover_interrupted_runs(settings) == 1
    recovered = run_of(settings, run_id)
    assert recovered.status == RunStatus.queued and recovered.not_before is None
    assert "Interrupted" in recovered.error
    _, status = claim_and_run(settings)
    assert status == RunStatus.succeeded
    assert executions(run_of(settings, run_id)) == 1
    assert [len(smtp.to(r)) for r in RECIPIENTS] == [1, 1, 1]


def test_an_interrupted_run_out_of_tries_fails_and_tells_the_owner(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world, max_retries=0)
    run_id = queue_run(settings, job, RunStatus.running)
    assert recover_interrupted_runs(settings) == 1
    run = run_of(settings, run_id)
    assert run.status == RunStatus.failed and "Interrupted" in run.error
    assert deliver_due_notices(settings) == 1
    assert "Interrupted" in smtp.to("ana@acme.example")[0].get_payload(decode=True).decode()


def test_missed_fire_times_tell_the_owner_once(settings, world, smtp):  # noqa: F811
    # 5.5 minutes after a */10 fire time (past its 60 s of grace: missed, not run late) and in the past (the
    # notice is due now). The wall clock's "now" fell within the grace 1 run in 10 and that fire then ran.
    now = (utcnow() - timedelta(hours=1)).replace(minute=5, second=30, microsecond=0)
    job = add_job(settings, world, cron="*/10 * * * *", next_run_at=now - timedelta(hours=3))
    with session_scope(settings.db_url) as session:
        session.get(Job, job).misfire_grace_seconds = 60
    assert enqueue_due_runs(settings.db_url, now=now) == []
    missed = [run for run in runs_of(settings, job) if run.status == RunStatus.missed]
    assert missed
    assert deliver_due_notices(settings) == 1
    assert enqueue_due_runs(settings.db_url, now=now) == []
    assert deliver_due_notices(settings) == 0
    [notice] = smtp.to("ana@acme.example")
    assert "missed" in notice["Subject"]
    assert "did not run" in notice.get_payload(decode=True).decode()


def test_notices_wait_longer_after_each_failed_try(settings, world, smtp):  # noqa: F811
    job = echo_job(settings, world, fail_tries=1, failure="permanent")
    queue_run(settings, job)
    run_id, _ = claim_and_run(settings)
    smtp.stop()
    now = utcnow()
    assert deliver_due_notices(settings, now=now) == 0
    [notice] = [row for (purpose, _), row in outbox(settings, run_id).items() if purpose == "failure"]
    assert notice.status == MailStatus.pending and notice.attempts == 1
    assert 59 <= (notice.next_attempt_at - now).total_seconds() <= 61
    assert deliver_due_notices(settings, now=now + timedelta(seconds=61)) == 0
    [notice] = [row for (purpose, _), row in outbox(settings, run_id).items() if purpose == "failure"]
    assert notice.attempts == 2 and 119 <= (notice.next_attempt_at - now).total_seconds() <= 182


def test_the_jobs_own_timeout_is_the_runs_limit(settings, world):  # noqa: F811
    job = echo_job(settings, world)
    with session_scope(settings.db_url) as session:
        session.get(Job, job).timeout_seconds = 42
    run_id = queue_run(settings, job, RunStatus.running)
    executor = JobExecutor(settings, run_id)
    context = executor.before_start()
    assert executor.run_timeout == 42 and context.timeout == 42
    with session_scope(settings.db_url) as session:
        session.get(Job, job).timeout_seconds = None
    assert JobExecutor(settings, run_id).before_start().timeout == settings.job_run_timeout_seconds
