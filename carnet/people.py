"""People in an organization: create with a one-time password, change role, disable, delete — and end
their existing credentials at once when their rights shrink.

Credentials that die: Carnet tokens (revoked, and any issued before ``credentials_valid_after``), the
person's Studio server and their Hub sessions (through the Hub's REST API, see ``HubAdmin``).
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from carnet.db.models import AUTHOR_ROLES, Membership, Role, Token, User, role_at_least, utcnow
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.passwords import generate_password, hash_password
from carnet.validation import parse_id, refuse_hidden_characters, validate_email

log = logging.getLogger("carnet.people")

MIN_PASSWORD_LENGTH = 12
EDITABLE_FIELDS = frozenset({"role", "is_active", "display_name"})


def parse_role(value) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValidationError(
            f"Unknown role {value!r}: one of {', '.join(r.value for r in Role)}", field="role"
        ) from None


def parse_display_name(value) -> str:
    if not isinstance(value, str) or len(value.strip()) > 200:
        raise ValidationError("display_name must be text of at most 200 characters", field="display_name")
    return refuse_hidden_characters(value.strip(), "display_name")


def check_new_password(password) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"A password needs at least {MIN_PASSWORD_LENGTH} characters", field="new_password"
        )
    hash_password(password)  # raises for passwords bcrypt cannot take whole
    return password


def org_members(session, org_id: int) -> list[Membership]:
    """The organization's memberships, by email (the users API and the admin page list the same)."""
    return list(
        session.scalars(
            select(Membership)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org_id)
            .order_by(User.email)
        ).all()
    )


def member(session, org_id: int, user_id) -> Membership:
    """The membership of ``user_id`` in ``org_id``; another org's user is simply not found."""
    user_id = parse_id(user_id, "No such user")
    membership = session.scalar(
        select(Membership).where(Membership.org_id == org_id, Membership.user_id == user_id)
    )
    if membership is None:
        raise NotFound("No such user")
    return membership


def create_person(
    session, org_id: int, email, role, display_name="", invite: bool = False
) -> tuple[Membership, str | None]:
    """A new account with a one-time password (returned once, to be changed at first sign-in), or, with
    ``invite``, with no password at all: the caller issues an invitation link (carnet.first_sign_in)."""
    email = validate_email(email)
    role = parse_role(role)
    display_name = parse_display_name(display_name or "")
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise Conflict(f"{email} already has an account")
    password = None if invite else generate_password()
    user = User(
        email=email,
        display_name=display_name or email.split("@")[0],
        password_hash=hash_password(password) if password else None,
        must_change_password=not invite,
    )
    session.add(user)
    session.flush()
    membership = Membership(user_id=user.id, org_id=org_id, role=role)
    session.add(membership)
    session.flush()
    return membership, password


def _active_admins(session, org_id: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Membership)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org_id, Membership.role == Role.admin, User.is_active.is_(True))
    )


def _keep_an_admin(session, membership: Membership, losing_admin: bool) -> None:
    if losing_admin and membership.role == Role.admin and _active_admins(session, membership.org_id) <= 1:
        raise Conflict("This is the organization's last active admin: make someone else admin first")


def update_person(session, membership: Membership, changes: dict) -> dict:
    """Apply the editable fields; returns what changed. Other fields (org_id, email, is_admin...) are
    refused, never applied."""
    unknown = sorted(set(changes) - EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(f"These fields cannot be changed here: {', '.join(unknown)}", field=unknown[0])
    user, changed = membership.user, {}
    if "display_name" in changes:
        user.display_name = parse_display_name(changes["display_name"])
        changed["display_name"] = user.display_name
    if "role" in changes:
        role = parse_role(changes["role"])
        if role != membership.role:
            _keep_an_admin(session, membership, losing_admin=role != Role.admin)
            changed["role"] = {"from": membership.role.value, "to": role.value}
            lowered = not role_at_least(role, membership.role)
            membership.role = role
            if lowered:
                end_credentials(session, user)
    if "is_active" in changes:
        if not isinstance(changes["is_active"], bool):
            raise ValidationError("is_active must be true or false", field="is_active")
        if changes["is_active"] != user.is_active:
            _keep_an_admin(session, membership, losing_admin=not changes["is_active"])
            user.is_active = changes["is_active"]
            changed["is_active"] = user.is_active
            if not user.is_active:
                end_credentials(session, user)
            else:
                user.failed_logins, user.locked_until = 0, None
    session.flush()
    return changed


def delete_person(session, membership: Membership) -> None:
    _keep_an_admin(session, membership, losing_admin=True)
    session.delete(membership.user)
    session.flush()


def reset_password(session, membership: Membership) -> str:
    password = generate_password()
    user = membership.user
    user.password_hash = hash_password(password)
    user.must_change_password = True
    user.failed_logins, user.locked_until = 0, None
    # A pending invitation link would let its holder skip the one-time password: it dies too.
    user.invitation_hash, user.invitation_expires_at = None, None
    end_credentials(session, user)
    return password


def end_credentials(session, user: User) -> None:
    """Every Carnet token of ``user`` dies now; the caller also ends their Hub sessions (HubAdmin)."""
    now = utcnow()
    user.credentials_valid_after = now
    for token in session.scalars(select(Token).where(Token.user_id == user.id, Token.revoked_at.is_(None))):
        token.revoked_at = now


def is_author(membership: Membership) -> bool:
    return membership.role in AUTHOR_ROLES
