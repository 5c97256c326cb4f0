"""The Viewer: a Jupyter server (started by the Hub as the ``carnet-viewer`` service) that renders
published apps with Voila, for people who have no server of their own.

Hardening (see docs/ARCHITECTURE.md): only Carnet's own routes are mounted (no Voila tree, contents,
files or render-by-path routes); kernels are started only for an app a person may open, with a Carnet
token carrying *that person's* identity and none of the service's variables; each kernel belongs to the
person it was started for (websocket, shutdown); the kernel message allow-list in viewer_config.py
keeps viewers from executing code.
"""

from __future__ import annotations

import json
import os
import re

from jupyter_core.utils import ensure_async
from jupyter_server.utils import url_path_join
from jupyterhub.singleuser.extension import JupyterHubAuthorizer, JupyterHubIdentityProvider
from jupyterlab_server.themes_handler import ThemesHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from voila.configuration import VoilaConfiguration
from voila.paths import collect_static_paths, collect_template_paths
from voila.shutdown_kernel_handler import VoilaShutdownKernelHandler
from voila.static_file_handler import TemplateStaticFileHandler
from voila.tornado.handler import TornadoVoilaHandler
from voila.utils import get_data_dir, get_voila_labextensions_path, pjoin

from carnet.extension.prerender import render_context
from carnet.extension.render_pool import Busy, pool_key, render_pool_of, write_busy
from carnet.extension.snapshots import (
    LiveHandler,
    ViewerKernelHandler,
    ViewerKernelWebsocketHandler,
    shared_key,
)
from carnet.extension.viewer_badge import PublicBadgeMixin
from carnet.extension.viewer_csp import AppPagePolicyMixin
from carnet.extension.viewer_kernels import KernelRequest, kernel_request
from carnet.extension.viewer_static import (
    LabextensionAssetHandler,
    StaticAssetHandler,
    check_asset_path,
    fontawesome_path,
)
from carnet.extension.viewer_topojson import topojson_route
from carnet.hub_auth import limit_server_hub_auth_cache
from carnet.settings import CarnetSettings

_TEMPLATE_ASSET = re.compile(r"[A-Za-z0-9_][\w.-]*/static/.+")


class ViewerAuthorizer(JupyterHubAuthorizer):
    """Allows a person only to talk to the kernels started for them; every other Jupyter route is refused."""

    def is_authorized(self, handler, user, action, resource):
        from carnet.extension.viewer_visitors import VisitorUser  # noqa: PLC0415 - it imports this module

        # An anonymous visitor (public link, embed URL) has no Hub scopes: only the owner check below.
        if not isinstance(user, VisitorUser) and not super().is_authorized(handler, user, action, resource):
            return False
        if resource != "kernels" or action not in ("read", "execute"):
            return False
        kernel_id = handler.path_kwargs.get("kernel_id")
        owner = handler.kernel_manager.owner_of(kernel_id)
        return owner is not None and owner == user.username


