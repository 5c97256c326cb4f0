"""``alert``: a condition on data, checked at each run; mail goes when it BECOMES true, with a cool-down.

``config``:

- what is measured: ``source`` (+ an optional ``query`` spec, as the query route takes it) or ``sql``
  (SQL over the organization's sources written ``{source name}``: the service's read-only SQL route
  ``POST query``, the one people and kernels use; there is no raw warehouse SQL for people);
- ``condition``: ``{"aggregate": count|sum|min|max|avg, "column": <result column, not for count>,
  "op": > >= < <= == !=, "threshold": <number>}``: the aggregate of the result compared with the threshold
  (a count or sum of no rows is 0; a min, max or average of no rows is none, and the condition is false);
- ``cooldown_seconds``: default 3600, 0 to 30 days (scheduler/kinds/alerting.py).

The data is read AS THE JOB'S OWNER through the Carnet service's REST API with the run's job token (their
row rules apply; the service alone opens the org's data), as ``data_email`` reads it, with the same errors:
the service's 4xx fail the run, no answer (connection, timeout, 5xx) retries it. A plain structured query has
its aggregate pushed down to the source (a count of a big table reads one number); a grouped or limited
query, or SQL, is aggregated over its result rows.

Each run records what it found in ``alert.json`` in the run's folder (the value, whether the condition held,
whether it alerted) and succeeds whether or not it alerted. The job's alert state and the alert mail are
written in ONE transaction: a crash can neither lose an alert (state saying "mailed" without the mail) nor
send it twice (a retried run finds its outbox row and only delivers it).
"""

from __future__ import annotations

import json
import math
import operator
from decimal import Decimal
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from carnet.db import session_scope
from carnet.db.models import Job, utcnow
from carnet.errors import NotFound, QueryFailed, ValidationError
from carnet.query.placeholders import parse_source_sql
from carnet.query.service import describe_sql, find_source
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.scheduler.kinds.alerting import cooldown_from, record_alert, should_alert
from carnet.scheduler.kinds.data_email import (
    check_may_query,
    checked_source_query,
    config_of,
    mint_owner_token,
    read_source,
    read_sql,
)
from carnet.scheduler.outbox import queue_mail

ALERT_KEYS = frozenset({"source", "query", "sql", "condition", "cooldown_seconds"})
CONDITION_KEYS = frozenset({"aggregate", "column", "op", "threshold"})
AGGREGATES = ("count", "sum", "min", "max", "avg")
COMPARE = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
# What a plain structured query pushes down: anything else is aggregated over the result's rows.
_ROW_SHAPING = ("group_by", "aggregates", "limit", "offset")


