"""Support for the REST API tests: URLs, a tiny notebook, JSON error checks, and objects created straight in
the stack's database (another organization's app and job, which no person of that org could create through
the API) that are removed again when the test module ends, so the rest of the suite sees the demo as seeded.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import nbformat
import requests
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import (
    ApiKey,
    App,
    AppVersion,
    Connection,
    DataSource,
    Job,
    JobRun,
    Organization,
    RunStatus,
    User,
)
from carnet.publishing import publish

API = "/services/carnet/api/v1"
NEVER_CRON = "0 0 1 1 *"  # once a year: a job created by a test never fires during the suite
UNKNOWN_ID = 987654


def api_url(stack, path: str) -> str:
    return f"{stack.url}{API}/{path.lstrip('/')}"


def auth(token: str | None) -> dict:
    return {"Authorization": f"token {token}"} if token else {}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tiny_notebook(text: str = "hello") -> dict:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Tiny"), nbformat.v4.new_code_cell(f"print({text!r})")]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def publish_notebook(
    stack, headers: dict, notebook, created=None, title: str = "Test app", slug: str = "app"
) -> int:
    """``POST /apps`` as the person of ``headers``: the new app's id (a fresh slug from ``slug``). With
    ``created`` (the module's registry) the app is removed when the module ends."""
    made = requests.post(
        api_url(stack, "apps"),
        json={"slug": unique(slug), "title": title, "notebook": notebook},
        headers=headers,
        timeout=60,
    )
    assert made.status_code == 201, made.text
    if created is not None:
        created.apps.add(made.json()["id"])
    return made.json()["id"]


def tiny_png() -> bytes:
    """A valid 1x1 PNG, built by hand (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x80\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def assert_json_error(response: requests.Response, status: int) -> dict:
    """The response is ``status`` with a JSON body {status, message, ...}."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"].strip()
    return body


@dataclass
class Created:
    """Ids of rows a test module created in the stack's database, deleted at the end of the module."""

    stack: object
    apps: set[int] = field(default_factory=set)
    jobs: set[int] = field(default_factory=set)
    sources: set[int] = field(default_factory=set)
    keys: set[int] = field(default_factory=set)
    connections: set[int] = field(default_factory=set)

    def org_id(self, slug: str) -> int:
        with session_scope(self.stack.settings.db_url) as session:
            return session.scalar(select(Organization.id).where(Organization.slug == slug))

    def user_id(self, email: str) -> int:
        with session_scope(self.stack.settings.db_url) as session:
            return session.scalar(select(User.id).where(User.email == email))

    def kernel_token(self, email: str, org_slug: str, kind=None, ttl_seconds: int = 600) -> str:
        """A Carnet token of ``email`` in ``org_slug`` as a kernel holds one (default: a Studio kernel's)."""
        from carnet.db.models import TokenKind
        from carnet.tokens import mint_token

        user_id, org_id = self.user_id(email), self.org_id(org_slug)
        with session_scope(self.stack.settings.db_url) as session:
            return mint_token(
                session,
                kind=kind or TokenKind.studio_kernel,
                user_id=user_id,
                org_id=org_id,
                ttl_seconds=ttl_seconds,
            )

    def publish_app(self, org_slug: str, slug: str | None = None, title: str = "Test app") -> int:
        """Publish a tiny app straight into the database (for orgs without any author)."""
        with session_scope(self.stack.settings.db_url) as session:
            org_id = session.scalar(select(Organization.id).where(Organization.slug == org_slug))
            app = publish(
                session,
                self.stack.settings,
                org_id=org_id,
                user_id=None,
                slug=slug or unique("test"),
                title=title,
                notebook=tiny_notebook(),
            )
            self.apps.add(app.id)
            return app.id

    def add_job(self, org_slug: str, app_id: int, owner_email: str, name: str | None = None) -> int:
        with session_scope(self.stack.settings.db_url) as session:
            org_id = session.scalar(select(Organization.id).where(Organization.slug == org_slug))
            owner_id = session.scalar(select(User.id).where(User.email == owner_email))
            job = Job(
                org_id=org_id,
                name=name or unique("test job"),
                app_id=app_id,
                cron=NEVER_CRON,
                timezone="UTC",
                parameters={},
                recipients=["nobody@example.com"],
                owner_id=owner_id,
                next_run_at=None,
            )
            session.add(job)
            session.flush()
            self.jobs.add(job.id)
            return job.id

    def job_exists(self, job_id: int) -> bool:
        with session_scope(self.stack.settings.db_url) as session:
            return session.get(Job, job_id) is not None

    def run_count(self, job_id: int) -> int:
        with session_scope(self.stack.settings.db_url) as session:
            return len(session.scalars(select(JobRun.id).where(JobRun.job_id == job_id)).all())

    def cleanup(self, wait: float = 180) -> None:
        url = self.stack.settings.db_url
        with session_scope(url) as session:
            job_ids = set(self.jobs) | set(
                session.scalars(select(Job.id).where(Job.app_id.in_(self.apps))).all() if self.apps else []
            )
        # Let the scheduler finish the runs it may have started (deleting a running job breaks its run).
        deadline = time.monotonic() + wait
        while job_ids and time.monotonic() < deadline:
            with session_scope(url) as session:
                busy = session.scalar(
                    select(JobRun.id).where(
                        JobRun.job_id.in_(job_ids), JobRun.status.in_([RunStatus.queued, RunStatus.running])
                    )
                )
            if busy is None:
                break
            time.sleep(0.5)
        with session_scope(url) as session:
            if job_ids:
                session.execute(delete(JobRun).where(JobRun.job_id.in_(job_ids)))
                session.execute(delete(Job).where(Job.id.in_(job_ids)))
            if self.apps:
                session.execute(delete(AppVersion).where(AppVersion.app_id.in_(self.apps)))
                session.execute(delete(App).where(App.id.in_(self.apps)))
            if self.sources:
                session.execute(delete(DataSource).where(DataSource.id.in_(self.sources)))
            if self.keys:
                session.execute(delete(ApiKey).where(ApiKey.id.in_(self.keys)))
            if self.connections:  # after the sources, which may use them
                session.execute(delete(DataSource).where(DataSource.connection_id.in_(self.connections)))
                session.execute(delete(Connection).where(Connection.id.in_(self.connections)))
