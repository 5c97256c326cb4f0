"""JSON views of database rows. Secrets never appear here."""

from carnet.db.models import App, DataSource, Job, JobRun


def source_json(source: DataSource, with_settings: bool) -> dict:
    data = {
        "id": source.id,
        "name": source.name,
        "kind": source.kind,
        "description": source.description,
        "created_at": source.created_at.isoformat(),
    }
    if with_settings:
        data["options"] = source.options
    return data


def app_json(
    app: App, *, favourite: bool = False, versions: int | None = None, thumbnail_url: str | None = None
) -> dict:
    """``favourite`` is the caller's own mark; ``thumbnail_url`` is None when the app has no thumbnail."""
    return {
        "id": app.id,
        "slug": app.slug,
        "title": app.title,
        "description": app.description,
        "tags": list(app.tags or []),
        "visibility": app.visibility,
        "version": app.current_version,
        "versions": app.current_version if versions is None else versions,
        "thumbnail_url": thumbnail_url if app.thumbnail_path else None,
        "favourite": favourite,
        "updated_at": app.updated_at.isoformat(),
    }


def job_json(job: Job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "app_id": job.app_id,
        "cron": job.cron,
        "timezone": job.timezone,
        "parameters": job.parameters,
        "recipients": job.recipients,
        "enabled": job.enabled,
        "next_run_at": job.next_run_at.isoformat() if job.next_run_at else None,
        "misfire_grace_seconds": job.misfire_grace_seconds,
        "config": job.config or {},
        "timeout_seconds": job.timeout_seconds,
        "max_retries": job.max_retries,
        "retry_backoff_seconds": job.retry_backoff_seconds,
        "after_job_id": job.after_job_id,
        "webhook": job.webhook_hash is not None,
    }


def run_json(run: JobRun) -> dict:
    def iso(moment):
        return moment.isoformat() if moment else None

    return {
        "id": run.id,
        "job_id": run.job_id,
        "status": run.status.value,
        "trigger": run.trigger,
        "scheduled_for": iso(run.scheduled_for),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "error": run.error,
        "pdf_renderer": run.pdf_renderer,
        "triggered_by": run.triggered_by,
        "attempt": run.attempt,
        "not_before": iso(run.not_before),
        "parent_run_id": run.parent_run_id,
        "duration_seconds": (
            round((run.finished_at - run.started_at).total_seconds(), 3)
            if run.finished_at and run.started_at
            else None
        ),
        "outputs_removed": run.outputs_removed_at is not None,
    }
