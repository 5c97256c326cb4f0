"""Carnet's Jupyter server extensions.

- ``carnet.extension`` (this module): loaded in every Studio (JupyterLab) server; for now it serves
  ``/carnet/status`` so that the JupyterLab panel of a later issue has a backend to talk to.
- ``carnet.extension.viewer``: loaded only in the Viewer service; renders published apps with Voila.
"""

from carnet.extension.handlers import load_studio_handlers
from carnet.hub_auth import limit_server_hub_auth_cache
from carnet.settings import CarnetSettings


def _jupyter_server_extension_points():
    return [{"module": "carnet.extension"}]


def _load_jupyter_server_extension(server_app):
    load_studio_handlers(server_app)
    # Signing out of the Hub ends the JupyterLab session at once (no cached "this cookie is X").
    limit_server_hub_auth_cache(server_app, CarnetSettings().hub_auth_cache_seconds)