async def ask_service(path: str, body: dict) -> dict:
    """POST ``body`` to the Carnet service's ``api/v1/internal/<path>`` with the Viewer's own Hub token; the
    service's refusals become the Viewer's answers (404 as for an unknown app, its 403 message shown)."""
    request = HTTPRequest(
        url_path_join(os.environ["CARNET_API_URL"], "api/v1/internal", path),
        method="POST",
        headers={
            "Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
            "Content-Type": "application/json",
        },
        body=json.dumps(body),
        request_timeout=30,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as exc:
        if exc.code == 404:
            raise web.HTTPError(404, "No such app") from None
        if exc.code == 403 and exc.response is not None:
            # E.g. a person with a one-time password: the service says where to choose their own.
            message = json.loads(exc.response.body).get("message", "Not allowed")
            # As the reason: Voila's error page shows the reason, not the message.
            raise web.HTTPError(403, "%s", message, reason=message.replace("\n", " ")) from None
        raise web.HTTPError(502, "The Carnet service refused the request") from None
    except OSError:
        raise web.HTTPError(503, "The Carnet service is not reachable; try again shortly") from None
    return json.loads(response.body)


async def request_viewer_session(
    username: str, app_id: str, as_user: str | None = None, ttl_seconds: int | None = None
) -> dict:
    """Ask the Carnet service whether ``username`` may open ``app_id``; get their kernel token if so. With
    ``as_user`` (an admin's preview), the token carries that member's identity instead; ``ttl_seconds``
    shortens the token's life (the render pool's pre-renders)."""
    return await ask_service(
        "viewer-sessions",
        {
            "user": username,
            "app_id": app_id,
            **({"as_user": as_user} if as_user else {}),
            **({"ttl_seconds": ttl_seconds} if ttl_seconds else {}),
        },
    )


class AppHandler(PublicBadgeMixin, AppPagePolicyMixin, TornadoVoilaHandler):
    """/apps/<id>: renders the current version of an app as the person asking."""

    @web.authenticated
    async def get(self, app_id):
        as_user = self.get_query_argument("as_user", None)
        session = await request_viewer_session(self.current_user.username, app_id, as_user)
        # Marked "Public" when anyone with its public link may see it too (carnet.app_links).
        self.carnet_public = bool(session.get("public"))
        await self.render_app(session, owner=self.current_user.username)

    def use_page_config(self, session: dict) -> dict:
        """The page's front-end configuration for a viewer session; returns the session's branding."""
        # The page shows the branding of the app's organization, as the service read it from the platform
        # database (Voila hands page_config to the template; the template keeps it out of the page's JSON).
        branding = session.get("branding") or {}
        preview = session["user"]["email"] if session.get("preview_by") else None
        self.page_config_hook = lambda page_config, **_: {
            **page_config,
            "carnetBranding": branding,
            "carnetPreviewAs": preview,
            # The app's current title (a PATCH changes it without a new snapshot).
            "carnetTitle": session["app"]["title"],
        }
        return branding

    async def render_app(self, session: dict, owner: str) -> None:
        """Renders the app of a viewer session (the service's answer) with a kernel that belongs to ``owner``
        (the name the kernel websocket's caller must have) and carries the session's token."""
        branding = self.use_page_config(session)
        # A page rendered ahead of time for the same app version, data and filters, if the pool has one
        # (render_pool.py says what makes sharing it safe); else a cold render under the kernel caps.
        pool = render_pool_of(self)
        key, refill = self._pool_key(session, owner), None
        if key is not None:
            context = render_context(self, session["notebook_path"])
            app_id, username = session["app"]["id"], owner

            def refill(someone_waits=False):
                # The pre-render's token lives only as long as a pooled page may wait (+ its render).
                ttl = pool.ttl + 600
                pool.refill(
                    key,
                    context,
                    lambda: request_viewer_session(username, str(app_id), ttl_seconds=ttl),
                    someone_waits=someone_waits,
                )

            entry = await pool.hand_over(key, owner, session["token"])
            if entry is not None:
                self.set_header("Content-Type", "text/html")
                self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
                refill()  # before the page ends: the refill is logged by the time the visitor has it
                self.finish(entry.html)
                return
            # No page of their own: the latest page of the same data and row context at once, while theirs
            # is pre-rendered; the snapshot page reloads into it (snapshots.py).
            snapshot = pool.snapshots.get(shared_key(key, session["user"].get("role", "")))
            if snapshot is not None:
                live = url_path_join(self.base_url, "carnet/live/{session_id}")
                html, snapshot_id = pool.snapshots.open(snapshot, owner, key, live)
                self.set_header("Content-Type", "text/html")
                self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
                refill(someone_waits=True)
                self.log.info("Served a snapshot of app %s (%s)", key.app_id, snapshot_id)
                self.finish(html)
                return
        slot = None
        if session["app"].get("org_id") is not None:
            try:
                slot = await pool.reserve(session["app"]["id"], session["app"]["org_id"])
            except Busy:
                write_busy(self)
                return
        token = kernel_request.set(
            KernelRequest(
                owner=owner,
                token=session["token"],
                user_id=session["user"]["id"],
                slot=slot,
                brand_color=branding.get("color") or "",  # carnet.dash's Theme (viewer_kernels.kernel_env)
            )
        )
        try:
            async for html in self.get_generator(path=session["notebook_path"]):
                self.write(html)
                self.flush()
        finally:
            kernel_request.reset(token)
            if slot is not None:
                slot.free()
        if refill is not None:
            refill()

    def _pool_key(self, session: dict, owner: str):
        # Pooled only for a signed-in person looking as themselves: the refill asks the service for a new
        # session in their name.
        try:
            user = self.current_user
        except web.HTTPError:  # an anonymous route's handler (public links): never pooled
            return None
        if user is None or getattr(user, "username", None) != owner or session["user"]["email"] != owner:
            return None
        return pool_key(session, self.request.query)


class OwnedKernelShutdownHandler(VoilaShutdownKernelHandler):
    """The page's beforeunload shuts its kernel down; nobody else's kernel can be shut down this way."""

    @web.authenticated
    async def post(self, kernel_id):
        snapshots = self.settings.get("carnet_snapshots")
        snapshot = snapshots.session(kernel_id) if snapshots is not None else None
        if snapshot is not None and snapshot.owner == self.current_user.username:
            snapshots.close(kernel_id)  # a snapshot page has no kernel: its replay ends
            self.set_status(204)
            self.finish()
            return
        if self.kernel_manager.owner_of(kernel_id) != self.current_user.username:
            raise web.HTTPError(404, "No such kernel")
        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        self.set_status(204)
        self.finish()


class TemplateAssetHandler(TemplateStaticFileHandler):
    """Voila's handler of template assets (``voila/templates/<template>/static/<file>``): a URL that is not of
    that shape (``voila/templates/carnet/conf.json``, ``../`` tricks) is a 404, not an AssertionError turned
    into a 500."""

    def parse_url_path(self, path):
        check_asset_path(path)  # an asset's type, no hidden or odd names (viewer_static.py)
        normalized = os.path.normpath(path).replace(os.path.sep, "/")
        if not _TEMPLATE_ASSET.fullmatch(path) or not _TEMPLATE_ASSET.fullmatch(normalized):
            raise web.HTTPError(404)
        return super().parse_url_path(path)


class ViewerIdentityProvider(JupyterHubIdentityProvider):
    """The Hub's identity provider without the server's own token. jupyter_server writes
    ``identity_provider.token`` into every HTML page a signed-in person gets (``data-jupyter-api-token``):
    in a Studio server that is its owner's server token, but in the Viewer it is the Viewer service's Hub
    token, with which anyone could ask the Carnet service for any person's kernel token."""

    @property
    def token(self):
        return ""

    async def get_user(self, handler):
        user = await super().get_user(handler)
        if user is None:
            # Not signed in: an anonymous visitor's signed cookie, on its kernel's routes and visitor pages.
            from carnet.extension.viewer_visitors import visitor_from_cookie  # noqa: PLC0415 - a cycle

            user = visitor_from_cookie(handler)
        return user


class NotFoundHandler(web.RequestHandler):
    """Jupyter Server routes the Viewer does not offer (mounted before the server's own handlers)."""

    def prepare(self):
        raise web.HTTPError(404)


def _jupyter_server_extension_points():
    return [{"module": "carnet.extension.viewer"}]


def _load_jupyter_server_extension(server_app):
    """Mounts the Viewer's routes: Voila's assets, the app renderer and the owned-kernel shutdown."""
    web_app = server_app.web_app
    # The Hub's extension forces its own provider class over any config: narrow the instance in place, so
    # the handlers and the authorizer that already hold it see the change.
    if type(server_app.identity_provider) is JupyterHubIdentityProvider:
        server_app.identity_provider.__class__ = ViewerIdentityProvider
    # Signing out of the Hub ends the Viewer session at once (no cached "this cookie is X").
    limit_server_hub_auth_cache(server_app, CarnetSettings().hub_auth_cache_seconds)
    configuration = VoilaConfiguration(parent=server_app)
    template_paths = collect_template_paths(["voila", "nbconvert"], configuration.template)
    static_paths = collect_static_paths(["voila", "nbconvert"], configuration.template)

    from jinja2 import Environment, FileSystemLoader

    env = Environment(
        loader=FileSystemLoader(template_paths), extensions=["jinja2.ext.i18n"], autoescape=True
    )
    env.install_null_translations(newstyle=False)
    web_app.settings["voila_jinja2_env"] = env

    base = web_app.settings["base_url"]
    labextensions_path = get_voila_labextensions_path(configuration.extra_labextensions_path)
    app_kwargs = {
        "config": server_app.config,
        "template_paths": template_paths,
        "voila_configuration": configuration,
    }
    from carnet.extension.viewer_print_warm import warm_print_handlers  # noqa: PLC0415 - the same
    from carnet.extension.viewer_visitors import visitor_handlers  # noqa: PLC0415 - it imports this module
    from carnet.extension.viewer_warm import warm_handlers  # noqa: PLC0415 - it imports this module

    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, r"apps/(?P<app_id>\d+)/?"), AppHandler, app_kwargs),
            # Anonymous visitors: an app's public link, a signed embed URL (viewer_visitors.py).
            *visitor_handlers(base, app_kwargs),
            # The scheduler's warm-up: a person's page pre-rendered into the pool (viewer_warm.py).
            *warm_handlers(base, app_kwargs),
            # The scheduler's pre-render of a report's print page (viewer_print_warm.py).
            *warm_print_handlers(base, app_kwargs),
            # Prometheus metrics: any signed-in Hub user could read the Viewer's kernel counts and traffic.
            (url_path_join(base, r"metrics/?"), NotFoundHandler),
            # Jupyter Server's own front page: nothing of Carnet's lives there.
            (url_path_join(base, r"/?"), NotFoundHandler),
            # Jupyter Server's handler of these fails under a prefix (the proxy then answers 503).
            (url_path_join(base, r"(robots\.txt|favicon\.ico)"), NotFoundHandler),
            (url_path_join(base, "voila/templates/(.*)"), TemplateAssetHandler),
            (
                url_path_join(base, r"voila/api/themes/(.*)"),
                ThemesHandler,
                {
                    "themes_url": "/voila/api/themes",
                    "path": pjoin(get_data_dir(), "themes"),
                    "labextensions_path": labextensions_path,
                    "no_cache_paths": ["/"],
                },
            ),
            (url_path_join(base, "voila/static/(.*)"), StaticAssetHandler, {"paths": static_paths}),
            (
                url_path_join(base, r"carnet/fontawesome/(.*)"),
                LabextensionAssetHandler,
                {"path": [fontawesome_path()], "no_cache_paths": []},
            ),
            topojson_route(base),  # map outlines for plotly (viewer_topojson.py)
            (url_path_join(base, r"voila/api/shutdown/(?P<kernel_id>[\w-]+)"), OwnedKernelShutdownHandler),
            # A snapshot page's kernel websocket is a replay; other ids go to Jupyter's (snapshots.py).
            (
                url_path_join(base, r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/channels"),
                ViewerKernelWebsocketHandler,
            ),
            (url_path_join(base, r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"), ViewerKernelHandler),
            (url_path_join(base, r"carnet/live/(?P<session_id>[\w-]+)"), LiveHandler),
            (
                url_path_join(base, r"voila/labextensions/(.*)"),
                LabextensionAssetHandler,
                {"path": labextensions_path, "no_cache_paths": ["/"]},
            ),
        ],
    )
