"""/api/v1/jobs: scheduled report jobs, their runs, and "run now".

A job's schedule is raw ``cron`` or a ``schedule`` preset (carnet/scheduler/cron.py ``cron_from_preset``),
read in its ``timezone``; ``misfire_grace_seconds`` says how late a fire missed while no scheduler ran may
still run (carnet/scheduler/run_queue.py)."""

from __future__ import annotations

import shutil

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.db.models import Job, JobRun, RunStatus, utcnow
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.org_settings import org_setting
from carnet.scheduler.cron import cron_of, next_fire_time, validate_timezone
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import job_json, run_json
from carnet.sharing import find_openable_app
from carnet.validation import parse_id, validate_emails

DEFAULT_GRACE = 3600
MAX_RUNS_LISTED = 1000
MAX_GRACE = 7 * 24 * 3600


def find_job(session, org_id: int, job_id) -> Job:
    job_id = parse_id(job_id, "No such job")
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == org_id))
    if job is None:
        raise NotFound("No such job")
    return job


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
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("A job needs a name (1-200 characters)", field="name")
        cron = cron_of(body)
        grace = body.get("misfire_grace_seconds", DEFAULT_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE:
            raise ValidationError(
                f"misfire_grace_seconds must be a whole number from 0 to {MAX_GRACE} (7 days)",
                field="misfire_grace_seconds",
            )
        timezone = body.get("timezone")
        if "timezone" in body:  # left out: the organization's time zone (org setting), read below
            validate_timezone(timezone)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValidationError("parameters must be an object", field="parameters")
        recipients = validate_emails(body.get("recipients"), field="recipients")
        try:
            with self.db() as session:
                if "timezone" not in body:
                    timezone = org_setting(session, principal.org_id, "timezone")
                # One schedules only an app one may open (a restricted app not shared is unknown).
                app = find_openable_app(session, principal, body.get("app_id"))
                job = Job(
                    org_id=principal.org_id,
                    name=name.strip(),
                    kind="report",
                    app_id=app.id,
                    cron=cron,
                    timezone=timezone,
                    parameters=parameters,
                    recipients=recipients,
                    owner_id=principal.user_id,
                    next_run_at=next_fire_time(cron, timezone, utcnow()),
                    misfire_grace_seconds=grace,
                )
                session.add(job)
                session.flush()
                self.audit(session, "job.create", f"job/{job.id}", name=job.name, app_id=app.id, cron=cron)
                session.flush()
                self.write_json(job_json(job), status=201)
        except IntegrityError:
            raise Conflict(f"A job named {name!r} already exists") from None


class JobHandler(BaseHandler):
    @authorized("jobs:read")
    def get(self, job_id):
        with self.db() as session:
            self.write_json(job_json(find_job(session, self.principal().org_id, job_id)))

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
            run = JobRun(job_id=job.id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow())
            session.add(run)
            session.flush()
            self.audit(session, "job.run", f"job/{job.id}", run_id=run.id, name=job.name)
            session.flush()
            self.write_json(run_json(run), status=202)


default_handlers = [
    (API_PREFIX + r"jobs", JobListHandler),
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)", JobHandler),
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)/runs", JobRunsHandler),
]
