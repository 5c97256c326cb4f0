"""Fetching URLs without server-side request forgery (REST sources and anything else that fetches a URL).

``check_url(url, allow_hosts)`` accepts only http(s) URLs whose host resolves to public addresses only
(every address it resolves to), unless the operator's allowlist (``CarnetSettings.fetch_allow_hosts``)
opens it. ``SafeSession`` is a ``requests.Session`` that checks every request and every redirect target,
connects to the very address it checked (no second DNS lookup that a rebinding DNS server could answer
differently; the Host header, TLS SNI and certificate check still use the name), ignores proxy variables,
and caps response size and timeouts.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.hooks import dispatch_hook
from urllib3.poolmanager import SSL_KEYWORDS

from carnet.errors import ConnectionFailed, ResponseTooLarge, UnsafeURL
from carnet.settings import CarnetSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnresolvableHost(UnsafeURL):
    """The host name does not resolve (refused like any unsafe URL; SQL connections report it as the
    driver would)."""


Resolver = Callable[[str, int], list[str]]
MAX_REDIRECTS = 5
MAX_URL_LENGTH = 8192
MAX_POOLS = 64

# Checked in order; the first match names the reason. ipaddress's own flags miss several of these on the
# Python versions we support (multicast and IPv4-compatible IPv6 count as "global" there).
_BLOCKED_V4 = [
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("192.0.0.0/24", "a reserved address"),
    ("192.0.2.0/24", "a reserved (documentation) address"),
    ("198.51.100.0/24", "a reserved (documentation) address"),
    ("203.0.113.0/24", "a reserved (documentation) address"),
    ("198.18.0.0/15", "a reserved (benchmarking) address"),
]
_BLOCKED_V6 = [
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a private (unique local) address"),
    ("ff00::/8", "a multicast address"),
    ("64:ff9b:1::/48", "a local NAT64 address"),
    ("100::/64", "a reserved (discard) address"),
    ("2001:db8::/32", "a reserved (documentation) address"),
    ("2001::/23", "a reserved address"),
]
_BLOCKED = [(ipaddress.ip_network(net), why) for net, why in _BLOCKED_V4 + _BLOCKED_V6]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")

# Labels of a host that a resolver (inet_aton) would read as a number: 2130706433, 0x7f, 0177, 1.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_V4 = re.compile(
    r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
)


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not public, or None when it is. Embedded IPv4 addresses (IPv4-mapped and
    -compatible IPv6, 6to4, NAT64) are judged as the IPv4 address they reach."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address in _V4_COMPATIBLE and int(address) > 1:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_reason(embedded)
    for network, why in _BLOCKED:
        if address.version == network.version and address in network:
            return why
    if not address.is_global or address.is_multicast or address.is_reserved:
        return "a non-public address"
    return None


@dataclass(frozen=True)
class AllowEntry:
    host: str | None = None  # a name entry
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # an address/CIDR entry
    port: int | None = None


def parse_allow_hosts(entries: Iterable[str]) -> list[AllowEntry]:
    """``host``, ``host:port``, ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``10.0.0.0/8`` -> entries."""
    parsed = []
    for raw in entries:
        text = raw.strip().lower()
        if not text:
            continue
        if "/" in text:
            try:
                parsed.append(AllowEntry(network=ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"fetch_allow_hosts: {raw!r} is not a valid CIDR network") from None
            continue
        try:
            split = urlsplit(f"//{text}")
            host, port = split.hostname, split.port
        except ValueError:
            raise ValueError(f"fetch_allow_hosts: {raw!r} is not host[:port]") from None
        if not host:
            raise ValueError(f"fetch_allow_hosts: {raw!r} is not host[:port]")
        try:
            parsed.append(AllowEntry(network=ipaddress.ip_network(host), port=port))
        except ValueError:
            parsed.append(AllowEntry(host=host.rstrip("."), port=port))
    return parsed


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # every address the host resolved to, all allowed; connect to the first


def _refuse(host: str, reason: str) -> UnsafeURL:
    return UnsafeURL(f"URL refused: {reason}", host=host)


def _host_of(url: str) -> tuple[str, str, int]:
    if not isinstance(url, str) or not url:
        raise UnsafeURL("URL refused: not a URL")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"URL refused: longer than {MAX_URL_LENGTH} characters")
    # Parsers disagree on backslashes and control characters (WHATWG turns "\" into "/"), a classic way
    # to make the checked host differ from the one connected to.
    if any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("URL refused: it contains spaces, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"URL refused: only http and https URLs can be fetched, not {scheme or 'this'}")
    if "@" in parts.netloc:
        raise UnsafeURL(
            "URL refused: user names or passwords in the URL are not allowed (use the auth settings)"
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("URL refused: it has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _refuse(host, f"invalid port in {parts.netloc!r}") from None
    if "%" in host:
        raise _refuse(host, "IPv6 zone ids are not allowed")
    try:
        host.encode("idna")
    except UnicodeError:
        raise _refuse(host, f"{host!r} is not a valid host name") from None
    return scheme, host, port


def _literal_address(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal; refuses numeric spellings other than dotted quads."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(host, f"{host!r} is not a valid IPv6 address") from None
    if _CANONICAL_V4.match(host):
        return ipaddress.IPv4Address(host)
    # Resolvers read 2130706433, 0x7f.1 or 0177.0.0.1 as 127.0.0.1, and WHATWG treats a host whose last
    # label is numeric as IPv4: refuse them all rather than guess which reading a library makes.
    if _NUMERIC_LABEL.match(host.split(".")[-1]) or all(_NUMERIC_LABEL.match(p) for p in host.split(".")):
        raise _refuse(host, f"{host!r} is an unusual IP address spelling; write it as a.b.c.d")
    return None


def check_url_syntax(url: str) -> str:
    """The host of ``url`` when its scheme and spelling are acceptable (nothing resolved): what can be
    checked when a URL is saved; ``check_url`` checks the addresses at each fetch."""
    _, host, _ = _host_of(url)
    _literal_address(host)
    return host


def check_url(url: str, allow_hosts: Iterable[str] = (), resolver: Resolver | None = None) -> CheckedURL:
    """Check ``url`` (scheme, host spelling, every resolved address) against the allowlist (strings as in
    ``fetch_allow_hosts``, or entries from ``parse_allow_hosts``); raise ``UnsafeURL`` naming the reason
    and the host, never the internal addresses a name resolved to."""
    scheme, host, port = _host_of(url)
    return CheckedURL(url, scheme, host, port, check_host(host, port, allow_hosts, resolver))


def check_host(
    host: str, port: int, allow_hosts: Iterable[str] = (), resolver: Resolver | None = None
) -> tuple[str, ...]:
    """The addresses ``host`` resolves to, when every one is public or allowed by the allowlist (for a
    given ``port``); otherwise ``UnsafeURL`` naming the reason and the host."""
    entries = [e if isinstance(e, AllowEntry) else None for e in allow_hosts]
    entries = [e for e in entries if e] + parse_allow_hosts(a for a in allow_hosts if isinstance(a, str))
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            resolved = (resolver or system_resolver)(host, port)
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolved]
        except (OSError, UnicodeError, ValueError):
            raise UnresolvableHost(
                f"URL refused: the host {host!r} could not be resolved", host=host
            ) from None
        if not addresses:
            raise UnresolvableHost(f"URL refused: the host {host!r} could not be resolved", host=host)
    # A name entry trusts whatever the name resolves to; address entries trust those addresses only.
    if literal is None and any(e.host == host and e.port in (None, port) for e in entries):
        return tuple(str(a) for a in addresses)
    for address in addresses:
        if any(e.network and address in e.network and e.port in (None, port) for e in entries):
            continue
        reason = blocked_reason(address)
        if reason:
            if literal is not None:
                raise _refuse(host, f"{host} is {reason}")
            raise _refuse(host, f"the host {host!r} resolves to {reason}")
    return tuple(str(a) for a in addresses)


# Ports the SQL drivers use when a connection names none (the allowlist matches host and port).
SQL_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


def sql_host_guard(settings: CarnetSettings, dialect: str = "") -> Callable[[str, int | None], None]:
    """The host check of SQL connections (the ``check_host`` hook of carnet.connectors): like fetched URLs,
    a server must be public unless the operator listed it in ``sql_allow_hosts`` — otherwise a studio user
    could point a source at the platform's own database or anything else on its network. (The driver
    resolves the name again when it connects: keep internal names out of the allowlist, list addresses.)"""
    allow = parse_allow_hosts(settings.sql_allow_hosts)

    def check(host: str, port: int | None) -> None:
        if not host:
            raise UnsafeURL("A SQL connection needs a host name or address")
        port = port or SQL_DEFAULT_PORTS.get(dialect, 0)
        try:
            check_host(host, port, allow)
        except UnresolvableHost:
            # Not a policy matter: the same answer the driver would give (see carnet.connections).
            raise ConnectionFailed(
                f"Cannot connect to {host}:{port}: the host name does not resolve", reason="unknown_host"
            ) from None

    return check


# -- the session -------------------------------------------------------------------------------------
def _pinned(connection_cls: type, address: str) -> type:
    class Pinned(connection_cls):
        def _new_conn(self):
            # Connect to the checked address, then put the name back: urllib3 derives ``host`` (SNI, the
            # certificate check) from ``_dns_host``, the address it would otherwise look up again.
            name, self._dns_host = self._dns_host, address
            try:
                return super()._new_conn()
            finally:
                self._dns_host = name

    return Pinned


class _PinningAdapter(HTTPAdapter):
    """Builds connection pools whose connections go to the address ``SafeSession`` checked."""

    def __init__(self):
        super().__init__(max_retries=0)
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        address = getattr(request, "carnet_pinned_address", None)
        if address is None:
            raise UnsafeURL("URL refused: not checked")  # only SafeSession.send may reach this adapter
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        key = (
            host_params["scheme"],
            host_params["host"],
            host_params["port"],
            address,
            repr(sorted(pool_kwargs.items())),
        )
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= MAX_POOLS:  # a long-lived session fetching from many hosts
                    self._close_pools()
                https = host_params["scheme"] == "https"
                pool_cls = urllib3.HTTPSConnectionPool if https else urllib3.HTTPConnectionPool
                if not https:  # as urllib3's PoolManager does: TLS options only for https pools
                    pool_kwargs = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
                pool = pool_cls(host_params["host"], host_params["port"], **pool_kwargs)
                pool.ConnectionCls = _pinned(pool_cls.ConnectionCls, address)
                self._pools[key] = pool
        return pool

    def _close_pools(self):
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def close(self):
        with self._lock:
            self._close_pools()
        super().close()


class SafeSession(requests.Session):
    """A ``requests.Session`` for untrusted URLs; see the module docstring. Responses are read whole (up
    to ``max_bytes``) before they are returned, so ``.content``/``.json()`` work and ``stream=True`` does
    not bypass the cap."""

    def __init__(self, settings: CarnetSettings | None = None, resolver: Resolver | None = None):
        super().__init__()
        settings = settings or CarnetSettings()
        self.allow_hosts = parse_allow_hosts(settings.fetch_allow_hosts)
        self.max_bytes = settings.fetch_max_bytes
        self.timeout = settings.fetch_timeout
        self.resolver = resolver
        self.max_redirects = MAX_REDIRECTS
        self.trust_env = False  # a proxy from the environment would do its own DNS lookup, unpinned
        adapter = _PinningAdapter()
        self.adapters.clear()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def send(self, request, **kwargs):
        # Not Session.send: for a redirect it reads the body uncapped before following it.
        checked = check_url(request.url, self.allow_hosts, self.resolver)
        request.carnet_pinned_address = checked.addresses[0]
        allow_redirects = kwargs.pop("allow_redirects", True)
        kwargs.update(stream=True, proxies={})
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("cert", self.cert)
        start = time.perf_counter()
        response = self.get_adapter(request.url).send(request, **kwargs)
        response.elapsed = timedelta(seconds=time.perf_counter() - start)
        self._read_capped(response, checked.host)
        response = dispatch_hook("response", request.hooks, response, **kwargs)
        extract_cookies_to_jar(self.cookies, request, response.raw)
        if allow_redirects:
            # Each hop comes back through this method: its target is checked, pinned and capped too.
            try:
                history = [response, *self.resolve_redirects(response, request, **kwargs)]
            except requests.TooManyRedirects:
                raise _refuse(checked.host, f"more than {self.max_redirects} redirects") from None
            response = history.pop()
            response.history = history
        return response

    def _read_capped(self, response: requests.Response, host: str) -> None:
        try:
            declared = int(response.headers.get("Content-Length", "-1"))
        except ValueError:
            declared = -1
        too_large = ResponseTooLarge(
            f"The response from {host!r} is larger than the {self.max_bytes}-byte limit (fetch_max_bytes)",
            host=host,
        )
        if declared > self.max_bytes:
            response.close()
            raise too_large
        chunks, size = [], 0
        # Counted after decompression: a small gzip body can expand enormously.
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise too_large
            chunks.append(chunk)
        response._content = b"".join(chunks)
        response._content_consumed = True
        response.close()
