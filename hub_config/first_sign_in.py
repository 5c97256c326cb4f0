"""Hub pages of the first sign-in (registered by ``CarnetAuthenticator.get_handlers``):

- ``/hub/login``: JupyterHub's form; a person who signed in with a one-time password is sent on to
- ``/hub/carnet/change-password?next=...``: current password + new one twice; then on to ``next``;
- ``/hub/carnet/invite/<token>``: anonymous; the invited person chooses a password and is signed in.

The rules (what a good password is, tokens, expiry) live in ``carnet.first_sign_in``; these handlers only
render forms, run those rules in a thread (the database is synchronous) and audit.
"""

from __future__ import annotations

import asyncio

from jupyterhub._xsrf_utils import _set_xsrf_cookie
from jupyterhub.handlers import BaseHandler
from jupyterhub.handlers.login import LoginHandler
from jupyterhub.utils import url_path_join
from sqlalchemy import select
from tornado import web
from tornado.httputil import url_concat

from carnet.audit import client_address, record
from carnet.db import session_scope
from carnet.db.models import User
from carnet.errors import CarnetError, ValidationError
from carnet.first_sign_in import accept_invitation, change_own_password, find_invitation
from carnet.hub_config.authenticator import hub_groups_for
from carnet.settings import CarnetSettings

CHANGE_PASSWORD_ROUTE = "/carnet/change-password"  # noqa: S105 - a URL path, not a secret
INVITE_ROUTE = r"/carnet/invite/([^/]+)"


def _audit(session, user: User, action: str, remote_addr: str) -> None:
    # Sign-in events have no API principal: one record per organization of the person, as at login.
    for org_id in sorted({m.org_id for m in user.memberships}) or [None]:
        record(
            session,
            org_id=org_id,
            actor_id=user.id,
            actor=user.email,
            action=action,
            target=f"user/{user.email}",
            remote_addr=remote_addr,
        )


def must_change_password(settings: CarnetSettings, email: str) -> bool:
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == email))
        return bool(user and user.must_change_password)


def _change(settings, email, current, new, confirm, remote_addr) -> None:
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == email))
        if user is None or not user.is_active:
            raise ValidationError("This account is disabled")
        change_own_password(user, current, new, confirm)
        _audit(session, user, "password.change", remote_addr)


def _invited_email(settings, token) -> str:
    with session_scope(settings.db_url) as session:
        return find_invitation(session, token).email


def _accept(settings, token, password, confirm, remote_addr) -> dict:
    with session_scope(settings.db_url) as session:
        user = accept_invitation(session, token, password, confirm)
        _audit(session, user, "invitation.accept", remote_addr)
        return {"name": user.email, "groups": hub_groups_for(user.memberships)}


class CarnetLoginHandler(LoginHandler):
    """JupyterHub's login page; after a sign-in with a one-time password, the next page is the change form.

    ``CarnetAuthenticator.authenticate`` sets ``carnet_must_change_password`` on the handler."""

    carnet_must_change_password = False

    def get_next_url(self, user=None, default=None):
        next_url = super().get_next_url(user, default)
        if user is not None and self.carnet_must_change_password:
            change = url_path_join(self.hub.base_url, CHANGE_PASSWORD_ROUTE.lstrip("/"))
            return url_concat(change, {"next": next_url})
        return next_url

    async def get(self):
        # Already signed in (a cookie from before): same detour until the password is their own.
        if self.current_user is not None:
            self.carnet_must_change_password = await asyncio.to_thread(
                must_change_password, CarnetSettings(parent=self.authenticator), self.current_user.name
            )
        return await super().get()


class ChangePasswordHandler(BaseHandler):
    """The person chooses their own password (required after a one-time password, allowed any time)."""

    async def _render(self, error: str = "", status: int = 200):
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        html = await self.render_template(
            "carnet_change_password.html",
            error=error,
            next=self.get_argument("next", ""),
            forced=await asyncio.to_thread(
                must_change_password, CarnetSettings(parent=self.authenticator), self.current_user.name
            ),
        )
        self.finish(html)

    @web.authenticated
    async def get(self):
        await self._render()

    @web.authenticated
    async def post(self):
        arg = self.get_body_argument
        try:
            await asyncio.to_thread(
                _change,
                CarnetSettings(parent=self.authenticator),
                self.current_user.name,
                arg("current_password", ""),
                arg("new_password", ""),
                arg("confirm_password", ""),
                client_address(self.request),
            )
        except CarnetError as exc:
            return await self._render(error=exc.message, status=exc.status)
        self.redirect(self.get_next_url(self.current_user))


class InvitationHandler(BaseHandler):
    """Anonymous: an invitation link. Unknown or used -> 404, expired -> 410 (an HTML page either way)."""

    async def _render(self, *, email: str = "", error: str = "", gone: bool = False, status: int = 200):
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")  # the URL holds the token
        html = await self.render_template("carnet_invitation.html", email=email, error=error, gone=gone)
        self.finish(html)

    async def get(self, token):
        try:
            email = await asyncio.to_thread(_invited_email, CarnetSettings(parent=self.authenticator), token)
        except CarnetError as exc:
            return await self._render(error=exc.message, gone=True, status=exc.status)
        # A fresh xsrf cookie for the anonymous form, as JupyterHub's login page does.
        _set_xsrf_cookie(self, self._xsrf_token_id, cookie_path=self.hub.base_url, xsrf_token=self.xsrf_token)
        await self._render(email=email)

    async def post(self, token):
        settings = CarnetSettings(parent=self.authenticator)
        arg = self.get_body_argument
        try:
            model = await asyncio.to_thread(
                _accept,
                settings,
                token,
                arg("new_password", ""),
                arg("confirm_password", ""),
                client_address(self.request),
            )
        except ValidationError as exc:
            # The link still works: show the form again with what to fix.
            email = await asyncio.to_thread(_invited_email, settings, token)
            return await self._render(email=email, error=exc.message, status=exc.status)
        except CarnetError as exc:
            return await self._render(error=exc.message, gone=True, status=exc.status)
        user = await self.auth_to_user(model)
        self.set_login_cookie(user)
        self.redirect(self.hub.base_url)  # the Hub's home sends each person to their landing page


def first_sign_in_handlers() -> list[tuple[str, type]]:
    from carnet.hub_config.logout import CarnetLogoutHandler

    return [
        ("/login", CarnetLoginHandler),
        ("/logout", CarnetLogoutHandler),
        (CHANGE_PASSWORD_ROUTE, ChangePasswordHandler),
        (INVITE_ROUTE, InvitationHandler),
    ]
