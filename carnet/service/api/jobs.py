"""/api/v1/jobs: automations (kinds: carnet/scheduler/kinds), their runs with their mail and output files,
and "run now".

A job's schedule is raw ``cron`` or a ``schedule`` preset (carnet/scheduler/cron.py ``cron_from_preset``),
read in its ``timezone``; ``misfire_grace_seconds`` says how late a fire missed while no scheduler ran may
still run (carnet/scheduler/run_queue.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.db.models import Job, JobRun, OutboxMail, RunStatus, role_at_least, utcnow
from carnet.errors import Conflict, NotFound, PermissionDenied, ValidationError
from carnet.org_settings import org_setting
from carnet.scheduler.attachments import mime_type_of
from carnet.scheduler.cron import cron_of, next_fire_time, validate_timezone
from carnet.scheduler.kinds import kind_named
from carnet.scheduler.outbox import mail_json
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import job_json, run_json
from carnet.sharing import find_openable_app
from carnet.validation import parse_id, validate_emails

DEFAULT_GRACE = 3600
MAX_RUNS_LISTED = 1000
MAX_GRACE = 7 * 24 * 3600
MAX_TIMEOUT = 24 * 3600
DEFAULT_RETRIES, MAX_RETRIES = 3, 10
DEFAULT_BACKOFF, MAX_BACKOFF = 60, 24 * 3600


def find_job(session, org_id: int, job_id) -> Job:
    job_id = parse_id(job_id, "No such job")
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == org_id))
    if job is None:
        raise NotFound("No such job")
    return job


def whole_number(body: dict, key: str, default, low: int, high: int, nullable: bool = False):
    value = body.get(key, default)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        also = " (or null)" if nullable else ""
        raise ValidationError(f"{key} must be a whole number from {low} to {high}{also}", field=key)
    return value


def check_after_job(session, org_id: int, after_job_id, job_id: int | None = None) -> int | None:
    """``after_job_id``: a job of the same organization (another org's id is a 404 like a missing one);
    following it must not lead back to ``job_id`` (a loop would run forever)."""
    if after_job_id is None:
        return None
    leader = find_job(session, org_id, after_job_id)
    seen, step = set(), leader
    while step is not None and step.id not in seen:
        if step.id == job_id:
            raise ValidationError(
                "after_job_id would make jobs start each other in a loop", field="after_job_id"
            )
        seen.add(step.id)
        step = session.get(Job, step.after_job_id) if step.after_job_id else None
    return leader.id


# A job's whole-number settings: default (when POST leaves one out), lowest, highest, null allowed.
NUMBER_FIELDS = {
    "misfire_grace_seconds": (DEFAULT_GRACE, 0, MAX_GRACE),
    "timeout_seconds": (None, 1, MAX_TIMEOUT, True),
    "max_retries": (DEFAULT_RETRIES, 0, MAX_RETRIES),
    "retry_backoff_seconds": (DEFAULT_BACKOFF, 1, MAX_BACKOFF),
}
# What PATCH may change; ``kind`` and the owner are fixed for the job's life.
PATCHABLE = {
    "enabled",
    "name",
    "cron",
    "schedule",
    "timezone",
    "recipients",
    "parameters",
    "after_job_id",
    "config",
    "app_id",
    *NUMBER_FIELDS,
}
FIXED = ("kind", "owner", "owner_id")


# -- checks shared by POST (create) and PATCH (change): same rules, same messages ----------------------------
def job_name(body: dict) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValidationError("A job needs a name (1-200 characters)", field="name")
    return name


def check_kind_role(principal, kind) -> None:
    """A kind may ask more than the action's role (a load job changes the warehouse: studio)."""
    if not role_at_least(principal.role, kind.min_role):
        raise PermissionDenied(f"A {kind.name} job needs the {kind.min_role.value} role or above")


def job_parameters(body: dict) -> dict:
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValidationError("parameters must be an object", field="parameters")
    return parameters


def job_recipients(kind, body: dict) -> list[str]:
    if kind.needs_recipients or body.get("recipients") not in (None, []):
        return validate_emails(body.get("recipients"), field="recipients")
    return []


def check_no_app(kind, body: dict) -> None:
    if not kind.needs_app and body.get("app_id") is not None:
        raise ValidationError(f"A {kind.name} job works on no app: leave app_id out", field="app_id")


def next_run_from_now(cron: str | None, timezone: str):
    """A job's next fire from now: fires a disabled job or an old schedule passed are not caught up."""
    return next_fire_time(cron, timezone, utcnow()) if cron else None


def job_as_body(job: Job) -> dict:
    """A job as a POST body, for a kind's ``validate`` when PATCH changes part of it."""
    return {
        "id": job.id,  # a chain's steps must not lead back to the job itself
        "name": job.name,
        "kind": job.kind,
        "app_id": job.app_id,
        "config": job.config or {},
        "cron": job.cron,
        "timezone": job.timezone,
        "parameters": job.parameters or {},
        "recipients": list(job.recipients or []),
        "after_job_id": job.after_job_id,
    }


def patched_values(session, settings, principal, job: Job, kind, body: dict) -> dict:
    """The new value of each field ``body`` sends (column name -> value), all checked; nothing is changed."""
    unknown = sorted(set(body) - PATCHABLE - set(FIXED))
    if unknown:
        raise ValidationError(f"Unknown field(s): {', '.join(unknown)}", field=unknown[0])
    fixed = [key for key in FIXED if key in body]
    if fixed:
        raise ValidationError(f"A job's {fixed[0]} cannot change: make a new job", field=fixed[0])
    values = {}
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise ValidationError("enabled must be true or false", field="enabled")
        values["enabled"] = body["enabled"]
    if "name" in body:
        values["name"] = job_name(body).strip()
    if "cron" in body or "schedule" in body:
        values["cron"] = cron_of(body)
    for key, limits in NUMBER_FIELDS.items():
        if key in body:
            values[key] = whole_number(body, key, *limits)
    if "timezone" in body:
        validate_timezone(body["timezone"])
        values["timezone"] = body["timezone"]
    if "parameters" in body:
        values["parameters"] = job_parameters(body)
    if "recipients" in body:
        values["recipients"] = job_recipients(kind, body)
    if "app_id" in body:
        check_no_app(kind, body)
        if kind.needs_app:  # one may point a job only at an app one may open
            values["app_id"] = find_openable_app(session, principal, body["app_id"]).id
    if "after_job_id" in body:
        values["after_job_id"] = check_after_job(session, job.org_id, body["after_job_id"], job_id=job.id)
    if "config" in body or "app_id" in body:
        # The kind checks its config against the job as it would be (its app may matter to it).
        values["config"] = kind.validate(session, settings, principal, {**job_as_body(job), **body}) or None
    return values


class JobListHandler(BaseHandler):
    @authorized("jobs:list")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            jobs = session.scalars(select(Job).where(Job.org_id == principal.org_id).order_by(Job.name)).all()
            self.write_json({"jobs": [job_json(job) for job in jobs]})

    @authorized("jobs:create")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        name = job_name(body)
        kind = kind_named(body.get("kind", "report"))
        check_kind_role(principal, kind)
        cron = cron_of(body)
        numbers = {key: whole_number(body, key, *limits) for key, limits in NUMBER_FIELDS.items()}
        timezone = body.get("timezone")
        if "timezone" in body:  # left out: the organization's time zone (org setting), read below
            validate_timezone(timezone)
        parameters = job_parameters(body)
        recipients = job_recipients(kind, body)
        check_no_app(kind, body)
        try:
            with self.db() as session:
                if "timezone" not in body:
                    timezone = org_setting(session, principal.org_id, "timezone")
                # One schedules only an app one may open (a restricted app not shared is unknown).
                app = find_openable_app(session, principal, body.get("app_id")) if kind.needs_app else None
                after = check_after_job(session, principal.org_id, body.get("after_job_id"))
                config = kind.validate(session, self.settings_obj, principal, body)
                job = Job(
                    org_id=principal.org_id,
                    name=name.strip(),
                    kind=kind.name,
                    app_id=app.id if app else None,
                    config=config or None,
                    cron=cron,
                    timezone=timezone,
                    parameters=parameters,
                    recipients=recipients,
                    owner_id=principal.user_id,
                    next_run_at=next_run_from_now(cron, timezone),
                    after_job_id=after,
                    **numbers,
                )
                session.add(job)
                session.flush()
                self.audit(
                    session,
                    "job.create",
                    f"job/{job.id}",
                    name=job.name,
                    kind=kind.name,
                    app_id=job.app_id,
                    cron=cron,
                )
                session.flush()
                self.write_json(job_json(job), status=201)
        except IntegrityError:
            raise Conflict(f"A job named {name!r} already exists") from None


class JobHandler(BaseHandler):
    @authorized("jobs:read")
    def get(self, job_id):
        with self.db() as session:
            self.write_json(job_json(find_job(session, self.principal().org_id, job_id)))

    @authorized("jobs:update")
    def patch(self, job_id):
        """Change the fields sent (others stay), each checked as POST checks it, every one before anything
        changes. A new schedule or time zone, or enabling the job, sets its next fire from now: fires that
        passed while it was disabled are not caught up. Disabling keeps ``next_run_at`` (due jobs are only
        the enabled ones: carnet/scheduler/run_queue.py)."""
        principal = self.principal()
        name = None
        try:
            with self.db() as session:
                # The job first: another org's job is a 404 whatever the body says.
                job = find_job(session, principal.org_id, job_id)
                kind = kind_named(job.kind)
                check_kind_role(principal, kind)
                body = self.get_json_body()
                values = patched_values(session, self.settings_obj, principal, job, kind, body)
                name = values.get("name")
                changed = sorted(key for key, value in values.items() if getattr(job, key) != value)
                reschedule = bool({"cron", "timezone"} & set(changed)) or (
                    values.get("enabled") is True and not job.enabled
                )
                for key in changed:
                    setattr(job, key, values[key])
                if reschedule:
                    job.next_run_at = next_run_from_now(job.cron, job.timezone)
                session.flush()
                self.audit(session, "job.update", f"job/{job.id}", name=job.name, changed=changed)
                session.flush()
                self.write_json(job_json(job))
        except IntegrityError:
            raise Conflict(f"A job named {name!r} already exists") from None

    @authorized("jobs:delete")
    def delete(self, job_id):
        with self.db() as session:
            job = find_job(session, self.principal().org_id, job_id)
            outputs = self.settings_obj.runs_dir / str(job.org_id) / str(job.id)
            self.audit(session, "job.delete", f"job/{job.id}", name=job.name)
            session.delete(job)
        # The job's runs went with it (cascade); so do their files.
        shutil.rmtree(outputs, ignore_errors=True)
        self.set_status(204)
        self.finish()


class JobRunsHandler(BaseHandler):
    @authorized("jobs:read")
    def get(self, job_id):
        limit = self.get_query_argument("limit", "50")
        with self.db() as session:
            job = find_job(session, self.principal().org_id, job_id)
            # After the job lookup: another org's job id is a 404 whatever the limit says.
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_RUNS_LISTED:
                raise ValidationError(
                    f"limit must be a whole number from 1 to {MAX_RUNS_LISTED}", field="limit"
                )
            runs = session.scalars(
                select(JobRun).where(JobRun.job_id == job.id).order_by(JobRun.id.desc()).limit(int(limit))
            ).all()
            self.write_json({"runs": [run_json(run) for run in runs]})

    @authorized("jobs:run")
    def post(self, job_id):
        """Run now: queue a run; the scheduler picks it up within its poll interval. A run of the job still
        queued or running goes first (one worker: runs never overlap); a SCHEDULED fire meeting one is
        recorded as skipped instead (carnet/scheduler/run_queue.py)."""
        with self.db() as session:
            job = find_job(session, self.principal().org_id, job_id)
            run = JobRun(
                job_id=job.id,
                status=RunStatus.queued,
                trigger="manual",
                triggered_by=self.principal().email,
                scheduled_for=utcnow(),
            )
            session.add(run)
            session.flush()
            self.audit(session, "job.run", f"job/{job.id}", run_id=run.id, name=job.name)
            session.flush()
            self.write_json(run_json(run), status=202)


def find_run(session, job: Job, run_id) -> JobRun:
    run_id = parse_id(run_id, "No such run")
    run = session.scalar(select(JobRun).where(JobRun.id == run_id, JobRun.job_id == job.id))
    if run is None:
        raise NotFound("No such run")
    return run


def run_outputs(run: JobRun) -> list[dict]:
    """The files a run left (executed notebook, PDF, attachments, stdout/stderr), not partial ones."""
    if not run.output_dir or run.outputs_removed_at is not None:
        return []
    folder = Path(run.output_dir)
    if not folder.is_dir():
        return []
    return [
        {"name": path.name, "size": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


class JobRunHandler(BaseHandler):
    @authorized("jobs:read")
    def get(self, job_id, run_id):
        """One run: its history fields, its mail (per recipient: sent, pending, failed) and its outputs."""
        with self.db() as session:
            job = find_job(session, self.principal().org_id, job_id)
            run = find_run(session, job, run_id)
            mail = session.scalars(
                select(OutboxMail).where(OutboxMail.run_id == run.id).order_by(OutboxMail.id)
            )
            steps = session.scalars(
                select(JobRun).where(JobRun.parent_run_id == run.id).order_by(JobRun.id)
            ).all()
            self.write_json(
                {
                    **run_json(run),
                    "mail": [mail_json(row) for row in mail],
                    "outputs": run_outputs(run),
                    # What its trigger gave (a webhook's body), merged over the job's parameters.
                    "payload": run.payload,
                    "steps": [run_json(step) for step in steps],
                }
            )


class JobRunOutputHandler(BaseHandler):
    @authorized("jobs:read")
    def get(self, job_id, run_id, output):
        """Download one output file of a run (the name as listed; nothing outside the run's folder)."""
        with self.db() as session:
            job = find_job(session, self.principal().org_id, job_id)
            run = find_run(session, job, run_id)
            listed = {entry["name"] for entry in run_outputs(run)}
            if output not in listed:
                raise NotFound("No such output")
            path = Path(run.output_dir) / output
        self.set_header("Content-Type", mime_type_of(path))
        self.set_header("Content-Disposition", f'attachment; filename="{output}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(path.read_bytes())


default_handlers = [
    (API_PREFIX + r"jobs", JobListHandler),
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)", JobHandler),
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)/runs", JobRunsHandler),
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)/runs/(?P<run_id>[^/]+)", JobRunHandler),
    (
        API_PREFIX + r"jobs/(?P<job_id>[^/]+)/runs/(?P<run_id>[^/]+)/outputs/(?P<output>[^/]+)",
        JobRunOutputHandler,
    ),
]
