"""Studio servers: only authors (analyst, studio, admin) get one; each gets a Carnet token for its kernels.

The token is bound to the user and their organization and is revoked when the server stops. No data-source
credential is ever put in the server's environment: kernels reach data through the Carnet API.
"""

from __future__ import annotations

import asyncio

from jupyterhub.spawner import SimpleLocalProcessSpawner
from sqlalchemy import select
from tornado import web

from carnet.branding import brand_color_env, branding
from carnet.db import session_scope
from carnet.db.models import AUTHOR_ROLES, Organization, TokenKind, User
from carnet.errors import PasswordChangeRequired
from carnet.first_sign_in import require_own_password
from carnet.isolation import Account, account_for
from carnet.settings import CarnetSettings
from carnet.tokens import mint_token, revoke_tokens

# Studio pages are on the Hub's origin, like the Viewer: maps of carnet.dash read the Viewer's outlines.
STUDIO_TOPOJSON_URL = "/services/carnet-viewer/carnet/topojson/"


def mint_studio_token(settings: CarnetSettings, email: str) -> tuple[str, int, dict]:
    """A token for ``email``'s Studio kernels, their Carnet user id and the page settings their kernels get
    (carnet.dash draws as in the Viewer: the org's brand colour, the map outlines). 403 for anyone not an
    author."""
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == email))
        memberships = [
            m for m in (user.memberships if user and user.is_active else []) if m.role in AUTHOR_ROLES
        ]
        if not memberships:
            raise web.HTTPError(403, "Viewers open apps in the Viewer; they have no Studio server")
        try:
            require_own_password(user, settings)
        except PasswordChangeRequired as exc:
            raise web.HTTPError(403, exc.message) from None
        revoke_tokens(session, user_id=user.id, kind=TokenKind.studio_kernel)
        token = mint_token(
            session,
            kind=TokenKind.studio_kernel,
            user_id=user.id,
            org_id=memberships[0].org_id,
            ttl_seconds=None,  # lives as long as the server; revoked at stop
            note="studio server",
        )
        color = branding(settings.data_dir, session.get(Organization, memberships[0].org_id), False)["color"]
        return token, user.id, {"CARNET_TOPOJSON_URL": STUDIO_TOPOJSON_URL, **brand_color_env(color)}


def revoke_studio_tokens(settings: CarnetSettings, email: str) -> None:
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == email))
        if user:
            revoke_tokens(session, user_id=user.id, kind=TokenKind.studio_kernel)


class CarnetSpawner(SimpleLocalProcessSpawner):
    """A local JupyterLab per author, run as the author's own OS account (carnet.isolation) when Carnet
    runs as root, so notebook code can read nothing of Carnet's data directory. Deployments may swap in a
    container spawner; the Carnet-specific part is the token, the role check and the account."""

    _account: Account | None = None

    async def start(self):
        settings = CarnetSettings(parent=self)
        token, user_id, page_env = await asyncio.to_thread(mint_studio_token, settings, self.user.name)
        self._account = await asyncio.to_thread(account_for, settings, user_id)
        self.environment = {
            **self.environment,
            "CARNET_API_URL": settings.api_url,
            "CARNET_TOKEN": token,
            **page_env,  # read when the server starts: a new brand colour shows after a restart
        }
        return await super().start()

    def make_preexec_fn(self, name):
        if self._account:
            return self._account.preexec()
        return super().make_preexec_fn(name)

    def user_env(self, env):
        if self._account:
            env.update(self._account.environment())
            return env
        return super().user_env(env)

    async def stop(self, now=False):
        try:
            return await super().stop(now=now)
        finally:
            settings = CarnetSettings(parent=self)
            await asyncio.to_thread(revoke_studio_tokens, settings, self.user.name)
