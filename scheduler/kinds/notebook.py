"""``notebook``: papermill runs the app's published notebook with the run's parameters.

The parameters are the job's own, a trigger's payload over them (a webhook's body), and always
``scheduled_time``: the run's scheduled time, ISO 8601 in UTC (a run is reproducible: re-running it computes
for the same instant). papermill injects them in a cell after the one tagged ``parameters`` (at the top of a
notebook without one); the kernel also reads them as ``carnet.params``, keeps values between runs with
``carnet.state`` and may call ``carnet.alert(...)`` (kernel_helpers/jobs.py).

The executed notebook is kept in the run's folder, also when a cell failed (with the error, as papermill
writes it; the run fails and is not retried). With recipients, each run mails them, attaching nothing, the
executed notebook's PDF or the notebook itself (config ``attach``). An alert mails when it becomes true,
with the job's cool-down (config ``cooldown_seconds``; the rule: scheduler/kinds/alerting.py).
"""

from __future__ import annotations

import json
import os
import stat

from carnet.db import session_scope
from carnet.db.models import Job, utcnow
from carnet.errors import CarnetError, ValidationError
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.scheduler.kinds.alerting import (
    DEFAULT_COOLDOWN_SECONDS,
    cooldown_from,
    record_alert,
    should_alert,
)
from carnet.scheduler.kinds.report import copy_app_notebook

SCHEDULED_TIME = "scheduled_time"  # the parameter every run gets (documented in docs/SCHEDULER.md)
ATTACH_CHOICES = ("none", "pdf", "notebook")
CONFIG_KEYS = frozenset({"attach", "cooldown_seconds"})
ALERT_FILE = "alert.json"  # written by carnet.alert in the run's folder (kernel_helpers/jobs.py)
MAX_ALERT_FILE_BYTES = 256 * 1024


def read_alerts(run_dir) -> list[dict]:
    """The alerts the notebook recorded (none: no file). The file is the kernel's (another OS account): it is
    opened without following links, must be a small regular file, and is read as data only."""
    from carnet.scheduler.executor import JobRunError

    path = run_dir / ALERT_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError:
        raise JobRunError(f"{ALERT_FILE} of carnet.alert is not a plain file", step="alert") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ALERT_FILE_BYTES:
            raise JobRunError(f"{ALERT_FILE} of carnet.alert is not a small plain file", step="alert")
        raw = handle.read(MAX_ALERT_FILE_BYTES + 1)
    try:
        alerts = json.loads(raw)["alerts"]
        return [
            {"message": str(entry["message"]), "details": dict(entry.get("details") or {})}
            for entry in alerts
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise JobRunError(f"{ALERT_FILE} of carnet.alert could not be read", step="alert") from None


def alert_mail(executor, context, alerts: list[dict]) -> PlannedMail:
    from carnet.scheduler.executor import run_link

    when = f"{context.scheduled_for:%Y-%m-%d %H:%M} UTC"
    lines = [f"The notebook job {context.job_name!r} alerts (run scheduled for {when}):", ""]
    for entry in alerts:
        lines.append(f"- {entry['message']}")
        lines += [f"    {name}: {value}" for name, value in entry["details"].items()]
    lines += ["", f"The run: {run_link(executor.settings, context.job_id, context.run_id)}", "", "-- Carnet"]
    return PlannedMail(
        context.recipients or [context.owner_email],
        f"[Carnet] Alert: {context.job_name}: {alerts[0]['message']}"[:300],
        "\n".join(lines),
        purpose="alert",
    )


@register
class NotebookKind(JobKind):
    name = "notebook"
    description = (
        "Run the app's notebook with papermill (parameters, scheduled_time), keep the executed notebook, "
        "optionally mail it (attach: none, pdf, notebook) and alert through carnet.alert."
    )
    needs_app = True

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise ValidationError("config must be an object", field="config")
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ValidationError(
                f"Unknown notebook config: {', '.join(unknown)} (known: attach, cooldown_seconds)",
                field="config",
            )
        attach = config.get("attach", "none")
        if attach not in ATTACH_CHOICES:
            raise ValidationError(f"attach must be one of: {', '.join(ATTACH_CHOICES)}", field="attach")
        if attach != "none" and not body.get("recipients"):
            raise ValidationError(f"attach {attach!r} mails the recipients: give some", field="recipients")
        return {"attach": attach, "cooldown_seconds": cooldown_from(config)}

    def prepare(self, executor, session, job, run, context) -> None:
        copy_app_notebook(executor, job, context)
        # Always passed, last: a payload cannot move the instant a run computes for.
        context.parameters = {**context.parameters, SCHEDULED_TIME: context.scheduled_for.isoformat()}
        # A retry starts without the alert of its failed try.
        (context.output_dir / ALERT_FILE).unlink(missing_ok=True)
        # Valid for as long as the run may take (carnet.state and sources are called throughout).
        context.token = executor.mint_job_token(session, context, ttl_seconds=int(context.timeout) + 600)

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError

        executor.run_notebook(context, context.parameters)
        mails = []
        attach = context.config.get("attach", "none")
        if context.recipients:
            attachments = []
            if attach == "notebook":
                attachments = [context.executed_notebook]
            elif attach == "pdf":
                from carnet.scheduler.pdf import notebook_to_pdf

                with written_then_renamed(context.pdf) as partial:
                    try:
                        notebook_to_pdf(context.executed_notebook, partial, executor.printer_of().browser())
                    except CarnetError as exc:
                        raise JobRunError(exc.message, step="pdf") from None
                attachments = [context.pdf]
            mails.append(
                PlannedMail(
                    context.recipients,
                    f"[Carnet] {context.job_name}",
                    f"The notebook job {context.job_name!r} ran "
                    f"(scheduled for {context.scheduled_for:%Y-%m-%d %H:%M} UTC)."
                    + (" Its output is attached." if attachments else "")
                    + "\n\n-- Carnet",
                    attachments,
                )
            )
        alerts = read_alerts(context.output_dir)
        cooldown = context.config.get("cooldown_seconds", DEFAULT_COOLDOWN_SECONDS)
        with session_scope(executor.settings.db_url) as session:
            job = session.get(Job, context.job_id)
            if job is None:  # deleted while it ran: nothing to remember
                return mails
            now = utcnow()
            send = should_alert(job, now, bool(alerts), cooldown)
        # Remembered with the run's mail (on_recorded): a retry before that decides again.
        context.extras["alert"] = (now, bool(alerts), send)
        if send:
            mails.append(alert_mail(executor, context, alerts))
        return mails

    def on_recorded(self, session, context) -> None:
        if "alert" not in context.extras:
            return
        job = session.get(Job, context.job_id)
        if job is not None:
            record_alert(job, *context.extras["alert"])
