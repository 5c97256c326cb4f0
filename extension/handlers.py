"""Handlers added to Studio servers."""

import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

import carnet


class StatusHandler(APIHandler):
    @web.authenticated
    def get(self):
        # Tells the Studio UI which Carnet it talks to; never the token itself.
        self.finish(
            json.dumps(
                {
                    "version": carnet.__version__,
                    "api_url": os.environ.get("CARNET_API_URL", ""),
                    "has_token": bool(os.environ.get("CARNET_TOKEN")),
                }
            )
        )


def load_studio_handlers(server_app):
    base = server_app.web_app.settings["base_url"]
    server_app.web_app.add_handlers(".*$", [(url_path_join(base, "carnet/status"), StatusHandler)])
