"""Job kinds: what a run of a job does. One module per kind, registered by name (papermill's registries);
other packages add kinds through the ``carnet.job_kinds`` entry point group (name -> JobKind subclass).

A kind validates its part of a job's definition when the job is made (``validate`` -> the job's ``config``;
a bad value is a ValidationError naming the field) and does the work of a run (``prepare`` inside the
executor's database session, then ``execute`` outside it). ``execute`` returns the mail the run sends; the
executor queues it in the outbox (carnet/scheduler/outbox.py) and delivers it exactly once per recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from carnet.db.models import Role
from carnet.errors import ValidationError

if TYPE_CHECKING:
    from carnet.scheduler.executor import JobExecutor, RunContext


@dataclass
class PlannedMail:
    """Mail a run sends: one outbox row per recipient (same subject, body, attachments)."""

    recipients: list[str]
    subject: str
    body: str
    attachments: list[Path] = field(default_factory=list)
    purpose: str = "report"


class JobKind:
    """One kind of job. Subclasses set ``name`` and override what they need."""

    name = ""
    description = ""
    # Whether a job of this kind works on an app (``app_id`` required, and one the maker may open).
    needs_app = False
    # Whether the job's ``recipients`` must be non-empty.
    needs_recipients = False
    # The lowest role that may create a job of this kind (data loads change the warehouse: studio).
    min_role = Role.analyst

    def validate(self, session, settings, principal, body: dict) -> dict:
        """The kind's ``config`` from the request body; raise ValidationError(field=...) on bad input.
        ``settings`` are the service's own (CarnetSettings, as the request's handler has them: the sources
        and the warehouse a check may read); ``principal`` is who makes or changes the job."""
        return {}

    def prepare(self, executor: JobExecutor, session, job, run, context: RunContext) -> None:
        """Work done inside the executor's first database session (tokens, signed URLs, names)."""

    def execute(self, executor: JobExecutor, context: RunContext) -> list[PlannedMail]:
        raise NotImplementedError

    def on_recorded(self, session, context: RunContext) -> None:
        """Inside the transaction that records the run's mail: state the kind keeps about the run (an
        alert's) is written here, so that it and the mail are recorded together or not at all (a retry of a
        run whose mail was not recorded decides again)."""


_REGISTRY: dict[str, JobKind] = {}


def register(kind_class: type[JobKind]) -> type[JobKind]:
    _REGISTRY[kind_class.name] = kind_class()
    return kind_class


def _load_builtin_kinds() -> None:
    # Imported for their @register side effect.
    from carnet.scheduler.kinds import report  # noqa: F401

    for name in ("notebook", "burst", "data_email", "alert", "load", "chain", "warmup"):
        try:
            __import__(f"carnet.scheduler.kinds.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"carnet.scheduler.kinds.{name}":
                raise
    for point in entry_points(group="carnet.job_kinds"):
        if point.name not in _REGISTRY:
            register(point.load())


_loaded = False


def kinds() -> dict[str, JobKind]:
    """Every kind by name: the built-in ones and those of the ``carnet.job_kinds`` entry points, loaded once
    (a module registering one kind before, e.g. by importing it, does not hide the others)."""
    global _loaded
    if not _loaded:
        _loaded = True
        _load_builtin_kinds()
    return _REGISTRY


def kind_named(name) -> JobKind:
    known = kinds()
    if not isinstance(name, str) or name not in known:
        raise ValidationError(f"kind must be one of: {', '.join(sorted(known))}", field="kind")
    return known[name]
