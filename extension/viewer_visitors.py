"""Anonymous visitors of the Viewer: ``public/<link>`` (an app's public link), ``embed/<signed token>`` (a
signed embed URL, framable by the org's ``embed_origins``) and ``print/<signed token>`` (the scheduler's
headless browser printing an app to PDF). See carnet.app_links and carnet.print_pages for what they read.

A visitor has no Hub account, so the page gives their browser a signed cookie (``carnet-visitor``, signed
with the Viewer's cookie secret) naming a random pseudo-user ``visitor:<random>``; the kernel started for the
page belongs to that name. ``ViewerIdentityProvider`` recognises the cookie only on the kernel routes and
these pages, and ``ViewerAuthorizer`` lets that pseudo-user reach nothing but its own kernels: another
browser (another cookie, or a signed-in person) cannot attach to them. A signed-in person opening a public
link keeps their Hub identity as the kernel's owner (their cookie is what their websocket carries); the
kernel still reads as an anonymous visitor.
"""

from __future__ import annotations

import re
import secrets

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.auth.identity import User
from jupyter_server.utils import url_path_join

from carnet.extension.render_pool import print_pool_key, render_pool_of
from carnet.extension.viewer import AppHandler, ask_service
from carnet.extension.viewer_logs import without_link_secret

VISITOR_COOKIE = "carnet-visitor"
VISITOR_PREFIX = "visitor:"
_VISITOR_ID = re.compile(r"^[0-9a-f]{32}$")
# Paths (after the Viewer's base URL) where the visitor cookie identifies someone.
_VISITOR_PATHS = re.compile(
    r"^(api/kernels/[\w-]+(/channels)?|voila/api/shutdown/[\w-]+|public/.+|embed/.+|print/.+)$"
)
# Seconds a print request waits for the pre-render of its own page already under way (the rest of a cold
# render's time is saved; past it the page renders cold beside it).
PRINT_RENDER_WAIT = 120.0
_ORIGIN = re.compile(r"^(\*|https?://[A-Za-z0-9.*-]+(:\d{1,5})?)$")


class VisitorUser(User):
    """An anonymous visitor's browser (no Hub account, no scopes)."""


def visitor_from_cookie(handler) -> VisitorUser | None:
    """The visitor named by the request's signed cookie, on the paths where visitors exist."""
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    if not path.startswith(base) or not _VISITOR_PATHS.match(path[len(base) :]):
        return None
    raw = handler.get_secure_cookie(VISITOR_COOKIE)
    value = raw.decode() if raw else ""
    if not _VISITOR_ID.fullmatch(value):
        return None
    return VisitorUser(username=VISITOR_PREFIX + value, name="Visitor")


async def request_visitor_session(kind: str, token: str) -> dict:
    """Ask the Carnet service for the kernel token of a public link's or embed URL's visitor."""
    return await ask_service("visitor-sessions", {kind: token})


class VisitorAppHandler(AppHandler):
    """Renders an app for an anonymous visitor (no Hub sign-in needed)."""

    kind = ""  # "link", "embed" or "print": the field of the service's visitor-sessions call
    carnet_public = True

    def _request_summary(self) -> str:
        # Tornado's line for a refused request ("404 GET <uri> (<ip>): No such app"), without the secret.
        return f"{self.request.method} {without_link_secret(self.request.uri)} ({self.request.remote_ip})"

    def _owner(self) -> str:
        user = self.current_user
        if user is not None:
            return user.username
        secure = self.request.protocol == "https"
        # Inside a customer's portal the page is a third-party frame: its cookie must be SameSite=None,
        # which browsers accept only on HTTPS.
        visitor_id = secrets.token_hex(16)
        self.set_secure_cookie(
            VISITOR_COOKIE,
            visitor_id,
            expires_days=None,
            path=self.settings.get("base_url", "/"),
            httponly=True,
            secure=secure,
            samesite="None" if secure else "Lax",
        )
        return VISITOR_PREFIX + visitor_id

    def _frame(self, session: dict) -> None:
        """Embed pages may be framed by the org's allowed origins; other pages keep the server's policy."""
        ancestors = session.get("frame_ancestors")
        if not ancestors:
            return
        origins = [o for o in str(ancestors).split() if _ORIGIN.fullmatch(o)] or ["'none'"]
        policy = self._headers.get("Content-Security-Policy", "")
        kept = [d.strip() for d in policy.split(";") if d.strip() and d.split()[0] != "frame-ancestors"]
        self.set_header("Content-Security-Policy", "; ".join([f"frame-ancestors {' '.join(origins)}", *kept]))
        self.clear_header("X-Frame-Options")

    @allow_unauthenticated
    async def get(self, token):
        session = await request_visitor_session(self.kind, token)
        # The URL is the credential: never sent on to sites the app's outputs link to.
        self.set_header("Referrer-Policy", "no-referrer")
        self._frame(session)
        owner = self._owner()
        # Sets the _xsrf cookie, which the page's shutdown call on leaving needs (signed-in people get theirs
        # with the Hub's OAuth; a visitor has no other page that would set it).
        _ = self.xsrf_token
        await self.render_visitor_page(token, session, owner)

    async def render_visitor_page(self, token: str, session: dict, owner: str) -> None:
        await self.render_app(session, owner=owner)


class PublicAppHandler(VisitorAppHandler):
    """/public/<prefix>_<secret>: an app's public link."""

    kind = "link"


class EmbedAppHandler(VisitorAppHandler):
    """/embed/<payload>.<signature>: a signed embed URL."""

    kind = "embed"


class PrintAppHandler(VisitorAppHandler):
    """/print/<payload>.<signature>: the scheduler's page of an app to print as a PDF (carnet.print_pages,
    scheduler/viewer_pdf.py). Not a public page: no "Public" mark, not framable.

    The page the scheduler had pre-rendered for this token and query (viewer_print_warm.py), if the pool
    holds it for the same app version and data, is handed over at once; otherwise the page renders cold.
    Print pages are never refilled: each token is printed once."""

    kind = "print"
    carnet_public = False

    async def render_visitor_page(self, token: str, session: dict, owner: str) -> None:
        pool = render_pool_of(self)
        key = print_pool_key(session, self.request.query, token)
        app_id = session["app"]["id"]
        if key is not None:
            entry = await pool.take_print(key, owner, session["token"], wait=PRINT_RENDER_WAIT)
            if entry is not None:
                self.log.info("Print page of app %s from its pre-rendered kernel %s", app_id, entry.kernel_id)
                self.set_header("Content-Type", "text/html")
                self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
                self.finish(entry.html)
                return
        self.log.info("Print page of app %s rendered cold", app_id)
        await self.render_app(session, owner=owner)


def visitor_handlers(base: str, handler_kwargs: dict) -> list[tuple]:
    # Any token shape reaches the service, which answers 404 for anything it does not know.
    return [
        (url_path_join(base, r"public/(?P<token>[^/]{1,200})/?"), PublicAppHandler, handler_kwargs),
        (url_path_join(base, r"embed/(?P<token>[^/]{1,8000})/?"), EmbedAppHandler, handler_kwargs),
        (url_path_join(base, r"print/(?P<token>[^/]{1,8000})/?"), PrintAppHandler, handler_kwargs),
    ]
