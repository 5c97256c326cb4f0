"""Carnet's platform database: who belongs where, and the definitions of sources, apps and jobs.

Data itself never lives here: it is in each organization's warehouse (see ``carnet.warehouse``).
Every org-owned row carries ``org_id``; queries for an org-owned object always filter on it, so another
organization's id behaves exactly like an unknown id.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stored in UTC, always read back timezone-aware (SQLite and MariaDB drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime: Carnet stores aware datetimes only")
            value = value.astimezone(UTC)
            if dialect.name in ("sqlite", "mysql", "mariadb"):
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}


# Ids are never reused, on SQLite too: a deleted job's id (and its output folder) never goes to a new job.
NO_ID_REUSE = {"sqlite_autoincrement": True}


class Role(enum.StrEnum):
    """Roles in increasing order of power; see ``ROLE_RANK``."""

    viewer = "viewer"
    analyst = "analyst"
    studio = "studio"
    admin = "admin"


ROLE_RANK = {Role.viewer: 0, Role.analyst: 1, Role.studio: 2, Role.admin: 3}
AUTHOR_ROLES = frozenset({Role.analyst, Role.studio, Role.admin})


def role_at_least(role: Role | str, minimum: Role | str) -> bool:
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role(minimum)]


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Organization settings an admin may change (carnet.org_settings validates and documents each key).
    settings: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A person, identified by email (which is also their JupyterHub user name)."""

    __tablename__ = "users"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True)
    # Sign-in protection: failures since the last success, and until when sign-in is refused.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None]
    # Set when an admin gave a one-time password: the person must choose their own at next sign-in.
    must_change_password: Mapped[bool] = mapped_column(default=False, server_default="0")
    # A pending invitation: the hash of its one-time secret and when it stops working. The person
    # chooses their password by opening the link; using it clears both.
    invitation_hash: Mapped[str | None] = mapped_column(String(128))
    invitation_expires_at: Mapped[datetime | None]
    # Credentials (tokens, sessions) issued before this moment are dead: set by logout-everywhere,
    # disabling, and lowering a role.
    credentials_valid_after: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "org_id"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    # Row-level security: {"region": ["EU", "US"]}, per organization (set by its admins). Each value is a
    # list of strings; an attribute a source's rule names but the person lacks means no rows.
    attributes: Mapped[dict] = mapped_column(default=dict, server_default="{}")
    user: Mapped[User] = relationship(back_populates="memberships")
    org: Mapped[Organization] = relationship()


class DataSource(Base):
    """A named, org-owned definition of one table of data. ``kind`` keys the source-kind registry."""

    __tablename__ = "data_sources"
    __table_args__ = (UniqueConstraint("org_id", "name"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    # Non-secret settings only (table name, SQL, URL...). The kind's secret fields live in ``secret``.
    options: Mapped[dict] = mapped_column(default=dict)
    # carnet.crypto.SecretBox ciphertext of the kind's secret fields (context carnet.sources.source_context).
    secret: Mapped[str | None] = mapped_column(Text)
    # The named connection whose settings and credentials the source uses (SQL kinds); a connection in use
    # cannot be deleted.
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("connections.id", ondelete="RESTRICT"), index=True
    )
    # Bumped whenever the definition or the data behind it changes: part of every cache key.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Result cache: 'none', 'ttl' (cache_ttl_seconds) or 'invalidate' (until the source changes or is
    # invalidated by hand).
    cache_policy: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    cache_ttl_seconds: Mapped[int | None]
    # Row-level security: [{"column": "region", "attribute": "region"}, ...]: every query by a person keeps
    # only rows whose column is in that person's attribute values (all rules apply).
    row_rules: Mapped[list] = mapped_column(default=list, server_default="[]")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None]


class Connection(Base):
    """A named, reusable set of connection settings and credentials (many sources, one server)."""

    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("org_id", "name"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="sql")
    # Non-secret settings (dialect, driver, host, port, database, username, options).
    settings: Mapped[dict] = mapped_column(default=dict)
    # SecretBox ciphertext of the secret fields (the password).
    secret: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None]


class App(Base):
    """A published notebook. Content is an immutable snapshot (``AppVersion``): edits need a re-publish."""

    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("org_id", "slug"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # Who may open it (carnet.sharing): 'org' every member of the organization; 'restricted' only the
    # people and viewer groups in ``app_shares`` plus the org's admins and the app's publisher; 'public'
    # every member (studio/admin only, and only if the org allows it). Anonymous visitors need the app's
    # public link or an embed URL (carnet.app_links, ``AppPublicLink``).
    visibility: Mapped[str] = mapped_column(String(16), default="org")
    # Free labels for the gallery's search and filters (lowercase, deduplicated).
    tags: Mapped[list] = mapped_column(default=list, server_default="[]")
    # A PNG/JPEG under CarnetSettings.published_dir (e.g. "1/3/thumbnail.png"), shown in the gallery.
    thumbnail_path: Mapped[str | None] = mapped_column(String(500))
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    published_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[AppVersion]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="AppVersion.version"
    )


