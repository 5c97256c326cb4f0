"""The queue of job runs in the platform database: due jobs become runs, the worker claims them one by one.

What a fire time becomes (``enqueue_due_runs``), the promises of docs/SCHEDULER.md:
- a run's identity is (job, scheduled time): a compare-and-set on the job's ``next_run_at`` makes one run per
  fire even with two schedulers looking at once;
- fires missed while no scheduler ran collapse: the LATEST missed fire runs once if it is at most the job's
  ``misfire_grace_seconds`` old, else it is recorded as ``missed``; older missed fires are recorded as one
  ``missed`` row that counts them (a job firing every minute down for a week must not make 10,000 rows);
- runs of one job never overlap: a fire that comes while the job's previous run is still queued or running is
  recorded as ``skipped``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, or_, select, update

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, RunStatus, utcnow
from carnet.scheduler.cron import next_fire_time

ACTIVE = (RunStatus.queued, RunStatus.running)
# Missed fire times listed one by one; past this many, only the latest is looked for.
MAX_FIRES_LISTED = 1000


def due_fires(job: Job, now) -> list:
    """Every fire time of ``job`` from its ``next_run_at`` up to ``now``, oldest first (capped: a long
    outage yields its first fires and the last one)."""
    fires, fire = [], job.next_run_at
    while fire is not None and fire <= now:
        fires.append(fire)
        if len(fires) > MAX_FIRES_LISTED:  # the rest are skipped over: only the latest matters from here
            fires[-1] = latest_fire(job, now)
            break
        fire = next_fire_time(job.cron, job.timezone, fire)
    return fires


def latest_fire(job: Job, now):
    """The last fire time at or before ``now``, at or after the job's ``next_run_at`` (cron has no
    'previous': step forward from a day before ``now``, a wider window when that day had none)."""
    window = timedelta(days=1)
    while True:
        probe = max(now - window, job.next_run_at)
        last, fire = None, next_fire_time(job.cron, job.timezone, probe)
        while fire <= now:
            last, fire = fire, next_fire_time(job.cron, job.timezone, fire)
        if last is not None or probe == job.next_run_at:
            return last or job.next_run_at
        window *= 2


def notify_missed(session, job: Job, run: JobRun, missed: int, at_least: bool) -> None:
    """Tell the job's owner, once per tick and job, that fire times were missed (an outbox notice)."""
    from carnet.scheduler.outbox import queue_notice

    count = f"at least {missed}" if at_least else str(missed)
    queue_notice(
        session,
        run.id,
        job.org_id,
        job.owner.email,
        "missed",
        f"[Carnet] Job {job.name!r} missed {count} scheduled run(s)",
        f"Your job {job.name!r} did not run {count} time(s) while no scheduler ran"
        f" (grace: {job.misfire_grace_seconds} s).\n\n"
        + ("The latest scheduled time was run late.\n\n" if run.status != RunStatus.missed else "")
        + "-- Carnet",
    )


def enqueue_due_runs(db_url: str, now=None) -> list[int]:
    """Record what each due job's fire times became; the ids of the runs queued to execute."""
    now = now or utcnow()
    queued = []
    with session_scope(db_url) as session:
        due = session.scalars(
            select(Job).where(Job.enabled.is_(True), Job.next_run_at.is_not(None), Job.next_run_at <= now)
        ).all()
        for job in due:
            first = job.next_run_at
            fires = due_fires(job, now)
            changed = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.next_run_at == first)
                .values(next_run_at=next_fire_time(job.cron, job.timezone, now))
            ).rowcount
            if not changed:
                continue  # another scheduler recorded these fires
            latest, older = fires[-1], fires[:-1]
            counted_older = len(older) >= MAX_FIRES_LISTED
            if older:
                # Capped (due_fires): the count is a floor, and the span runs up to the latest fire.
                counted = f"at least {len(older)}" if len(older) >= MAX_FIRES_LISTED else str(len(older))
                until = (
                    f"before {latest.isoformat()}"
                    if len(older) >= MAX_FIRES_LISTED
                    else older[-1].isoformat()
                )
                session.add(
                    JobRun(
                        job_id=job.id,
                        status=RunStatus.missed,
                        trigger="schedule",
                        scheduled_for=older[-1],
                        finished_at=now,
                        error=(
                            f"{counted} scheduled time(s) from {older[0].isoformat()} to {until} "
                            "passed while no scheduler ran"
                        ),
                    )
                )
            run = JobRun(job_id=job.id, trigger="schedule", scheduled_for=latest)
            busy = session.scalar(
                select(func.count(JobRun.id)).where(JobRun.job_id == job.id, JobRun.status.in_(ACTIVE))
            )
            late = (now - latest).total_seconds()
            if late > job.misfire_grace_seconds:
                run.status, run.finished_at = RunStatus.missed, now
                run.error = (
                    f"Missed: due {int(late)} s ago while no scheduler ran, more than the job's grace of "
                    f"{job.misfire_grace_seconds} s"
                )
            elif busy:
                run.status, run.finished_at = RunStatus.skipped, now
                run.error = "Skipped: the job's previous run had not finished (runs of a job never overlap)"
            else:
                run.status = RunStatus.queued
            session.add(run)
            session.flush()
            if run.status == RunStatus.queued:
                queued.append(run.id)
            if run.status == RunStatus.missed or older:
                notify_missed(session, job, run, len(older) + (run.status == RunStatus.missed), counted_older)
    return queued


def claim_next_run(db_url: str, now=None) -> int | None:
    """The oldest queued run that may start (a retry waits for its ``not_before``), marked running. A
    chain's steps are never claimed: their chain runs them."""
    now = now or utcnow()
    with session_scope(db_url) as session:
        run_id = session.scalar(
            select(JobRun.id)
            .where(
                JobRun.status == RunStatus.queued,
                JobRun.parent_run_id.is_(None),
                or_(JobRun.not_before.is_(None), JobRun.not_before <= now),
            )
            .order_by(JobRun.id)
            .limit(1)
        )
        if run_id is None:
            return None
        claimed = session.execute(
            update(JobRun)
            .where(JobRun.id == run_id, JobRun.status == RunStatus.queued)
            .values(status=RunStatus.running, started_at=now)
        ).rowcount
        return run_id if claimed else None


def recover_interrupted_runs(settings) -> int:
    """Runs left 'running' by a scheduler that stopped, or by a step that could not record its end (call only
    while holding the lease, when this scheduler runs nothing). An interruption is a transient failure: the
    run is queued again (its outputs and mail, if recorded, are reused: carnet/scheduler/outbox.py) while the
    job has tries left, else it fails and its owner is told. A chain's steps fail; their chain is retried."""
    from carnet.scheduler.executor import fail_or_retry
    from carnet.tokens import revoke_run_tokens

    message = "Interrupted: the scheduler stopped during the run"
    with session_scope(settings.db_url) as session:
        runs = session.scalars(select(JobRun).where(JobRun.status == RunStatus.running)).all()
        for run in sorted(runs, key=lambda r: r.parent_run_id is None):  # steps first
            revoke_run_tokens(session, run.id)  # a retry mints its own
            if run.parent_run_id is not None:
                run.status, run.error, run.finished_at = RunStatus.failed, message, utcnow()
            else:
                # The interruption was the wait: go again at once.
                fail_or_retry(session, settings, run, message, transient=True, wait=False)
        return len(runs)
