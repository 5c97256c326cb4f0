"""Signing out ends every Hub session of the person, not only the cookie of this browser.

JupyterHub's logout clears this browser's cookies and revokes the OAuth tokens of its session, but the Hub
login cookie only names the user's ``cookie_id``: a copy of it (another browser, a stolen cookie) would keep
working. Giving the user a new ``cookie_id`` at logout makes every earlier Hub cookie of theirs worthless at
the next request — what "logout ends existing sessions at once" promises.
"""

from __future__ import annotations

from jupyterhub import orm
from jupyterhub.handlers.login import LogoutHandler
from oauthenticator.oauth2 import OAuthLogoutHandler


class EndEverySessionMixin:
    async def default_handle_logout(self):
        user = self.current_user
        await super().default_handle_logout()
        if user is not None:
            user.orm_user.cookie_id = orm.new_token()
            self.db.commit()
            self.log.info("Signed out %s everywhere (new cookie id)", user.name)


class CarnetLogoutHandler(EndEverySessionMixin, LogoutHandler):
    """Password sign-in's logout."""


class CarnetOIDCLogoutHandler(EndEverySessionMixin, OAuthLogoutHandler):
    """Single sign-on's logout (then, by default, the provider's end-session page: see oidc.py)."""
