"""The audit log: who did what, when, from where (``AuditEvent`` rows in the platform database).

``record`` adds the event to the caller's session, so an action and its record commit (or roll back)
together. Handlers of the REST API call ``BaseHandler.audit``, which fills actor, org and address from the
caller; the Hub's authenticator calls ``record`` directly for sign-in attempts.

Conventions: ``action`` is ``<object>.<verb>`` (``source.create``, ``login.failure``); ``target`` names the
object as ``<kind>/<id or name>`` (``source/sales``, ``app/12``, ``job/3``); ``details`` is a small JSON
object of non-secret facts. Never put passwords, tokens, source options or other credentials in details.
"""

from __future__ import annotations

from carnet.db.models import AuditEvent

# Column sizes of audit_events (SQLite does not enforce them; PostgreSQL and MariaDB do).
MAX_ACTOR = 320
MAX_TARGET = 320
MAX_ACTION = 64
MAX_REMOTE_ADDR = 64


def record(
    session,
    *,
    org_id: int | None,
    actor_id: int | None,
    actor: str,
    action: str,
    target: str = "",
    details: dict | None = None,
    remote_addr: str = "",
) -> AuditEvent:
    """Add an audit event to ``session`` (committed with the caller's transaction) and return it."""
    if not action or len(action) > MAX_ACTION:
        raise ValueError(f"audit action must be 1-{MAX_ACTION} characters: {action!r}")
    event = AuditEvent(
        org_id=org_id,
        actor_id=actor_id,
        actor=(actor or "")[:MAX_ACTOR],
        action=action,
        target=(target or "")[:MAX_TARGET],
        details=dict(details or {}),
        remote_addr=(remote_addr or "")[:MAX_REMOTE_ADDR],
    )
    session.add(event)
    return event


def client_address(request) -> str:
    """The address a request came from: the first entry of the X-Forwarded-For header that the Hub's proxy
    sets, else the peer address. (The first entry is what the client claims; behind the Hub's proxy it is
    the browser's address, but a client can prepend anything, so treat it as informative, not proof.)"""
    if request is None:
        return ""
    forwarded = request.headers.get("X-Forwarded-For", "")
    first = forwarded.split(",", 1)[0].strip()
    return (first or request.remote_ip or "")[:MAX_REMOTE_ADDR]


def event_json(event: AuditEvent) -> dict:
    return {
        "id": event.id,
        "created_at": event.created_at.isoformat(),
        "org_id": event.org_id,
        "actor_id": event.actor_id,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": event.details or {},
        "remote_addr": event.remote_addr,
    }
