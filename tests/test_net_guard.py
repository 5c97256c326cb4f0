"""carnet/net_guard.py: URL checks (schemes, address classes, odd IP spellings, allowlist) and SafeSession
against real HTTP servers on 127.0.0.1 (loopback refused by default, allowlisted hosts and ports, redirects
re-checked, the checked address pinned, size caps, timeouts). No traffic leaves the machine: public
addresses are only checked, never connected to."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from carnet.errors import ResponseTooLarge, UnsafeURL
from carnet.net_guard import SafeSession, check_url, parse_allow_hosts
from carnet.settings import CarnetSettings

# -- check_url -----------------------------------------------------------------------------------------
REFUSED = [
    ("file:///etc/passwd", "only http and https"),
    ("ftp://8.8.8.8/x", "only http and https"),
    ("gopher://8.8.8.8:70/", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("//8.8.8.8/", "only http and https"),
    ("http://user:pw@8.8.8.8/", "user names or passwords"),
    ("http://8.8.8.8@127.0.0.1/", "user names or passwords"),
    ("http://8.8.8.8\\@127.0.0.1/", "backslashes"),
    ("http://8.8.8.8 @127.0.0.1/", "spaces"),
    ("http:///path", "no host"),
    ("http://8.8.8.8:99999/", "invalid port"),
    ("http://127.0.0.1/", "loopback"),
    ("http://127.1.2.3:8080/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.10/", "reserved"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]:8080/", "private"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[2002:c0a8:101::1]/", "private"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
    ("http://[64:ff9b:1::1]/", "NAT64"),
    ("http://[2001:db8::1]/", "reserved"),
    ("http://2130706433/", "unusual IP address spelling"),
    ("http://0x7f000001/", "unusual IP address spelling"),
    ("http://0x7f.1/", "unusual IP address spelling"),
    ("http://0177.0.0.1/", "unusual IP address spelling"),
    ("http://127.1/", "unusual IP address spelling"),
    ("http://127.000.000.001/", "unusual IP address spelling"),
    ("http://localhost/", "resolves to a loopback"),
    ("http://LOCALHOST./", "resolves to a loopback"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[url for url, _ in REFUSED])
def test_refused_urls(url, reason):
    with pytest.raises(UnsafeURL) as caught:
        check_url(url)
    assert caught.value.status == 400 and reason in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/",
        "https://1.1.1.1:8443/api?x=1",
        "http://93.184.216.34",
        "https://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",  # mapped, but to a public address
        "http://[2002:808:808::1]/",  # 6to4 of a public address
        "HTTP://8.8.4.4./",
    ],
)
def test_public_literal_addresses_pass(url):
    checked = check_url(url)
    assert checked.scheme in ("http", "https") and len(checked.addresses) == 1


def resolver_for(table):
    return lambda host, port: table[host]


def test_every_resolved_address_must_be_public_and_none_is_revealed():
    resolver = resolver_for(
        {"mixed.example": ["8.8.8.8", "10.1.2.3"], "public.example": ["8.8.8.8", "2606::1"]}
    )
    with pytest.raises(UnsafeURL) as caught:
        check_url("https://mixed.example/", resolver=resolver)
    assert "'mixed.example' resolves to a private address" in caught.value.message
    assert "10.1.2.3" not in json.dumps(caught.value.to_json())
    assert check_url("https://public.example/", resolver=resolver).addresses == ("8.8.8.8", "2606::1")


def test_unresolvable_host_is_a_clear_error():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(UnsafeURL, match="'nowhere.example' could not be resolved"):
        check_url("http://nowhere.example/", resolver=fail)


@pytest.mark.parametrize(
    ("allow", "url", "allowed"),
    [
        (["127.0.0.1"], "http://127.0.0.1:9/", True),
        (["127.0.0.1:9"], "http://127.0.0.1:9/", True),
        (["127.0.0.1:9"], "http://127.0.0.1:10/", False),
        (["127.0.0.0/8"], "http://127.9.9.9:10/", True),
        (["10.20.0.0/16"], "http://10.21.0.1/", False),
        (["[::1]:9"], "http://[::1]:9/", True),
        (["[::1]:9"], "http://127.0.0.1:9/", False),
        (["intranet.example"], "http://intranet.example:8080/", True),
        (["intranet.example:443"], "https://intranet.example/", True),
        (["intranet.example:443"], "http://intranet.example/", False),
        (["other.example"], "http://intranet.example/", False),
    ],
)
def test_allowlist(allow, url, allowed):
    resolver = resolver_for({"intranet.example": ["10.0.0.5"]})
    if allowed:
        check_url(url, allow, resolver)
    else:
        with pytest.raises(UnsafeURL):
            check_url(url, allow, resolver)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "host:port", "http://x:1:2"])
def test_bad_allowlist_entries_are_refused(entry):
    with pytest.raises(ValueError, match="fetch_allow_hosts"):
        parse_allow_hosts([entry])


def test_allowlist_from_environment(monkeypatch):
    monkeypatch.setenv("CARNET_FETCH_ALLOW_HOSTS", " 127.0.0.1:8080, intranet.example ,,10.0.0.0/8")
    assert CarnetSettings().fetch_allow_hosts == ["127.0.0.1:8080", "intranet.example", "10.0.0.0/8"]


# -- SafeSession against real local servers ------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/ok":
            self.reply(
                200, json.dumps({"host": self.headers["Host"], "port": self.server.server_port}).encode()
            )
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            body = b"x" * int(query.get("body", "0"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            self.reply(200, b"x" * int(query["n"]), declare_length=query.get("declare") != "no")
        elif url.path == "/gzip":
            self.reply(200, gzip.compress(b"\0" * int(query["n"])), headers={"Content-Encoding": "gzip"})
        elif url.path == "/slow":
            time.sleep(float(query["s"]))
            self.reply(200, b"late")
        else:
            self.reply(404, b"")

    def reply(self, status, body, declare_length=True, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if declare_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True  # the body ends when the connection closes
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def servers():
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.hits = []
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def a(servers):
    servers[0].hits.clear()
    return servers[0]


@pytest.fixture
def b(servers):
    servers[1].hits.clear()
    return servers[1]


def session(*allow, max_bytes=1_000_000, timeout=5.0, resolver=None):
    settings = CarnetSettings(fetch_allow_hosts=list(allow), fetch_max_bytes=max_bytes, fetch_timeout=timeout)
    return SafeSession(settings, resolver=resolver)


def base(server, host="127.0.0.1"):
    return f"http://{host}:{server.server_port}"


def test_loopback_refused_by_default(a):
    with pytest.raises(UnsafeURL, match="loopback"), session() as s:
        s.get(base(a) + "/ok")
    assert a.hits == []  # refused before connecting


def test_allowlisted_loopback_server_is_fetched(a):
    with session(f"127.0.0.1:{a.server_port}") as s:
        response = s.get(base(a) + "/ok")
    assert response.status_code == 200 and response.json()["port"] == a.server_port


def test_pinned_address_and_host_header(a, monkeypatch):
    # The session must connect to the address its own check resolved: any second lookup of the name (the
    # window a rebinding DNS server uses) fails here, yet the request arrives, with the name as Host.
    real_getaddrinfo, looked_up = socket.getaddrinfo, []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        if host == "api.partner.test":
            raise socket.gaierror("second lookup of the checked name")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    resolver = resolver_for({"api.partner.test": ["127.0.0.1"]})
    with session(f"api.partner.test:{a.server_port}", resolver=resolver) as s:
        response = s.get(base(a, "api.partner.test") + "/ok")
    assert response.json()["host"] == f"api.partner.test:{a.server_port}"
    assert "api.partner.test" not in looked_up and "127.0.0.1" in looked_up


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{b}/ok",
        "http://localhost:{b}/ok",
        "http://api.partner.test:{b}/ok",
        "http://2130706433:{b}/ok",
        "http://[::ffff:127.0.0.1]:{b}/ok",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ],
)
def test_redirect_from_allowlisted_server_to_blocked_target_is_refused(a, b, target):
    resolver = resolver_for({"api.partner.test": ["127.0.0.1"], "localhost": ["127.0.0.1"]})
    location = target.format(b=b.server_port)
    with session(f"api.partner.test:{a.server_port}", resolver=resolver) as s, pytest.raises(UnsafeURL):
        s.get(base(a, "api.partner.test") + "/redirect", params={"to": location})
    assert a.hits and a.hits[0].startswith("/redirect")
    assert b.hits == []  # the non-allowlisted port never saw a request


def test_redirect_within_the_allowlist_is_followed(a):
    with session(f"127.0.0.1:{a.server_port}") as s:
        response = s.get(base(a) + "/redirect", params={"to": "/ok"})
    assert response.status_code == 200 and [r.status_code for r in response.history] == [302]
    assert a.hits[-1] == "/ok"


def test_redirect_loop_is_cut(a):
    with session(f"127.0.0.1:{a.server_port}") as s, pytest.raises(UnsafeURL, match="redirects"):
        s.get(base(a) + "/loop")
    assert len(a.hits) == 6  # the first request and MAX_REDIRECTS (5) hops


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/big?n=5000", 1000),
        ("/big?n=5000&declare=no", 1000),
        ("/gzip?n=1000000", 100_000),
        ("/redirect?to=/ok&body=5000", 1000),
    ],
    ids=["declared-length", "undeclared-length", "gzip-bomb", "redirect-body"],
)
def test_oversized_response_is_refused(a, path, limit):
    with session(f"127.0.0.1:{a.server_port}", max_bytes=limit) as s:
        with pytest.raises(ResponseTooLarge, match="fetch_max_bytes"):
            s.get(base(a) + path)
        # stream=True must not bypass the cap.
        with pytest.raises(ResponseTooLarge):
            s.get(base(a) + path, stream=True)


def test_response_at_the_limit_is_accepted(a):
    with session(f"127.0.0.1:{a.server_port}", max_bytes=1000) as s:
        assert len(s.get(base(a) + "/big?n=1000&declare=no").content) == 1000
        assert s.get(base(a) + "/gzip?n=1000").content == b"\0" * 1000


def test_timeout_applies(a):
    started = time.monotonic()
    with session(f"127.0.0.1:{a.server_port}", timeout=0.5) as s, pytest.raises(requests.Timeout):
        s.get(base(a) + "/slow?s=3")
    assert time.monotonic() - started < 2.5


def test_proxy_environment_is_ignored(a, monkeypatch):
    # A proxy would resolve the name itself, outside our check: the session must connect directly.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with session(f"127.0.0.1:{a.server_port}") as s:
        assert s.get(base(a) + "/ok").status_code == 200


# -- TLS: the pinned connection still verifies the certificate against the host name --------------------
def self_signed(tmp_path, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_server(tmp_path):
    cert, key = self_signed(tmp_path, "api.partner.test")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.hits, server.daemon_threads = [], True
    server.handle_error = lambda *args: None  # the refused handshake below is expected, not news
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, cert, self_signed(tmp_path, "other.test")[0]
    server.shutdown()
    server.server_close()


def test_https_to_pinned_address_checks_the_certificate_name(tls_server):
    server, cert, other_cert = tls_server
    resolver = resolver_for({"api.partner.test": ["127.0.0.1"]})
    url = f"https://api.partner.test:{server.server_port}/ok"
    with session(f"api.partner.test:{server.server_port}", resolver=resolver) as s:
        # SNI and the certificate check use the name although the socket goes to 127.0.0.1.
        assert s.get(url, verify=cert).json()["host"] == f"api.partner.test:{server.server_port}"
        with pytest.raises(requests.exceptions.SSLError):
            s.get(url, verify=other_cert)  # a certificate for another name is refused
