"""The scheduler SIGKILLed 20 times at random points, restarted each time (docs/SCHEDULER.md, issue 8's
proof): no fire time is lost (each one is a run, a skipped or a missed record), every run ends, and every
recipient of every run gets its mail once. The only copy allowed is the one the outbox documents: a row killed
while 'sending' (the server may have accepted it) is resent once, with the same Message-ID.

A real scheduler process (``python -m carnet.scheduler``), a real SMTP server on loopback, the platform
database on SQLite; the job is of a test kind (tests/job_kinds_for_tests.py) added through the
``carnet.job_kinds`` entry point group, as another package would add one. Half the kills land while a run
is in progress (at a random moment of it), the others at a random moment of the scheduler's life.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, MailStatus, OutboxMail, RunStatus, utcnow
from carnet.scheduler.cron import next_fire_time
from carnet.scheduler.outbox import message_id
from tests.test_outbox import RECIPIENTS, Smtp
from tests.test_units import add_job, settings, world  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

KILLS = 20
CRON = "* * * * * */2"  # every 2 seconds (croniter: a sixth field, last, gives seconds)
REPO = Path(__file__).resolve().parent.parent


def entry_point_dir(root: Path) -> Path:
    """A distribution on the scheduler's path that declares the test kind in ``carnet.job_kinds``."""
    info = root / "carnet_test_kinds-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: carnet-test-kinds\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[carnet.job_kinds]\ntest_echo = tests.job_kinds_for_tests:EchoKind\n"
    )
    return root


def lease_holders(log_path: Path) -> set[str]:
    """The ids of the schedulers that took the lease (one may take it again after a renewal came too late
    on a busy machine: counted once)."""
    log = log_path.read_text(errors="replace")
    return set(re.findall(r"Scheduler (\S+) holds the lease: running jobs", log))


def start_scheduler(log_path: Path, env: dict) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "carnet.scheduler"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def runs(settings) -> list[JobRun]:  # noqa: F811
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(JobRun).order_by(JobRun.id)).all()
        for row in rows:
            session.expunge(row)
        return rows


def executions(settings) -> int:  # noqa: F811
    """How many times the test kind has started working, over all runs (each logs into its folder)."""
    logs = Path(settings.runs_dir).glob("*/*/*/executions.log")
    return sum(len(log.read_text().split()) for log in logs)


def finished(settings) -> list[JobRun]:  # noqa: F811
    return [run for run in runs(settings) if run.status == RunStatus.succeeded]


def sending_rows(settings) -> set[tuple[int, str]]:  # noqa: F811
    with session_scope(settings.db_url) as session:
        return set(
            session.execute(
                select(OutboxMail.run_id, OutboxMail.recipient).where(OutboxMail.status == MailStatus.sending)
            ).all()
        )


def fires_between(first: datetime, last: datetime) -> list[datetime]:
    fires, fire = [], first
    while fire <= last:
        fires.append(fire)
        fire = next_fire_time(CRON, "UTC", fire)
    return fires


def fires_of(run: JobRun) -> list[datetime]:
    """The fire times a run row stands for: its own, or the span a collapsed 'missed' record counts."""
    span = re.match(r"(?:at least )?(\d+) scheduled time\(s\) from (\S+) to (\S+) passed", run.error or "")
    if run.status == RunStatus.missed and span:
        fires = fires_between(datetime.fromisoformat(span[2]), datetime.fromisoformat(span[3]))
        assert len(fires) == int(span[1]), run.error
        return fires
    return [run.scheduled_for]


