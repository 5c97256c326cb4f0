"""``data_email``: a source's data (a structured query on it) mailed as a CSV or XLSX attachment.

The job reads AS ITS OWNER THROUGH THE CARNET SERVICE'S REST API (``POST sources/{name}/query``, the route
kernels use), with the run's job token: the service alone opens the org's data (the DuckDB warehouse file
takes one writing process) and writes the query cache (docs/ARCHITECTURE.md). The service applies the owner's
row rules, knows only sources of the job's organization, and answers Arrow. ``prepare`` checks that the owner
is still an active member who may query sources (sources:read_data: a job token passes that action whatever
the role, so a member demoted to viewer is stopped here) and mints the token. Everything else is checked
when the job is made (the source, the query spec against the source's columns, the format, the file name
template), in the service's request handler.

A run fails (not retried) on the service's 4xx answers (a source gone: 404; too many rows: 413; a spec the
SQL the source no longer fits: 400), with the service's message; it is retried (the job's backoff) when the
service or the source's server did not answer (no connection, a timeout, 5xx).

The helpers here (``checked_source_query``, ``read_source``, ``read_sql``...) are shared with the ``alert``
kind.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pyarrow as pa
import requests

from carnet.client import ApiClient, CarnetApiError
from carnet.db.models import TokenKind, role_at_least, utcnow
from carnet.errors import NotFound, PermissionDenied, RowLimitExceeded, ValidationError
from carnet.org_settings import org_setting
from carnet.permissions import ACTION_MIN_ROLE
from carnet.query.service import find_source
from carnet.query.spec import parse_spec
from carnet.scheduler.attachments import render_file_name, written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.sharing import member_reader
from carnet.sources import source_context, source_kinds

FORMATS = ("csv", "xlsx")
# Mail servers commonly refuse messages past 20-25 MB (and base64 adds a third): bigger results fail the
# run with a message asking for a filter, rather than a mail that never arrives.
MAX_ROWS = 100_000
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
DATA_EMAIL_KEYS = frozenset({"source", "query", "format", "file_name", "max_rows", "csv_formulas"})
# config.csv_formulas: what a CSV does with text that a spreadsheet would read as a formula (OWASP "CSV
# injection"): "neutralize" (the default) puts a ' before it, "keep" writes it as it is (for programs).
CSV_FORMULAS = ("neutralize", "keep")
# A spreadsheet opening a CSV reads a cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- shared with the alert kind ----------------------------------------------------------------------------
def config_of(body: dict, allowed: frozenset[str]) -> dict:
    """The request's ``config`` object; an unknown key is refused (a typo would otherwise be ignored)."""
    config = body.get("config")
    if not isinstance(config, dict):
        raise ValidationError("config must be an object", field="config")
    unknown = sorted(set(config) - allowed, key=str)
    if unknown:
        raise ValidationError(f"Unknown config field {unknown[0]!r}", field=f"config.{unknown[0]}")
    return config


def check_may_query(principal) -> None:
    if not principal.can("sources:read_data"):
        raise PermissionDenied("Querying sources needs the analyst role or above")


def checked_source_query(session, settings, principal, config: dict) -> tuple[str, dict | None, list[str]]:
    """``config.source`` (a source of the maker's organization: another org's is unknown, 404) and
    ``config.query`` (a query spec, checked by the query route's own validator against the source's
    columns). Returns the name, the spec as given and the query result's column names."""
    check_may_query(principal)
    name = config.get("source")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("config.source must name a source", field="config.source")
    try:
        source = find_source(session, principal.org_id, name)
    except NotFound:
        raise NotFound(f"No such source: {name!r}", field="config.source") from None
    spec_raw = config.get("query")
    kind = source_kinds.get(source.kind)
    names = [column["name"] for column in kind.columns(source_context(session, settings, source))]
    try:
        spec = parse_spec(spec_raw, names)
    except ValidationError as exc:
        part = exc.fields.get("field")
        where = "config.query" if part in (None, "query") else f"config.query.{part}"
        raise ValidationError(f"config.query: {exc.message}", field=where) from None
    return name, spec_raw, list(spec.output_columns() or names)


def job_timezone(session, principal, body: dict) -> str:
    """The job's time zone as the jobs route sets it: the body's (checked there), else the org's."""
    if "timezone" in body:
        return body["timezone"]
    return org_setting(session, principal.org_id, "timezone")


