"""The ``rest_json`` source kind: a REST API answering JSON, read page by page into one table.

Options (non-secret, checked here when a source is saved)::

    url          http(s) URL (syntax checked on save; its addresses are checked again on every fetch)
    method       "GET" (default) or "POST"
    headers      {name: value}, non-secret headers only (no Host, Content-Length, Authorization, Cookie...)
    params       {name: value} query parameters; "{{var}}" is filled from the caller's variables
    body         JSON sent with a POST
    auth         {"type": "none" | "bearer" | "basic" | "api_key", "username" (basic),
                  "header" or "param" (api_key: where the key goes)}
    record_path  "data.items" or ["data", "items"]: where the list of records is in each answer
    pagination   {"type": "none" | "page" | "offset" | "cursor" | "next_link", parameter names, "max_pages"}

Secrets (``secret_fields``, stored encrypted, never returned): ``token`` (bearer), ``password`` (basic),
``api_key``. The fetching itself is in carnet/connectors/rest.py. The query service applies query specs in
DuckDB over the rows (``pushes_down = False``).
"""

from __future__ import annotations

import json
import re

import duckdb
import pyarrow as pa

from carnet.connectors.rest import RestReader, RestRequest
from carnet.connectors.sql_settings import VARIABLE
from carnet.errors import UnsafeURL, ValidationError
from carnet.net_guard import check_url_syntax
from carnet.sources import SourceContext, SourceKind

OPTION_KEYS = frozenset({"url", "method", "headers", "params", "body", "auth", "record_path", "pagination"})
AUTH_TYPES = ("none", "bearer", "basic", "api_key")
# RFC 9110 token characters: no spaces, colons, CR or LF.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Set by the HTTP client or about the connection itself; credentials belong in ``auth`` (secrets).
FORBIDDEN_HEADERS = {
    "host": "the host comes from the URL",
    "content-length": "it is computed from the body",
    "transfer-encoding": "it is set by the HTTP client",
    "connection": "it is set by the HTTP client",
    "keep-alive": "it is set by the HTTP client",
    "te": "it is set by the HTTP client",
    "upgrade": "it is set by the HTTP client",
    "trailer": "it is set by the HTTP client",
    "expect": "it is set by the HTTP client",
    "authorization": "credentials go in options.auth (stored encrypted)",
    "proxy-authorization": "credentials go in options.auth (stored encrypted)",
    "cookie": "cookies are credentials: use options.auth",
}
# Allowed keys and defaults of each pagination type (None: optional, no default).
PAGINATION = {
    "none": {},
    "page": {"page_param": "page", "start_page": 1, "size_param": None, "page_size": None},
    "offset": {"offset_param": "offset", "limit_param": "limit", "page_size": 100},
    "cursor": {"cursor_param": "cursor", "cursor_path": None, "size_param": None, "page_size": None},
    "next_link": {"next_link_path": None, "size_param": None, "page_size": None},
}
DEFAULT_MAX_PAGES = 100
MAX_PAGES = 10_000
MAX_BODY_BYTES = 100_000
MAX_VALUE_CHARS = 8192


def _fail(message: str, field: str):
    raise ValidationError(message, field=field)


