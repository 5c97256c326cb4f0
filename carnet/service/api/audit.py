"""/api/v1/audit: an organization's audit log for its admins, as JSON pages or a streamed CSV/JSON-lines
export.

Only the admin's own organization is visible (events without an organization, such as sign-in attempts
with unknown emails, are visible to nobody through the API). Newest first (by id: ids are never reused).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from sqlalchemy import select

from carnet.audit import event_json
from carnet.db.models import AuditEvent
from carnet.errors import ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
EXPORT_BATCH = 500
CSV_COLUMNS = ["id", "created_at", "action", "actor", "actor_id", "target", "remote_addr", "details"]
# Spreadsheets run cells starting with these as formulas; actor and target can be typed by anyone.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _parse_time(value: str | None, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValidationError(f"{field} must be an ISO 8601 date or date-time", field=field) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _parse_int(value: str | None, field: str, default: int | None, low: int, high: int) -> int | None:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValidationError(f"{field} must be an integer", field=field) from None
    if not low <= number <= high:
        raise ValidationError(f"{field} must be between {low} and {high}", field=field)
    return number


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def audit_statement(org_id: int, *, action=None, actor=None, since=None, until=None, before_id=None):
    """One organization's events, newest first, filtered (the API, the export and the admin page)."""
    query = select(AuditEvent).where(AuditEvent.org_id == org_id)
    if action:
        query = query.where(AuditEvent.action.like(_escape_like(action) + "%", escape="\\"))
    if actor:
        query = query.where(AuditEvent.actor == actor.strip().lower())
    if since:
        query = query.where(AuditEvent.created_at >= since)
    if until:
        query = query.where(AuditEvent.created_at < until)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return query.order_by(AuditEvent.id.desc())


class AuditQuery:
    """The filters shared by the listing and the export, read from the query string."""

    def __init__(self, handler: BaseHandler, default_limit: int | None):
        arg = handler.get_query_argument
        self.action = arg("action", None)
        self.actor = arg("actor", None)
        self.since = _parse_time(arg("since", None), "since")
        self.until = _parse_time(arg("until", None), "until")
        self.limit = _parse_int(arg("limit", None), "limit", default_limit, 1, MAX_LIMIT)
        self.offset = _parse_int(arg("offset", None), "offset", 0, 0, 2**62)

    def statement(self, org_id: int, before_id: int | None = None):
        return audit_statement(
            org_id,
            action=self.action,
            actor=self.actor,
            since=self.since,
            until=self.until,
            before_id=before_id,
        )

    def echo(self) -> dict:
        return {
            "action": self.action,
            "actor": self.actor,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


class AuditListHandler(BaseHandler):
    @authorized("audit:read")
    def get(self):
        principal = self.principal()
        query = AuditQuery(self, DEFAULT_LIMIT)
        with self.db() as session:
            events = session.scalars(
                query.statement(principal.org_id).offset(query.offset).limit(query.limit)
            ).all()
            body = [event_json(e) for e in events]
        self.write_json({"events": body, "limit": query.limit, "offset": query.offset, **query.echo()})


class AuditExportHandler(BaseHandler):
    """The same events as the listing, streamed in batches: CSV (header row) or JSON lines."""

    @authorized("audit:read")
    async def get(self):
        principal = self.principal()
        fmt = self.get_query_argument("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise ValidationError("format must be csv or jsonl", field="format")
        query = AuditQuery(self, None)
        if fmt == "csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="carnet-audit.csv"')
        else:
            self.set_header("Content-Type", "application/x-ndjson; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="carnet-audit.jsonl"')
        if fmt == "csv":
            self.write(self._csv_rows([CSV_COLUMNS]))
        remaining, before_id, offset = query.limit, None, query.offset
        while remaining is None or remaining > 0:
            size = EXPORT_BATCH if remaining is None else min(EXPORT_BATCH, remaining)
            with self.db() as session:
                statement = query.statement(principal.org_id, before_id).offset(offset).limit(size)
                batch = [event_json(e) for e in session.scalars(statement).all()]
            if not batch:
                break
            offset, before_id = 0, batch[-1]["id"]
            if remaining is not None:
                remaining -= len(batch)
            if fmt == "csv":
                self.write(self._csv_rows([self._csv_values(e) for e in batch]))
            else:
                self.write("".join(json.dumps(e, default=str) + "\n" for e in batch))
            await self.flush()
            if len(batch) < size:
                break
        self.finish()

    @staticmethod
    def _csv_values(event: dict) -> list[str]:
        values = {**event, "details": json.dumps(event["details"], sort_keys=True, default=str)}
        return [csv_cell(values[column]) for column in CSV_COLUMNS]

    @staticmethod
    def _csv_rows(rows) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue()


default_handlers = [
    (API_PREFIX + r"audit", AuditListHandler),
    (API_PREFIX + r"audit/export", AuditExportHandler),
]