def whole_number_in(config: dict, key: str, default, low: int, high: int):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"config.{key} must be a whole number from {low} to {high}", field=f"config.{key}"
        )
    return value


def owner_reader(session, context):
    """The job's owner as a reader of the org's sources (their role and row rules as they are now)."""
    from carnet.scheduler.executor import JobRunError

    owner = member_reader(session, context.owner_id, context.org_id, TokenKind.job.value)
    if owner is None:
        raise JobRunError("The job's owner is no longer an active member of the organization", "query")
    # A member demoted to viewer reads data only through apps: the job stops reading for them.
    if not role_at_least(owner.role, ACTION_MIN_ROLE["sources:read_data"]):
        raise JobRunError("The job's owner may no longer query sources (their role changed)", "query")
    return owner


def mint_owner_token(executor, session, context) -> None:
    """``prepare`` of the data kinds: the owner may still query sources (checked now, in the run's first
    session), and the run's job token, which reads as the owner through the service, is minted."""
    owner_reader(session, context)
    # Valid for as long as the run may take: a retry's prepare mints a fresh one.
    context.token = executor.mint_job_token(session, context, ttl_seconds=int(context.timeout) + 600)


def read_through_service(executor, context, path: str, body: dict) -> pa.Table:
    """``body`` posted to the service's query route ``path`` with the run's job token: the Arrow answer.

    The service or a source's server that did not answer (no connection, a timeout, a 5xx: 502 and 504 are a
    source's server) is retried with the job's backoff; any other refusal fails the run with the service's
    message (404 a source gone, 413 too many rows, 400 SQL the source no longer fits)."""
    from carnet.scheduler.executor import JobRunError, TransientRunError

    client = ApiClient(executor.settings.api_url, token=context.token, timeout=context.timeout)
    try:
        return client.post_arrow(path, body)
    except CarnetApiError as exc:
        if exc.status >= 500:
            raise TransientRunError(
                f"The data did not come (HTTP {exc.status}): {exc.message}", "query"
            ) from None
        if isinstance(exc, RowLimitExceeded):
            raise JobRunError(exc.message, "query") from None
        message = exc.message
        if not message.startswith("The query failed"):
            message = f"The query failed: {message}"
        raise JobRunError(message, "query") from None
    except requests.RequestException as exc:
        raise TransientRunError(
            f"The Carnet service did not answer ({type(exc).__name__}): {exc}", "query"
        ) from None
    except pa.ArrowInvalid as exc:
        # The answer was cut off mid-stream (the service stopped while sending it).
        raise TransientRunError(f"The service's answer was incomplete: {exc}", "query") from None


def read_source(executor, context, source: str, spec: dict | None) -> pa.Table:
    """``source`` queried by ``spec`` (POST sources/{name}/query), as the job's owner."""
    path = f"api/v1/sources/{ApiClient.segment(source)}/query"
    return read_through_service(executor, context, path, dict(spec or {}))


def read_sql(executor, context, sql: str) -> pa.Table:
    """SQL over the org's sources written ``{name}`` (POST query), as the job's owner."""
    return read_through_service(executor, context, "api/v1/query", {"sql": sql})


def capped_spec(spec_raw: dict | None, max_rows: int) -> dict:
    """The spec asking for at most one row more than ``max_rows``: enough to tell "too many" without
    reading a whole table."""
    spec = dict(spec_raw or {})
    if spec.get("limit") is None or spec["limit"] > max_rows + 1:
        spec["limit"] = max_rows + 1
    return spec


# -- files -------------------------------------------------------------------------------------------------
def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return value