def _name(value, field: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        _fail(f"{field} must be a {what} of 1-200 characters", field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        _fail(f"{field} must not contain control characters", field)
    return value


def _text_value(value, field: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        _fail(f"{field} must be text, a number or a boolean of at most {MAX_VALUE_CHARS} characters", field)
    if any(c in value for c in "\r\n\0"):
        _fail(f"{field} must not contain line breaks or NUL characters", field)
    return value


def check_header_name(name, field: str) -> str:
    if not isinstance(name, str) or not HEADER_NAME.match(name):
        _fail(f"{field}: {name!r} is not a valid HTTP header name", field)
    return name


def _url(value) -> str:
    if not isinstance(value, str) or not value:
        _fail("A rest_json source needs options.url", "options.url")
    if "{{" in value:
        _fail("Variables ({{var}}) are allowed in options.params, not in the URL", "options.url")
    try:
        # Syntax only when saved (scheme, host spelling): the addresses are checked on every fetch.
        check_url_syntax(value)
    except UnsafeURL as error:
        _fail(error.message, "options.url")
    return value


def _headers(value) -> dict:
    if not isinstance(value, dict) or len(value) > 50:
        _fail("options.headers must be an object of at most 50 headers", "options.headers")
    headers = {}
    for name, header_value in value.items():
        field = f"options.headers.{name}"
        check_header_name(name, field)
        why = FORBIDDEN_HEADERS.get(name.lower())
        if why:
            _fail(f"The header {name!r} cannot be set here: {why}", field)
        headers[name] = _text_value(header_value, field)
    return headers


def _params(value) -> dict:
    if not isinstance(value, dict) or len(value) > 100:
        _fail("options.params must be an object of at most 100 parameters", "options.params")
    params = {}
    for name, param_value in value.items():
        field = f"options.params.{name}"
        _name(name, field, "parameter name")
        params[name] = _text_value(param_value, field)
        leftover = VARIABLE.sub("", params[name])
        if "{{" in leftover or "}}" in leftover:
            _fail(f"{field}: a variable is written {{{{name}}}} (letters, digits, _)", field)
    return params


def _auth(value) -> dict:
    value = {"type": "none"} if value is None else value
    if not isinstance(value, dict) or value.get("type") not in AUTH_TYPES:
        _fail(f"options.auth.type must be one of {', '.join(AUTH_TYPES)}", "options.auth.type")
    kind = value["type"]
    allowed = {"none": set(), "bearer": set(), "basic": {"username"}, "api_key": {"header", "param"}}[kind]
    for key in sorted(set(value) - allowed - {"type"}):
        _fail(f"options.auth.{key} is not used by the {kind} auth type", f"options.auth.{key}")
    auth = {"type": kind}
    if kind == "basic":
        auth["username"] = _name(value.get("username"), "options.auth.username", "user name")
        if ":" in auth["username"]:
            _fail("options.auth.username cannot contain ':' (basic auth)", "options.auth.username")
    if kind == "api_key":
        if ("header" in value) == ("param" in value):
            _fail(
                "api_key auth needs exactly one of options.auth.header or options.auth.param", "options.auth"
            )
        if "header" in value:
            name = check_header_name(value["header"], "options.auth.header")
            if name.lower() in FORBIDDEN_HEADERS and name.lower() != "authorization":
                _fail(f"The API key cannot go in the {name!r} header", "options.auth.header")
            auth["header"] = name
        else:
            auth["param"] = _name(value["param"], "options.auth.param", "parameter name")
    return auth


def _record_path(value):
    if value in (None, ""):
        return None
    if isinstance(value, str):
        keys = value.split(".")
    elif isinstance(value, list):
        keys = value
    else:
        _fail("options.record_path must be a dotted path or a list of keys", "options.record_path")
    if len(keys) > 32 or any(
        isinstance(k, bool)
        or not isinstance(k, str | int)
        or k == ""
        or (isinstance(k, str) and len(k) > 200)
        for k in keys
    ):
        _fail(
            "options.record_path: at most 32 keys, each a non-empty name or a list index",
            "options.record_path",
        )
    return value


def _pagination(value) -> dict:
    value = {"type": "none"} if value is None else value
    if not isinstance(value, dict) or value.get("type") not in PAGINATION:
        _fail(f"options.pagination.type must be one of {', '.join(PAGINATION)}", "options.pagination.type")
    kind = value["type"]
    defaults = PAGINATION[kind]
    for key in sorted(set(value) - set(defaults) - {"type", "max_pages"}):
        _fail(f"options.pagination.{key} is not used by {kind} pagination", f"options.pagination.{key}")
    paging = {"type": kind}
    for key, default in defaults.items():
        given = value.get(key, default)
        field = f"options.pagination.{key}"
        if given is None:
            continue
        if key in ("page_size", "start_page"):
            if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= 1_000_000:
                _fail(f"{field} must be an integer between 0 and 1000000", field)
            if key == "page_size" and given == 0:
                _fail(f"{field} must be positive", field)
        elif key in ("cursor_path", "next_link_path"):
            given = _record_path(given)
        else:
            _name(given, field, "parameter name")
        paging[key] = given
    if kind == "cursor" and not paging.get("cursor_path"):
        _fail("cursor pagination needs options.pagination.cursor_path", "options.pagination.cursor_path")
    if paging.get("size_param") and not paging.get("page_size"):
        _fail("options.pagination.size_param needs a page_size", "options.pagination.page_size")
    max_pages = value.get("max_pages", DEFAULT_MAX_PAGES)
    if isinstance(max_pages, bool) or not isinstance(max_pages, int) or not 1 <= max_pages <= MAX_PAGES:
        _fail(
            f"options.pagination.max_pages must be between 1 and {MAX_PAGES}", "options.pagination.max_pages"
        )
    paging["max_pages"] = max_pages
    return paging


def validate_rest_options(options: dict) -> dict:
    """The checked, normalized non-secret options. Secret fields that arrive with them are not kept here
    (the sources API stores them encrypted)."""
    unknown = sorted(set(options) - OPTION_KEYS - RestJsonKind.secret_fields)
    if unknown:
        _fail(f"Unknown option {unknown[0]!r}", f"options.{unknown[0]}")
    method = str(options.get("method", "GET")).upper()
    if method not in ("GET", "POST"):
        _fail("options.method must be GET or POST", "options.method")
    result = {
        "url": _url(options.get("url")),
        "method": method,
        "headers": _headers(options.get("headers") or {}),
        "params": _params(options.get("params") or {}),
        "auth": _auth(options.get("auth")),
        "record_path": _record_path(options.get("record_path")),
        "pagination": _pagination(options.get("pagination")),
    }
    if options.get("body") is not None:
        if method != "POST":
            _fail("options.body is sent with POST only", "options.body")
        if len(json.dumps(options["body"])) > MAX_BODY_BYTES:
            _fail(f"options.body is larger than {MAX_BODY_BYTES} bytes", "options.body")
        result["body"] = options["body"]
    return result


def column_types(table: pa.Table) -> list[dict]:
    """Names and DuckDB type names (as the warehouse reports them; the query service works in DuckDB)."""
    if table.num_columns == 0:
        return []
    relation = duckdb.connect().from_arrow(table)
    return [{"name": n, "type": str(t)} for n, t in zip(relation.columns, relation.types, strict=True)]


class RestJsonKind(SourceKind):
    name = "rest_json"
    secret_fields = frozenset({"token", "password", "api_key"})
    pushes_down = False

    def validate_options(self, options: dict) -> dict:
        checked = validate_rest_options(options)
        # The sources API passes the secrets (new or kept) along with the options: the auth must have its.
        needed = {"bearer": "token", "basic": "password", "api_key": "api_key"}.get(checked["auth"]["type"])
        if needed and not options.get(needed):
            _fail(
                f"{checked['auth']['type']} auth needs options.{needed} (stored encrypted)",
                f"options.{needed}",
            )
        return checked

    def _reader(self, ctx: SourceContext) -> RestReader:
        request = RestRequest(
            options=validate_rest_options(ctx.options),
            secrets=dict(ctx.secrets),
            variables=dict(ctx.variables),
            settings=ctx.settings,
            timeout_seconds=ctx.limits.timeout_seconds,
            max_rows=ctx.limits.max_rows,
        )
        return RestReader(request)

    def columns(self, ctx: SourceContext) -> list[dict]:
        return column_types(self._reader(ctx).read(first_page_only=True))

    def read(self, ctx: SourceContext, spec=None) -> pa.Table:
        if spec is not None:
            raise ValueError("rest_json does not push queries down: apply the spec to the rows read")
        return self._reader(ctx).read()

    def test(self, ctx: SourceContext) -> dict:
        first_page = self._reader(ctx).read(first_page_only=True)
        return {"ok": True, "records": first_page.num_rows, "columns": column_types(first_page)}
