"""First sign-in: the one-time password must be replaced before anything else, and invitation links.

``require_own_password`` is the single check every entry point uses (the REST API's principal, the Viewer's
session minting, the spawner): a person holding a one-time password may do nothing but choose their own at
the Hub page ``/hub/carnet/change-password``.

Invitation links carry a random token (256 bits); only its SHA-256 is stored (``users.invitation_hash``), like
Carnet tokens: a slow hash adds nothing to a secret that cannot be guessed. A link works once, until
``invitation_expires_at``; issuing a new one overwrites the hash, so the old link dies at once.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from carnet.db.models import User, utcnow
from carnet.errors import Gone, NotFound, PasswordChangeRequired, PermissionDenied, ValidationError
from carnet.passwords import hash_password, verify_password
from carnet.people import check_new_password
from carnet.settings import CarnetSettings

log = logging.getLogger("carnet.first_sign_in")

CHANGE_PASSWORD_PATH = "hub/carnet/change-password"  # noqa: S105 - a URL path, not a secret
INVITE_PATH = "hub/carnet/invite/"
# Same answer for unknown and used links: a used link reveals nothing about the account.
UNKNOWN_INVITATION = "This invitation link is unknown or was already used. Ask your admin for a new one."
EXPIRED_INVITATION = "This invitation link has expired. Ask your admin for a new one."


def public_link(settings: CarnetSettings, path: str) -> str:
    return settings.public_url.rstrip("/") + "/" + path


def require_own_password(user: User, settings: CarnetSettings | None = None) -> None:
    """Raise PasswordChangeRequired (403) while ``user`` still holds a one-time password."""
    if user.must_change_password:
        url = public_link(settings or CarnetSettings(), CHANGE_PASSWORD_PATH)
        raise PasswordChangeRequired(
            f"You signed in with a one-time password: choose your own password first at {url}",
            change_password_url=url,
        )


def set_own_password(user: User, new_password, confirm=None) -> None:
    """Give ``user`` the password they chose (checked like every new password) and lift the one-time flag."""
    new_password = check_new_password(new_password)
    if confirm is not None and confirm != new_password:
        raise ValidationError("The two new passwords differ", field="confirm_password")
    if verify_password(new_password, user.password_hash):
        raise ValidationError("Choose a password different from the current one", field="new_password")
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.failed_logins, user.locked_until = 0, None


def change_own_password(user: User, current_password, new_password, confirm=None) -> None:
    if not verify_password(str(current_password or ""), user.password_hash):
        raise ValidationError("The current password is wrong", field="current_password")
    set_own_password(user, new_password, confirm)


# -- invitations -------------------------------------------------------------------------------------------
def invitation_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_invitation(
    user: User, settings: CarnetSettings, days: int | None = None, now: datetime | None = None
) -> dict:
    """A new link for ``user`` (any previous one dies). Returns ``invitation_url`` and
    ``invitation_expires_at``; the token itself exists only in that URL."""
    token = secrets.token_urlsafe(32)
    expires_at = (now or utcnow()) + timedelta(days=days or settings.invitation_days)
    user.invitation_hash = invitation_hash(token)
    user.invitation_expires_at = expires_at
    return {
        "invitation_url": public_link(settings, INVITE_PATH + token),
        "invitation_expires_at": expires_at.isoformat(),
    }


def cancel_invitation(user: User) -> None:
    user.invitation_hash = None
    user.invitation_expires_at = None


def find_invitation(session, token: str, now: datetime | None = None) -> User:
    """The person a live link invites. NotFound for unknown or used links, Gone once expired,
    PermissionDenied for a disabled account."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise NotFound(UNKNOWN_INVITATION)
    user = session.scalar(select(User).where(User.invitation_hash == invitation_hash(token)))
    if user is None:
        raise NotFound(UNKNOWN_INVITATION)
    if user.invitation_expires_at is None or user.invitation_expires_at <= (now or utcnow()):
        raise Gone(EXPIRED_INVITATION)
    if not user.is_active or not user.memberships:
        raise PermissionDenied("This account is disabled: ask your admin.")
    return user


def accept_invitation(session, token: str, password, confirm) -> User:
    """Set the chosen password and end the invitation (the link never works again)."""
    user = find_invitation(session, token)
    set_own_password(user, password, confirm)
    cancel_invitation(user)
    session.flush()
    return user


def send_invitation_email(settings: CarnetSettings, email: str, org_name: str, invitation: dict) -> bool:
    """Mail the link (SMTP when configured, else the outbox folder, like reports). False if delivery
    failed: the admin still has the link from the API answer and hands it over another way."""
    from carnet.scheduler.mail import send_mail

    body = (
        f"You are invited to {org_name} on Carnet.\n\n"
        f"Open this link to choose your password (it works once, until "
        f"{invitation['invitation_expires_at'][:16].replace('T', ' ')} UTC):\n\n"
        f"{invitation['invitation_url']}\n"
    )
    try:
        send_mail(settings, [email], f"Your invitation to {org_name} on Carnet", body)
    except (OSError, ValueError) as exc:  # smtplib errors are OSErrors
        log.warning("Could not mail the invitation of %s: %s", email, exc)
        return False
    return True