def _neutralized(value):
    """Text a spreadsheet would run as a formula, with a ``'`` before it (shown as text, the ``'`` hidden by
    Excel/LibreOffice); numbers, even negative ones, are never text here and stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(table: pa.Table, path, neutralize_formulas: bool = True) -> None:
    """UTF-8, a header row, ``,`` separated, quoted where needed (RFC 4180); nulls are empty fields. With
    ``neutralize_formulas``, text cells (header included) that a spreadsheet would read as a formula are
    written as text (``_neutralized``)."""
    guard = _neutralized if neutralize_formulas else (lambda value: value)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([guard(name) for name in table.column_names])
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                writer.writerow([guard(_csv_value(v)) for v in row.values()])


# Characters an XLSX cell cannot hold (XML 1.0 control characters).
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _xlsx_value(value, zone: ZoneInfo):
    if isinstance(value, datetime) and value.tzinfo is not None:
        # Excel has no time zones: a moment is shown as the job's wall-clock time.
        return value.astimezone(zone).replace(tzinfo=None)
    if isinstance(value, bool | int | float | Decimal | date | time | timedelta) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | dict):
        value = json.dumps(value, default=str)
    return _ILLEGAL_XML.sub("", str(value))


def write_xlsx(table: pa.Table, path, timezone: str) -> None:
    """One sheet: a bold header row, then the rows with their types (numbers stay numbers, dates dates)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    zone = ZoneInfo(timezone)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Data")
    bold = Font(bold=True)
    header = []
    for name in table.column_names:
        cell = WriteOnlyCell(sheet, value=_ILLEGAL_XML.sub("", name))
        cell.font = bold
        header.append(cell)
    sheet.append(header)
    for batch in table.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            cells = []
            for value in row.values():
                value = _xlsx_value(value, zone)
                if isinstance(value, str) and value.startswith("="):
                    # Text that looks like a formula stays text: data must never run in the reader's Excel.
                    cell = WriteOnlyCell(sheet, value=value)
                    cell.data_type = "s"
                    value = cell
                cells.append(value)
            sheet.append(cells)
    book.save(path)


@register
class DataEmailKind(JobKind):
    name = "data_email"
    description = "Mail a source's data (a query on it) as a CSV or XLSX attachment."
    needs_recipients = True

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = config_of(body, DATA_EMAIL_KEYS)
        fmt = config.get("format", "csv")
        if fmt not in FORMATS:
            raise ValidationError(
                f"config.format must be one of: {', '.join(FORMATS)}", field="config.format"
            )
        max_rows = whole_number_in(config, "max_rows", MAX_ROWS, 1, MAX_ROWS)
        formulas = config.get("csv_formulas", CSV_FORMULAS[0])
        if formulas not in CSV_FORMULAS:
            raise ValidationError(
                f"config.csv_formulas must be one of: {', '.join(CSV_FORMULAS)}", field="config.csv_formulas"
            )
        source, spec_raw, _columns = checked_source_query(session, settings, principal, config)
        template = config.get("file_name", f"{source}_{{{{date:%Y-%m-%d}}}}.{fmt}")
        if not isinstance(template, str):
            raise ValidationError("config.file_name must be text", field="config.file_name")
        # The template must render now, in the job's time zone, as it will at each run.
        file_name_for(template, fmt, utcnow(), job_timezone(session, principal, body))
        return {
            "source": source,
            "query": spec_raw,
            "format": fmt,
            "file_name": template,
            "max_rows": max_rows,
            "csv_formulas": formulas,
        }

    def prepare(self, executor, session, job, run, context) -> None:
        mint_owner_token(executor, session, context)

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError

        config = context.config
        source, max_rows, fmt = config["source"], config.get("max_rows", MAX_ROWS), config["format"]
        table = read_source(executor, context, source, capped_spec(config.get("query"), max_rows))
        if table.num_rows > max_rows:
            raise JobRunError(
                f"The query returns more than {max_rows} rows, too many to mail: add a filter or an "
                "aggregate",
                "query",
            )
        name = file_name_for(config["file_name"], fmt, context.scheduled_for, context.timezone)
        attachment = context.output_dir / name
        with written_then_renamed(attachment) as partial:
            if fmt == "xlsx":
                write_xlsx(table, partial, context.timezone)
            else:
                write_csv(table, partial, config.get("csv_formulas", "neutralize") == "neutralize")
            size = partial.stat().st_size
            if size > MAX_ATTACHMENT_BYTES:
                raise JobRunError(
                    f"The {fmt.upper()} file is {size / 1e6:.1f} MB, more than mail servers accept "
                    f"({MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB): add a filter or fewer columns",
                    "attachment",
                )
        rows = f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}"
        return [
            PlannedMail(
                context.recipients,
                f"[Carnet] {context.job_name}",
                f"{rows} of the source {source!r} are attached ({name}).\n\n-- Carnet",
                [attachment],
            )
        ]


def file_name_for(template: str, fmt: str, when: datetime, timezone: str) -> str:
    """The attachment's name: the template rendered at ``when`` in ``timezone``, with the format's
    extension added when it lacks it (the MIME type goes by the extension)."""
    name = render_file_name(template, when, timezone, field="config.file_name")
    if not name.lower().endswith(f".{fmt}"):
        name = f"{name}.{fmt}"
    return name
