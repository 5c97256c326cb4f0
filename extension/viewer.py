"""The Viewer: a Jupyter server (started by the Hub as the ``carnet-viewer`` service) that renders
published apps with Voila, for people who have no server of their own.

Hardening (see docs/ARCHITECTURE.md): only Carnet's own routes are mounted (no Voila tree, contents,
files or render-by-path routes); kernels are started only for an app a person may open, with a Carnet
token carrying *that person's* identity and none of the service's variables; each kernel belongs to the
person it was started for (websocket, shutdown); the kernel message allow-list in viewer_config.py
keeps viewers from executing code.
"""

from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import FileFindHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import url_path_join
from jupyterhub.singleuser.extension import JupyterHubAuthorizer
from jupyterlab_server.themes_handler import ThemesHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from voila.configuration import VoilaConfiguration
from voila.paths import collect_static_paths, collect_template_paths
from voila.shutdown_kernel_handler import VoilaShutdownKernelHandler
from voila.static_file_handler import MultiStaticFileHandler, TemplateStaticFileHandler
from voila.tornado.handler import TornadoVoilaHandler
from voila.utils import get_data_dir, get_voila_labextensions_path, pjoin

# Environment variables of the Viewer service that never reach a kernel.
_PRIVATE_ENV_PREFIXES = ("JUPYTERHUB_", "CARNET_", "JPY_")


@dataclass(frozen=True)
class KernelRequest:
    owner: str  # the Hub user name of the person looking at the app
    token: str  # a Carnet viewer_kernel token carrying that person's identity


_kernel_request: contextvars.ContextVar[KernelRequest | None] = contextvars.ContextVar(
    "carnet_kernel_request", default=None
)


def kernel_env(base_env: dict, token: str) -> dict:
    env = {k: v for k, v in base_env.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
    env["CARNET_API_URL"] = os.environ.get("CARNET_API_URL", "")
    env["CARNET_TOKEN"] = token
    return env


class ViewerKernelManager(AsyncMappingKernelManager):
    """Starts kernels only for an app render, records who each kernel belongs to."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kernel_owners: dict[str, str] = {}

    async def start_kernel(self, *args, **kwargs):
        request = _kernel_request.get()
        if request is None:
            raise web.HTTPError(403, "Kernels are started only to render an app")
        kwargs["env"] = kernel_env(kwargs.get("env") or dict(os.environ), request.token)
        kernel_id = await super().start_kernel(*args, **kwargs)
        self.kernel_owners[kernel_id] = request.owner
        return kernel_id

    def remove_kernel(self, kernel_id):
        # Called whenever a kernel goes away (shutdown, culling): the owner map must not grow forever.
        self.kernel_owners.pop(kernel_id, None)
        return super().remove_kernel(kernel_id)

    def owner_of(self, kernel_id: str | None) -> str | None:
        return self.kernel_owners.get(kernel_id) if kernel_id else None


class ViewerAuthorizer(JupyterHubAuthorizer):
    """Allows a person only to talk to the kernels started for them; every other Jupyter route is refused."""

    def is_authorized(self, handler, user, action, resource):
        if not super().is_authorized(handler, user, action, resource):
            return False
        if resource != "kernels" or action not in ("read", "execute"):
            return False
        kernel_id = handler.path_kwargs.get("kernel_id")
        owner = handler.kernel_manager.owner_of(kernel_id)
        return owner is not None and owner == user.username


async def request_viewer_session(username: str, app_id: str) -> dict:
    """Ask the Carnet service whether ``username`` may open ``app_id``; get their kernel token if so."""
    api_url = os.environ["CARNET_API_URL"]
    request = HTTPRequest(
        url_path_join(api_url, "api/v1/internal/viewer-sessions"),
        method="POST",
        headers={
            "Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
            "Content-Type": "application/json",
        },
        body=json.dumps({"user": username, "app_id": app_id}),
        request_timeout=30,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as exc:
        if exc.code == 404:
            raise web.HTTPError(404, "No such app") from None
        raise web.HTTPError(502, "The Carnet service refused the request") from None
    except OSError:
        raise web.HTTPError(503, "The Carnet service is not reachable; try again shortly") from None
    return json.loads(response.body)


class AppHandler(TornadoVoilaHandler):
    """/apps/<id>: renders the current version of an app as the person asking."""

    @web.authenticated
    async def get(self, app_id):
        session = await request_viewer_session(self.current_user.username, app_id)
        token = _kernel_request.set(KernelRequest(owner=self.current_user.username, token=session["token"]))
        try:
            async for html in self.get_generator(path=session["notebook_path"]):
                self.write(html)
                self.flush()
        finally:
            _kernel_request.reset(token)


class OwnedKernelShutdownHandler(VoilaShutdownKernelHandler):
    """The page's beforeunload shuts its kernel down; nobody else's kernel can be shut down this way."""

    @web.authenticated
    async def post(self, kernel_id):
        if self.kernel_manager.owner_of(kernel_id) != self.current_user.username:
            raise web.HTTPError(404, "No such kernel")
        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        self.set_status(204)
        self.finish()


def _jupyter_server_extension_points():
    return [{"module": "carnet.extension.viewer"}]


def _load_jupyter_server_extension(server_app):
    """Mounts the Viewer's routes: Voila's assets, the app renderer and the owned-kernel shutdown."""
    web_app = server_app.web_app
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
    web_app.add_handlers(
        ".*$",
        [
            (
                url_path_join(base, r"apps/(?P<app_id>\d+)/?"),
                AppHandler,
                {
                    "config": server_app.config,
                    "template_paths": template_paths,
                    "voila_configuration": configuration,
                },
            ),
            (url_path_join(base, "voila/templates/(.*)"), TemplateStaticFileHandler),
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
            (url_path_join(base, "voila/static/(.*)"), MultiStaticFileHandler, {"paths": static_paths}),
            (url_path_join(base, r"voila/api/shutdown/(?P<kernel_id>[\w-]+)"), OwnedKernelShutdownHandler),
            (
                url_path_join(base, r"voila/labextensions/(.*)"),
                FileFindHandler,
                {"path": labextensions_path, "no_cache_paths": ["/"]},
            ),
        ],
    )
