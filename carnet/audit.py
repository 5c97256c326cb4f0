"""The audit log: who did what, when, from where (``AuditEvent`` rows in the platform database).

``record`` adds the event to the caller's session, so an action and its record commit (or roll back)
together. Handlers of the REST API call ``BaseHandler.audit``, which fills actor, org and address from the
caller; the Hub's authenticator calls ``record`` directly for sign-in attempts.

Conventions: ``action`` is ``<object>.<verb>`` (``source.create``, ``login.failure``); ``target`` names the
object as ``<kind>/<id or name>`` (``source/sales``, ``app/12``, ``job/3``); ``details`` is a small JSON
object of non-secret facts. Never put passwords, tokens, source options or other credentials in details.
"""

from __future__ import annotations

import ipaddress

from carnet.db.models import AuditEvent
from carnet.settings import CarnetSettings

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


def client_address(request, trusted_hops: int | None = None) -> str:
    """The address a request came from, as far as it can be trusted.

    Each proxy appends the address of whoever connected to it to X-Forwarded-For, so only the last
    ``trusted_hops`` entries were written by proxies of ours; what is left of them is whatever the client
    sent. The address is the entry ``trusted_hops`` from the right (the one the outermost trusted proxy
    saw), or the leftmost when fewer proxies were passed. The header is read only when the direct peer is
    a loopback address (the Hub's proxy); otherwise, or with ``trusted_hops`` 0, it is the peer address.
    ``trusted_hops`` None reads CarnetSettings.trusted_proxy_hops (CARNET_TRUSTED_PROXY_HOPS)."""
    if request is None:
        return ""
    if trusted_hops is None:
        trusted_hops = CarnetSettings().trusted_proxy_hops
    peer = _peer_address(request)
    entries = [e.strip() for e in request.headers.get("X-Forwarded-For", "").split(",") if e.strip()]
    if trusted_hops <= 0 or not entries or not _is_loopback(peer):
        return peer[:MAX_REMOTE_ADDR]
    return entries[-min(trusted_hops, len(entries))][:MAX_REMOTE_ADDR]


def _peer_address(request) -> str:
    # Tornado servers started with xheaders=True (the Hub's) overwrite remote_ip from X-Forwarded-For or
    # X-Real-Ip, which a client can set; the connection keeps the socket's own address.
    context = getattr(getattr(request, "connection", None), "context", None)
    return getattr(context, "_orig_remote_ip", None) or request.remote_ip or ""


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


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
