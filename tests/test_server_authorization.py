"""Who may call what on Carnet's two Jupyter servers: the Studio server extension (in each author's
JupyterLab at /user/<email>/) and the Viewer (/services/carnet-viewer/).

The routes are those the servers really register: each is initialized (not started) in a child process
exactly as jupyterhub-singleuser initializes it (the Viewer with its viewer_config.py, a Studio server with
the extensions the venv enables), and its tornado routing table is read. Every such route must be in the
hand-written tables below, whose expected statuses come from the product's rules (a Studio server is its
author's only; the Viewer renders the apps of one's organization and refuses Jupyter's own API; API keys are
for the REST API only), never from the code: a new route, or a changed answer, breaks this test.
"""

# ruff: noqa: E501 - the route tables read best one route a line
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import requests

from tests.api_support import api_url, auth, unique
from tests.helpers import free_port, start_server, stop_server, user_path

ACME = {
    "viewer": "viewer@acme.example",
    "analyst": "analyst@acme.example",
    "studio": "studio@acme.example",
    "admin": "admin@acme.example",
}
GLOBEX_VIEWER = "viewer@globex.example"
PRINCIPALS = ("anonymous", "viewer", "analyst", "studio", "admin", "globex-viewer", "api-key")
VIEWER_PREFIX = "/services/carnet-viewer/"
STUDIO_OWNER = ACME["analyst"]
STUDIO_CLIENT_ID = f"jupyterhub-user-{STUDIO_OWNER.replace('@', '%40')}"
ANY = None  # an expected status of None: the route is not reachable through the Hub's proxy (see below)
LOGIN = "login"  # a 302 to the Hub's OAuth authorization (then its login form), not just any redirect