def test_sigkill_20_times_loses_no_fire_and_sends_each_mail_once(settings, world, tmp_path):  # noqa: F811
    smtp = Smtp().start()
    log_path = tmp_path / "scheduler.log"
    env = {
        **os.environ,
        "CARNET_SCHEDULER_POLL": "0.1",
        "CARNET_SCHEDULER_LEASE": "1.5",
        "CARNET_SMTP_HOST": "127.0.0.1",
        "CARNET_SMTP_PORT": str(smtp.port),
        "PYTHONPATH": os.pathsep.join([str(entry_point_dir(tmp_path / "kinds")), str(REPO)]),
    }
    start = utcnow()
    job_id = add_job(settings, world, cron=CRON, next_run_at=next_fire_time(CRON, "UTC", start))
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        job.kind, job.app_id, job.recipients = "test_echo", None, RECIPIENTS
        job.config = {"sleep": 0.4}
        job.max_retries, job.retry_backoff_seconds = 100, 1  # kills are transient failures: never give up
        first_fire = job.next_run_at
    chance = random.Random()  # noqa: S311 - test timing, not security
    seen_sending: set[tuple[int, str]] = set()
    kills_in_runs = 0
    process = None
    try:
        for kill in range(KILLS):
            process = start_scheduler(log_path, env)
            takes = kill + 1
            wait_for(
                lambda: len(lease_holders(log_path)) >= takes,  # noqa: B023
                30,
                f"scheduler {kill + 1} to take the lease",
            )
            if kill % 2 == 0:
                # Inside a run: once it works (its kind started), at a random moment of the work or the
                # mailing that follows.
                done = executions(settings)
                wait_for(lambda: executions(settings) > done, 60, "a run at work")  # noqa: B023
                time.sleep(chance.uniform(0, 0.8))
                kills_in_runs += 1
            else:
                # After at least one more run ended, at a random moment (between runs, or in the next).
                ended = len(finished(settings))
                wait_for(lambda: len(finished(settings)) > ended, 60, "a run to end")  # noqa: B023
                time.sleep(chance.uniform(0, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            seen_sending |= sending_rows(settings)
        # The last scheduler runs undisturbed; the job stops firing and everything queued drains.
        process = start_scheduler(log_path, env)
        # It takes the lease first (its start alone took over 3 s on a busy machine: a fixed sleep let the
        # test end it before it ran anything).
        wait_for(lambda: len(lease_holders(log_path)) > KILLS, 30, "the last scheduler to take the lease")
        time.sleep(2)
        with session_scope(settings.db_url) as session:
            session.get(Job, job_id).enabled = False
        wait_for(
            lambda: all(r.status not in (RunStatus.queued, RunStatus.running) for r in runs(settings)),
            120,
            "every run to end",
        )
        time.sleep(0.5)  # mail of the last run: sent before its run was marked succeeded
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(15)
        smtp.stop()

    log = log_path.read_text(errors="replace")
    # Every scheduler started took the lease (one may take it again after a renewal came too late on a busy
    # machine: its holder id is then counted once).
    assert len(lease_holders(log_path)) == KILLS + 1, log[-3000:]
    every = runs(settings)
    with session_scope(settings.db_url) as session:
        last_fire = session.get(Job, job_id).next_run_at - timedelta(seconds=2)

    # No fire time lost: each from the first to the last is covered by exactly one record.
    covered = Counter(fire for run in every for fire in fires_of(run))
    expected = fires_between(first_fire, last_fire)
    assert len(expected) >= KILLS // 2
    assert [fire for fire in expected if covered[fire] != 1] == [], "fires lost or recorded twice"
    assert set(covered) <= set(expected)

    # Every run ended; none failed (a kill is a transient failure, retried), and the kills hit runs.
    statuses = Counter(run.status for run in every)
    assert set(statuses) <= {RunStatus.succeeded, RunStatus.skipped, RunStatus.missed}, statuses
    succeeded = [run for run in every if run.status == RunStatus.succeeded]
    assert len(succeeded) >= KILLS // 2
    interrupted = [run for run in succeeded if run.attempt > 1]
    assert interrupted, "kills landed in runs, which were retried"

    # Each recipient of each run got its mail once; a copy only where a kill caught the row 'sending'.
    received = Counter(message["Message-ID"] for message in smtp.messages)
    expected_ids = {
        message_id(run.id, "report", recipient): (run.id, recipient)
        for run in succeeded
        for recipient in RECIPIENTS
    }
    with session_scope(settings.db_url) as session:  # the owner's notices of missed fires, sent
        notices = session.execute(
            select(OutboxMail.run_id, OutboxMail.purpose, OutboxMail.recipient).where(
                OutboxMail.purpose != "report", OutboxMail.status == MailStatus.sent
            )
        ).all()
    assert {purpose for _, purpose, _ in notices} <= {"missed"}
    expected_ids |= {message_id(run, purpose, to): (run, to) for run, purpose, to in notices}
    assert set(received) == set(expected_ids), "mail of runs that did not succeed, or mail missing"
    copies = {key: count for key, count in received.items() if count > 1}
    assert all(count == 2 for count in copies.values()), copies
    assert {expected_ids[key] for key in copies} <= seen_sending, "a copy of a row that was not 'sending'"
    with session_scope(settings.db_url) as session:
        statuses = set(session.scalars(select(OutboxMail.status).where(OutboxMail.purpose == "report")))
    assert statuses == {MailStatus.sent}
    print(  # the numbers behind the run, for the record (pytest -s)
        f"{len(expected)} fires: {dict(Counter(run.status.value for run in every))}; {kills_in_runs} kills "
        f"inside a run's work; {len(interrupted)} runs retried after a kill; "
        f"{len(smtp.messages)} mails, {len(copies)} documented copies"
    )
