"""The ``ga4`` source kind: one Google Analytics 4 report (the Data API's ``runReport``) as a table.

VERIFIED ONLY AGAINST A LOCAL STAND-IN: the tests run this code, Google's own client library
(``google-analytics-data``, REST transport) and ``google-auth`` against ``tests/ga4_standin.py``, a small
server speaking the API's JSON and the OAuth token exchange on 127.0.0.1. It has never been run against
Google's servers; the request and response shapes follow Google's documentation.

How a read goes (in the Carnet service only; kernels get the rows as Arrow through the API):
1. The service-account key (secret field ``service_account_json``, decrypted into ``ctx.secrets``) signs a
   JWT assertion that ``google-auth`` exchanges for an access token (scope ``analytics.readonly``) at the
   key's ``token_uri``, which must be the operator's ``ga4_token_uri`` (so a key cannot send its signed
   assertion elsewhere).
2. ``BetaAnalyticsDataClient`` (``transport="rest"``) posts the report request, page by page (offset/limit)
   until the report's ``rowCount`` (or ``options.limit``) is reached, to the operator's
   ``ga4_api_endpoint``; a report bigger than ``source_max_rows`` is refused after its first page.
3. Rows become Arrow: dimensions as text (``date`` as a date), metrics typed from their headers.

Errors from Google become typed Carnet errors (refused access -> ConnectionFailed 502, bad request ->
QueryFailed 400, quota -> GA4QuotaExhausted 429, slow -> QueryTimeout 504), every message passed through
``redact`` with the key's private parts. Without the optional package the kind answers
``GA4ClientMissing`` (400, like the SQL kinds' missing drivers: the request names a kind this installation
cannot serve until ``pip install carnet[ga4]``).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pyarrow as pa
import requests

from carnet.crypto import redact
from carnet.errors import (
    CarnetError,
    ConnectionFailed,
    MissingDriver,
    QueryFailed,
    QueryTimeout,
    RowLimitExceeded,
    ValidationError,
)
from carnet.kinds import ga4_report
from carnet.sources import SourceContext, SourceKind

GA4_SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
# Rows asked for per request; the API answers at most 250,000 per request whatever the limit, so reads
# also follow short pages until rowCount is reached.
PAGE_ROWS = 100_000
SECRET_FIELD = "service_account_json"  # noqa: S105 - the name of the secret option, not a secret


class GA4ClientMissing(MissingDriver):
    """google-analytics-data is not installed."""

    def __init__(self):
        CarnetError.__init__(
            self,
            "Google Analytics 4 sources need: pip install carnet[ga4]",
            module="google.analytics.data_v1beta",
            extra="ga4",
        )


class GA4QuotaExhausted(CarnetError):
    """Google answered 429: the property's (or project's) quota is used up for now."""

    status = 429


def client_library() -> SimpleNamespace:
    """The optional packages, imported on use so that Carnet runs without them."""
    try:
        from google.analytics.data_v1beta import BetaAnalyticsDataClient
        from google.analytics.data_v1beta.types import RunReportRequest
        from google.api_core import exceptions as api_exceptions
        from google.api_core.client_options import ClientOptions
        from google.auth import exceptions as auth_exceptions
        from google.auth.transport.requests import Request
        from google.oauth2 import credentials as oauth2_credentials
        from google.oauth2 import service_account
    except ImportError:
        raise GA4ClientMissing() from None
    return SimpleNamespace(
        BetaAnalyticsDataClient=BetaAnalyticsDataClient,
        RunReportRequest=RunReportRequest,
        api_exceptions=api_exceptions,
        ClientOptions=ClientOptions,
        auth_exceptions=auth_exceptions,
        Request=Request,
        oauth2_credentials=oauth2_credentials,
        service_account=service_account,
    )


def service_account_info(raw) -> dict:
    """The service-account key (JSON text, as stored) as a dict, shape checked; messages never quote it."""
    field = f"options.{SECRET_FIELD}"
    if not raw:
        raise ValidationError("A ga4 source needs the service account's JSON key", field=field)
    info = raw
    if isinstance(raw, str):
        try:
            info = json.loads(raw)
        except ValueError:
            info = None  # the parser's message quotes the text: never shown
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValidationError(
            'The service account key must be the JSON key file Google gives ("type": "service_account")',
            field=field,
        )
    missing = [k for k in ("client_email", "private_key") if not isinstance(info.get(k), str)]
    if missing:
        raise ValidationError(f"The service account key has no {missing[0]!r}", field=field)
    return info


class _Read:
    """One read of one source: the deadline, the redaction list and the error mapping."""

    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        self.lib = client_library()
        self.deadline = time.monotonic() + ctx.limits.timeout_seconds
        self.info = self._service_account_info()
        # What a message must never show: the key whole and its private parts, also line by line.
        private = self.info.get("private_key", "")
        lines = [line for line in private.splitlines() if len(line) >= 16]
        self.hidden = [*ctx.secret_values(), private, self.info.get("private_key_id", ""), *lines]

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timeout()
        return left

    def timeout(self) -> QueryTimeout:
        return QueryTimeout(
            f"Google Analytics 4 did not answer within {self.ctx.limits.timeout_seconds:g} s "
            "(CARNET_SOURCE_TIMEOUT_SECONDS)"
        )

    def clean(self, text) -> str:
        return redact(text, self.hidden)

    def _service_account_info(self) -> dict:
        info = service_account_info(self.ctx.secrets.get(SECRET_FIELD))
        expected = self.ctx.settings.ga4_token_uri
        token_uri = str(info.get("token_uri") or expected).rstrip("/")
        if token_uri != expected:
            raise ValidationError(
                f"The service account key's token_uri is not this installation's Google token endpoint "
                f"({expected}, CARNET_GA4_TOKEN_URI)",
                field=f"options.{SECRET_FIELD}",
            )
        return {**info, "token_uri": token_uri}

    def client(self):
        lib = self.lib
        try:
            signer = lib.service_account.Credentials.from_service_account_info(self.info, scopes=[GA4_SCOPE])
        except (ValueError, TypeError, lib.auth_exceptions.GoogleAuthError) as exc:
            message = f"The service account key cannot be used: {self.clean(exc)}"
            raise ValidationError(message, field=f"options.{SECRET_FIELD}") from None
        session = requests.Session()
        base = lib.Request(session)

        def request(url, method="GET", body=None, headers=None, timeout=None, **kwargs):
            # google-auth's token exchange has no deadline of its own: bound it by the read's.
            return base(url, method=method, body=body, headers=headers, timeout=self.remaining(), **kwargs)

        try:
            signer.refresh(request)
        except lib.auth_exceptions.RefreshError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else exc  # not the raw answer
            raise ConnectionFailed(
                f"Google refused the service account {self.info['client_email']!r}: {self.clean(reason)}"
            ) from None
        except lib.auth_exceptions.TransportError as exc:
            if isinstance(exc.__cause__ or exc.__context__, requests.Timeout):
                raise self.timeout() from None
            raise ConnectionFailed(
                f"Cannot reach Google's token endpoint {self.info['token_uri']}: {self.clean(exc)}"
            ) from None
        finally:
            session.close()
        # A plain token from here on: the client library would otherwise switch service-account keys to
        # self-signed JWTs, bypassing the token endpoint the operator chose.
        token = lib.oauth2_credentials.Credentials(token=signer.token)
        options = lib.ClientOptions(api_endpoint=self.ctx.settings.ga4_api_endpoint)
        return lib.BetaAnalyticsDataClient(credentials=token, transport="rest", client_options=options)

    def run_report(self, client, offset: int, limit: int):
        lib = self.lib
        request = lib.RunReportRequest(ga4_report.report_request(self.ctx.options, offset, limit))
        try:
            return client.run_report(request=request, timeout=self.remaining(), retry=None)
        except lib.api_exceptions.GoogleAPICallError as exc:
            raise self.api_error(exc) from None
        except requests.Timeout:
            raise self.timeout() from None
        except requests.RequestException as exc:
            raise ConnectionFailed(
                f"Cannot reach the Google Analytics Data API at {self.ctx.settings.ga4_api_endpoint}: "
                f"{self.clean(type(exc).__name__)}"
            ) from None

    def api_error(self, exc) -> CarnetError:
        errors = (
            self.lib.api_exceptions
        )  # REST errors are the HTTP-status classes (Forbidden, not PermissionDenied)
        message = str(exc.message or "")
        if message.startswith(("POST ", "GET ")) and ": " in message:
            message = message.split(": ", 1)[1]  # drop "POST <url>" the library puts first
        message = self.clean(message)
        prop = self.ctx.options["property_id"]
        if isinstance(exc, errors.Forbidden | errors.Unauthorized):
            return ConnectionFailed(
                f"Google Analytics 4 refused access to property {prop} for {self.info['client_email']} "
                f"(give the service account the Viewer role on the property): {message}"
            )
        if isinstance(exc, errors.TooManyRequests):
            return GA4QuotaExhausted(
                f"Google Analytics 4 quota exhausted for property {prop}; try again later: {message}"
            )
        if isinstance(exc, errors.BadRequest):
            return QueryFailed(f"Google Analytics 4 rejected the report of property {prop}: {message}")
        if isinstance(exc, errors.DeadlineExceeded):
            return self.timeout()
        return ConnectionFailed(f"Google Analytics 4 answered {exc.code} for property {prop}: {message}")

    def fetch(self, most: int | None = None) -> pa.Table:
        """The report's rows (at most ``most``, else ``options.limit``; refused past ``max_rows``)."""
        client = self.client()
        wanted = most or self.ctx.options.get("limit")
        max_rows = self.ctx.limits.max_rows
        response = self.run_report(client, 0, min(PAGE_ROWS, wanted or PAGE_ROWS))
        dimensions = [h.name for h in response.dimension_headers]
        metrics = [(h.name, h.type_.name) for h in response.metric_headers]
        target = min(response.row_count, wanted) if wanted else response.row_count
        if target > max_rows:
            raise RowLimitExceeded(
                f"The report of {self.ctx.name!r} has {target:,} rows, more than the limit of {max_rows:,} "
                "(CARNET_SOURCE_MAX_ROWS): narrow it with a dimension_filter, a shorter date range or "
                "options.limit"
            )
        columns: list[list] = [[] for _ in range(len(dimensions) + len(metrics))]
        fetched = 0
        while True:
            for row in response.rows[: target - fetched]:
                values = [v.value for v in row.dimension_values] + [v.value for v in row.metric_values]
                for column, value in zip(columns, values, strict=False):
                    column.append(value)
            fetched = min(target, fetched + len(response.rows))
            if fetched >= target or not response.rows:
                break
            response = self.run_report(client, fetched, min(PAGE_ROWS, target - fetched))
        return ga4_report.to_arrow(dimensions, metrics, columns)


class GA4Kind(SourceKind):
    """A Google Analytics 4 report (see the module docstring; options in ``carnet.kinds.ga4_report``)."""

    name = "ga4"
    secret_fields = frozenset({SECRET_FIELD})

    def validate_options(self, options: dict) -> dict:
        """Checked options; the API passes the secret too (to check it on save) and stores it apart."""
        client_library()  # a missing package is said at save time, not at the first read
        if not isinstance(options, dict):
            raise ValidationError("A ga4 source's options must be an object", field="options")
        plain = {k: v for k, v in options.items() if k != SECRET_FIELD}
        checked = ga4_report.validate_options(plain)
        service_account_info(options.get(SECRET_FIELD))  # a source without its key could never be read
        checked[SECRET_FIELD] = options[SECRET_FIELD]
        return checked

    def columns(self, ctx: SourceContext) -> list[dict]:
        # One row is enough for the headers, and metric types are known only from the API.
        table = _Read(ctx).fetch(most=1)
        return [{"name": f.name, "type": ga4_report.column_type(f.name, f.type)} for f in table.schema]

    def read(self, ctx: SourceContext, spec=None) -> pa.Table:
        return _Read(ctx).fetch()