# Every route the Viewer registers (regex relative to its prefix), a path that exercises it, and the status
# for: anonymous, acme viewer/analyst/studio/admin, a globex viewer, and an acme admin's API key.
# Only /apps/<id> renders anything, and only in one's own organization; Carnet's template assets are public
# (CSS/JS of the page, no data); Jupyter's API is refused by ViewerAuthorizer (403) or answers 404.
# fmt: off
VIEWER_ROUTES = [
    # pattern,                                             method, path,                      anon,  viewer, analyst, studio, admin, globex, key
    (r"apps/(?P<app_id>\d+)/?$",                            "GET", "apps/{app_id}",              LOGIN, 200, 200, 200, 200, 404, LOGIN),
    # Anonymous visitors' pages (public link, signed embed URL; viewer_visitors.py): no sign-in needed, an
    # unknown, revoked or tampered token is a 404 for everyone (tests/test_public_links.py has the real ones).
    (r"public/(?P<token>[^/]{1,200})/?$",                   "GET", "public/000000000000_" + "x" * 43, 404, 404, 404, 404, 404, 404, 404),
    (r"embed/(?P<token>[^/]{1,8000})/?$",                   "GET", "embed/e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 404, 404, 404, 404, 404, 404, 404),
    # The scheduler's print page (carnet.print_pages): same; tests/test_viewer_pdf.py prints real ones.
    (r"print/(?P<token>[^/]{1,8000})/?$",                   "GET", "print/e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 404, 404, 404, 404, 404, 404, 404),
    # The scheduler's warm-up of a person's page (viewer_warm.py): only a signed warm token does anything;
    # tests/test_job_kinds_flow.py warms a real one.
    (r"carnet/warm/(?P<token>[^/]{1,8000})$",               "POST", "carnet/warm/e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 404, 404, 404, 404, 404, 404, 404),
    # The scheduler's pre-render of a report's print page (viewer_print_warm.py): only a signed print token
    # does anything; tests/test_print_prerender.py pre-renders real ones.
    (r"carnet/warm-print/(?P<token>[^/]{1,8000})$",         "POST", "carnet/warm-print/e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 404, 404, 404, 404, 404, 404, 404),
    (r"metrics/?$",                                         "GET", "metrics",                    404, 404, 404, 404, 404, 404, 404),
    (r"voila/templates/(.*)$",                              "GET", "voila/templates/carnet/static/carnet.css", 200, 200, 200, 200, 200, 200, 200),
    (r"voila/api/themes/(.*)$",                             "GET", "voila/api/themes/no-such-theme.css", 404, 404, 404, 404, 404, 404, 404),
    (r"voila/static/(.*)$",                                 "GET", "voila/static/voila.js",      200, 200, 200, 200, 200, 200, 200),
    (r"voila/api/shutdown/(?P<kernel_id>[\w-]+)$",          "POST", "voila/api/shutdown/{kernel}", 403, 404, 404, 404, 404, 404, 403),
    (r"voila/labextensions/(.*)$",                          "GET", "voila/labextensions/no-such-extension/package.json", 404, 404, 404, 404, 404, 404, 404),
    # The icon font and plotly's map outlines (viewer_static.py, viewer_topojson.py): public files, no data.
    (r"carnet/fontawesome/(.*)$",                           "GET", "carnet/fontawesome/css/all.min.css", 200, 200, 200, 200, 200, 200, 200),
    (r"carnet/topojson/(.*)$",                              "GET", "carnet/topojson/world_110m.json", 200, 200, 200, 200, 200, 200, 200),
    (r"static/(.*)$",                                       "GET", "static/favicon.ico",         200, 200, 200, 200, 200, 200, 200),
    (r"api/spec.yaml$",                                     "GET", "api/spec.yaml",              LOGIN, 403, 403, 403, 403, 403, LOGIN),
    (r"api/status$",                                        "GET", "api/status",                 403, 403, 403, 403, 403, 403, 403),
    # A signed-in person's own name (jupyter_server's identity endpoint): nobody else's.
    (r"api/me$",                                            "GET", "api/me",                     403, 200, 200, 200, 200, 200, 403),
    (r"api/resolvePath$",                                   "GET", "api/resolvePath?path=x",     403, 403, 403, 403, 403, 403, 403),
    (r"api/config/(?P<section_name>\w+)$",                  "GET", "api/config/notebook",        403, 403, 403, 403, 403, 403, 403),
    (r"api/contents(?P<path>(?:(?:/[^/]+)+|/?))/checkpoints$", "GET", "api/contents/x.ipynb/checkpoints", 403, 403, 403, 403, 403, 403, 403),
    (r"api/contents(?P<path>(?:(?:/[^/]+)+|/?))/checkpoints/(?P<checkpoint_id>[\w-]+)$", "POST", "api/contents/x.ipynb/checkpoints/c1", 403, 403, 403, 403, 403, 403, 403),
    (r"api/contents(?P<path>(?:(?:/[^/]+)+|/?))/trust$",   "POST", "api/contents/x.ipynb/trust", 403, 403, 403, 403, 403, 403, 403),
    (r"api/contents(?P<path>(?:(?:/[^/]+)+|/?))$",          "GET", "api/contents",               403, 403, 403, 403, 403, 403, 403),
    # A redirect, for anyone, onto api/contents, which is refused.
    (r"api/notebooks/?(.*)$",                               "GET", "api/notebooks/x.ipynb",      302, 302, 302, 302, 302, 302, 302),
    (r"api/kernels$",                                       "POST", "api/kernels",               403, 403, 403, 403, 403, 403, 403),
    (r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)$",    "GET", "api/kernels/{kernel}",       403, 403, 403, 403, 403, 403, 403),
    (r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/(?P<action>restart|interrupt)$", "POST", "api/kernels/{kernel}/restart", 403, 403, 403, 403, 403, 403, 403),
    (r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/channels$", "GET", "api/kernels/{kernel}/channels", 403, 403, 403, 403, 403, 403, 403),
    # The same two kernel routes again: Carnet's handlers in front of Jupyter's, answering a snapshot page's
    # fake kernel id for its own person only (snapshots.py); any other id goes to Jupyter's, as above.
    (r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)$",    "GET", "api/kernels/{kernel}",       403, 403, 403, 403, 403, 403, 403),
    (r"api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/channels$", "GET", "api/kernels/{kernel}/channels", 403, 403, 403, 403, 403, 403, 403),
    # A snapshot page's "is my live page ready" (snapshots.py): only the person the snapshot was given to.
    (r"carnet/live/(?P<session_id>[\w-]+)$",                "GET", "carnet/live/{kernel}",       LOGIN, 404, 404, 404, 404, 404, LOGIN),
    (r"kernelspecs/(?P<kernel_name>[\w\.\-%]+)/(?P<path>.*)$", "GET", "kernelspecs/python3/kernel.json", LOGIN, 403, 403, 403, 403, 403, LOGIN),
    (r"api/kernelspecs$",                                   "GET", "api/kernelspecs",            403, 403, 403, 403, 403, 403, 403),
    (r"api/kernelspecs/(?P<kernel_name>[\w\.\-%]+)$",       "GET", "api/kernelspecs/python3",    403, 403, 403, 403, 403, 403, 403),
    (r"nbconvert/(?P<format>\w+)$",                         "POST", "nbconvert/html",            403, 403, 403, 403, 403, 403, 403),
    (r"nbconvert/(?P<format>\w+)(?P<path>(?:(?:/[^/]+)+|/?))$", "GET", "nbconvert/html/x.ipynb", LOGIN, 403, 403, 403, 403, 403, LOGIN),
    (r"api/nbconvert$",                                     "GET", "api/nbconvert",              403, 403, 403, 403, 403, 403, 403),
    (r"api/security/csp-report$",                           "POST", "api/security/csp-report",   403, 403, 403, 403, 403, 403, 403),
    (r"api/sessions/(?P<session_id>\w+-\w+-\w+-\w+-\w+)$",  "GET", "api/sessions/{kernel}",      403, 403, 403, 403, 403, 403, 403),
    (r"api/sessions$",                                      "POST", "api/sessions",              403, 403, 403, 403, 403, 403, 403),
    (r"api/shutdown$",                                      "POST", "api/shutdown",              403, 403, 403, 403, 403, 403, 403),
    (r"view(?P<path>(?:(?:/[^/]+)+|/?))$",                  "GET", "view/x.ipynb",               LOGIN, 403, 403, 403, 403, 403, LOGIN),
    (r"api/events$",                                        "POST", "api/events",                403, 403, 403, 403, 403, 403, 403),
    (r"api/events/subscribe$",                              "GET", "api/events/subscribe",       403, 403, 403, 403, 403, 403, 403),
    (r"files/(.*)$",                                        "GET", "files/x.ipynb",              LOGIN, 403, 403, 403, 403, 403, LOGIN),
    # Ends the Viewer's cookie session and goes on to the Hub's logout: harmless for anyone.
    (r"logout$",                                            "GET", "logout",                     302, 302, 302, 302, 302, 302, 302),
    (r"oauth_callback$",                                    "GET", "oauth_callback",             400, 400, 400, 400, 400, 400, 400),
    (r".*/$",                                               "GET", "api/kernels/",               302, 302, 302, 302, 302, 302, 302),
    (r"api$",                                               "GET", "api",                        200, 200, 200, 200, 200, 200, 200),
    # Carnet's 404 in front of jupyter_server's handler (the row after), which fails under a prefix.
    (r"(robots\.txt|favicon\.ico)$",                        "GET", "robots.txt",                 404, 404, 404, 404, 404, 404, 404),
    (r"(robots\.txt|favicon\.ico)$",                        "GET", "favicon.ico",                404, 404, 404, 404, 404, 404, 404),
    (r"metrics$",                                           "GET", "metrics",                    404, 404, 404, 404, 404, 404, 404),
    # Jupyter Server's front page (MainHandler, the row after) is shadowed by Carnet's 404.
    (r"?$",                                                 "GET", "",                           404, 404, 404, 404, 404, 404, 404),
    (r"$",                                                  "GET", "",                           404, 404, 404, 404, 404, 404, 404),
    # Outside the prefix: the proxy sends these paths to the Hub, never to the Viewer.
    (r"/(robots\.txt)$",                                    "GET", None,                         ANY, ANY, ANY, ANY, ANY, ANY, ANY),
    (r"/(favicon\.ico)$",                                   "GET", None,                         ANY, ANY, ANY, ANY, ANY, ANY, ANY),
    (r"(.*)$",                                              "GET", None,                         ANY, ANY, ANY, ANY, ANY, ANY, ANY),
]
# Carnet's routes in a Studio server (the analyst's): the author's own; nobody else's, not even an admin's.
STUDIO_ROUTES = [
    # pattern,            method, path,           anon, viewer, analyst, studio, admin, globex, key
    (r"carnet/status$",   "GET",  "carnet/status", 403,  403,    200,     403,    403,   403,    403),
]
# fmt: on

# Lists a jupyterhub-singleuser server's routes after initializing it as its entry point does (no start).
ROUTE_LISTER = """
import json, sys
from jupyterhub.singleuser.extension import JupyterHubSingleUser

def walk(router, out):
    for rule in router.rules:
        if hasattr(rule.target, "rules"):
            walk(rule.target, out)
        else:
            out.append([rule.matcher.regex.pattern, rule.target.__module__ + "." + rule.target.__qualname__])

server = JupyterHubSingleUser.initialize_server(argv=sys.argv[1:])
routes = []
walk(server.web_app.default_router, routes)
print("ROUTES " + json.dumps(routes))
"""


def registered_routes(stack, prefix: str, client_id: str, extra_env: dict, argv: list[str]) -> list:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CARNET_"))},
        **{k: v for k, v in stack.env.items() if k.startswith("CARNET_")},
        # What the Hub hands a server it starts; the token is never used: the server is not started.
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{stack.ports['HUB_API']}/hub/api",
        "JUPYTERHUB_API_TOKEN": "unused-the-server-is-only-initialized",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_CLIENT_ID": client_id,
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}{prefix}",
        **extra_env,
    }
    root = ["--allow-root"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [sys.executable, "-c", ROUTE_LISTER, *argv, *root],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROUTES ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("ROUTES "))


def relative(pattern: str, prefix: str) -> str:
    for form in (prefix, prefix.replace("-", r"\-")):  # some handlers register re.escape()d prefixes
        if pattern.startswith(form):
            return pattern.removeprefix(form)
    return pattern


@pytest.fixture(scope="module")
def viewer_routes(carnet_stack) -> list:
    from carnet.extension import viewer

    config = os.path.join(os.path.dirname(viewer.__file__), "viewer_config.py")
    return registered_routes(
        carnet_stack,
        VIEWER_PREFIX,
        "service-carnet-viewer",
        {"JUPYTERHUB_SERVICE_NAME": "carnet-viewer"},
        [f"--config={config}"],
    )


@pytest.fixture(scope="module")
def studio_routes(carnet_stack) -> list:
    prefix = user_path(STUDIO_OWNER)
    return registered_routes(
        carnet_stack,
        prefix,
        STUDIO_CLIENT_ID,
        {"JUPYTERHUB_USER": STUDIO_OWNER, "JUPYTERHUB_SERVER_NAME": ""},
        [],
    )


# -- (a) every registered route is in a table ----------------------------------------------------------
def test_every_route_the_viewer_registers_is_in_the_table(viewer_routes):
    registered = [relative(pattern, VIEWER_PREFIX) for pattern, _ in viewer_routes]
    # Carnet's own handlers are there (the walk really sees the extension), and only its allowed ones.
    carnet = {relative(p, VIEWER_PREFIX) for p, h in viewer_routes if h.startswith("carnet.")}
    assert r"apps/(?P<app_id>\d+)/?$" in carnet and r"voila/api/shutdown/(?P<kernel_id>[\w-]+)$" in carnet
    assert not [h for _, h in viewer_routes if h.startswith(("jupyterlab.", "voila.handler", "jupyter_lsp"))]
    assert sorted(registered) == sorted(row[0] for row in VIEWER_ROUTES)


def test_every_carnet_route_of_a_studio_server_is_in_the_table(studio_routes):
    prefix = user_path(STUDIO_OWNER)
    carnet = [relative(p, prefix) for p, h in studio_routes if h.startswith("carnet.")]
    # A Studio server is a full JupyterLab (its own routes are Jupyter's business); Carnet adds these.
    assert any(h.startswith("jupyterlab") for _, h in studio_routes)
    assert sorted(carnet) == sorted(row[0] for row in STUDIO_ROUTES)


def test_the_viewer_does_not_load_the_studio_extension(viewer_routes, studio_routes):
    studio_only = {h for _, h in studio_routes if h.startswith("carnet.extension.handlers")}
    assert studio_only and not studio_only & {h for _, h in viewer_routes}


# -- (b) each request as each principal through the real stack ------------------------------------------
@pytest.fixture(scope="module")
def credentials(carnet_stack, hub_token):
    """Headers per principal: Hub API tokens for people (what a browser's cookie stands for), and an acme
    API key, made by acme's admin, sent as the REST API accepts it."""
    admin = hub_token(ACME["admin"])
    key = requests.post(
        api_url(carnet_stack, "keys"),
        json={"name": unique("server-authz"), "role": "admin"},
        headers=auth(admin),
        timeout=30,
    )
    assert key.status_code == 201, key.text
    headers = {"anonymous": {}, "globex-viewer": auth(hub_token(GLOBEX_VIEWER))}
    headers.update({role: auth(hub_token(email)) for role, email in ACME.items()})
    headers["api-key"] = {"Authorization": f"Bearer {key.json()['key']}"}
    yield headers
    requests.delete(api_url(carnet_stack, f"keys/{key.json()['id']}"), headers=auth(admin), timeout=30)


def check(response: requests.Response, expected, client_id: str) -> str | None:
    """None if ``response`` is ``expected``; else what was wrong. LOGIN: a redirect to the Hub's OAuth."""
    status = 302 if expected == LOGIN else expected
    if response.status_code != status:
        return f"{response.status_code} (body {response.text[-300:]!r})"
    location = response.headers.get("Location", "")
    if expected == LOGIN and not location.startswith(f"/hub/api/oauth2/authorize?client_id={client_id}&"):
        return f"redirected to {location!r}"
    # Never the server's own Hub token in a page (jupyter_server writes it for signed-in people).
    if 'data-jupyter-api-token="' in response.text and 'data-jupyter-api-token=""' not in response.text:
        return "a page carries the server's API token"
    return None


def viewer_cases():
    return [pytest.param(row, id=f"{row[1]} {row[0]}") for row in VIEWER_ROUTES if row[2] is not None]


@pytest.mark.parametrize("row", viewer_cases())
def test_viewer_route_as_each_principal(carnet_stack, credentials, row):
    pattern, method, path, *expected = row
    url = f"{carnet_stack.url}{VIEWER_PREFIX}{path.format(app_id=carnet_stack.app_id, kernel=uuid.uuid4())}"
    wrong = {}
    for principal, status in zip(PRINCIPALS, expected, strict=True):
        response = requests.request(
            method, url, headers=credentials[principal], timeout=120, allow_redirects=False
        )
        problem = check(response, status, "service-carnet-viewer")
        if problem:
            wrong[principal] = problem
        if response.status_code == 200 and path.startswith("apps/"):
            shut_down_render(carnet_stack, response, credentials[principal])
    assert wrong == {}


def shut_down_render(stack, page: requests.Response, headers: dict) -> None:
    from tests.test_viewer_security import kernel_id_of

    assert "jupyter-config-data" in page.text
    kernel_id = kernel_id_of(page.text)
    done = requests.post(
        f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel_id}", headers=headers, timeout=60
    )
    assert done.status_code == 204


def test_no_viewer_page_carries_the_viewers_hub_token(carnet_stack, credentials):
    """jupyter_server writes its identity provider's token into HTML pages for signed-in people; in the
    Viewer that was the service's own Hub token, which let anyone mint kernel tokens for anyone."""
    for path in ("files/x.ipynb", "view/x.ipynb", "kernelspecs/python3/kernel.json"):
        page = requests.get(
            f"{carnet_stack.url}{VIEWER_PREFIX}{path}", headers=credentials["globex-viewer"], timeout=30
        )
        assert page.status_code == 403 and "<html" in page.text.lower(), path
        assert re.findall(r'data-jupyter-api-token="([^"]*)"', page.text) in ([], [""]), path


def test_unreachable_viewer_routes_are_the_hubs(carnet_stack):
    """The rows without a path: outside the Viewer's prefix, the proxy hands them to the Hub."""
    outside = [row[0] for row in VIEWER_ROUTES if row[2] is None]
    assert outside and all(not p.startswith(VIEWER_PREFIX) for p in outside)
    robots = requests.get(f"{carnet_stack.url}/robots.txt", timeout=30, allow_redirects=False)
    assert robots.status_code == 404 and "Jupyter Server" not in robots.text


@pytest.fixture(scope="module")
def studio_server(carnet_stack, login):
    session = login(STUDIO_OWNER)
    started = start_server(carnet_stack.url, session, STUDIO_OWNER)
    assert started.status_code in (201, 202, 400), started.text  # 400: already running
    yield user_path(STUDIO_OWNER)
    # Other modules start this person's server themselves and expect it stopped.
    stop_server(carnet_stack.url, session, STUDIO_OWNER)


@pytest.mark.parametrize("row", [pytest.param(row, id=f"{row[1]} {row[0]}") for row in STUDIO_ROUTES])
def test_studio_route_as_each_principal(carnet_stack, credentials, studio_server, row):
    pattern, method, path, *expected = row
    url = f"{carnet_stack.url}{studio_server}{path}"
    wrong = {}
    for principal, status in zip(PRINCIPALS, expected, strict=True):
        response = requests.request(
            method, url, headers=credentials[principal], timeout=60, allow_redirects=False
        )
        problem = check(response, status, STUDIO_CLIENT_ID)
        if problem:
            wrong[principal] = problem
        elif status == 200 and path == "carnet/status":
            # The owner's server tells which Carnet it talks to, never the token itself.
            body = response.json()
            assert body["has_token"] is True and "ck_" not in response.text
    assert wrong == {}


def test_a_browser_of_another_person_is_refused_by_a_studio_server(carnet_stack, login, studio_server):
    """With cookies rather than a token: the Hub will not hand another person's browser into the server."""
    session = login(ACME["studio"])
    response = session.get(f"{carnet_stack.url}{studio_server}carnet/status", timeout=60)
    assert response.status_code == 403
    assert "carnet" not in response.text.lower() or "has_token" not in response.text


def test_a_viewer_has_no_studio_server(carnet_stack, credentials):
    """A viewer's own /user/ URL leads to no server: the Hub answers, nothing Carnet's does."""
    url = f"{carnet_stack.url}{user_path(ACME['viewer'])}carnet/status"
    response = requests.get(url, headers=credentials["viewer"], timeout=60, allow_redirects=False)
    assert response.status_code != 200 and "has_token" not in response.text
    assert "X-JupyterHub-Version" in response.headers
