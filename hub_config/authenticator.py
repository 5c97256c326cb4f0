"""Sign-in against Carnet's own users table (bcrypt hashes): user name = email.

The Hub keeps one group per role family so that its RBAC (roles from ``load_roles``) can grant servers
only to authors; groups are re-synced at every login (``manage_groups``).
"""

from __future__ import annotations

import asyncio

from jupyterhub.auth import Authenticator
from sqlalchemy import select
from traitlets import default

from carnet.db import session_scope
from carnet.db.models import AUTHOR_ROLES, User
from carnet.passwords import verify_password
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

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # Everyone with an active Carnet account and a membership may sign in; authenticate() decides.
        return True

    def normalize_username(self, username):
        return username.strip().lower()

    def _check(self, email: str, password: str) -> dict | None:
        settings = CarnetSettings(parent=self)
        with session_scope(settings.db_url) as session:
            user = session.scalar(select(User).where(User.email == email))
            # Hash even when the user is unknown so that timing does not reveal which emails exist.
            hashed = user.password_hash if user else "$2b$12$" + "." * 53
            if not verify_password(password, hashed) or user is None:
                return None
            if not user.is_active or not user.memberships:
                return None
            return {"name": user.email, "groups": hub_groups_for(user.memberships)}

    async def authenticate(self, handler, data):
        email = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        if not email or not password:
            return None
        model = await asyncio.to_thread(self._check, email, password)
        if model is None:
            self.log.warning("Failed sign-in for %r from %s", email, handler.request.remote_ip)
        return model
