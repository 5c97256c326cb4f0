"""The Viewer's hardening, checked on the real stack with plain HTTP and websocket clients.

What is checked (see STACK-NOTES "SECURITY" and carnet.extension.viewer): a viewer's kernel carries the
viewer's identity and none of the service's variables; every Jupyter/Voila route other than Carnet's own is
refused; code cannot be executed through the kernel websocket (comm and info messages still work); nobody
can attach to, or shut down, a kernel that was started for someone else; anonymous people are sent to the
Hub's login page.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid
from urllib.parse import urlparse

import nbformat
import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from carnet.isolation import accounts_enabled

ACME_VIEWER = "viewer@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"
ANALYST = "analyst@acme.example"
STUDIO = "studio@acme.example"
VIEWER_PREFIX = "/services/carnet-viewer/"
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
# What a notebook's source looks like on the wire: never in any answer of the Viewer.
SOURCE_MARKERS = ("carnet.sources[", "groupby(", '"cell_type"', '"nbformat"')


# -- helpers ------------------------------------------------------------------------------------------


def auth(token: str) -> dict:
    return {"Authorization": f"token {token}"}


def viewer_url(stack, path: str = "") -> str:
    return f"{stack.url}{VIEWER_PREFIX}{path}"


def ws_url(stack, kernel_id: str) -> str:
    return f"ws://127.0.0.1:{stack.ports['HUB']}{VIEWER_PREFIX}api/kernels/{kernel_id}/channels"


def kernel_id_of(page_html: str) -> str:
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page_html, re.S
    )
    assert match, "the rendered app has no jupyter-config-data"
    kernel_id = json.loads(match.group(1))["kernelId"]
    assert re.fullmatch(r"[0-9a-f-]{36}", kernel_id), kernel_id
    return kernel_id


def open_app(stack, token: str, app_id) -> tuple[requests.Response, str]:
    """Render an app as the owner of ``token``; returns the page and the id of the kernel started for it."""
    page = requests.get(viewer_url(stack, f"apps/{app_id}"), headers=auth(token), timeout=120)
    assert page.status_code == 200, page.text[:500]
    return page, kernel_id_of(page.text)


def publish(stack, token: str, title: str, *sources: str) -> dict:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    answer = requests.post(
        f"{stack.url}/services/carnet/api/v1/apps",
        json={"slug": f"sec-{uuid.uuid4().hex[:10]}", "title": title, "notebook": notebook},
        headers=auth(token),
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    app = answer.json()
    assert app["url"] == f"{VIEWER_PREFIX}apps/{app['id']}"
    return app


def printed(page_html: str, marker: str):
    """The JSON an app printed after ``marker`` (plain stream output, HTML-escaped in the page)."""
    found = re.findall(re.escape(marker) + r"(.*)", html.unescape(page_html))
    assert len(found) == 1, f"{marker!r} printed {len(found)} times"
    return json.loads(found[0])


def message(msg_type: str, content: dict, session: str) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": "attacker",
            "session": session,
            "msg_type": msg_type,
            "version": "5.3",
            "date": "2026-01-01T00:00:00Z",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "buffers": [],
    }


def encode_v1(channel: str, msg: dict) -> bytes:
    """A frame of Jupyter's v1 kernel websocket protocol: offsets, channel, header/parent/metadata/content."""
    parts = [json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")]
    body = [channel.encode(), *parts]
    offsets = [8 * (1 + len(body) + 1)]
    for part in body:
        offsets.append(offsets[-1] + len(part))
    return b"".join([len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *body])


def decode_v1(frame: bytes) -> dict:
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    return {
        "channel": parts[0].decode(),
        "header": json.loads(parts[1]),
        "parent_header": json.loads(parts[2]),
        "content": json.loads(parts[4]),
    }


async def _talk(url: str, token: str, sends: list[tuple[str, dict]], protocol: str | None, quiet: float):
    """Connect, send ``(channel, message)`` pairs, collect what comes back until the last request is
    answered and ``quiet`` more seconds pass. Returns the received messages."""
    connection = await websocket_connect(
        HTTPRequest(url, headers=auth(token)), subprotocols=[protocol] if protocol else None
    )
    try:
        for channel, msg in sends:
            if protocol == V1_PROTOCOL:
                connection.write_message(encode_v1(channel, msg), binary=True)
            else:
                connection.write_message(json.dumps({**msg, "channel": channel}))
        last_id = sends[-1][1]["header"]["msg_id"]
        received, answered_at = [], None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if answered_at is not None and time.monotonic() > answered_at + quiet:
                break
            try:
                raw = await asyncio.wait_for(connection.read_message(), timeout=0.5)
            except TimeoutError:
                continue
            if raw is None:
                break
            msg = decode_v1(raw) if isinstance(raw, bytes) else json.loads(raw)
            received.append(msg)
            if msg["parent_header"].get("msg_id") == last_id and msg["header"]["msg_type"].endswith("_reply"):
                answered_at = time.monotonic()
        assert answered_at is not None, f"no reply to {sends[-1][1]['header']['msg_type']}: {received}"
        return received
    finally:
        connection.close()


def talk(url, token, sends, protocol=None, quiet=3.0):
    return asyncio.run(_talk(url, token, sends, protocol, quiet))


def ws_status(url: str, token: str | None) -> int:
    """The HTTP status of a websocket handshake (101 when it is accepted)."""

    async def attempt():
        headers = auth(token) if token else {}
        try:
            connection = await websocket_connect(HTTPRequest(url, headers=headers))
        except HTTPClientError as exc:
            return exc.code
        connection.close()
        return 101

    return asyncio.run(attempt())


def kernel_alive_for(stack, token: str, kernel_id: str) -> int:
    return requests.get(
        viewer_url(stack, f"api/kernels/{kernel_id}"), headers=auth(token), timeout=30
    ).status_code


# -- 1. identity --------------------------------------------------------------------------------------


def test_kernel_carries_the_viewers_identity_and_no_service_variables(carnet_stack, hub_token):
    app = publish(
        carnet_stack,
        hub_token(ANALYST),
        "Who am I",
        "import json, os\nimport carnet.client\n"
        "me = carnet.client.ApiClient().get_json('api/v1/me')\n"
        "print('@@' + 'ME ' + json.dumps(me))\n"
        "print('@@' + 'ENV ' + json.dumps(sorted(os.environ)))",
    )
    for email, role in ((ACME_VIEWER, "viewer"), (STUDIO, "studio")):
        page, _ = open_app(carnet_stack, hub_token(email), app["id"])
        # The author is the analyst; the kernel speaks as the person looking at the app.
        assert printed(page.text, "@@ME ") == {
            "email": email,
            "org": "acme",
            "role": role,
            "via": "viewer_kernel",
        }
        names = printed(page.text, "@@ENV ")
        assert {"CARNET_TOKEN", "CARNET_API_URL"} <= set(names)
        assert [n for n in names if n.startswith("JUPYTERHUB_")] == []
        # Besides the API and the person's token, only public page settings (viewer_kernels.kernel_env):
        # the map outlines' URL and the org's brand colour when it has one.
        carnet_names = {n for n in names if n.startswith("CARNET_")}
        assert (
            {"CARNET_API_URL", "CARNET_TOKEN"}
            <= carnet_names
            <= {
                "CARNET_API_URL",
                "CARNET_TOKEN",
                "CARNET_TOPOJSON_URL",
                "CARNET_BRAND_COLOR",
            }
        )
        assert "CARNET_DB_URL" not in names and "CARNET_DATA_DIR" not in names
        # The app's code is not in the page: only what it printed.
        assert "get_json(" not in page.text and "os.environ" not in page.text


# -- 2. every route but Carnet's is closed ------------------------------------------------------------


def published_paths(stack) -> list[str]:
    root = stack.settings.published_dir
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.ipynb"))
    assert paths, "the demo publishes at least one notebook"
    return paths


# (method, path template, expected status after redirects); {nb} is a published notebook's path.
REFUSED = [
    ("GET", "api/kernels", 403),
    ("GET", "api/contents", 403),
    ("GET", "api/contents/{nb}", 403),
    ("GET", "api/sessions", 403),
    ("GET", "api/kernelspecs", 403),
    ("GET", "files/{nb}", 403),
    ("GET", "view/{nb}", 403),
    ("GET", "nbconvert/html/{nb}", 403),
    ("GET", "lab", 404),
    ("GET", "tree", 404),
    ("GET", "notebooks/{nb}", 404),
    ("GET", "api/terminals", 404),
    ("GET", "voila/render/{nb}", 404),
    ("GET", "voila/tree", 404),
    ("GET", "voila/api/contents/", 404),
    ("GET", "voila/api/contents/{nb}", 404),
    ("GET", "voila/files/{nb}", 404),
    ("GET", "voila/templates/carnet/conf.json", 404),
    ("GET", "voila/templates/carnet/index.html.j2", 404),
    ("GET", "metrics", 404),
    ("POST", "api/kernels", 403),
    ("POST", "api/sessions", 403),
    ("POST", "api/shutdown", 403),
    ("PUT", "api/contents/{nb}", 403),
]


@pytest.fixture(scope="module")
def viewer_browser_session(carnet_stack, login):
    """viewer@acme's cookies after opening an app (the Viewer's OAuth handshake done)."""
    session = login(ACME_VIEWER)
    page = session.get(viewer_url(carnet_stack, f"apps/{carnet_stack.app_id}"), timeout=120)
    assert page.status_code == 200
    assert session.cookies.get("service-carnet-viewer"), "the Viewer set no session cookie"
    return session


@pytest.mark.parametrize("how", ["cookies", "token"])
def test_every_jupyter_and_voila_route_is_refused(carnet_stack, viewer_browser_session, hub_token, how):
    if how == "cookies":
        client = viewer_browser_session
        xsrf = client.cookies.get("_xsrf", path=VIEWER_PREFIX)
        # With the XSRF token a refusal is about authorization, not about a missing form field.
        headers = {"X-XSRFToken": xsrf} if xsrf else {}
    else:
        client, headers = requests, auth(hub_token(ACME_VIEWER))
    wrong = []
    for method, template, expected in REFUSED:
        for nb in published_paths(carnet_stack) if "{nb}" in template else [""]:
            path = template.format(nb=nb)
            body = None if method == "GET" else {"name": "python3", "type": "notebook"}
            response = client.request(
                method, viewer_url(carnet_stack, path), json=body, headers=headers, timeout=60
            )
            leaked = [marker for marker in SOURCE_MARKERS if marker in response.text]
            if response.status_code != expected or leaked:
                wrong.append((method, path, response.status_code, leaked))
            # Refused here, not bounced to some other page that might answer.
            assert urlparse(response.url).path.startswith(VIEWER_PREFIX), (path, response.url)
    assert wrong == []


def test_authorizer_refusals_name_the_resource(carnet_stack, hub_token):
    """POST /api/kernels is refused by ViewerAuthorizer itself (not by a missing route or XSRF)."""
    response = requests.post(
        viewer_url(carnet_stack, "api/kernels"),
        json={"name": "python3"},
        headers=auth(hub_token(ACME_VIEWER)),
        timeout=30,
    )
    assert response.status_code == 403
    assert response.json()["message"] == "User is not authorized to write on resource: kernels."


def test_carnet_template_stylesheet_is_served(carnet_stack, hub_token):
    """The page links Carnet's stylesheet (header, hidden prompts): it must load, also in an editable install
    where the template's files are symlinks into the source tree."""
    page, _ = open_app(carnet_stack, hub_token(ACME_VIEWER), carnet_stack.app_id)
    links = re.findall(r'href="([^"]+/carnet\.css)"', page.text)
    assert links == [f"{VIEWER_PREFIX}voila/templates/carnet/static/carnet.css"]
    css = requests.get(carnet_stack.url + links[0], timeout=30)
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert ".carnet-app-header" in css.text
    # Symlinks still cannot lead outside the template folders.
    escape = requests.get(
        viewer_url(carnet_stack, "voila/templates/carnet/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), timeout=30
    )
    assert escape.status_code == 404
    assert "root:" not in escape.text


# -- 3. no code over the kernel websocket -------------------------------------------------------------


@pytest.mark.parametrize("protocol", [None, V1_PROTOCOL], ids=["json", "v1-binary"])
def test_kernel_websocket_drops_code_but_answers_info_and_comm_requests(
    carnet_stack, hub_token, tmp_path, protocol
):
    token = hub_token(ACME_VIEWER)
    _, kernel_id = open_app(carnet_stack, token, carnet_stack.app_id)
    proof = tmp_path / f"executed-{uuid.uuid4().hex}"
    session = uuid.uuid4().hex
    code = f"open({str(proof)!r}, 'w').write('x')\nprint('PWNED' + '-{session}')"
    execute = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
    }
    attacks = [
        ("shell", message("execute_request", execute, session)),
        ("control", message("execute_request", execute, session)),
        (
            "shell",
            message("inspect_request", {"code": "import os", "cursor_pos": 9, "detail_level": 1}, session),
        ),
        # History would list the app's code as it ran; completion names its variables.
        (
            "shell",
            message(
                "history_request", {"output": True, "raw": True, "hist_access_type": "tail", "n": 50}, session
            ),
        ),
        ("shell", message("complete_request", {"code": "carnet.", "cursor_pos": 7}, session)),
        ("shell", message("is_complete_request", {"code": "import os"}, session)),
        (
            "control",
            message("debug_request", {"command": "evaluate", "arguments": {"expression": "1"}}, session),
        ),
        ("control", message("interrupt_request", {}, session)),
        ("control", message("shutdown_request", {"restart": False}, session)),
    ]
    comm_info = message("comm_info_request", {}, session)
    kernel_info = message("kernel_info_request", {}, session)
    received = talk(
        ws_url(carnet_stack, kernel_id),
        token,
        [*attacks, ("shell", comm_info), ("shell", kernel_info)],
        protocol,
    )

    attack_ids = {msg["header"]["msg_id"] for _, msg in attacks}
    answers_to_attacks = [m for m in received if m["parent_header"].get("msg_id") in attack_ids]
    assert answers_to_attacks == []
    assert not any(f"PWNED-{session}" in json.dumps(m["content"]) for m in received)
    time.sleep(1)
    assert not proof.exists(), "code sent over the websocket was executed"

    replies = {
        m["header"]["msg_type"]: m["content"] for m in received if m["header"]["msg_type"].endswith("_reply")
    }
    assert set(replies) == {"comm_info_reply", "kernel_info_reply"}
    assert replies["kernel_info_reply"]["status"] == "ok"
    assert replies["kernel_info_reply"]["language_info"]["name"] == "python"
    # The app's widgets live in this kernel: the Dropdown, the Output and their layout/style models.
    targets = {comm["target_name"] for comm in replies["comm_info_reply"]["comms"].values()}
    assert targets == {"jupyter.widget"}

    # The server saw the attempts and dropped them (not lost on the way).
    log = carnet_stack.log_path.read_text(errors="replace")
    for msg_type in ("execute_request", "inspect_request", "history_request", "complete_request"):
        assert f'Received message of type "{msg_type}", which is not allowed. Ignoring.' in log, msg_type
    # The control channel's shutdown_request was dropped too: the kernel is still there.
    assert kernel_alive_for(carnet_stack, token, kernel_id) == 200


# -- 4. kernels belong to the person they were started for ---------------------------------------------


def test_only_the_owner_can_attach_to_or_shut_down_a_kernel(carnet_stack, hub_token):
    owner = hub_token(ACME_VIEWER)
    _, kernel_id = open_app(carnet_stack, owner, carnet_stack.app_id)
    url = ws_url(carnet_stack, kernel_id)
    shutdown = viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}")

    assert ws_status(url, None) == 403
    for other in (GLOBEX_VIEWER, ANALYST):
        token = hub_token(other)
        assert ws_status(url, token) == 403, other
        assert kernel_alive_for(carnet_stack, token, kernel_id) == 403, other
        refused = requests.post(shutdown, headers=auth(token), timeout=30)
        assert refused.status_code == 404, other
        assert refused.json()["message"] == "No such kernel"
    # Guessing ids leads nowhere either, and looks the same as someone else's kernel.
    unknown = requests.post(
        viewer_url(carnet_stack, f"voila/api/shutdown/{uuid.uuid4()}"), headers=auth(owner), timeout=30
    )
    assert unknown.status_code == 404 and unknown.json()["message"] == "No such kernel"

    # All of that left the kernel running for its owner.
    assert ws_status(url, owner) == 101
    assert kernel_alive_for(carnet_stack, owner, kernel_id) == 200

    done = requests.post(shutdown, headers=auth(owner), timeout=60)
    assert done.status_code == 204
    # Gone from the owner map: a second shutdown is a 404, the owner no longer reaches it.
    again = requests.post(shutdown, headers=auth(owner), timeout=30)
    assert again.status_code == 404
    assert kernel_alive_for(carnet_stack, owner, kernel_id) == 403
    assert ws_status(url, owner) == 403


