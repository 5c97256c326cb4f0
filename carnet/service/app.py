"""The Carnet service process: started by the Hub as a managed service at /services/carnet/."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import ioloop, web
from traitlets import Integer, Unicode, default
from traitlets.config import Application

from carnet.db import upgrade
from carnet.hub_auth import make_hub_auth
from carnet.loads.history import fail_interrupted
from carnet.service import admin_groups, admin_page, admin_settings, gallery
from carnet.service.api import (
    app_links,
    app_thumbnails,
    apps,
    audit,
    connections,
    groups,
    internal,
    job_state,
    job_webhooks,
    jobs,
    keys,
    meta,
    org,
    org_mail,
    push,
    query,
    row_rules,
    source_cache,
    sources,
    sync,
    uploads,
    users,
    warehouse,
)
from carnet.service.api.base import NotFoundHandler
from carnet.settings import CarnetSettings

# The admin page is three modules: people (admin_page), viewer groups, organization settings.
HANDLER_MODULES = [meta, sources, apps, jobs, internal, users, groups, audit, keys, org, gallery]
HANDLER_MODULES += [connections]
HANDLER_MODULES += [source_cache]
HANDLER_MODULES += [uploads]
HANDLER_MODULES += [query]
HANDLER_MODULES += [warehouse, push]
HANDLER_MODULES += [sync]
HANDLER_MODULES += [app_thumbnails]
HANDLER_MODULES += [row_rules]
HANDLER_MODULES += [app_links]
HANDLER_MODULES += [job_state]
HANDLER_MODULES += [job_webhooks]
HANDLER_MODULES += [admin_page, admin_groups, admin_settings]
HANDLER_MODULES += [org_mail]


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """The OAuth callback, with the service's own HubOAuth (the one BaseHandler uses)."""

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


def all_handlers(prefix: str) -> list[tuple]:
    routes = [
        (url_path_join(prefix, pattern), handler)
        for m in HANDLER_MODULES
        for pattern, handler in m.default_handlers
    ]
    routes.append((url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler))
    routes.append((url_path_join(prefix, "api/.*"), NotFoundHandler))
    return routes


def prepare_state(settings: CarnetSettings, log=None) -> None:
    """What the service does to its state before it serves: the schema upgrade, then the loads a killed
    process left ``running`` (this process is the only one that loads) marked failed."""
    upgrade(settings.db_url)
    interrupted = fail_interrupted(settings)
    if interrupted and log is not None:
        log.warning("Marked %d interrupted warehouse load(s) as failed", interrupted)


class CarnetService(Application):
    name = "carnet-service"
    description = "Carnet's platform service: organizations, sources, apps, jobs and the REST API."
    classes = [CarnetSettings]

    port = Integer(
        help="Port to listen on (127.0.0.1). Default: from the URL the Hub gives in JUPYTERHUB_SERVICE_URL."
    ).tag(config=True)

    @default("port")
    def _default_port(self):
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8181")
        return int(url.rsplit(":", 1)[-1].split("/")[0])

    service_prefix = Unicode(help="URL prefix (the Hub sets JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("service_prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/carnet/")

    def make_app(self) -> web.Application:
        settings = CarnetSettings(parent=self)
        return web.Application(
            all_handlers(self.service_prefix),
            carnet_settings=settings,
            # Read by every handler (BaseHandler.hub_auth): how long a Hub answer about a session is trusted.
            hub_auth=make_hub_auth(settings.hub_auth_cache_seconds, parent=self),
            service_prefix=self.service_prefix,
            hub_base_url=os.environ.get("JUPYTERHUB_BASE_URL", "/"),
            cookie_secret=self._cookie_secret(settings),
            xsrf_cookies=False,  # HubOAuthenticated checks xsrf itself for cookie-authenticated requests
            log=self.log,
        )

    @staticmethod
    def _cookie_secret(settings: CarnetSettings) -> bytes:
        # Kept on disk so that browser sessions survive a restart of the service.
        path = Path(settings.data_dir) / "secrets" / "service_cookie_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    def start(self):
        settings = CarnetSettings(parent=self)
        prepare_state(settings, self.log)
        app = self.make_app()
        app.listen(self.port, address="127.0.0.1")
        self.log.info("Carnet service listening on 127.0.0.1:%s%s", self.port, self.service_prefix)
        ioloop.IOLoop.current().start()


def main(argv=None):
    logging.basicConfig(level=logging.INFO)
    service = CarnetService.instance()
    service.initialize(argv)
    service.start()
