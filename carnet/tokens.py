"""Carnet tokens: what kernels and jobs present to the Carnet API.

A token reads ``ck_<prefix>_<secret>``. The row is found by its prefix and the secret checked against a
SHA-256 hash (the secret is 256 random bits, so a slow hash adds nothing). Each token is bound to one user
and one organization: whatever it reads, it reads as that user, inside that org.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.db.models import Membership, Token, TokenKind, utcnow

TOKEN_PREFIX = "ck_"  # noqa: S105 - a marker, not a secret


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# For other secrets checked the same way (push endpoint URLs).
hash_secret = _hash


def mint_token(
    session: Session,
    *,
    kind: TokenKind,
    user_id: int | None,
    org_id: int,
    ttl_seconds: int | None,
    note: str = "",
    app_id: int | None = None,
    scope: dict | None = None,
    job_run_id: int | None = None,
) -> str:
    """Store a new token and return its clear text (shown once, never stored)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    expires_at = utcnow() + timedelta(seconds=ttl_seconds) if ttl_seconds else None
    session.add(
        Token(
            prefix=prefix,
            secret_hash=_hash(secret),
            kind=kind,
            user_id=user_id,
            org_id=org_id,
            note=note,
            expires_at=expires_at,
            app_id=app_id,
            scope=scope,
            job_run_id=job_run_id,
        )
    )
    session.flush()
    return f"{TOKEN_PREFIX}{prefix}_{secret}"


def resolve_token(session: Session, text: str) -> tuple[Token, Membership | None] | None:
    """The live token and the membership it acts under, or None for anything invalid. A token of an
    anonymous visitor's kernel has no membership: ``carnet.app_links.visitor_principal`` checks it further."""
    if not text.startswith(TOKEN_PREFIX) or text.count("_") < 2:
        return None
    prefix, _, secret = text[len(TOKEN_PREFIX) :].partition("_")
    token = session.scalar(select(Token).where(Token.prefix == prefix))
    if token is None or not hmac.compare_digest(token.secret_hash, _hash(secret)):
        return None
    if token.revoked_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= utcnow():
        return None
    if token.user_id is None:
        return token, None
    if not token.user.is_active:
        return None
    cut_off = token.user.credentials_valid_after
    if cut_off is not None and token.created_at <= cut_off:
        return None
    membership = session.scalar(
        select(Membership).where(Membership.user_id == token.user_id, Membership.org_id == token.org_id)
    )
    if membership is None:
        return None
    return token, membership


def revoke_tokens(session: Session, *, user_id: int, kind: TokenKind, note: str | None = None) -> int:
    query = select(Token).where(Token.user_id == user_id, Token.kind == kind, Token.revoked_at.is_(None))
    if note is not None:
        query = query.where(Token.note == note)
    tokens = session.scalars(query).all()
    for token in tokens:
        token.revoked_at = utcnow()
    return len(tokens)


def revoke_run_tokens(session: Session, run_id: int) -> int:
    """Revokes the job tokens minted for one run of a job (``job_run_id``) once the run has ended, however
    it ended: a token never outlives its run's work (a retry mints its own). Returns how many were live."""
    tokens = session.scalars(
        select(Token).where(Token.job_run_id == run_id, Token.revoked_at.is_(None))
    ).all()
    for token in tokens:
        token.revoked_at = utcnow()
    return len(tokens)
