"""A local stand-in for Google's servers, for the ``ga4`` source kind's tests (nothing leaves the machine).

Two endpoints on 127.0.0.1, speaking the JSON of the real ones:
- ``POST /token``: the OAuth 2.0 JWT-bearer exchange. Checks ``grant_type``, that the ``assertion`` is an
  RS256 JWT signed by the test's service-account key, for Google's token audience, with the
  analytics.readonly scope, and answers ``{"access_token", "expires_in", "token_type"}``.
- ``POST /v1beta/properties/{id}:runReport``: needs a Bearer token issued above; answers a report of
  deterministic generated rows (``dimensionHeaders``, ``metricHeaders`` with types, ``rows`` of string
  values, ``rowCount``), honouring dateRanges (``date`` values are the days of each range; several ranges add
  the ``dateRange`` dimension, as Google does), dimensionFilter, orderBys, offset and limit (at most
  ``max_page_rows`` rows per answer, as Google caps pages at 250,000). Errors as Google writes them
  (``{"error": {"code", "message", "status"}}``): 401 without a valid token, 403 for an unknown property,
  400 for an unknown dimension or metric, 429 for a property listed in ``quota_exhausted``.

Every request body is kept (``reports``, ``token_requests``) so that tests can see what was sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

# "today" for relative dates: fixed, so that generated rows never depend on the day the tests run.
TODAY = dt.date(2026, 1, 31)
DIMENSIONS = {
    "country": ["France", "Germany", "Japan"],
    "deviceCategory": ["desktop", "mobile", "tablet"],
    "city": ["Lyon", "Paris", "Tokyo"],
}
METRICS = {
    "activeUsers": "TYPE_INTEGER",
    "sessions": "TYPE_INTEGER",
    "bounceRate": "TYPE_FLOAT",
    "averageSessionDuration": "TYPE_SECONDS",
    "totalRevenue": "TYPE_CURRENCY",
}
MATCH_TYPE_NUMBERS = {1: "EXACT", 2: "BEGINS_WITH", 3: "ENDS_WITH", 4: "CONTAINS"}
SCOPE = "https://www.googleapis.com/auth/analytics.readonly"


def metric_value(metric: str, dimension_values: list[str]) -> str:
    """The value of ``metric`` in a row, derived from the row's dimension values (the tests recompute it)."""
    seed = zlib.crc32("|".join([metric, *dimension_values]).encode())
    if METRICS[metric] == "TYPE_INTEGER":
        return str(seed % 1000)
    return f"{(seed % 100000) / 100:.2f}"


def resolve_date(text: str) -> dt.date:
    if text == "today":
        return TODAY
    if text == "yesterday":
        return TODAY - dt.timedelta(days=1)
    if text.endswith("daysAgo"):
        return TODAY - dt.timedelta(days=int(text[: -len("daysAgo")]))
    return dt.date.fromisoformat(text)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class _ApiError(Exception):
    STATUS = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        429: "RESOURCE_EXHAUSTED",
    }

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.STATUS[self.code]}}


