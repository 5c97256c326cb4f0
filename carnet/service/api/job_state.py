"""/api/v1/job-state/{key}: ``carnet.state`` of a notebook job, small JSON values kept between its runs.

Only the token of a job run may call it (``jobs:state``, carnet.permissions): the job is the token's run's
job, so a run reads and writes its own job's keys and can never name another job's. People, API keys and
app kernels are refused (403). Limits: a key is 1-200 characters of ``A-Za-z0-9_.-``; a value is any JSON
of at most 64 KB (413); a job keeps at most 100 keys (400).
"""

from __future__ import annotations

import json
import re

from sqlalchemy import func, select

from carnet.db.models import JobRun, JobState, utcnow
from carnet.errors import CarnetError, NotFound, PermissionDenied, ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.tokens import resolve_token

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,200}")
MAX_VALUE_BYTES = 64 * 1024
MAX_KEYS_PER_JOB = 100


class StateValueTooLarge(CarnetError):
    status = 413


def checked_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationError(
            "A state key is 1-200 characters of letters, digits, '_', '.' and '-'", field="key"
        )
    return key


class JobStateHandler(BaseHandler):
    def run_job_id(self, session) -> int:
        """The job of the calling token's run. ``jobs:state`` admitted only job tokens; one minted without a
        run (none are) has no job state."""
        resolved = resolve_token(session, self._bearer() or "")
        job_run_id = resolved[0].job_run_id if resolved is not None else None
        job_id = session.scalar(select(JobRun.job_id).where(JobRun.id == job_run_id)) if job_run_id else None
        if job_id is None:
            raise PermissionDenied("Job state is read and written by a job run's own token only")
        return job_id

    @authorized("jobs:state")
    def get(self, key):
        key = checked_key(key)
        with self.db() as session:
            row = session.get(JobState, (self.run_job_id(session), key))
            if row is None:
                raise NotFound(f"No state named {key!r}")
            self.write_json({"key": row.key, "value": row.value, "updated_at": row.updated_at.isoformat()})

    @authorized("jobs:state")
    def put(self, key):
        key = checked_key(key)
        body = self.get_json_body()
        if "value" not in body:
            raise ValidationError('The body is {"value": <any JSON>}', field="value")
        value = body["value"]
        try:
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
        except ValueError:  # NaN or Infinity: not JSON, and refused by PostgreSQL's json
            raise ValidationError(
                "A state value must be plain JSON (no NaN or Infinity)", field="value"
            ) from None
        if size > MAX_VALUE_BYTES:
            raise StateValueTooLarge(
                f"A state value is at most {MAX_VALUE_BYTES} bytes of JSON (this one: {size})", field="value"
            )
        with self.db() as session:
            job_id = self.run_job_id(session)
            row = session.get(JobState, (job_id, key))
            if row is None:
                count = session.scalar(
                    select(func.count()).select_from(JobState).where(JobState.job_id == job_id)
                )
                if count >= MAX_KEYS_PER_JOB:
                    raise ValidationError(
                        f"A job keeps at most {MAX_KEYS_PER_JOB} state keys: delete one first", field="key"
                    )
                row = JobState(job_id=job_id, key=key)
                session.add(row)
            row.value = value
            row.updated_at = utcnow()
            session.flush()
            self.write_json({"key": key, "value": value, "updated_at": row.updated_at.isoformat()})

    @authorized("jobs:state")
    def delete(self, key):
        key = checked_key(key)
        with self.db() as session:
            row = session.get(JobState, (self.run_job_id(session), key))
            if row is not None:
                session.delete(row)
        self.set_status(204)


default_handlers = [(API_PREFIX + r"job-state/(?P<key>[^/]+)", JobStateHandler)]
