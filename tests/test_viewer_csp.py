"""The Content-Security-Policy of the pages that show notebook content or app metadata.

The app page (Viewer, extension/viewer_csp.py) and the service's pages (carnet/service/page_policy.py) refuse
every inline script, so the policy only works if the pages themselves have none: the template is rendered
with a notebook full of script-bearing outputs and every executable script of the page is checked, then the
headers are read from the real stack. tests/test_viewer_xss_browser.py checks the same in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import inspect

import requests
from voila.handler import VoilaHandler

from carnet.extension.viewer_csp import HEARTBEAT_SCRIPT, app_page_policy
from carnet.service.page_policy import page_policy, template_handler_hashes
from tests.api_support import auth
from tests.test_viewer_template import code, markdown, notebook, render

ACME_VIEWER, ACME_ADMIN = "viewer@acme.example", "admin@acme.example"
VIEWER = "/services/carnet-viewer/"


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            assert words[0] not in parsed, f"{words[0]} twice in {policy!r}"
            parsed[words[0]] = words[1:]
    return parsed


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_app_page_has_no_inline_script():
    page = render(
        notebook(
            markdown("# Sales\n\n<script>window.__xss = 1</script>"),
            code("x = 1"),
            code("y = 2", "filters"),
            markdown("# Detail"),
            code("z = 3"),
        )
    )
    executable = [
        s for s in page.find_all("script") if s.get("type") in (None, "", "text/javascript", "module")
    ]
    inline = [str(s)[:120] for s in executable if not s.get("src")]
    # The one inline script is the notebook's own markdown: the policy refuses it (no hash, no nonce).
    assert inline == ["<script>window.__xss = 1</script>"]
    sources = [s["src"] for s in executable if s.get("src")]
    # Same origin only (the offline render has no fullStaticUrl for voila.js, hence the bare path).
    assert all(src.startswith("/") and not src.startswith("//") for src in sources), sources
    assert f"{VIEWER}voila/templates/carnet/static/carnet-boot.js" in sources
    # Progress comes from the cells' attributes (carnet-boot.js), not from a script per cell.
    cells = page.select("[cell-index][data-carnet-count]")
    assert [c["cell-index"] for c in cells] == ["1", "2", "3", "4", "5"]
    assert {c["data-carnet-count"] for c in cells} == {"5"}
    # Voila's console forwarding to window.top and the CDN mermaid loader are left out.
    assert "postMessage" not in str(page) and "mermaid" not in str(page)


def test_app_page_policy_refuses_inline_script_and_keeps_the_servers_directives():
    policy = directives(app_page_policy("frame-ancestors 'none'; report-uri /x; default-src 'none'"))
    assert policy["frame-ancestors"] == ["'none'"] and policy["report-uri"] == ["/x"]
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'", "'report-sample'", sha256(HEARTBEAT_SCRIPT)]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'none'"] and policy["frame-src"] == ["'none'"]
    for name, values in policy.items():
        assert "'unsafe-inline'" not in values or name == "style-src", name
        assert "'unsafe-eval'" not in values and "*" not in values, name


def test_viewer_app_page_sends_the_policy(carnet_stack, hub_token):
    page = requests.get(
        f"{carnet_stack.url}{VIEWER}apps/{carnet_stack.app_id}",
        headers=auth(hub_token(ACME_VIEWER)),
        timeout=120,
    )
    assert page.status_code == 200
    policy = directives(page.headers["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'", "'report-sample'", sha256(HEARTBEAT_SCRIPT)]
    assert policy["frame-ancestors"] == ["'none'"]  # the Hub's singleuser default, kept
    # The heartbeat Voila writes while a cell runs long is exactly the hashed text.
    assert f"<script>{HEARTBEAT_SCRIPT}</script>" in inspect.getsource(VoilaHandler.get_generator)


def test_service_pages_send_the_policy(carnet_stack, login):
    expected = page_policy()
    policy = directives(expected)
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    # Only the admin page's three confirmation prompts may run, by their hashes.
    assert policy["script-src"] == ["'unsafe-hashes'", *template_handler_hashes()]
    assert set(template_handler_hashes()) == {
        sha256(f"return confirm('{question}')")
        for question in (
            "Give this person a new one-time password? Their sessions end.",
            "Delete this person?",
            "Delete this group?",
        )
    }
    viewer, admin = login(ACME_VIEWER), login(ACME_ADMIN)
    for session, path in (
        (viewer, "viewer/"),
        (viewer, "viewer/?q=%3Cscript%3E"),
        (admin, "admin/"),
        (viewer, "admin/"),  # refused: the error page carries it too
    ):
        answer = session.get(f"{carnet_stack.url}/services/carnet/{path}", timeout=30)
        assert answer.headers.get("Content-Security-Policy") == expected, (path, answer.status_code)
        assert answer.headers.get("X-Content-Type-Options") == "nosniff"
