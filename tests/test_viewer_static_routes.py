"""Static and file routes of the Viewer and the Carnet service answer only the assets an app page loads.

Every static route of the Viewer (its own, Voila's, the template's, the JupyterLab extensions', the themes')
and of the service is asked for files outside it in every spelling a proxy or Tornado might decode — ``..``,
``%2e%2e``, ``%252e``, ``..%2f``, backslashes, absolute paths — and for files inside the platform that are
not assets: a published snapshot by name and by path, Python files, ``.env``, the template's conf.json.
Each must be a 404 (not a 403 telling "exists", not a 500, never the file). Sent with http.client, so the
path reaches the server byte for byte (requests would resolve dot segments itself).
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from carnet.extension.viewer_static import check_asset_path
from tests.api_support import auth

ACME_VIEWER = "viewer@acme.example"
VIEWER, SERVICE = "/services/carnet-viewer/", "/services/carnet/"
REPO = Path(__file__).resolve().parent.parent
STATIC_ROUTES = [
    VIEWER + "static/",
    VIEWER + "voila/static/",
    VIEWER + "voila/templates/",
    VIEWER + "voila/templates/carnet/static/",
    VIEWER + "voila/labextensions/",
    VIEWER + "voila/api/themes/",
    SERVICE,
    SERVICE + "static/",
    SERVICE + "viewer/",
]
UP = "../../../../../../../../"


def attacks(stack) -> list[str]:
    published = stack.settings.published_dir
    snapshots = sorted(str(p.relative_to(published)) for p in published.rglob("*.ipynb"))
    assert snapshots, "the demo publishes a notebook"
    snapshot, absolute = snapshots[0], str(published / snapshots[0]).lstrip("/")
    source = str(REPO / "carnet" / "settings.py").lstrip("/")
    return [
        # Out of the folder, in every spelling.
        "../../etc/passwd",
        UP + "etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "%252e%252e/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
        "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5c..%5c..%5c..%5cetc%5cpasswd",
        "....//....//....//etc/passwd",
        "carnet/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        # Absolute paths.
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "/" + absolute,
        "%2f" + absolute,
        # The published snapshot by name and by path, from the Viewer's root and through traversal.
        snapshot,
        Path(snapshot).name,
        UP + absolute,
        "%2e%2e/" * 8 + absolute,
        # Code and configuration.
        UP + source,
        "%2e%2e/" * 8 + source,
        "carnet/settings.py",
        "viewer_config.py",
        ".env",
        "../.env",
        "carnet/conf.json",
        "carnet/index.html.j2",
        "carnet/static/../conf.json",
        "carnet/static/%2e%2e/conf.json",
        "lab/static/../../lab/index.html.j2",
        "@jupyter-widgets/jupyterlab-manager/package.json",
        "%00.js",
    ]


def get(stack, path: str, token: str | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports["HUB"], timeout=60)
    try:
        connection.request("GET", path, headers=auth(token))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("route", STATIC_ROUTES)
def test_static_routes_answer_404_outside_their_assets(carnet_stack, hub_token, route):
    token = hub_token(ACME_VIEWER)
    wrong = []
    for attack in attacks(carnet_stack):
        for who in (token, None):
            status, body = get(carnet_stack, route + attack, who)
            leaked = any(marker in body for marker in (b"root:", b'"nbformat"', b"class CarnetSettings"))
            if status != 404 or leaked:
                wrong.append((route + attack, "token" if who else "anonymous", status, leaked))
    assert wrong == []


def test_the_assets_an_app_page_loads_are_served(carnet_stack):
    for path in (
        VIEWER + "voila/static/voila.js",
        VIEWER + "voila/templates/carnet/static/carnet.css",
        VIEWER + "voila/templates/carnet/static/carnet-boot.js",
    ):
        status, _ = get(carnet_stack, path, None)
        assert status == 200, path
    # A JupyterLab extension's built file (the widgets' manager) is reachable through its static folder.
    labextensions = REPO / ".venv" / "share" / "jupyter" / "labextensions"
    entry = next(labextensions.glob("@jupyter-widgets/jupyterlab-manager/static/remoteEntry.*.js"), None)
    if entry is not None:
        status, _ = get(
            carnet_stack, VIEWER + "voila/labextensions/" + str(entry.relative_to(labextensions)), None
        )
        assert status == 200


@pytest.mark.parametrize(
    "path",
    [
        "voila.js",
        "9151.voila.js",
        "@jupyter-widgets/jupyterlab-manager/static/remoteEntry.1.js",
        "x/font.woff2",
    ],
)
def test_asset_paths_that_pass(path):
    assert check_asset_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x.js",
        "a/../x.js",
        "a//x.js",
        "./x.js",
        ".hidden.js",
        "a/.env/x.js",
        "a\\x.js",
        "x.js\x00",
        "v1.ipynb",
        "settings.py",
        ".env",
        "conf.json",
        "package.json",
        "index.html.j2",
        "x.html",
    ],
)
def test_asset_paths_that_are_refused(path):
    with pytest.raises(Exception) as refused:
        check_asset_path(path)
    assert refused.value.status_code == 404
