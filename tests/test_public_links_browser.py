"""Anonymous visitors in a real headless Chromium: the demo app through its public link (no sign-in; the
dropdown's change reaches the kernel over the websocket, which only the visitor's cookie opens), and through
an embed URL framed by a page of another origin (a customer's portal)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.api_support import api_url, auth
from tests.helpers import free_port, wait_until
from tests.test_viewer_browser import CHART_TITLES, CHARTS, browser, kernel_id_of  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

STUDIO, ADMIN = "studio@acme.example", "admin@acme.example"


@pytest.fixture(scope="module")
def public_apps(carnet_stack, hub_token):
    """acme allows public apps for this module; the demo app's public link is revoked after."""
    admin = auth(hub_token(ADMIN))
    org = api_url(carnet_stack, "org")
    before = requests.get(org, headers=admin, timeout=30).json()["settings"]["allow_public_apps"]
    assert requests.patch(org, json={"allow_public_apps": True}, headers=admin, timeout=30).status_code == 200
    yield auth(hub_token(STUDIO))
    link = api_url(carnet_stack, f"apps/{carnet_stack.app_id}/public-link")
    requests.delete(link, headers=admin, timeout=30)
    requests.patch(org, json={"allow_public_apps": before}, headers=admin, timeout=30)


def use_the_dropdown(frame) -> None:
    frame.wait_for_function(f"() => {CHART_TITLES}.length == 2", timeout=60_000)
    dropdown = frame.locator(".widget-dropdown select")
    assert dropdown.input_value() == "Europe"
    dropdown.select_option("Asia")
    frame.wait_for_function(f"() => {CHART_TITLES}.includes('Wealth and health in Asia')", timeout=20_000)


def test_a_visitor_uses_the_public_link_without_signing_in(browser, carnet_stack, public_apps):  # noqa: F811
    made = requests.post(
        api_url(carnet_stack, f"apps/{carnet_stack.app_id}/public-link"), headers=public_apps, timeout=30
    )
    assert made.status_code == 201, made.text
    path = "/" + made.json()["url"].split("://", 1)[1].split("/", 1)[1]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    closed = False
    try:
        page.goto(carnet_stack.url + path, wait_until="commit")
        page.wait_for_function(f"() => document.querySelectorAll('{CHARTS}').length >= 2", timeout=60_000)
        assert "/hub/login" not in page.url
        assert page.locator(".carnet-public-badge").is_visible()
        use_the_dropdown(page)
        kernel = f"{carnet_stack.url}/services/carnet-viewer/api/kernels/{kernel_id_of(page)}"
        # The visitor's own browser reaches its kernel; nobody else does.
        assert context.request.get(kernel).status == 200
        assert requests.get(kernel, timeout=30).status_code == 403
        page.close(run_before_unload=True)
        closed = True
        wait_until(lambda: context.request.get(kernel).status == 403, timeout=20, what="the kernel to end")
    finally:
        if not closed:
            page.close(run_before_unload=True)
        context.close()


class _Portal(BaseHTTPRequestHandler):
    embed_url = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        frame = f'<iframe src="{self.embed_url}" width="1200" height="1600"></iframe>'
        body = f"<html><body><h1>Portal</h1>{frame}</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_an_embed_url_works_in_another_sites_frame(browser, carnet_stack, public_apps):  # noqa: F811
    made = requests.post(
        api_url(carnet_stack, f"apps/{carnet_stack.app_id}/embed"), json={}, headers=public_apps, timeout=30
    )
    assert made.status_code == 201, made.text
    path = "/" + made.json()["url"].split("://", 1)[1].split("/", 1)[1]
    _Portal.embed_url = carnet_stack.url + path
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context(viewport={"width": 1280, "height": 1800})
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        frame = page.frame_locator("iframe")
        frame.locator(CHARTS).first.wait_for(timeout=60_000)
        use_the_dropdown(page.frames[1])
    finally:
        page.close(run_before_unload=True)
        context.close()
        server.shutdown()
