"""Routing: which proxy carries the traffic, and where people land after signing in."""

import os
import shutil
import sys
from pathlib import Path

from jupyterhub.utils import url_path_join

from carnet.hub_config.authenticator import AUTHORS_GROUP


def default_url(handler) -> str:
    user = handler.current_user
    base = handler.hub.base_url.rsplit("hub/", 1)[0]
    if user is not None and any(group.name == AUTHORS_GROUP for group in user.groups):
        return user.url
    return url_path_join(base, "services/carnet/viewer/")


def proxy_command() -> str:
    """The configurable-http-proxy to run: $CARNET_PROXY_COMMAND, else the npm package installed by the
    set-up scripts into <venv>/node, else one on PATH.

    The npm proxy is preferred: the pure-Python one re-quotes request paths, so '@' in user names (which
    are emails) reaches the server as %40 and every Studio page answers 404.
    """
    configured = os.environ.get("CARNET_PROXY_COMMAND")
    if configured:
        return configured
    bundled = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    raise SystemExit(
        "Carnet: configurable-http-proxy not found. "
        "Run scripts/demo or scripts/test: they install it with npm."
    )