def checked_condition(raw, columns: list[str]) -> dict:
    where = "config.condition"
    if not isinstance(raw, dict):
        raise ValidationError(f"{where} must be an object {{aggregate, column, op, threshold}}", field=where)
    unknown = sorted(set(raw) - CONDITION_KEYS, key=str)
    if unknown:
        raise ValidationError(f"Unknown condition field {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    aggregate = raw.get("aggregate")
    if aggregate not in AGGREGATES:
        raise ValidationError(
            f"{where}.aggregate must be one of: {', '.join(AGGREGATES)}", field=f"{where}.aggregate"
        )
    column = raw.get("column")
    if aggregate == "count":
        if column is not None:
            raise ValidationError(
                f"{where}.column: count counts the result's rows, leave column out", field=f"{where}.column"
            )
    elif not isinstance(column, str) or column not in columns:
        raise ValidationError(
            f"{where}.column must be a column of the query's result ({', '.join(columns)})",
            field=f"{where}.column",
        )
    op = raw.get("op")
    if op not in COMPARE:
        raise ValidationError(f"{where}.op must be one of: {' '.join(COMPARE)}", field=f"{where}.op")
    threshold = raw.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ValidationError(f"{where}.threshold must be a number", field=f"{where}.threshold")
    condition = {"aggregate": aggregate, "op": op, "threshold": threshold}
    if column is not None:
        condition["column"] = column
    return condition


def checked_sql(session, settings, principal, sql) -> tuple[str, list[str]]:
    """``config.sql``: read-only SQL over ``{source}`` placeholders, each a source of the maker's org."""
    check_may_query(principal)
    try:
        parsed = parse_source_sql(sql, "config.sql")
    except (ValidationError, QueryFailed) as exc:
        raise ValidationError(f"config.sql: {exc.message}", field="config.sql") from None
    for name in parsed.names:
        try:
            find_source(session, principal.org_id, name)
        except NotFound:
            raise NotFound(f"No such source: {name!r}", field="config.sql") from None
    try:
        described = describe_sql(session, settings, principal.org_id, sql)
    except (ValidationError, QueryFailed) as exc:
        raise ValidationError(f"config.sql: {exc.message}", field="config.sql") from None
    return sql, [column["name"] for column in described]


def pushed_down_spec(spec_raw: dict | None, condition: dict) -> dict | None:
    """The spec computing the condition's aggregate at the source, or None when the query shapes its rows
    (grouped, limited) and the aggregate must run over them."""
    spec = dict(spec_raw or {})
    if any(spec.get(key) not in (None, [], {}, 0) for key in _ROW_SHAPING):
        return None
    return {
        "where": spec.get("where") or [],
        "aggregates": {condition.get("column", "*"): condition["aggregate"]},
    }


def number_of(value, what: str):
    from carnet.scheduler.executor import JobRunError

    if value is None or isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return float(value)
    raise JobRunError(f"The {what} is {value!r}, not a number: it cannot be compared", "condition")


def aggregate_rows(table: pa.Table, condition: dict):
    """The condition's aggregate over the result's rows (nulls skipped, as SQL does)."""
    from carnet.scheduler.executor import JobRunError

    aggregate = condition["aggregate"]
    if aggregate == "count":
        return table.num_rows
    column_name = condition["column"]
    if column_name not in table.column_names:
        raise JobRunError(f"The query's result has no column {column_name!r} any more", "condition")
    column = table.column(column_name)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise JobRunError(f"The column {column_name!r} holds {kind} values, not numbers", "condition")
    if pa.types.is_decimal(kind):
        column = column.cast(pa.float64())
    if aggregate == "sum":
        return pc.sum(column).as_py() or 0
    if aggregate == "avg":
        return pc.mean(column).as_py()
    return pc.min_max(column)[aggregate].as_py()


def describe(condition: dict) -> str:
    if condition["aggregate"] == "count":
        return "the number of rows"
    return f"the {condition['aggregate']} of {condition['column']}"


@register
class AlertKind(JobKind):
    name = "alert"
    description = "Check a condition on data at each run; mail when it becomes true (with a cool-down)."
    needs_recipients = True

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = config_of(body, ALERT_KEYS)
        if ("sql" in config) == ("source" in config):
            raise ValidationError(
                "config needs either source (with an optional query) or sql", field="config.source"
            )
        if "sql" in config:
            if "query" in config:
                raise ValidationError("config.query goes with a source, not with sql", field="config.query")
            sql, columns = checked_sql(session, settings, principal, config["sql"])
            measured = {"sql": sql}
        else:
            source, spec_raw, columns = checked_source_query(session, settings, principal, config)
            measured = {"source": source, "query": spec_raw}
        condition = checked_condition(config.get("condition"), columns)
        try:
            cooldown = cooldown_from(config)
        except ValidationError as exc:
            raise ValidationError(f"config.{exc.message}", field="config.cooldown_seconds") from None
        return {**measured, "condition": condition, "cooldown_seconds": cooldown}

    def prepare(self, executor, session, job, run, context) -> None:
        mint_owner_token(executor, session, context)

    def measure(self, executor, context):
        """The condition's value, read as the job's owner through the service."""
        config = context.config
        condition = config["condition"]
        if "sql" in config:
            table = read_sql(executor, context, config["sql"])
            return number_of(aggregate_rows(table, condition), describe(condition))
        source, spec_raw = config["source"], config.get("query")
        pushed = pushed_down_spec(spec_raw, condition)
        if pushed is None:
            table = read_source(executor, context, source, spec_raw)
            return number_of(aggregate_rows(table, condition), describe(condition))
        table = read_source(executor, context, source, pushed)
        value = table.column(0)[0].as_py() if table.num_rows else None
        if value is None and condition["aggregate"] in ("count", "sum"):
            value = 0  # no rows (or rules leaving none): nothing counted, nothing summed
        return number_of(value, describe(condition))

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError

        config = context.config
        condition = config["condition"]
        cooldown = config.get("cooldown_seconds", 3600)
        value = self.measure(executor, context)
        holds = value is not None and COMPARE[condition["op"]](value, condition["threshold"])
        now = utcnow()
        with session_scope(executor.settings.db_url) as session:
            # Locked: the state is read and written by this run only (runs of a job never overlap).
            job = session.get(Job, context.job_id, with_for_update=True)
            if job is None:
                raise JobRunError("The job was deleted while it ran", "condition")
            was_active = bool(job.alert_active)
            alerted = should_alert(job, now, holds, cooldown)
            record_alert(job, now, holds, alerted)
            if alerted:
                # In the same transaction as the state (see the module's docstring): returned mail would be
                # queued in a transaction of its own, after this one.
                queue_mail(session, context.run_id, context.org_id, [alert_mail(context, value, now)])
            record = {
                "value": value,
                "condition": condition,
                "condition_true": holds,
                "was_true": was_active,
                "alerted": alerted,
                "cooldown_seconds": cooldown,
                "checked_at": now.isoformat(),
            }
            with written_then_renamed(context.output_dir / "alert.json") as partial:
                partial.write_text(json.dumps(record, indent=2, default=str))
        return []


def alert_mail(context, value, now) -> PlannedMail:
    config = context.config
    condition = config["condition"]
    where = f"the source {config['source']!r}" if "source" in config else "its SQL query"
    local = now.astimezone(ZoneInfo(context.timezone))
    cooldown = config.get("cooldown_seconds", 3600)
    body = (
        f"The alert {context.job_name!r} is on: {describe(condition)} of {where} is {value:g}, "
        f"{condition['op']} {condition['threshold']:g}.\n\n"
        f"Checked at {local:%Y-%m-%d %H:%M} ({context.timezone}).\n\n"
        "This mail goes when the condition becomes true; while it stays true no further mail goes, and once "
        f"it was false again, the next alert waits at least {cooldown} s after this one.\n\n-- Carnet"
    )
    return PlannedMail(context.recipients, f"[Carnet] Alert: {context.job_name}", body, [], purpose="alert")
