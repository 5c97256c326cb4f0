"""Job webhooks: a per-job secret URL through which an outside system starts a run (revocable, rotatable).

``POST /api/v1/jobs/<id>/webhook`` makes the job's URL, or a new one (the old one stops working at once);
``DELETE`` removes it. Both are for whoever may change the job (``jobs:update``, and the job kind's own
role: a load job's webhook is studio's, like the job). The URL,
``<public url>/services/carnet/api/v1/hooks/jobs/<secret>``, is shown once: only a SHA-256 of the secret is
stored (``jobs.webhook_hash``), as for push endpoints (carnet/service/api/push.py) and Carnet tokens.

Unlike a push URL, the URL has no ``<prefix>_`` to look the row up by: the secret is 32 random bytes (256
bits), so its hash alone is a unique key (the column is unique) and the lookup is by the hash of the whole
secret. Matching on a hash leaks nothing through timing that helps guess a secret; the stored and computed
hashes are still compared with ``hmac.compare_digest``. An unknown, malformed or removed URL answers one and
the same 404.

``POST /api/v1/hooks/jobs/<secret>`` takes no other credential (the URL is one). Its optional body, a JSON
object of at most 16 KB whose values are scalars or lists of scalars, becomes the run's ``payload``: the
run's parameters are the job's with the payload's merged over them. The answer is 202 ``{"run_id",
"coalesced"}`` and nothing about the job. A webhook run of the job still queued takes the call instead of a
new run (``coalesced``: true; its payload is the first call's): a caller firing in a loop cannot flood the
queue. A disabled job answers 409 and queues nothing (the caller holds the secret: telling it the job is
off is no leak, and it is told its call did nothing). Each call is audited with the client's address.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets

from sqlalchemy import select
from tornado import web

from carnet.audit import client_address
from carnet.audit import record as audit_record
from carnet.db.models import Job, JobRun, RunStatus, utcnow
from carnet.errors import CarnetError, Conflict, NotFound, UploadTooLarge, ValidationError
from carnet.scheduler.kinds import kind_named
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.jobs import check_kind_role, find_job
from carnet.tokens import hash_secret

NO_SUCH_WEBHOOK = "No such webhook"
MAX_PAYLOAD_BYTES = 16 * 1024
# What secrets.token_urlsafe(32) makes: anything else is refused before a hash is computed or looked up.
SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
SCALARS = (str, int, float, bool, type(None))


def new_webhook_secret() -> tuple[str, str]:
    """A fresh secret and the hash stored for it."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


class JobWebhookHandler(BaseHandler):
    def managed_job(self, session, job_id) -> Job:
        principal = self.principal()
        job = find_job(session, principal.org_id, job_id)  # another org's job: 404 like a missing one
        check_kind_role(principal, kind_named(job.kind))
        return job

    @authorized("jobs:update")
    def post(self, job_id):
        """Make the job's webhook URL, or replace it (rotate): 201 with the URL, shown this once."""
        with self.db() as session:
            job = self.managed_job(session, job_id)
            rotated = job.webhook_hash is not None
            secret, job.webhook_hash = new_webhook_secret()
            session.flush()
            # Never the secret nor its hash in the log.
            self.audit(session, "job.webhook_rotate" if rotated else "job.webhook_create", f"job/{job.id}")
            base = self.settings_obj.public_url.rstrip("/") + self.settings["service_prefix"].rstrip("/")
            self.write_json(
                {"url": f"{base}/{API_PREFIX}hooks/jobs/{secret}", "rotated": rotated}, status=201
            )

    @authorized("jobs:update")
    def delete(self, job_id):
        """Remove the job's webhook: its URL answers 404 from now on (404 if the job has none)."""
        with self.db() as session:
            job = self.managed_job(session, job_id)
            if job.webhook_hash is None:
                raise NotFound("This job has no webhook")
            job.webhook_hash = None
            self.audit(session, "job.webhook_delete", f"job/{job.id}")
        self.set_status(204)


