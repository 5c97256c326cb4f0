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
    }
