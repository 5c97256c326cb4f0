"""The rest_json source kind against a real local HTTP server: every pagination style, 429 + Retry-After,
the three auth types (and that errors never show the secret), the SSRF guard (a redirect to another
loopback port, a URL that is not allowlisted), record paths, flattening; then one source created and read
through the real stack's REST API."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest
import requests

from carnet.errors import (
    ConnectionFailed,
    QueryFailed,
    QueryTimeout,
    RowLimitExceeded,
    UnsafeURL,
    ValidationError,
)
from carnet.kinds.rest import RestJsonKind
from carnet.settings import CarnetSettings
from carnet.sources import ReadLimits, SourceContext, source_kinds
from tests.api_support import api_url, assert_json_error, auth, unique

# Seven records; "score" is null on the first page (of 3) and an integer later, "owner" is nested.
RECORDS = [
    {
        "id": i,
        "name": f"item {i}",
        "score": None if i <= 3 else i * 10,
        "owner": {"name": f"owner {i % 2}", "address": {"city": "Lyon" if i % 2 else "Nantes"}},
    }
    for i in range(1, 8)
]
TOKEN = "tok-7Hq2-canary"
PASSWORD = "pw-9Zx!canary"
API_KEY = "key-4Lm8-canary"


class StandInAPI:
    """A real HTTP server (a thread on 127.0.0.1) answering like a paginated JSON API."""

    def __init__(self, port: int = 0):
        api = self
        self.hits: Counter = Counter()
        self.redirect_to = ""

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                api.handle(self)

            def do_POST(self):  # noqa: N802
                api.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(handler, status: int, body, headers: dict | None = None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler):
        parts = urlsplit(h.path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.hits[path] += 1
        key = query.get("key", "")
        self.hits[(path, key)] += 1
        if path == "/page":  # ?page=1.. &per_page=
            size, number = int(query["per_page"]), int(query["page"])
            items = RECORDS[(number - 1) * size : number * size]
            return self.send(h, 200, {"data": {"items": items, "page": number}})
        if path == "/offset":
            start, limit = int(query["offset"]), int(query["limit"])
            return self.send(h, 200, {"results": RECORDS[start : start + limit]})
        if path == "/cursor":
            start = int(query.get("after", "0"))
            following = str(start + 2) if start + 2 < len(RECORDS) else None
            return self.send(h, 200, {"items": RECORDS[start : start + 2], "meta": {"next": following}})
        if path in ("/next-body", "/next-header"):
            start = int(query.get("from", "0"))
            following = f"{path}?from={start + 3}" if start + 3 < len(RECORDS) else None
            body = {"items": RECORDS[start : start + 3]}
            if path == "/next-body":
                return self.send(h, 200, {**body, "links": {"next": following}})
            link = {"Link": f'<{self.url}{following}>; rel="next"'} if following else {}
            return self.send(h, 200, body, link)
        if path == "/flaky":  # rate limited once, then fine
            if self.hits[(path, key)] == 1:
                return self.send(h, 429, {"error": "slow down"}, {"Retry-After": "1"})
            return self.send(h, 200, RECORDS[:2])
        if path == "/always-429":
            return self.send(h, 429, {"error": "slow down"}, {"Retry-After": "1"})
        if path == "/bearer":
            given = h.headers.get("Authorization", "")
            if given != f"Bearer {TOKEN}":  # echoes what it got, as careless servers do
                return self.send(h, 401, {"error": f"bad credentials: {given}"})
            return self.send(h, 200, RECORDS[:1])
        if path == "/basic":
            expected = "Basic " + base64.b64encode(f"ana:{PASSWORD}".encode()).decode()
            if h.headers.get("Authorization") != expected:
                return self.send(h, 401, {"error": f"bad credentials: {h.headers.get('Authorization')}"})
            return self.send(h, 200, RECORDS[:1])
        if path == "/api-key":
            given = h.headers.get("X-Api-Key") or query.get("api_key")
            if given != API_KEY:
                return self.send(h, 401, {"error": f"unknown key {given}"})
            return self.send(h, 200, RECORDS[:1])
        if path == "/echo":
            length = int(h.headers.get("Content-Length") or 0)
            body = json.loads(h.rfile.read(length)) if length else None
            return self.send(h, 200, [{"method": h.command, "q": query.get("q"), "body": body}])
        if path == "/redirect":
            h.send_response(302)
            h.send_header("Location", self.redirect_to)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if path == "/mixed":
            return self.send(h, 200, [{"v": 1, "tags": ["a"]}, {"v": "one", "tags": [1, "b"]}, {"v": None}])
        if path == "/next-away":  # a next link to another server
            return self.send(h, 200, {"items": RECORDS[:1], "next": self.redirect_to})
        if path == "/slow":
            time.sleep(2)
            return self.send(h, 200, [])
        if path == "/not-json":
            return self.send(h, 200, b"<html>hello</html>")
        return self.send(h, 404, {"error": "no such path"})


@pytest.fixture(scope="module")
def api():
    server = StandInAPI()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def elsewhere():
    """Another loopback server, not allowlisted: it must never be reached."""
    server = StandInAPI()
    yield server
    server.stop()


def context(api, options, secrets=None, timeout=10.0, max_rows=1000, variables=None) -> SourceContext:
    # "localhost" too: the same server under another host name, for the cross-host redirect test.
    allow = [f"127.0.0.1:{api.port}", f"localhost:{api.port}"]
    settings = CarnetSettings(fetch_allow_hosts=allow, fetch_timeout=5)
    return SourceContext(
        settings=settings,
        org_id=1,
        name="rest",
        kind="rest_json",
        options=RestJsonKind().validate_options({**options, **(secrets or {})}),
        secrets=secrets or {},
        variables=variables or {},
        limits=ReadLimits(timeout_seconds=timeout, max_rows=max_rows),
    )


def read(api, options, **kwargs) -> pa.Table:
    return RestJsonKind().read(context(api, options, **kwargs))


def test_the_kind_is_registered_through_its_entry_point():
    assert isinstance(source_kinds.get("rest_json"), RestJsonKind)
    assert RestJsonKind.secret_fields == {"token", "password", "api_key"} and not RestJsonKind.pushes_down


@pytest.mark.parametrize(
    "path, record_path, pagination",
    [
        pytest.param(
            "/page",
            "data.items",
            {"type": "page", "page_param": "page", "size_param": "per_page", "page_size": 3},
            id="page",
        ),
        pytest.param(
            "/offset",
            ["results"],
            {"type": "offset", "offset_param": "offset", "limit_param": "limit", "page_size": 3},
            id="offset",
        ),
        pytest.param(
            "/cursor",
            "items",
            {"type": "cursor", "cursor_param": "after", "cursor_path": "meta.next"},
            id="cursor",
        ),
        pytest.param(
            "/next-body",
            "items",
            {"type": "next_link", "next_link_path": "links.next"},
            id="next-link-in-body",
        ),
        pytest.param("/next-header", "items", {"type": "next_link"}, id="next-link-header"),
    ],
)
def test_every_pagination_style_reads_all_records_once_with_consistent_types(
    api, path, record_path, pagination
):
    table = read(api, {"url": api.url + path, "record_path": record_path, "pagination": pagination})
    assert table.column("id").to_pylist() == [r["id"] for r in RECORDS]
    # Null on the first page, integers later: one integer column, not text and not float.
    assert table.schema.field("score").type == pa.int64()
    assert table.column("score").to_pylist() == [r["score"] for r in RECORDS]
    # Nested objects became dotted columns.
    assert table.column("owner.address.city").to_pylist()[:2] == ["Lyon", "Nantes"]
    assert "owner" not in table.column_names


def test_max_pages_bounds_the_reading_and_columns_and_test_read_one_page(api):
    options = {
        "url": api.url + "/page",
        "record_path": "data.items",
        "pagination": {"type": "page", "size_param": "per_page", "page_size": 3, "max_pages": 2},
    }
    assert read(api, options).num_rows == 6
    kind = RestJsonKind()
    columns = kind.columns(context(api, options))
    assert {"name": "owner.name", "type": "VARCHAR"} in columns
    assert {"name": "id", "type": "BIGINT"} in columns
    result = kind.test(context(api, options))
    assert result["ok"] and result["records"] == 3 and result["columns"] == columns


def test_a_429_with_retry_after_is_waited_out_then_read(api):
    key = uuid.uuid4().hex
    started = time.monotonic()
    table = read(api, {"url": f"{api.url}/flaky", "params": {"key": key}})
    waited = time.monotonic() - started
    assert table.num_rows == 2
    assert api.hits[("/flaky", key)] == 2
    assert 0.9 <= waited < 3, waited


def test_an_api_that_always_rate_limits_fails_clearly_within_the_budget(api):
    key = uuid.uuid4().hex
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as error:
        read(api, {"url": f"{api.url}/always-429", "params": {"key": key}}, timeout=3)
    assert time.monotonic() - started < 3
    assert "rate limiting" in error.value.message and "429" in error.value.message
    assert error.value.fields["upstream_status"] == 429
    assert 2 <= api.hits[("/always-429", key)] <= 4  # it did retry, a bounded number of times


@pytest.mark.parametrize(
    "path, auth_options, secrets, wrong",
    [
        pytest.param(
            "/bearer", {"type": "bearer"}, {"token": TOKEN}, {"token": "wrong-tok-canary"}, id="bearer"
        ),
        pytest.param(
            "/basic",
            {"type": "basic", "username": "ana"},
            {"password": PASSWORD},
            {"password": "wrong-pw-canary"},
            id="basic",
        ),
        pytest.param(
            "/api-key",
            {"type": "api_key", "header": "X-Api-Key"},
            {"api_key": API_KEY},
            {"api_key": "wrong-key-canary"},
            id="api-key-header",
        ),
        pytest.param(
            "/api-key",
            {"type": "api_key", "param": "api_key"},
            {"api_key": API_KEY},
            {"api_key": "wrong-key-canary"},
            id="api-key-param",
        ),
    ],
)
def test_auth_is_sent_and_a_refusal_never_shows_the_secret(api, path, auth_options, secrets, wrong):
    options = {"url": api.url + path, "auth": auth_options}
    assert read(api, options, secrets=secrets).column("id").to_pylist() == [1]
    with pytest.raises(ConnectionFailed) as error:
        read(api, options, secrets=wrong)
    message = error.value.message
    assert "401" in message and ("bad credentials" in message or "unknown key" in message)
    assert "***" in message  # the server echoed the credential: it was hidden
    wrong_value = next(iter(wrong.values()))
    assert wrong_value not in message
    assert base64.b64encode(f"ana:{wrong_value}".encode()).decode() not in message


def test_a_redirect_to_another_loopback_port_is_refused_and_never_reached(api, elsewhere):
    api.redirect_to = f"{elsewhere.url}/echo"
    before = elsewhere.hits["/echo"]
    with pytest.raises(UnsafeURL) as error:
        read(api, {"url": api.url + "/redirect"})
    assert "loopback" in error.value.message
    assert elsewhere.hits["/echo"] == before


def test_a_next_link_to_another_server_is_refused_so_credentials_stay_home(api, elsewhere):
    api.redirect_to = f"{elsewhere.url}/api-key"
    options = {
        "url": api.url + "/next-away",
        "record_path": "items",
        "auth": {"type": "api_key", "header": "X-Api-Key"},
        "pagination": {"type": "next_link", "next_link_path": "next"},
    }
    with pytest.raises(QueryFailed, match="another server"):
        read(api, options, secrets={"api_key": API_KEY})
    assert elsewhere.hits["/api-key"] == 0


def test_a_redirect_to_another_host_does_not_carry_the_api_key(api):
    api.redirect_to = f"http://localhost:{api.port}/api-key"
    before = api.hits["/api-key"]
    options = {"url": api.url + "/redirect", "auth": {"type": "api_key", "header": "X-Api-Key"}}
    with pytest.raises(ConnectionFailed, match="401"):
        read(api, options, secrets={"api_key": API_KEY})
    assert api.hits["/api-key"] == before + 1  # reached, without the key


def test_a_loopback_url_that_is_not_allowlisted_is_refused(api, elsewhere):
    # Valid syntax, so it can be saved; the address check happens at every fetch.
    with pytest.raises(UnsafeURL, match="loopback"):
        read(api, {"url": elsewhere.url + "/echo"})
    assert elsewhere.hits["/echo"] == 0


def test_record_path_errors_name_the_path(api):
    with pytest.raises(QueryFailed) as missing:
        read(api, {"url": api.url + "/page?page=1&per_page=2", "record_path": "data.rows"})
    assert missing.value.status == 400
    assert "'data.rows'" in missing.value.message and "items" in missing.value.message
    with pytest.raises(QueryFailed, match="leads to dict, not a list"):
        read(api, {"url": api.url + "/page?page=1&per_page=2", "record_path": "data"})


def test_variables_fill_params_url_encoded_and_post_sends_the_body(api):
    table = read(
        api,
        {"url": api.url + "/echo", "method": "POST", "params": {"q": "{{who}}"}, "body": {"filter": [1, 2]}},
        variables={"who": "a b&c=d/é"},
    )
    assert table.to_pylist() == [{"method": "POST", "q": "a b&c=d/é", "body.filter": [1, 2]}]
    with pytest.raises(ValidationError, match="'who'"):
        read(api, {"url": api.url + "/echo", "params": {"q": "{{who}}"}})


def test_mixed_types_become_text_and_bad_answers_fail_clearly(api):
    table = read(api, {"url": api.url + "/mixed"})
    assert table.column("v").to_pylist() == ["1", "one", None]
    assert table.column("tags").to_pylist() == ['["a"]', '[1, "b"]', None]
    with pytest.raises(QueryFailed, match="did not answer JSON"):
        read(api, {"url": api.url + "/not-json"})
    with pytest.raises(QueryFailed, match="404"):
        read(api, {"url": api.url + "/nowhere"})


def test_row_cap_and_time_budget(api):
    paging = {"type": "page", "size_param": "per_page", "page_size": 3}
    with pytest.raises(RowLimitExceeded):
        read(api, {"url": api.url + "/page", "record_path": "data.items", "pagination": paging}, max_rows=5)
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        read(api, {"url": api.url + "/slow"}, timeout=0.5)
    assert time.monotonic() - started < 1.5
    # A Retry-After longer than what is left of the budget fails at once instead of sleeping past it.
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="past the 0.5 s budget"):
        read(api, {"url": api.url + "/always-429", "params": {"key": uuid.uuid4().hex}}, timeout=0.5)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "options, field",
    [
        pytest.param({"url": "ftp://example.com/x"}, "options.url", id="not-http"),
        pytest.param({"url": "http://0x7f.1/x"}, "options.url", id="odd-ip-spelling"),
        pytest.param({"url": "https://api.example/{{id}}"}, "options.url", id="variable-in-url"),
        pytest.param({"url": "https://api.example", "verify": False}, "options.verify", id="unknown-option"),
        pytest.param({"url": "https://api.example", "method": "DELETE"}, "options.method", id="method"),
        pytest.param(
            {"url": "https://api.example", "headers": {"Host": "x"}}, "options.headers.Host", id="host"
        ),
        pytest.param(
            {"url": "https://api.example", "headers": {"Content-Length": "1"}},
            "options.headers.Content-Length",
            id="content-length",
        ),
        pytest.param(
            {"url": "https://api.example", "headers": {"X-A": "1\r\nX-B: 2"}},
            "options.headers.X-A",
            id="crlf",
        ),
        pytest.param(
            {"url": "https://api.example", "headers": {"X A": "1"}}, "options.headers.X A", id="name"
        ),
        pytest.param(
            {"url": "https://api.example", "headers": {"Authorization": "Bearer x"}},
            "options.headers.Authorization",
            id="credential-header",
        ),
        pytest.param(
            {"url": "https://api.example", "auth": {"type": "oauth"}}, "options.auth.type", id="auth"
        ),
        pytest.param(
            {"url": "https://api.example", "auth": {"type": "bearer"}}, "options.token", id="no-token"
        ),
        pytest.param(
            {"url": "https://api.example", "auth": {"type": "api_key"}, "api_key": "k"},
            "options.auth",
            id="api-key-where",
        ),
        pytest.param(
            {"url": "https://api.example", "pagination": {"type": "magic"}},
            "options.pagination.type",
            id="paging",
        ),
        pytest.param(
            {"url": "https://api.example", "pagination": {"type": "cursor"}},
            "options.pagination.cursor_path",
            id="cursor-path",
        ),
        pytest.param(
            {"url": "https://api.example", "pagination": {"type": "page", "cursor_path": "x"}},
            "options.pagination.cursor_path",
            id="key-of-another-type",
        ),
        pytest.param(
            {"url": "https://api.example", "pagination": {"type": "page", "max_pages": 0}},
            "options.pagination.max_pages",
            id="max-pages",
        ),
        pytest.param({"url": "https://api.example", "body": {"a": 1}}, "options.body", id="body-with-get"),
    ],
)
def test_options_are_checked_when_saved(options, field):
    with pytest.raises(ValidationError) as error:
        RestJsonKind().validate_options(options)
    assert error.value.fields["field"] == field


def test_saved_options_keep_no_secret_and_fill_defaults():
    checked = RestJsonKind().validate_options(
        {"url": "https://api.example/v1", "auth": {"type": "bearer"}, "token": TOKEN}
    )
    assert TOKEN not in json.dumps(checked)
    assert checked["method"] == "GET" and checked["pagination"] == {"type": "none", "max_pages": 100}


# -- through the real stack ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack_api(carnet_stack):
    server = StandInAPI(port=carnet_stack.fetch_port)  # the one loopback port the service may fetch from
    yield server
    server.stop()


def test_a_rest_source_is_created_and_read_through_the_api(carnet_stack, hub_token, stack_api, admin):
    studio = auth(hub_token("studio@acme.example"))
    name = unique("rest-src")
    options = {
        "url": f"{stack_api.url}/bearer",
        "auth": {"type": "bearer"},
        "token": TOKEN,
    }
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "rest_json", "options": options},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    try:
        assert TOKEN not in made.text
        described = requests.get(api_url(carnet_stack, f"sources/{name}"), headers=studio, timeout=30)
        assert described.status_code == 200, described.text
        assert TOKEN not in described.text
        assert {"name": "owner.address.city", "type": "VARCHAR"} in described.json()["columns"]
        data = requests.get(api_url(carnet_stack, f"sources/{name}/data"), headers=studio, timeout=30)
        assert data.status_code == 200, data.text
        table = pa.ipc.open_stream(data.content).read_all()
        assert table.column("owner.name").to_pylist() == ["owner 1"]
        # A wrong token: a clear 502 whose message does not hold the token the server echoed.
        wrong = "wrong-stack-canary"
        changed = requests.patch(
            api_url(carnet_stack, f"sources/{name}"),
            json={"options": {**options, "token": wrong}},
            headers=studio,
            timeout=30,
        )
        assert changed.status_code == 200, changed.text
        refused = requests.get(api_url(carnet_stack, f"sources/{name}/data"), headers=studio, timeout=30)
        body = assert_json_error(refused, 502)
        assert "401" in body["message"] and wrong not in refused.text
    finally:
        requests.delete(api_url(carnet_stack, f"sources/{name}"), headers=admin, timeout=30)
