"""Organization API keys: renewable credentials for programs, made by an org's admins.

A key reads ``cak_<prefix>_<secret>`` (kernel tokens read ``ck_...``). As for tokens (``carnet.tokens``), the
row is found by its prefix and only a SHA-256 of the secret is stored: the clear text is shown once.

A key acts as its creator, in its org, with the role ``min(ceiling, the creator's current role there)``:
lowering the creator's role lowers the key's at once; a disabled or removed creator, a revoked or expired
key, are refused at once. Rotating gives a new prefix and secret, so the old text stops working immediately.
Keys are not cut by ``User.credentials_valid_after`` (set when a role is lowered): the ceiling rule already
covers that case, and keys are managed on their own (revoke, rotate).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.db.models import ROLE_RANK, ApiKey, Membership, Role, utcnow
from carnet.errors import PermissionDenied, ValidationError

API_KEY_PREFIX = "cak_"  # noqa: S105 - a marker, not a secret
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    return secrets.token_hex(6), secrets.token_urlsafe(32)


def _text(prefix: str, secret: str) -> str:
    return f"{API_KEY_PREFIX}{prefix}_{secret}"


def lower_role(a: Role | str, b: Role | str) -> Role:
    a, b = Role(a), Role(b)
    return a if ROLE_RANK[a] <= ROLE_RANK[b] else b


def key_status(key: ApiKey, now: datetime | None = None) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def mint_api_key(
    session: Session,
    *,
    org_id: int,
    creator_id: int,
    name: str,
    role: Role | str,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its clear text (shown once, never stored).

    The ceiling may not exceed the creator's current role in the org (``PermissionDenied``).
    """
    role = Role(role)
    membership = session.scalar(
        select(Membership).where(Membership.user_id == creator_id, Membership.org_id == org_id)
    )
    if membership is None or ROLE_RANK[role] > ROLE_RANK[membership.role]:
        raise PermissionDenied("An API key's role may not be above its creator's role", field="role")
    prefix, secret = _new_secret()
    key = ApiKey(
        org_id=org_id,
        name=name,
        prefix=prefix,
        secret_hash=_hash(secret),
        role=role,
        created_by=creator_id,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key, _text(prefix, secret)


def check_lifetime(expires_at: datetime | None, max_days: int, field: str = "expires_at") -> None:
    """The organization's cap on key lifetimes (org setting ``api_key_max_days``; 0: no cap). With a cap,
    a key must expire, at most ``max_days`` from now."""
    if not max_days:
        return
    if expires_at is None:
        raise ValidationError(
            f"This organization's API keys must expire within {max_days} days: give expires_in_days "
            f"(1-{max_days}) or expires_at",
            field=field,
        )
    if expires_at > utcnow() + timedelta(days=max_days):
        raise ValidationError(
            f"This organization's API keys may live at most {max_days} days (api_key_max_days)", field=field
        )


def rotate_api_key(session: Session, key: ApiKey) -> str:
    """A new secret (and prefix) for ``key``: the old text is dead as soon as this commits."""
    prefix, secret = _new_secret()
    key.prefix, key.secret_hash, key.rotated_at = prefix, _hash(secret), utcnow()
    session.flush()
    return _text(prefix, secret)


def revoke_api_key(session: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()


@dataclass(frozen=True)
class ResolvedKey:
    key_id: int
    name: str
    membership: Membership
    role: Role  # effective: min(ceiling, creator's current role)


def resolve_api_key(session: Session, text: str) -> ResolvedKey | None:
    """The live key, the creator's membership in the key's org and the effective role; None if invalid."""
    if not text.startswith(API_KEY_PREFIX) or text.count("_") < 2:
        return None
    prefix, _, secret = text[len(API_KEY_PREFIX) :].partition("_")
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
        return None
    now = utcnow()
    if key_status(key, now) != "active":
        return None
    if key.creator is None or not key.creator.is_active:
        return None
    membership = session.scalar(
        select(Membership).where(Membership.user_id == key.created_by, Membership.org_id == key.org_id)
    )
    if membership is None:
        return None
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
    return ResolvedKey(
        key_id=key.id, name=key.name, membership=membership, role=lower_role(key.role, membership.role)
    )