def test_each_render_starts_a_kernel_of_its_own(carnet_stack, hub_token):
    token = hub_token(ACME_VIEWER)
    _, first = open_app(carnet_stack, token, carnet_stack.app_id)
    _, second = open_app(carnet_stack, token, carnet_stack.app_id)
    assert first != second
    for kernel_id in (first, second):
        assert (
            requests.post(
                viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"), headers=auth(token), timeout=60
            ).status_code
            == 204
        )


# -- 5. anonymous ------------------------------------------------------------------------------------


def test_anonymous_requests_are_sent_to_the_hub_login(carnet_stack):
    app = viewer_url(carnet_stack, f"apps/{carnet_stack.app_id}")
    first = requests.get(app, allow_redirects=False, timeout=30)
    assert first.status_code == 302
    assert first.headers["Location"].startswith("/hub/api/oauth2/authorize?client_id=service-carnet-viewer&")

    followed = requests.get(app, timeout=30)
    assert followed.status_code == 200
    assert urlparse(followed.url).path == "/hub/login"
    assert 'id="username_input"' in followed.text
    for rendered in ("jupyter-config-data", "kernelId", "Latest year, by continent", "Wealth and health"):
        assert rendered not in followed.text

    # Nothing else answers an anonymous caller either.
    for method, path, expected in (
        ("GET", "api/kernels", 403),
        ("GET", "api/me", 403),
        ("GET", "metrics", 404),
        ("POST", f"voila/api/shutdown/{uuid.uuid4()}", 403),
    ):
        response = requests.request(method, viewer_url(carnet_stack, path), allow_redirects=False, timeout=30)
        assert response.status_code == expected, (method, path, response.status_code)
    assert ws_status(ws_url(carnet_stack, str(uuid.uuid4())), None) == 403