class AppVersion(Base):
    __tablename__ = "app_versions"
    __table_args__ = (UniqueConstraint("app_id", "version"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    # Path of the snapshot under CarnetSettings.published_dir, e.g. "1/3/v2.ipynb".
    notebook_path: Mapped[str] = mapped_column(String(500))
    # What the publisher said of this version ("fixed the EU totals"), shown in the versions list.
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    app: Mapped[App] = relationship(back_populates="versions")


class Job(Base):
    """An automation. ``kind`` names what a run does (carnet/scheduler/kinds: report, notebook, burst,
    data_email, alert, load, chain, warmup); ``config`` holds that kind's settings, validated by the kind."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("org_id", "name"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="report")
    # The app a report/notebook/burst/warm-up job works on; NULL for kinds that need none (load, chain...).
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    parameters: Mapped[dict] = mapped_column(default=dict)
    config: Mapped[dict | None] = mapped_column()
    # NULL: no schedule (run now, a webhook or another job's success start it).
    cron: Mapped[str | None] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    recipients: Mapped[list] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    next_run_at: Mapped[datetime | None] = mapped_column(index=True)
    # A fire missed while no scheduler ran is still run if it is at most this old, else recorded as missed.
    misfire_grace_seconds: Mapped[int] = mapped_column(default=3600, server_default="3600")
    # NULL: the platform's CarnetSettings.job_run_timeout_seconds.
    timeout_seconds: Mapped[int | None] = mapped_column()
    # Transient failures (mail server or database unreachable) are retried this many times, waiting
    # retry_backoff_seconds, then twice that, and so on; a notebook error is never retried.
    max_retries: Mapped[int] = mapped_column(default=3, server_default="3")
    retry_backoff_seconds: Mapped[int] = mapped_column(default=60, server_default="60")
    # SHA-256 of the secret of the job's webhook URL (shown once); NULL: no webhook.
    webhook_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Started after each successful run of that job (same organization).
    after_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    # Alerts: whether the condition held at the last check, and when the last alert mail was queued.
    alert_active: Mapped[bool] = mapped_column(default=False, server_default=false())
    alert_sent_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    owner: Mapped[User] = relationship()
    app: Mapped[App | None] = relationship()


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    # Recorded, never executed: the job's previous run was still queued or running (runs never overlap)...
    skipped = "skipped"
    # ...or the fire time passed while no scheduler ran, longer ago than the job's misfire grace.
    missed = "missed"


class SchedulerLease(Base):
    """The one active scheduler (carnet.scheduler.lease): whoever holds the unexpired row runs jobs."""

    __tablename__ = "scheduler_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class JobRun(Base):
    __tablename__ = "job_runs"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, native_enum=False, length=16))
    # 'schedule' | 'manual' | 'webhook' | 'after' (another job succeeded) | 'chain' (a step of a chain)
    trigger: Mapped[str] = mapped_column(String(16))
    # Who or what: the person who pressed "run now", "run 12 of job 'Nightly load'", "webhook".
    triggered_by: Mapped[str | None] = mapped_column(String(200))
    # Parameters given by the trigger (a webhook's body), merged over the job's own.
    payload: Mapped[dict | None] = mapped_column()
    scheduled_for: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(String(500))
    # How the PDF was made: 'viewer' (the app as the Viewer shows it) or 'notebook' (nbconvert of the
    # papermill run); see carnet.scheduler.executor.PdfRenderer. NULL until the run starts.
    pdf_renderer: Mapped[str | None] = mapped_column(String(16))
    # 1 for the first try; a transient failure requeues the run with attempt + 1, not before not_before.
    attempt: Mapped[int] = mapped_column(default=1, server_default="1")
    not_before: Mapped[datetime | None] = mapped_column()
    # A chain's step: the chain's run.
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_runs.id", ondelete="CASCADE"), index=True
    )
    # Outputs were removed by the retention sweep (the row stays: history is kept).
    outputs_removed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    job: Mapped[Job] = relationship()


class MailStatus(enum.StrEnum):
    pending = "pending"
    sending = "sending"  # handed to the server, not yet known sent (a crash here resends once)
    sent = "sent"
    failed = "failed"  # given up after the job's retries


class OutboxMail(Base):
    """One mail to one recipient for one purpose of one run: the key that makes job mail sent once
    (carnet/scheduler/outbox.py). Attachments are files of the run's output folder."""

    __tablename__ = "mail_outbox"
    __table_args__ = (UniqueConstraint("run_id", "purpose", "recipient"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("job_runs.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # 'report' (what the job sends), 'failure' / 'missed' (to the job's owner), 'alert'
    purpose: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list] = mapped_column(default=list)
    status: Mapped[MailStatus] = mapped_column(Enum(MailStatus, native_enum=False, length=16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobState(Base):
    """``carnet.state`` of a job: small JSON values kept between its runs."""

    __tablename__ = "job_state"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[dict | list | str | int | float | bool | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenKind(enum.StrEnum):
    studio_kernel = "studio_kernel"  # handed to a Studio (JupyterLab) server's kernels
    viewer_kernel = "viewer_kernel"  # handed to one Viewer kernel, carries the viewer's identity
    job = "job"  # handed to the kernel of one job run, carries the job owner's identity
    # Kernels of anonymous visitors (carnet.app_links): no person, only an app's sources, row rules apply.
    public_app = "public_app"  # a public link's visitor: no attributes
    embed = "embed"  # a signed embed URL's visitor: the attributes and variables the URL was signed with
    # The scheduler's print page of an app read by no member (carnet.print_pages): given attributes only.
    print_page = "print"


class Token(Base):
    """A Carnet credential. Only a hash of the secret is stored; ``prefix`` finds the row fast."""

    __tablename__ = "tokens"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    kind: Mapped[TokenKind] = mapped_column(Enum(TokenKind, native_enum=False, length=32))
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # NULL only for the kernels of anonymous visitors (public_app, embed, print), which act for no person.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # A job token's run (carnet.state and carnet.params read the run's job through it).
    job_run_id: Mapped[int | None] = mapped_column(ForeignKey("job_runs.id", ondelete="CASCADE"), index=True)
    # public_app/embed: the one app they serve, and {"sources": [...], "attributes": {...},
    # "variables": {...}, "link_id": n} (carnet.app_links).
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    scope: Mapped[dict | None]
    user: Mapped[User | None] = relationship()
    org: Mapped[Organization] = relationship()


class ApiKey(Base):
    """A renewable per-org key for programs. Acts as its creator, never above ``role`` (its ceiling)."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("org_id", "name"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    # Deleting the creator deletes their keys: a key never outlives the person it acts as.
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    creator: Mapped[User] = relationship()
    org: Mapped[Organization] = relationship()


class AuditEvent(Base):
    """Who did what, when, from where. Written for every mutating action and every sign-in attempt."""

    __tablename__ = "audit_events"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    # NULL for events outside any organization (a failed sign-in with an unknown email).
    org_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(
        String(320), default=""
    )  # email or "api key <name>", kept after deletion
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. "login.failure", "source.create"
    target: Mapped[str] = mapped_column(String(320), default="")
    details: Mapped[dict] = mapped_column(default=dict)
    remote_addr: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ViewerGroup(Base):
    """A named set of people of one organization (used to share apps). ``name_key`` is the name's
    look-alike skeleton (``carnet.groups.name_key``): unique per org, so no two names read the same."""

    __tablename__ = "viewer_groups"
    __table_args__ = (UniqueConstraint("org_id", "name"), UniqueConstraint("org_id", "name_key"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    members: Mapped[list[ViewerGroupMember]] = relationship(
        back_populates="group", cascade="all, delete-orphan", passive_deletes=True
    )


class ViewerGroupMember(Base):
    """One person in one viewer group; deleting the person (or the group) removes the row (FK cascade)."""

    __tablename__ = "viewer_group_members"
    __table_args__ = (UniqueConstraint("group_id", "user_id"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("viewer_groups.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    group: Mapped[ViewerGroup] = relationship(back_populates="members")
    user: Mapped[User] = relationship()


class AppShare(Base):
    """One person or one viewer group an app is shared with (exactly one of ``user_id`` / ``group_id``)."""

    __tablename__ = "app_shares"
    __table_args__ = (
        UniqueConstraint("app_id", "user_id"),
        UniqueConstraint("app_id", "group_id"),
        NO_ID_REUSE,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("viewer_groups.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WarehouseLoad(Base):
    """One load into a warehouse table (load history: who, when, rows in/out, duration, status, error)."""

    __tablename__ = "warehouse_loads"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    table_name: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))  # replace | append | upsert | delete | batch
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320), default="")  # email, "push <name>", "job <id>"...
    origin: Mapped[str] = mapped_column(
        String(32), default="api"
    )  # api | kernel | upload | push | sync | cli
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | failed
    rows_in: Mapped[int] = mapped_column(Integer, default=0)
    rows_out: Mapped[int | None] = mapped_column(Integer)  # rows in the table after the load
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class PushEndpoint(Base):
    """A revocable secret URL through which an outside system pushes JSON rows into one warehouse table."""

    __tablename__ = "push_endpoints"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    table_name: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)  # public part of the secret, for lookup
    secret_hash: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16), default="append")  # append | upsert
    key: Mapped[list] = mapped_column(default=list)  # key columns for upsert
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AppFavourite(Base):
    """An app a person marked as a favourite (the gallery lists favourites first)."""

    __tablename__ = "app_favourites"
    __table_args__ = (UniqueConstraint("app_id", "user_id"), NO_ID_REUSE)
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppPublicLink(Base):
    """An app's public link: anyone with its URL sees the app as an anonymous visitor (carnet.app_links).
    One per app; rotating replaces prefix and secret, revoking deletes the row. Only a hash is stored."""

    __tablename__ = "app_public_links"
    __table_args__ = NO_ID_REUSE
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), unique=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    # The source names the visitors' kernels may read (detected in the snapshot or given by the author).
    sources: Mapped[list] = mapped_column(default=list)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