def parse_payload(body: bytes) -> dict | None:
    """A webhook body: nothing (no payload) or a JSON object of parameter names to scalars or lists of
    scalars; ``filters`` may be an object of those (a report's filter values, scheduler/kinds/report.py)."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"The body is not valid JSON: {exc}", field="body") from None
    if not isinstance(payload, dict):
        raise ValidationError("The body must be a JSON object of parameters", field="body")
    for key, value in payload.items():
        if key == "filters" and isinstance(value, dict):
            # A report's filter values for this run ({name: value or [values]}): the same check, one level.
            items = [item for v in value.values() for item in (v if isinstance(v, list) else [v])]
        else:
            items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, SCALARS) for item in items):
            raise ValidationError(
                f"Parameter {key!r} must be text, a number, true/false, null or a list of those", field=key
            )
    return payload


@web.stream_request_body
class JobHookHandler(BaseHandler):
    """The secret URL itself is the credential: no person, key or token is looked at (nor needed).

    The body is read as it arrives, at most MAX_PAYLOAD_BYTES kept: a declared Content-Length over it is
    refused (413) before any of it is read, a longer body without one is cut off while it streams. Any other
    refusal (404) is answered once the body has arrived (answering earlier makes the Hub's proxy turn it
    into a 503: carnet/service/api/streamed_body.py)."""

    _job_id: int | None = None
    _refusal: CarnetError | None = None
    _too_large = False

    def check_xsrf_cookie(self):
        return None  # no cookie is used here, so none can be forged

    def prepare(self):
        self._body = bytearray()
        try:
            self._job_id = self.find(self.path_kwargs["secret"])
        except CarnetError as error:
            self._refusal = error
            return
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_PAYLOAD_BYTES:
            raise self.too_large()
        connection = self.request.connection
        if hasattr(connection, "set_max_body_size"):
            # Tornado drops a connection running far past the cap; up to this, our JSON 413 answers.
            connection.set_max_body_size(MAX_PAYLOAD_BYTES + 64 * 1024)

    def find(self, secret: str) -> int:
        """The id of the job whose webhook this secret is; unknown, malformed or removed: the same 404."""
        if not SECRET_SHAPE.fullmatch(secret):
            raise NotFound(NO_SUCH_WEBHOOK)
        wanted = hash_secret(secret)
        with self.db() as session:
            job = session.scalar(select(Job).where(Job.webhook_hash == wanted))
            if job is None or not hmac.compare_digest(job.webhook_hash, wanted):
                raise NotFound(NO_SUCH_WEBHOOK)
            return job.id

    def too_large(self) -> UploadTooLarge:
        return UploadTooLarge(
            f"A webhook body may hold at most {MAX_PAYLOAD_BYTES} bytes", limit=MAX_PAYLOAD_BYTES
        )

    def data_received(self, chunk: bytes) -> None:
        if self._refusal is not None or self._too_large:
            return  # refused already: the rest is drained, not kept
        if len(self._body) + len(chunk) > MAX_PAYLOAD_BYTES:
            self._too_large = True
            self._body.clear()
            return
        self._body.extend(chunk)

    def post(self, secret):
        if self._refusal is not None:
            raise self._refusal
        if self._too_large:
            raise self.too_large()
        payload = parse_payload(bytes(self._body))
        settings = self.settings_obj
        with self.db() as session:
            # Looked up again: the webhook may have been rotated or removed while the body arrived.
            job = session.get(Job, self._job_id)
            if job is None or not hmac.compare_digest(job.webhook_hash or "", hash_secret(secret)):
                raise NotFound(NO_SUCH_WEBHOOK)
            if not job.enabled:
                raise Conflict("This job is disabled: the call started no run")
            run = session.scalar(
                select(JobRun)
                .where(
                    JobRun.job_id == job.id,
                    JobRun.status == RunStatus.queued,
                    JobRun.trigger == "webhook",
                )
                .order_by(JobRun.id)
                .limit(1)
            )
            coalesced = run is not None
            if run is None:
                run = JobRun(
                    job_id=job.id,
                    status=RunStatus.queued,
                    trigger="webhook",
                    triggered_by="webhook",
                    payload=payload,
                    scheduled_for=utcnow(),
                )
                session.add(run)
                session.flush()
            # The parameters' names only: their values may be anything the caller sent.
            audit_record(
                session,
                org_id=job.org_id,
                actor_id=None,
                actor="webhook",
                action="job.webhook_call",
                target=f"job/{job.id}",
                details={"run_id": run.id, "coalesced": coalesced, "parameters": sorted(payload or {})},
                remote_addr=client_address(self.request, settings.trusted_proxy_hops),
            )
            self.write_json({"run_id": run.id, "coalesced": coalesced}, status=202)


default_handlers = [
    (API_PREFIX + r"jobs/(?P<job_id>[^/]+)/webhook", JobWebhookHandler),
    (API_PREFIX + r"hooks/jobs/(?P<secret>[^/]+)", JobHookHandler),
]

# Routes whose credential is the URL itself (see carnet.service.api.meta.PUBLIC_HANDLERS).
PUBLIC_HANDLERS = (JobHookHandler,)
