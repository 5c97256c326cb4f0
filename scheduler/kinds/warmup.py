"""``warmup``: an app's page rendered ahead of time for the people listed, so that each one's first visit
(the morning's dashboard) is handed a ready page instead of waiting for the notebook to run.

The Viewer keeps pre-rendered pages in its render pool, one per person, app version, data version, row
context and filters (carnet/extension/render_pool.py); normally a page is pooled only after someone's visit.
A warm-up run asks the Viewer, for each person, to render their page into the pool now: a POST to the
Viewer's ``carnet/warm/<token>`` (carnet/extension/viewer_warm.py), the token signed here like a print page's
(``sign_warm``: the platform's embed key, ``"use": "warm"``, one app, one person, for the run's time limit).
The Viewer renders the page exactly as that person's visit would (their own session and token, their row
rules), and the page waits in the pool.

What it does not do: a pooled page waits at most the Viewer's ``viewer_pool_ttl`` (10 minutes by default)
and is dropped when the app's data or version changes, so a warm-up job is scheduled shortly before people
arrive, after the morning's loads (a chain: load, then warm up). Only the app as it opens is warmed (no URL
filters). The Viewer's render pool must be on (``viewer_pool_size`` > 0), else the run fails saying so; a
Viewer at its kernel caps makes the run's failure transient (retried with the job's backoff). People who may
no longer open the app are skipped (listed in the run's ``warmup.json``), a run with nobody left fails.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select

from carnet.app_links import signed, verified_payload
from carnet.db.models import User
from carnet.errors import ValidationError
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.sharing import find_openable_app, may_open, member_reader
from carnet.validation import validate_emails

WARM_USE = "warm"
MAX_PEOPLE = 50
RESULT_FILE = "warmup.json"
FIELD = "config.people"


def sign_warm(settings, app_id: int, org_id: int, email: str, expires_in: int) -> str:
    """The token of the Viewer's warm-up of ``app_id`` for the person ``email`` (their Hub name)."""
    payload = {
        "use": WARM_USE,
        "app": app_id,
        "org": org_id,
        "user": email,
        "exp": int(time.time()) + expires_in,
    }
    return signed(settings, payload)


def warm_payload(settings, text: str) -> dict:
    """The payload of an authentic, unexpired warm-up token (``sign_warm``). Tampered, unknown or made for
    another use (an embed URL, a print page): 404; expired: 403."""
    return verified_payload(settings, text, WARM_USE, "This warm-up link has expired")


def reader_of(session, email: str, app):
    """The member ``email`` of the app's organization, as they read; None if they are not an active one."""
    user = session.scalar(select(User).where(func.lower(User.email) == email.lower()))
    return member_reader(session, user.id, app.org_id, "hub") if user is not None else None


def check_people(session, app, people) -> list[str]:
    """1-``MAX_PEOPLE`` active members of the app's organization who may open it (their emails as stored)."""
    emails = list(dict.fromkeys(validate_emails(people, field=FIELD)))
    if len(emails) > MAX_PEOPLE:
        raise ValidationError(f"{FIELD} lists at most {MAX_PEOPLE} people", field=FIELD)
    checked = []
    for email in emails:
        reader = reader_of(session, email, app)
        if reader is None:
            raise ValidationError(f"{FIELD}: {email} is not a member of the organization", field=FIELD)
        if not may_open(session, reader, app):
            raise ValidationError(f"{FIELD}: {email} may not open this app", field=FIELD)
        checked.append(reader.email)
    return checked


@register
class WarmupKind(JobKind):
    name = "warmup"
    description = "Pre-render an app's page for the people listed, ahead of their first visit."
    needs_app = True

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = body.get("config")
        if not isinstance(config, dict):
            raise ValidationError("config must be an object with people: [emails]", field="config")
        unknown = sorted(set(config) - {"people"})
        if unknown:
            raise ValidationError(f"Unknown field 'config.{unknown[0]}'", field=f"config.{unknown[0]}")
        app = find_openable_app(session, principal, body.get("app_id"))
        return {"people": check_people(session, app, config.get("people"))}

    def prepare(self, executor, session, job, run, context) -> None:
        # One token per person who may still open the app, for as long as the run may take.
        lifetime = int(executor.run_timeout) + 60
        context.extras["warm"], context.extras["skipped"] = [], []
        for email in context.config.get("people") or []:
            reader = reader_of(session, email, job.app)
            if reader is None or not may_open(session, reader, job.app):
                context.extras["skipped"].append(
                    {"person": email, "state": "skipped", "message": "may no longer open the app"}
                )
                continue
            token = sign_warm(executor.settings, job.app_id, job.org_id, reader.email, lifetime)
            context.extras["warm"].append((reader.email, token))

    def execute(self, executor, context) -> list[PlannedMail]:
        import requests

        from carnet.scheduler.executor import JobRunError, TransientRunError

        viewer = executor.printer_of().settings.viewer_url.rstrip("/")
        results = list(context.extras["skipped"])
        for email, token in context.extras["warm"]:
            try:
                # The Viewer answers once the page is rendered (or why not): a notebook run's time at most.
                answer = requests.post(f"{viewer}/carnet/warm/{token}", timeout=context.timeout)
            except requests.RequestException as exc:
                # Never the URL in the error (it holds the token): the run's error is shown by the API.
                raise TransientRunError(
                    f"The Viewer is not reachable: {type(exc).__name__}", "warm"
                ) from None
            try:
                body = answer.json()
            except ValueError:
                body = {}
            results.append(
                {
                    "person": email,
                    "state": body.get("state") or "refused",
                    "status": answer.status_code,
                    "message": body.get("message") or answer.reason,
                }
            )
        with written_then_renamed(context.output_dir / RESULT_FILE) as partial:
            partial.write_text(json.dumps({"app_id": context.app_id, "people": results}, indent=2))
        failed = [r for r in results if r["state"] not in ("pooled", "skipped", "busy")]
        if failed:
            names = ", ".join(r["person"] for r in failed)
            raise JobRunError(f"No page was pre-rendered for {names}: {failed[0]['message']}", "warm")
        busy = [r for r in results if r["state"] == "busy"]
        if busy:
            raise TransientRunError(
                f"The Viewer was busy for {len(busy)} of the people: {busy[0]['message']}", "warm"
            )
        if not context.extras["warm"]:
            raise JobRunError("None of the people listed may open the app any more", "warm")
        return []
