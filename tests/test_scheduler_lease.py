"""Exactly one active scheduler (carnet/scheduler/lease.py): the lease's rules on SQLite, PostgreSQL and
MariaDB, instances racing for it, and two real scheduler processes started together: one runs the jobs,
the other waits and takes over when the first is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from carnet.db import session_scope, upgrade
from carnet.db.models import App, JobRun, RunStatus, SchedulerLease, utcnow
from carnet.scheduler.lease import LEASE_NAME, give_up_lease, take_lease
from tests.test_database_servers import (  # noqa: F401 - fixtures
    any_db_url,
    server_db_url_mariadb,
    server_db_url_postgresql,
)
from tests.test_units import add_job, queue_run, settings, world  # noqa: F401 - fixtures


def test_the_lease_is_held_by_one_holder_until_it_expires_or_is_given_up(any_db_url):  # noqa: F811
    upgrade(any_db_url)
    now = utcnow()
    assert take_lease(any_db_url, "a", ttl=30, now=now)
    assert not take_lease(any_db_url, "b", ttl=30, now=now + timedelta(seconds=29))
    assert take_lease(any_db_url, "a", ttl=30, now=now + timedelta(seconds=29))  # renewed to +59 s
    assert not take_lease(any_db_url, "b", ttl=30, now=now + timedelta(seconds=58))
    # 'a' stopped renewing: 'b' takes it once it has expired, and 'a' no longer has it.
    assert take_lease(any_db_url, "b", ttl=30, now=now + timedelta(seconds=60))
    assert not take_lease(any_db_url, "a", ttl=30, now=now + timedelta(seconds=61))
    give_up_lease(any_db_url, "a")  # not the holder: changes nothing
    assert not take_lease(any_db_url, "c", ttl=30, now=now + timedelta(seconds=61))
    give_up_lease(any_db_url, "b")
    assert take_lease(any_db_url, "c", ttl=30)
    with session_scope(any_db_url) as session:
        assert session.scalars(select(SchedulerLease)).one().holder == "c"


@pytest.mark.parametrize("start", ["no-lease-yet", "expired-lease"])
def test_instances_racing_for_the_lease_get_one_winner(any_db_url, start):  # noqa: F811
    upgrade(any_db_url)
    if start == "expired-lease":
        with session_scope(any_db_url) as session:
            session.add(
                SchedulerLease(name=LEASE_NAME, holder="gone", expires_at=utcnow() - timedelta(seconds=5))
            )
    barrier, wins, refusals = threading.Barrier(6), [], []

    def instance(number):
        barrier.wait()
        try:
            if take_lease(any_db_url, f"instance-{number}", ttl=30):
                wins.append(number)
        except OperationalError:  # SQLite busy: this instance simply did not get it
            refusals.append(number)

    threads = [threading.Thread(target=instance, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(wins) == 1
    with session_scope(any_db_url) as session:
        assert session.scalars(select(SchedulerLease)).one().holder == f"instance-{wins[0]}"


# -- two real scheduler processes ------------------------------------------------------------------------
def start_scheduler(log_path):
    env = {**os.environ, "CARNET_SCHEDULER_POLL": "0.2", "CARNET_SCHEDULER_LEASE": "2"}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "carnet.scheduler"], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_schedulers_started_together_run_jobs_in_one_and_the_other_takes_over(  # noqa: F811
    settings,  # noqa: F811
    world,  # noqa: F811
    tmp_path,
):
    upgrade(settings.db_url)
    job = add_job(settings, world)
    with session_scope(settings.db_url) as session:
        # Runs of this job fail at once (its owner may not open the app): quick to run, easy to count.
        session.get(App, world["app"]).visibility = "restricted"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [start_scheduler(path) for path in logs]
    try:

        def text(index):
            return logs[index].read_text(errors="replace")

        wait_for(
            lambda: all(
                "holds the lease: running jobs" in text(i) or "waits: another instance" in text(i)
                for i in (0, 1)
            ),
            60,
            "both",
        )
        holder = next(i for i in (0, 1) if "holds the lease: running jobs" in text(i))
        waiter = 1 - holder
        assert "waits: another instance" in text(waiter) and "holds the lease: running jobs" not in text(
            waiter
        )
        runs = [queue_run(settings, job) for _ in range(3)]

        def finished():
            with session_scope(settings.db_url) as session:
                statuses = session.scalars(select(JobRun.status).where(JobRun.id.in_(runs))).all()
            return all(status == RunStatus.failed for status in statuses)

        wait_for(finished, 60, "the runs")
        assert all(f"Run {run} finished" in text(holder) for run in runs)
        assert "finished" not in text(waiter)
        # The holder is killed (no goodbye): the waiting instance takes over once the lease expires and
        # runs what is queued from then on.
        processes[holder].send_signal(signal.SIGKILL)
        processes[holder].wait(10)
        wait_for(lambda: "holds the lease: running jobs" in text(waiter), 30, "the take-over")
        later = queue_run(settings, job)
        wait_for(lambda: f"Run {later} finished" in text(waiter), 60, "the run after the take-over")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
    # A clean stop gives the lease up: the next instance need not wait for it to expire.
    with session_scope(settings.db_url) as session:
        assert session.scalars(select(SchedulerLease)).one().expires_at <= utcnow()
