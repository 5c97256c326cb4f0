"""The audit log's remote address: X-Forwarded-For is trusted only as far as our own proxies wrote it.

Units on tornado's request object (every peer address and header shape), one real tornado server started as
the Hub starts its own (xheaders=True: remote_ip comes from headers a client can set), and one sign-in
through the real stack with a forged header.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import requests
from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from carnet.audit import client_address
from carnet.settings import CarnetSettings
from tests.api_support import api_url, auth, unique

FORGED = "203.0.113.9"


def request(peer: str, forwarded: str | None = None, real_ip: str | None = None):
    headers = httputil.HTTPHeaders({"Host": "carnet.example"})
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    if real_ip is not None:
        headers["X-Real-Ip"] = real_ip
    connection = SimpleNamespace(context=SimpleNamespace(remote_ip=peer, _orig_remote_ip=peer))
    start = httputil.RequestStartLine("GET", "/", "HTTP/1.1")
    return httputil.HTTPServerRequest(start_line=start, headers=headers, connection=connection)


@pytest.mark.parametrize(
    "peer,forwarded,hops,expected",
    [
        ("127.0.0.1", None, 1, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7", 1, "198.51.100.7"),
        # What the Hub's proxy makes of a forged header: the forged part is left of what the proxy appended.
        ("127.0.0.1", f"{FORGED}, 198.51.100.7", 1, "198.51.100.7"),
        ("127.0.0.1", f"{FORGED},198.51.100.7", 1, "198.51.100.7"),
        ("127.0.0.1", f"{FORGED}, 10.0.0.1, 198.51.100.7", 1, "198.51.100.7"),
        # A load balancer in front of the proxy: its entry and the proxy's are trusted, nothing further left.
        ("127.0.0.1", f"{FORGED}, 198.51.100.7, 10.0.0.5", 2, "198.51.100.7"),
        ("127.0.0.1", "198.51.100.7, 10.0.0.5", 2, "198.51.100.7"),
        # Fewer entries than hops: all were written by our proxies, the leftmost is the client.
        ("127.0.0.1", "198.51.100.7", 2, "198.51.100.7"),
        ("127.0.0.1", f"{FORGED}, 198.51.100.7", 0, "127.0.0.1"),
        ("::1", f"{FORGED}, 198.51.100.7", 1, "198.51.100.7"),
        ("::ffff:127.0.0.1", f"{FORGED}, 198.51.100.7", 1, "198.51.100.7"),
        # Not from the proxy (someone reached the port directly): the header is theirs, ignored.
        ("192.0.2.44", f"{FORGED}", 1, "192.0.2.44"),
        ("192.0.2.44", f"{FORGED}, 198.51.100.7", 2, "192.0.2.44"),
        ("127.0.0.1", " , ", 1, "127.0.0.1"),
    ],
    ids=[
        "no header",
        "one proxy",
        "forged entry before the proxy's",
        "no space after comma",
        "several forged entries",
        "two trusted hops",
        "two hops exactly",
        "fewer entries than hops",
        "hops 0 ignores the header",
        "ipv6 loopback peer",
        "ipv4-mapped loopback peer",
        "non-loopback peer",
        "non-loopback peer, two hops",
        "empty entries",
    ],
)
def test_client_address(peer, forwarded, hops, expected):
    assert client_address(request(peer, forwarded), hops) == expected


def test_no_request_has_no_address():
    assert client_address(None, 1) == ""


def test_hops_default_to_the_setting(monkeypatch):
    forged = request("127.0.0.1", f"{FORGED}, 198.51.100.7, 10.0.0.5")
    monkeypatch.delenv("CARNET_TRUSTED_PROXY_HOPS", raising=False)
    assert CarnetSettings().trusted_proxy_hops == 1
    assert client_address(forged) == "10.0.0.5"
    monkeypatch.setenv("CARNET_TRUSTED_PROXY_HOPS", "2")
    assert client_address(forged) == "198.51.100.7"
    monkeypatch.setenv("CARNET_TRUSTED_PROXY_HOPS", "-1")
    with pytest.raises(ValueError, match="cannot be negative"):
        client_address(forged)


def test_a_hub_like_server_records_the_peer_not_x_real_ip():
    """The Hub runs tornado with xheaders=True: request.remote_ip is then whatever X-Real-Ip says. The
    address must come from the socket and the trusted part of X-Forwarded-For instead."""

    class Echo(web.RequestHandler):
        def get(self):
            self.write({"remote_ip": self.request.remote_ip, "recorded": client_address(self.request, 1)})

    async def run():
        sock, port = bind_unused_port()
        server = HTTPServer(web.Application([("/", Echo)]), xheaders=True)
        server.add_sockets([sock])
        try:
            response = await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/",
                headers={"X-Real-Ip": FORGED, "X-Forwarded-For": f"{FORGED}, 198.51.100.7"},
            )
            return web.escape.json_decode(response.body)
        finally:
            server.stop()

    answer = asyncio.run(run())
    assert answer["remote_ip"] == FORGED  # tornado believed the header...
    assert answer["recorded"] == "198.51.100.7"  # ...the audit address does not


def audited(stack, admin_token: str, action: str, actor: str, target: str = "") -> list[str]:
    """The addresses of acme's audit events of ``action`` by ``actor`` (on ``target``, if given)."""
    answer = requests.get(
        api_url(stack, "audit"),
        params={"action": action, "actor": actor},
        headers=auth(admin_token),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return [e["remote_addr"] for e in answer.json()["events"] if not target or e["target"] == target]


def test_forged_forwarded_for_is_not_what_the_audit_records(carnet_stack, hub_token):
    """Through the real proxy: the service (person created) and the Hub (sign-in) both record 127.0.0.1,
    the address that really connected, not the one the client wrote into the headers."""
    forged = {"X-Forwarded-For": FORGED, "X-Real-Ip": FORGED}
    admin = hub_token("admin@acme.example")
    email = f"{unique('forged-xff')}@acme.example"
    created = requests.post(
        api_url(carnet_stack, "users"),
        json={"email": email, "role": "viewer"},
        headers={**auth(admin), **forged},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    try:
        creations = audited(carnet_stack, admin, "user.create", "admin@acme.example", f"user/{email}")
        assert creations == ["127.0.0.1"]
        session = requests.Session()
        # On every request: the Hub's anonymous xsrf token is bound to the address tornado believes.
        session.headers.update(forged)
        session.get(f"{carnet_stack.url}/hub/login", timeout=10)
        signed_in = session.post(
            f"{carnet_stack.url}/hub/login",
            data={
                "username": email,
                "password": created.json()["initial_password"],
                "_xsrf": session.cookies.get("_xsrf", path="/hub/"),
            },
            timeout=30,
            allow_redirects=False,
        )
        assert signed_in.status_code == 302
        assert audited(carnet_stack, admin, "login.success", email) == ["127.0.0.1"]
    finally:
        user_url = api_url(carnet_stack, f"users/{created.json()['id']}")
        gone = requests.delete(user_url, headers=auth(admin), timeout=30)
        assert gone.status_code == 204
