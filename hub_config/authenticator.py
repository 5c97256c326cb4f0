"""Sign-in against Carnet's own users table (bcrypt hashes): user name = email.

The Hub keeps one group per role family so that its RBAC (roles from ``load_roles``) can grant servers
only to authors; groups are re-synced at every login (``manage_groups``).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from jupyterhub.auth import Authenticator
from sqlalchemy import select, update
from traitlets import Float, Integer, default

from carnet.audit import client_address, record
from carnet.db import session_scope
from carnet.db.models import AUTHOR_ROLES, User, utcnow
from carnet.passwords import dummy_hash, verify_password
from carnet.settings import CarnetSettings

AUTHORS_GROUP = "carnet-authors"


def hub_groups_for(memberships) -> list[str]:
    groups = {f"org-{m.org.slug}" for m in memberships}
    if any(m.role in AUTHOR_ROLES for m in memberships):
        groups.add(AUTHORS_GROUP)
    return sorted(groups)


class CarnetAuthenticator(Authenticator):
    """Checks the email and password against Carnet's database. Inactive users and users without an
    organization cannot sign in."""

    lockout_threshold = Integer(
        help="""Consecutive failed sign-ins after which an account is locked: every further attempt is
        refused, even with the right password, until the lock expires (recorded as login.locked). Each
        failure past the threshold locks again for twice as long (lockout_seconds, doubling, capped at
        lockout_max_seconds). A successful sign-in resets the count. 0 disables the lockout.
        Environment: CARNET_LOCKOUT_THRESHOLD. Default: 5.""",
    ).tag(config=True)

    @default("lockout_threshold")
    def _default_lockout_threshold(self):
        return int(os.environ.get("CARNET_LOCKOUT_THRESHOLD", "5"))

    lockout_seconds = Float(
        help="""Length in seconds of the first lock after lockout_threshold consecutive failures; it doubles
        with each further failure. Environment: CARNET_LOCKOUT_SECONDS. Default: 30.""",
    ).tag(config=True)

    @default("lockout_seconds")
    def _default_lockout_seconds(self):
        return float(os.environ.get("CARNET_LOCKOUT_SECONDS", "30"))

    lockout_max_seconds = Float(
        help="""Upper bound in seconds of one lock, however many failures came before.
        Environment: CARNET_LOCKOUT_MAX_SECONDS. Default: 900 (15 minutes).""",
    ).tag(config=True)

    @default("lockout_max_seconds")
    def _default_lockout_max_seconds(self):
        return float(os.environ.get("CARNET_LOCKOUT_MAX_SECONDS", "900"))

    def lock_seconds(self, failures: int) -> float:
        """How long to lock an account after ``failures`` consecutive failures (0: no lock)."""
        if self.lockout_threshold <= 0 or failures < self.lockout_threshold:
            return 0.0
        doublings = min(failures - self.lockout_threshold, 32)
        return min(self.lockout_seconds * 2**doublings, self.lockout_max_seconds)

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # Everyone with an active Carnet account and a membership may sign in; authenticate() decides.
        return True

    def normalize_username(self, username):
        return username.strip().lower()

    def _check(self, email: str, password: str, remote_addr: str = "") -> dict | None:
        """Verify the password, apply the lockout, and record the attempt, all in one transaction."""
        settings = CarnetSettings(parent=self)
        with session_scope(settings.db_url) as session:
            user = session.scalar(select(User).where(User.email == email))
            # Hash even when the user is unknown or locked, so that timing reveals neither.
            good = verify_password(
                password, user.password_hash if user and user.password_hash else dummy_hash()
            )
            org_ids = sorted({m.org_id for m in user.memberships}) if user else []

            def audit(action: str, **details):
                for org_id in org_ids or [None]:
                    record(
                        session,
                        org_id=org_id,
                        actor_id=user.id if user else None,
                        actor=email,
                        action=action,
                        details=details,
                        remote_addr=remote_addr,
                    )

            if user is None:
                audit("login.failure", reason="unknown user")
                return None
            now = utcnow()
            if user.locked_until is not None and user.locked_until > now:
                audit("login.locked", locked_until=user.locked_until.isoformat())
                return None
            if not good:
                # Counted in the database (not read-modify-write here): parallel guesses all count.
                session.execute(
                    update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1)
                )
                session.refresh(user)
                seconds = self.lock_seconds(user.failed_logins)
                user.locked_until = now + timedelta(seconds=seconds) if seconds else None
                details = {"reason": "wrong password", "failures": user.failed_logins}
                if seconds:
                    details["locked_seconds"] = seconds
                audit("login.failure", **details)
                return None
            if not user.is_active or not user.memberships:
                audit("login.failure", reason="inactive" if not user.is_active else "no organization")
                return None
            user.failed_logins = 0
            user.locked_until = None
            audit("login.success")
            return {
                "name": user.email,
                "groups": hub_groups_for(user.memberships),
                "must_change_password": user.must_change_password,
            }

    def get_handlers(self, app):
        # Imported here: those handlers use hub_groups_for from this module.
        from carnet.hub_config.first_sign_in import first_sign_in_handlers

        return first_sign_in_handlers()

    async def authenticate(self, handler, data):
        email = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        if not email or not password:
            return None
        hops = CarnetSettings(parent=self).trusted_proxy_hops
        remote_addr = client_address(getattr(handler, "request", None), hops)
        model = await asyncio.to_thread(self._check, email, password, remote_addr)
        if model is None:
            self.log.warning("Failed sign-in for %r from %s", email, remote_addr)
            return None
        # Not part of the Hub's user model: tells CarnetLoginHandler to send the person to the change form.
        must_change = model.pop("must_change_password")
        if handler is not None:
            handler.carnet_must_change_password = must_change
        return model