class GA4StandIn:
    def __init__(self, public_key, properties=("123456",), quota_exhausted=(), max_page_rows=250_000):
        self.public_key = public_key
        self.properties = set(properties)
        self.quota_exhausted = set(quota_exhausted)
        self.max_page_rows = max_page_rows
        self.delay_seconds = 0.0  # runReport answers this late (timeouts)
        self.tokens: set[str] = set()
        self.reports: list[dict] = []  # (property id, request body) of every runReport received
        self.token_requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.token_uri = f"{self.url}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # -- token endpoint ------------------------------------------------------------------------------
    def issue_token(self, form: dict) -> dict:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise _ApiError(400, "invalid_grant: unsupported grant_type")
        parts = form.get("assertion", "").split(".")
        if len(parts) != 3:
            raise _ApiError(400, "invalid_grant: no JWT assertion")
        header, claims = json.loads(_b64decode(parts[0])), json.loads(_b64decode(parts[1]))
        try:
            signed = f"{parts[0]}.{parts[1]}".encode()
            self.public_key.verify(_b64decode(parts[2]), signed, padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            # Names the key id, as a token endpoint may: the client must not pass it on.
            raise _ApiError(400, f"invalid_grant: Invalid JWT Signature (key {header.get('kid')}).") from None
        # google-auth signs for Google's token endpoint whatever token_uri it posts to, as Google expects.
        if header.get("alg") != "RS256" or claims.get("aud") != "https://oauth2.googleapis.com/token":
            raise _ApiError(400, "invalid_grant: wrong algorithm or audience")
        if SCOPE not in claims.get("scope", "").split():
            raise _ApiError(400, "invalid_scope: analytics.readonly is required")
        token = "standin-" + secrets.token_urlsafe(12)
        self.tokens.add(token)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    # -- runReport -----------------------------------------------------------------------------------
    def run_report(self, prop: str, body: dict, authorization: str) -> dict:
        time.sleep(self.delay_seconds)
        if authorization.removeprefix("Bearer ") not in self.tokens:
            raise _ApiError(401, "Request had invalid authentication credentials.")
        self.reports.append((prop, body))
        if prop not in self.properties:
            raise _ApiError(403, "User does not have sufficient permissions for this property.")
        if prop in self.quota_exhausted:
            raise _ApiError(429, "Exhausted property tokens per day for this property.")
        dimensions = [d["name"] for d in body.get("dimensions", [])]
        metrics = [m["name"] for m in body.get("metrics", [])]
        for name in dimensions:
            if name != "date" and name not in DIMENSIONS:
                raise _ApiError(400, f"Field {name} is not a valid dimension.")
        for name in metrics:
            if name not in METRICS:
                raise _ApiError(400, f"Field {name} is not a valid metric.")
        ranges = body.get("dateRanges") or []
        headers = dimensions + (["dateRange"] if len(ranges) > 1 else [])
        rows = []
        for index, date_range in enumerate(ranges):
            start, end = resolve_date(date_range["startDate"]), resolve_date(date_range["endDate"])
            days = [(start + dt.timedelta(n)).strftime("%Y%m%d") for n in range((end - start).days + 1)]
            choices = [days if d == "date" else DIMENSIONS[d] for d in dimensions]
            for combo in itertools.product(*choices):
                values = list(combo) + ([f"date_range_{index}"] if len(ranges) > 1 else [])
                rows.append(values)
        if body.get("dimensionFilter"):
            rows = [r for r in rows if _matches(body["dimensionFilter"], dict(zip(headers, r, strict=True)))]
        table = [(r, [metric_value(m, r) for m in metrics]) for r in rows]
        for order in reversed(body.get("orderBys", [])):
            if "metric" in order:
                column = metrics.index(order["metric"]["metricName"])
                key = lambda row, c=column: float(row[1][c])  # noqa: E731
            else:
                column = headers.index(order["dimension"]["dimensionName"])
                key = lambda row, c=column: row[0][c]  # noqa: E731
            table.sort(key=key, reverse=bool(order.get("desc")))
        offset = int(body.get("offset", 0))
        limit = min(int(body.get("limit", 10000)), self.max_page_rows)
        answer = {
            "dimensionHeaders": [{"name": h} for h in headers],
            "metricHeaders": [{"name": m, "type": METRICS[m]} for m in metrics],
            "rows": [
                {"dimensionValues": [{"value": v} for v in d], "metricValues": [{"value": v} for v in m]}
                for d, m in table[offset : offset + limit]
            ],
            "metadata": {"currencyCode": "EUR", "timeZone": "Europe/Paris"},
            "kind": "analyticsData#runReport",
        }
        if table:  # proto3 JSON leaves a zero rowCount out
            answer["rowCount"] = len(table)
        return answer

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    if self.path == "/token":
                        form = dict(urllib.parse.parse_qsl(raw.decode()))
                        standin.token_requests.append(form)
                        self._send(200, standin.issue_token(form))
                        return
                    match = re.fullmatch(r"/v1beta/properties/([0-9]+):runReport(\?.*)?", self.path)
                    if not match:
                        raise _ApiError(400, f"Unknown path {self.path}")
                    body = json.loads(raw or b"{}")
                    auth = self.headers.get("Authorization", "")
                    self._send(200, standin.run_report(match.group(1), body, auth))
                except _ApiError as exc:
                    if self.path == "/token":  # OAuth errors are {"error", "error_description"}
                        code, _, text = exc.message.partition(": ")
                        self._send(exc.code, {"error": code, "error_description": text})
                    else:
                        self._send(exc.code, exc.body())

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _matches(expression: dict, row: dict) -> bool:
    """The API's FilterExpression (JSON, camelCase) on one row of dimension values."""
    if "andGroup" in expression:
        return all(_matches(e, row) for e in expression["andGroup"]["expressions"])
    if "orGroup" in expression:
        return any(_matches(e, row) for e in expression["orGroup"]["expressions"])
    if "notExpression" in expression:
        return not _matches(expression["notExpression"], row)
    condition = expression["filter"]
    value = row[condition["fieldName"]]
    if "inListFilter" in condition:
        spec = condition["inListFilter"]
        fold = (lambda s: s) if spec.get("caseSensitive") else str.lower
        return fold(value) in {fold(v) for v in spec["values"]}
    spec = condition["stringFilter"]
    fold = (lambda s: s) if spec.get("caseSensitive") else str.lower
    value, wanted = fold(value), fold(spec["value"])
    tests = {
        "EXACT": value == wanted,
        "CONTAINS": wanted in value,
        "BEGINS_WITH": value.startswith(wanted),
        "ENDS_WITH": value.endswith(wanted),
    }
    # JSON enums arrive as names or, from Google's client libraries, as numbers.
    match_type = spec.get("matchType", "EXACT")
    return tests[MATCH_TYPE_NUMBERS.get(match_type, match_type)]
