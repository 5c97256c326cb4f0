"""The Viewer's static routes serve only what an app page loads: scripts, styles, fonts and images of Voila,
its template and the JupyterLab extensions, by plain relative paths. Anything else — ``..`` in any spelling,
absolute paths, hidden files (``.env``), notebooks, Python files, a template's ``conf.json`` — is a 404,
never a 403 or 500 that would tell a file from no file."""

from __future__ import annotations

import os
import posixpath

from jupyter_server.base.handlers import FileFindHandler
from tornado import web
from voila.static_file_handler import MultiStaticFileHandler

ASSET_SUFFIXES = frozenset(
    {
        ".js",
        ".mjs",
        ".css",
        ".woff",
        ".woff2",
        ".ttf",
        ".eot",
        ".otf",
        ".svg",
        ".png",
        ".gif",
        ".jpg",
        ".jpeg",
    }
)


def check_asset_path(path: str, suffixes: frozenset[str] = ASSET_SUFFIXES) -> str:
    """``path`` (already URL-decoded by Tornado) when it names an asset below the route's folders."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
        or posixpath.splitext(path)[1].lower() not in suffixes
    ):
        raise web.HTTPError(404)
    return path


class AssetsOnlyMixin:
    suffixes = ASSET_SUFFIXES  # a route of data files allows its own (viewer_topojson.py: .json only)

    def parse_url_path(self, url_path):
        return super().parse_url_path(check_asset_path(url_path, self.suffixes))

    def validate_absolute_path(self, root, absolute_path):
        try:
            return super().validate_absolute_path(root, absolute_path)
        except web.HTTPError as exc:
            # Tornado says 403 for a path outside the folders: the same answer as a missing file.
            if exc.status_code == 403:
                raise web.HTTPError(404) from None
            raise


class StaticAssetHandler(AssetsOnlyMixin, MultiStaticFileHandler):
    """``voila/static/``: Voila's and the templates' static folders."""


class LabextensionAssetHandler(AssetsOnlyMixin, FileFindHandler):
    """``voila/labextensions/``: the JupyterLab extensions' built files (widgets, plotly)."""


def fontawesome_path() -> str:
    """Font Awesome as JupyterHub ships it (its pages use it): the Viewer serves it itself, so app pages need
    no CDN (their policy would refuse one) and widget icons (``fa fa-<name>``, through the v4 shims) show."""
    from jupyterhub._data import DATA_FILES_PATH  # noqa: PLC0415 - only the Viewer needs it

    return os.path.join(DATA_FILES_PATH, "static", "components", "@fortawesome", "fontawesome-free")
