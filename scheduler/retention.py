"""Output retention: a finished run's files (executed notebook, PDF, attachments, stdout/stderr) are removed
once they are older than the organization's ``job_output_retention_days`` (org setting). The run's row stays
(history: status, times, error, who triggered it) and says ``outputs_removed``. Files still needed are kept:
those of a run with mail not yet sent, and of a chain whose run has not ended."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy import exists, select

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, MailStatus, Organization, OutboxMail, RunStatus, utcnow
from carnet.org_settings import setting

log = logging.getLogger("carnet.scheduler")

ENDED = (RunStatus.succeeded, RunStatus.failed, RunStatus.skipped, RunStatus.missed)
BATCH = 500  # runs cleared per sweep at most: a first sweep over years of history stays short


def sweep_outputs(settings, now=None) -> int:
    """Remove the outputs of runs past their organization's retention; the number of runs cleared."""
    now = now or utcnow()
    cleared = 0
    with session_scope(settings.db_url) as session:
        for org in session.scalars(select(Organization)).all():
            cutoff = now - timedelta(days=setting(org, "job_output_retention_days"))
            unsent = exists().where(
                OutboxMail.run_id == JobRun.id,
                OutboxMail.status.in_((MailStatus.pending, MailStatus.sending)),
            )
            runs = session.scalars(
                select(JobRun)
                .join(Job, Job.id == JobRun.job_id)
                .where(
                    Job.org_id == org.id,
                    JobRun.status.in_(ENDED),
                    JobRun.finished_at < cutoff,
                    JobRun.output_dir.is_not(None),
                    JobRun.outputs_removed_at.is_(None),
                    ~unsent,
                )
                .limit(BATCH)
            ).all()
            for run in runs:
                parent = session.get(JobRun, run.parent_run_id) if run.parent_run_id else None
                if parent is not None and parent.status not in ENDED:
                    continue
                folder = Path(run.output_dir)
                # Only inside the runs folder: a damaged row must not make the sweep remove anything else.
                if folder.resolve().is_relative_to(Path(settings.runs_dir).resolve()):
                    shutil.rmtree(folder, ignore_errors=True)
                run.outputs_removed_at = now
                cleared += 1
    if cleared:
        log.info("Retention: removed the outputs of %s run(s)", cleared)
    return cleared
