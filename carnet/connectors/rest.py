"""Reading a REST API that answers JSON (the ``rest_json`` source kind, carnet/kinds/rest.py).

Every request goes through ``carnet.net_guard.SafeSession`` (addresses checked, redirects re-checked, bodies
capped); one read has one time budget (``ReadLimits.timeout_seconds``) shared by all its pages and waits.
A 429 or 503 is retried after its Retry-After (seconds or an HTTP date) or an exponential backoff, at most
``MAX_RETRIES`` times and never past the budget. Records found at ``record_path`` are flattened (nested
objects -> dotted column names) into one Arrow table built from all pages at once, so a column that is null
on page 1 and an integer on page 2 is an integer column. Error messages are redacted of the secrets.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
import requests

from carnet.connectors.sql_settings import VARIABLE
from carnet.crypto import redact
from carnet.errors import ConnectionFailed, QueryFailed, QueryTimeout, RowLimitExceeded, ValidationError
from carnet.net_guard import SafeSession
from carnet.settings import CarnetSettings

MAX_RETRIES = 5
RETRY_STATUSES = frozenset({429, 503})
FIRST_BACKOFF_SECONDS = 1.0
EXCERPT_CHARS = 200
MAX_DEPTH = 32  # deeper objects stay one JSON text column


@dataclass
class RestRequest:
    """What a read needs: validated options (carnet/kinds/rest.py) and the decrypted secrets."""

    options: dict
    secrets: dict = field(repr=False)
    variables: dict
    settings: CarnetSettings
    timeout_seconds: float
    max_rows: int


def path_keys(path) -> list:
    """``"data.items"`` or ``["data", "items"]`` -> list of keys; ``None``/``""`` -> the whole document."""
    if path in (None, ""):
        return []
    return path.split(".") if isinstance(path, str) else list(path)


def dotted(keys: list) -> str:
    return ".".join(str(k) for k in keys)


def follow(document, keys: list):
    """The value at ``keys``; raises KeyError naming how far it got."""
    node = document
    for i, key in enumerate(keys):
        if isinstance(node, dict) and str(key) in node:
            node = node[str(key)]
        elif isinstance(node, list) and str(key).lstrip("-").isdigit() and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            raise KeyError(i)
    return node


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _CredentialSession(SafeSession):
    """Drops the API-key header too (requests drops only Authorization) on a redirect to another host."""

    credential_headers: tuple[str, ...] = ()

    def rebuild_auth(self, prepared_request, response):
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.credential_headers:
                prepared_request.headers.pop(name, None)
        super().rebuild_auth(prepared_request, response)


class RestReader:
    def __init__(self, request: RestRequest):
        self.request = request
        self.options = request.options
        self.deadline = time.monotonic() + request.timeout_seconds
        self.host = urlsplit(self.options["url"]).hostname or ""
        self.headers, self.auth_params, self.secret_values = self._credentials()
        self.session = _CredentialSession(request.settings)
        self.session.credential_headers = tuple(h for h in self.headers if h not in self.options["headers"])

    # -- credentials and variables ------------------------------------------------------------------------
    def _secret(self, name: str) -> str:
        value = self.request.secrets.get(name)
        if not isinstance(value, str) or not value:
            kind = self.options["auth"]["type"]
            raise ValidationError(
                f"The {kind} auth of this source needs the secret {name!r}", field=f"options.{name}"
            )
        return value

    def _credentials(self) -> tuple[dict, dict, list]:
        auth = self.options["auth"]
        headers = {"Accept": "application/json", **self.options["headers"]}
        params: dict = {}
        secrets = [v for v in self.request.secrets.values() if v]
        if auth["type"] == "bearer":
            headers["Authorization"] = f"Bearer {self._secret('token')}"
        elif auth["type"] == "basic":
            pair = f"{auth['username']}:{self._secret('password')}".encode()
            encoded = base64.b64encode(pair).decode()
            headers["Authorization"] = f"Basic {encoded}"
            secrets.append(encoded)  # a server echoing the header must not reveal the password either
        elif auth["type"] == "api_key":
            if auth.get("header"):
                headers[auth["header"]] = self._secret("api_key")
            else:
                params[auth["param"]] = self._secret("api_key")
        return headers, params, secrets

    def _params(self, extra: dict) -> dict:
        def fill(match):
            name = match.group(1)
            value = self.request.variables.get(name)
            if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValidationError(f"Missing or invalid variable {name!r}", field=f"variables.{name}")
            return str(value)

        params = {key: VARIABLE.sub(fill, value) for key, value in self.options["params"].items()}
        return {**params, **{k: str(v) for k, v in extra.items()}, **self.auth_params}

    # -- one request, with rate-limit retries ---------------------------------------------------------------
    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise QueryTimeout(
                f"The REST API at {self.host!r} did not finish within {self.request.timeout_seconds:g} s "
                "(source_timeout_seconds)"
            )
        return remaining

    def _redact(self, text: str) -> str:
        return redact(text, self.secret_values)

    def fetch(self, url: str, params: dict | None) -> requests.Response:
        body = self.options.get("body") if self.options["method"] == "POST" else None
        for attempt in range(MAX_RETRIES + 1):
            wait = min(self.request.settings.fetch_timeout, self._remaining())
            try:
                response = self.session.request(
                    self.options["method"],
                    url,
                    params=params,
                    headers=self.headers,
                    json=body,
                    timeout=(wait, wait),
                )
            except requests.Timeout:
                self._remaining()
                raise QueryTimeout(f"The REST API at {self.host!r} did not answer in time") from None
            except requests.exceptions.SSLError:
                raise ConnectionFailed(f"TLS failure talking to {self.host!r}") from None
            except requests.RequestException as error:
                reason = type(error).__name__
                raise ConnectionFailed(f"Could not reach the REST API at {self.host!r} ({reason})") from None
            if response.status_code not in RETRY_STATUSES:
                return response
            told = retry_after_seconds(response.headers.get("Retry-After"))
            pause = told if told is not None else FIRST_BACKOFF_SECONDS * 2**attempt
            if attempt == MAX_RETRIES or pause >= self.deadline - time.monotonic():
                why = (
                    f"after {MAX_RETRIES} retries"
                    if attempt == MAX_RETRIES
                    else f"and asks to wait {pause:.0f} s, past the {self.request.timeout_seconds:g} s budget"
                )
                raise ConnectionFailed(
                    f"The REST API at {self.host!r} is rate limiting: it answered "
                    f"{response.status_code} {response.reason} {why}",
                    upstream_status=response.status_code,
                )
            time.sleep(pause)
        raise AssertionError("unreachable")

    def document(self, response: requests.Response):
        if response.status_code >= 400:
            text = " ".join(self._redact(response.text).split())
            excerpt = text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")
            message = f"The REST API at {self.host!r} answered {response.status_code} {response.reason}"
            message = self._redact(message + (f": {excerpt}" if excerpt else ""))
            refused = response.status_code in (401, 403, 407) or response.status_code >= 500
            error = ConnectionFailed if refused else QueryFailed
            raise error(message, upstream_status=response.status_code)
        try:
            return json.loads(response.content)
        except (ValueError, RecursionError):
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise QueryFailed(f"The REST API at {self.host!r} did not answer JSON ({kind})") from None

    # -- pages -----------------------------------------------------------------------------------------------
    def records(self, document) -> list:
        keys = path_keys(self.options.get("record_path"))
        try:
            node = follow(document, keys)
        except KeyError as missing:
            at = missing.args[0]
            where = f"under {dotted(keys[:at])!r}" if at else "at the top of the response"
            found = follow(document, keys[:at])
            hint = (
                f" (keys there: {', '.join(sorted(map(str, found))[:20])})" if isinstance(found, dict) else ""
            )
            raise QueryFailed(
                f"record_path {dotted(keys)!r}: no {str(keys[at])!r} {where}{hint}",
                field="options.record_path",
            ) from None
        if node is None:
            return []
        if not isinstance(node, list):
            raise QueryFailed(
                f"record_path {dotted(keys) or '(the whole response)'!r} leads to "
                f"{type(node).__name__}, not a list of records",
                field="options.record_path",
            )
        return node

    def pages(self, max_pages: int | None = None) -> Iterator[list]:
        """The records of each page, in order, until the pagination says there are no more."""
        paging = self.options["pagination"]
        kind = paging["type"]
        max_pages = min(max_pages or paging["max_pages"], paging["max_pages"])
        url, extra, seen = self.options["url"], {}, set()
        number, offset, size = paging.get("start_page", 1), 0, paging.get("page_size")
        for page in range(max_pages):
            if kind == "page":
                extra = {paging["page_param"]: number + page}
            elif kind == "offset":
                extra = {paging["offset_param"]: offset, paging["limit_param"]: size}
            if size and paging.get("size_param"):
                extra[paging["size_param"]] = size
            params = self._params(extra) if kind != "next_link" or page == 0 else dict(self.auth_params)
            response = self.fetch(url, params)
            document = self.document(response)
            records = self.records(document)
            yield records
            if kind == "none" or not records:
                return
            if kind in ("page", "offset") and size and len(records) < size:
                return
            offset += len(records)
            if kind == "cursor":
                cursor = _lookup(document, path_keys(paging["cursor_path"]))
                if not isinstance(cursor, str | int) or isinstance(cursor, bool):
                    return  # null, absent or false: the last page (an object is no cursor either)
                if cursor == "" or cursor in seen:
                    return
                seen.add(cursor)
                extra = {paging["cursor_param"]: cursor}
            elif kind == "next_link":
                link = (
                    _lookup(document, path_keys(paging["next_link_path"]))
                    if paging.get("next_link_path")
                    else (response.links.get("next", {}).get("url"))
                )
                if not link or not isinstance(link, str):
                    return
                url = self._same_origin(urljoin(response.url, link))
                if url in seen:
                    return
                seen.add(url)

    def _same_origin(self, url: str) -> str:
        # The credentials go with every page: a next link may not send them to another server.
        first, then = urlsplit(self.options["url"]), urlsplit(url)
        if (first.scheme, first.netloc.lower()) != (then.scheme, then.netloc.lower()):
            raise QueryFailed(
                f"The REST API at {self.host!r} gave a next link to another server "
                f"({then.hostname!r}); refused: the credentials would be sent there"
            )
        return url

    def read(self, first_page_only: bool = False) -> pa.Table:
        rows: list = []
        try:
            for records in self.pages(1 if first_page_only else None):
                rows.extend(records)
                if len(rows) > self.request.max_rows:
                    raise RowLimitExceeded(
                        f"The REST source returned more than {self.request.max_rows} rows (source_max_rows)"
                    )
        finally:
            self.session.close()
        return records_to_table(rows)


def _lookup(document, keys: list):
    try:
        return follow(document, keys)
    except KeyError:
        return None


# -- JSON records -> Arrow ----------------------------------------------------------------------------------
def _flatten(obj: dict, prefix: str, out: dict, depth: int) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < MAX_DEPTH:
            if value:
                _flatten(value, name + ".", out, depth + 1)
            else:
                out[name] = None
        elif isinstance(value, dict):
            out[name] = json.dumps(value)
        else:
            out[name] = value


def _array(values: list) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # Mixed types (1 and "a"), huge integers, irregular lists: text, JSON-encoded when not already text.
        array = pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string()
        )
    # A column that is null everywhere is text-typed rather than Arrow's null type (clearer in DuckDB).
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


def records_to_table(records: list) -> pa.Table:
    columns: dict[str, list] = {}
    for index, record in enumerate(records):
        flat: dict = {}
        _flatten(record if isinstance(record, dict) else {"value": record}, "", flat, 0)
        for name, value in flat.items():
            if name not in columns:
                columns[name] = [None] * index
            columns[name].append(value)
        for values in columns.values():
            if len(values) == index:
                values.append(None)
    return pa.table({name: _array(values) for name, values in columns.items()})
