"""The scheduler service: a Hub-managed process (never inside anybody's server) that turns due jobs
into queued runs and executes queued runs, one at a time.

State lives in the platform database, so a restart loses nothing: due jobs are enqueued on the next
tick, and runs a killed scheduler left 'running' are marked failed (interrupted) at start-up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from sqlalchemy import select, update
from traitlets import Float, Integer, default
from traitlets.config import Application

from carnet.db import session_scope, upgrade
from carnet.db.models import Job, JobRun, RunStatus, utcnow
from carnet.scheduler.cron import next_fire_time
from carnet.scheduler.executor import ReportExecutor
from carnet.settings import CarnetSettings

log = logging.getLogger("carnet.scheduler")


def enqueue_due_runs(db_url: str, now=None) -> list[int]:
    """Queue one run per due job and move the job's next fire time past ``now`` (missed fires collapse
    into one run). The compare-and-set on next_run_at keeps two schedulers from queuing the same fire."""
    now = now or utcnow()
    queued = []
    with session_scope(db_url) as session:
        due = session.scalars(
            select(Job).where(Job.enabled.is_(True), Job.next_run_at.is_not(None), Job.next_run_at <= now)
        ).all()
        for job in due:
            fire = job.next_run_at
            changed = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.next_run_at == fire)
                .values(next_run_at=next_fire_time(job.cron, job.timezone, now))
            ).rowcount
            if changed:
                run = JobRun(job_id=job.id, status=RunStatus.queued, trigger="schedule", scheduled_for=fire)
                session.add(run)
                session.flush()
                queued.append(run.id)
    return queued


def claim_next_run(db_url: str) -> int | None:
    with session_scope(db_url) as session:
        run_id = session.scalar(
            select(JobRun.id).where(JobRun.status == RunStatus.queued).order_by(JobRun.id).limit(1)
        )
        if run_id is None:
            return None
        claimed = session.execute(
            update(JobRun)
            .where(JobRun.id == run_id, JobRun.status == RunStatus.queued)
            .values(status=RunStatus.running, started_at=utcnow())
        ).rowcount
        return run_id if claimed else None


def fail_interrupted_runs(db_url: str) -> int:
    with session_scope(db_url) as session:
        return session.execute(
            update(JobRun)
            .where(JobRun.status == RunStatus.running)
            .values(status=RunStatus.failed, finished_at=utcnow(), error="Interrupted: the scheduler stopped")
        ).rowcount


class SchedulerService(Application):
    name = "carnet-scheduler"
    description = "Runs Carnet's scheduled jobs."
    classes = [CarnetSettings]

    poll_interval = Float(
        help="Seconds between two looks at the database for due jobs and queued runs. "
        "Environment: CARNET_SCHEDULER_POLL. Default: 2.",
    ).tag(config=True)

    @default("poll_interval")
    def _default_poll_interval(self):
        return float(os.environ.get("CARNET_SCHEDULER_POLL", "2"))

    cell_timeout = Integer(600, help="Seconds a single notebook cell of a job may run.").tag(config=True)

    def tick(self, settings: CarnetSettings) -> bool:
        """One pass: enqueue due jobs, run at most one queued run. True if a run was executed."""
        for run_id in enqueue_due_runs(settings.db_url):
            log.info("Queued scheduled run %s", run_id)
        run_id = claim_next_run(settings.db_url)
        if run_id is None:
            return False
        status = ReportExecutor(settings, run_id, cell_timeout=self.cell_timeout).run()
        log.info("Run %s finished: %s", run_id, status.value)
        return True

    def start(self):
        settings = CarnetSettings(parent=self)
        upgrade(settings.db_url)
        interrupted = fail_interrupted_runs(settings.db_url)
        if interrupted:
            log.warning("Marked %s interrupted run(s) as failed", interrupted)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        log.info("Carnet scheduler started (poll every %ss)", self.poll_interval)
        while not stop.is_set():
            try:
                busy = self.tick(settings)
            except Exception:
                log.exception("Scheduler tick failed")
                busy = False
            if not busy:
                stop.wait(self.poll_interval)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    app = SchedulerService.instance()
    app.initialize(argv)
    app.start()