# -- renders never stall ------------------------------------------------------------------------------


def render_within(stack, token: str, app_id, seconds: float) -> tuple[bool, str]:
    """Render an app, giving up after ``seconds`` in all (a stalled render keeps its connection busy, so a
    read timeout would never fire). Returns whether it finished, and the page so far."""
    started, body = time.monotonic(), b""
    with requests.get(
        viewer_url(stack, f"apps/{app_id}"), headers=auth(token), stream=True, timeout=(10, seconds)
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(65536):
            body += chunk
            if time.monotonic() - started > seconds:
                return False, body.decode(errors="replace")
    return True, body.decode(errors="replace")


def test_widget_output_updates_never_stall_a_render(carnet_stack, hub_token):
    """Voila syncs what an ``Output`` widget captures back to the kernel while it waits for the cell's reply;
    that used to lose the reply now and then (a 120 s stall per cell, STACK-NOTES). 30 such cells stalled
    every render before the Viewer's client waited for replies in slices."""
    marker = uuid.uuid4().hex
    app = publish(
        carnet_stack,
        hub_token(ANALYST),
        "Busy output widget",
        "import ipywidgets as widgets\nfrom IPython.display import display\n"
        "out = widgets.Output()\ndisplay(out)",
        *(f"with out:\n    out.clear_output(wait=True)\n    print('step {i}')" for i in range(30)),
        f"print('RENDERED-' + '{marker}')",
    )
    token = hub_token(ACME_VIEWER)
    for attempt in range(2):
        finished, page = render_within(carnet_stack, token, app["id"], 30)
        kernel = re.search(r'"kernelId": "([0-9a-f-]{36})"', page)
        if kernel:
            requests.post(
                viewer_url(carnet_stack, f"voila/api/shutdown/{kernel.group(1)}"),
                headers=auth(token),
                timeout=60,
            )
        assert finished, f"render {attempt} was still running after 30 s"
        assert f"RENDERED-{marker}" in page


# -- app code runs as the viewer's own OS account (carnet.isolation) ------------------------------------


@pytest.mark.xfail(
    not accounts_enabled(),
    strict=True,
    reason="Carnet is not running as root (or CARNET_ISOLATION=off): app code runs as the Viewer service's "
    "OS user and can read the Viewer's JUPYTERHUB_API_TOKEN from /proc/<parent>/environ and the data "
    "directory. See carnet.isolation.",
)
def test_app_code_cannot_reach_the_viewer_services_credentials(carnet_stack, hub_token):
    secret = carnet_stack.data_dir / "secrets" / "hub_cookie_secret"
    database = carnet_stack.data_dir / "carnet.sqlite"
    warehouse = carnet_stack.settings.warehouse_path(1)
    app = publish(
        carnet_stack,
        hub_token(ANALYST),
        "Reach",
        "import json, os\n"
        "def readable(path):\n"
        "    try:\n"
        "        return len(open(path, 'rb').read()) > 0\n"
        "    except OSError:\n"
        "        return False\n"
        "try:\n"
        "    parent = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
        "except OSError:\n"
        "    parent = b''\n"
        "print('@@' + 'REACH ' + json.dumps({\n"
        "    'service_token': b'JUPYTERHUB_API_TOKEN=' in parent,\n"
        f"    'hub_cookie_secret': readable({str(secret)!r}),\n"
        f"    'platform_database': readable({str(database)!r}),\n"
        f"    'warehouse': readable({str(warehouse)!r}),\n"
        "    'uid': os.getuid(),\n"
        "}))",
    )
    page, kernel_id = open_app(carnet_stack, hub_token(ACME_VIEWER), app["id"])
    requests.post(
        viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"),
        headers=auth(hub_token(ACME_VIEWER)),
        timeout=60,
    )
    reached = printed(page.text, "@@REACH ")
    assert reached.pop("uid") != 0
    assert reached == {
        "service_token": False,
        "hub_cookie_secret": False,
        "platform_database": False,
        "warehouse": False,
    }
