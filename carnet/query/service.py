"""The query service: structured queries on one source, and SQL across an organization's sources.

``run_query`` reads one source with a ``carnet.query.spec`` (columns, where, group_by, aggregates, order_by,
limit): kinds that push down (warehouse, SQL servers) run it where the data lives; for the others the rows
are read once (through the result cache) and the spec runs in an in-memory DuckDB. ``run_sql`` runs SQL
over ``{source}`` placeholders (checked by ``carnet.query.placeholders``): on the SQL server itself when every
source it names is a ``sql_table``/``sql_query`` of the same connection, otherwise in an in-memory DuckDB
over the sources' rows, each read through ``run_query`` (so cache and limits apply).

The in-memory DuckDB has no file access, no extension loading and a locked configuration; every read is
bounded by the source limits (``CarnetSettings.source_timeout_seconds``/``source_max_rows``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar

import duckdb
import pyarrow as pa
from sqlalchemy import select

from carnet.db.models import DataSource
from carnet.errors import NotFound, QueryFailed, QueryTimeout, RowLimitExceeded, ValidationError
from carnet.permissions import refuse_outside_scope, scoped_variables
from carnet.query.placeholders import SourceSql, parse_source_sql
from carnet.query.spec import QuerySpec, parse_spec, quote_identifier, to_duckdb
from carnet.row_security import RowContext, current_row_context, row_context_for, rule_conditions
from carnet.sources import ReadLimits, source_context, source_kinds, variables_for
from carnet.warehouse import check_identifier, open_cursor

# How deep sources may read sources (a derived source over derived sources...).
MAX_DEPTH = 5
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_BATCH_ROWS = 100_000
# The ids of the sources being read in this thread, outermost first: catches reference cycles at read time.
_reading: ContextVar[tuple[int, ...]] = ContextVar("carnet_sources_being_read", default=())


def check_variables(variables) -> dict:
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ValidationError("variables must be an object {name: value}", field="variables")
    for name, value in variables.items():
        if not _VARIABLE_NAME.fullmatch(str(name)):
            raise ValidationError(f"Invalid variable name {name!r}", field="variables")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValidationError(
                f"variables.{name} must be a string, number, boolean or null", field=f"variables.{name}"
            )
    return dict(variables)


def find_source(session, org_id: int, name: str) -> DataSource:
    source = session.scalar(select(DataSource).where(DataSource.org_id == org_id, DataSource.name == name))
    if source is None:
        raise NotFound(f"No source named {name!r}")
    return source


# -- one source ----------------------------------------------------------------------------------------
def run_query(
    session, settings, principal, source_name: str, spec_raw=None, variables=None, *, row=None
) -> pa.Table:
    """``source_name`` of the principal's org, queried by ``spec_raw`` (a query_spec mapping), filtered by
    the source's row rules for the principal (or the given ``row`` context: an admin's "as" preview)."""
    refuse_outside_scope(principal, source_name)
    if getattr(principal, "scope", None) is not None and principal.scope.variables:
        # An embed URL's signed variables, those this source takes (a SQL source refuses others).
        source = find_source(session, principal.org_id, source_name)
        fixed = own_variables(source, principal.scope.variables)
        variables = {**(variables or {}), **fixed}
    with reading_as(row or row_context_for(session, principal)):
        return plain_integers(
            query_source(session, settings, principal.org_id, source_name, spec_raw, variables)
        )


@contextmanager
def reading_as(row: RowContext):
    token = current_row_context.set(row)
    try:
        yield
    finally:
        current_row_context.reset(token)


def plain_integers(table: pa.Table) -> pa.Table:
    """Whole-number decimals (DuckDB's and PostgreSQL's ``sum`` of integers) as int64 when every value fits,
    so a DataFrame gets numbers, not Python Decimal objects; decimals with a fraction stay exact."""
    for index, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type) and field.type.scale == 0:
            try:
                column = table.column(index).cast(pa.int64(), safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            table = table.set_column(index, pa.field(field.name, pa.int64(), field.nullable), column)
    return table


def query_source(session, settings, org_id: int, name: str, spec_raw=None, variables=None) -> pa.Table:
    variables = check_variables(variables)
    source = find_source(session, org_id, name)
    reading = _reading.get()
    if source.id in reading:
        raise ValidationError(f"The source {name!r} refers to itself through other sources", field="sql")
    if len(reading) >= MAX_DEPTH:
        raise ValidationError(
            f"Sources refer to other sources more than {MAX_DEPTH} levels deep", field="sql"
        )
    kind = source_kinds.get(source.kind)
    ctx = source_context(session, settings, source, variables)
    token = _reading.set((*reading, source.id))
    try:
        return _query(kind, ctx, source, spec_raw)
    finally:
        _reading.reset(token)


def _query(kind, ctx, source, spec_raw) -> pa.Table:
    from carnet.query.cache import cached_read

    max_rows = ctx.limits.max_rows

    def cached(spec: QuerySpec | None, row, compute) -> pa.Table:
        return cached_read(
            ctx.settings,
            ctx,
            policy=source.cache_policy or "none",
            ttl=source.cache_ttl_seconds,
            request_key=request_key(spec, ctx.variables),
            row_context=row.cache_key(),
            compute=compute,
        )

    row = current_row_context.get()
    rules = rule_conditions(source.row_rules or [], row)
    if kind.pushes_down:
        spec, names = checked_spec(kind, ctx, source, spec_raw)
        spec = capped(with_rules(spec, rules, names, source.name), max_rows)
        table = cached(spec, row, lambda: kind.read(ctx, spec))
    else:
        # The raw rows are cached once for every spec; the spec itself is cheap to apply in DuckDB.
        raw = cached(None, row, lambda: kind.read(ctx, None))
        spec = with_rules(parse_spec(spec_raw, raw.column_names), rules, raw.column_names, source.name)
        table = raw if spec == QuerySpec() else apply_spec(raw, capped(spec, max_rows), ctx.limits)
    check_rows(table, max_rows)
    return table


def with_rules(spec: QuerySpec, rules, names, source_name: str) -> QuerySpec:
    """``spec`` narrowed by the row rules' conditions; no rows at all (limit 0) when a rule has no values."""
    if rules is None:
        return dataclasses.replace(spec, limit=0)
    for condition in rules:
        if condition.column not in names:
            # Closed, not open: a rule that cannot be applied never means "every row".
            raise QueryFailed(
                f"The source {source_name!r} has a row rule on {condition.column!r}, which it does not have"
            )
    return dataclasses.replace(spec, where=spec.where + rules) if rules else spec


# Column names of pushed-down sources, per source definition and variables, for a while: a spec is checked
# against them before each read, and asking the server every time cost one more connection per query, even
# when the answer then came from the result cache. A column the memo does not know asks again (one added
# since); a column dropped since is the server's error on the read itself.
COLUMNS_MEMO_SECONDS = 60.0
_columns_memo: dict[str, tuple[float, list[str]]] = {}
_columns_memo_lock = threading.Lock()


def checked_spec(kind, ctx, source, spec_raw) -> tuple[QuerySpec, list[str]]:
    definition = json.dumps(
        [source.id, source.version, source.connection_id, source.options, ctx.variables],
        sort_keys=True,
        default=str,
    )
    now = time.monotonic()
    with _columns_memo_lock:
        memo = _columns_memo.get(definition)
    if memo is not None and now - memo[0] < COLUMNS_MEMO_SECONDS:
        try:
            return parse_spec(spec_raw, memo[1]), memo[1]
        except ValidationError:
            pass  # perhaps a column added since: ask the source
    names = [c["name"] for c in kind.columns(ctx)]
    with _columns_memo_lock:
        if len(_columns_memo) > 10_000:  # many variable values: start over rather than grow without bound
            _columns_memo.clear()
        _columns_memo[definition] = (now, names)
    return parse_spec(spec_raw, names), names


def request_key(spec: QuerySpec | None, variables: dict) -> str:
    """Canonical JSON of what was asked (cache key part): same question, same text."""
    body = {"spec": None if spec is None else dataclasses.asdict(spec), "variables": variables}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def capped(spec: QuerySpec, max_rows: int) -> QuerySpec:
    """At most one row more than allowed: enough to tell "too many" without reading everything."""
    if spec.limit is None or spec.limit > max_rows + 1:
        return dataclasses.replace(spec, limit=max_rows + 1)
    return spec


def too_many_rows(max_rows: int) -> RowLimitExceeded:
    return RowLimitExceeded(
        f"The query returns more than {max_rows} rows: add a filter, a limit or an aggregate",
        max_rows=max_rows,
    )


def check_rows(table: pa.Table, max_rows: int) -> None:
    if table.num_rows > max_rows:
        raise too_many_rows(max_rows)


def apply_spec(table: pa.Table, spec: QuerySpec, limits: ReadLimits) -> pa.Table:
    with memory_duckdb() as con:
        con.register("source", table)
        sql, params = to_duckdb(spec, "source")
        return run_duckdb(con, sql, params, limits)


# -- DuckDB in memory ------------------------------------------------------------------------------------
@contextmanager
def memory_duckdb():
    """An in-memory DuckDB that cannot touch files, load extensions or change that."""
    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
        },
    )
    try:
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


@contextmanager
def warehouse_duckdb(path, tables: dict[str, str], memory_limit: str | None = None):
    """A cursor on the process's one instance of the org's warehouse (``carnet.warehouse.open_cursor``: a
    second instance of the file in this process is refused by DuckDB, and sharing it gives snapshot reads
    during loads) where each marker is a temporary view of a table. That instance is locked like
    ``memory_duckdb``: no file access, no extensions, no configuration change."""
    with open_cursor(path, memory_limit=memory_limit) as (con, _write_lock):
        # Temporary views belong to this cursor and go with it.
        for marker, table in tables.items():
            con.execute(
                f"CREATE TEMP VIEW {quote_identifier(marker)} AS "  # noqa: S608 - identifiers quoted
                f"SELECT * FROM main.{quote_identifier(check_identifier(table))}"
            )
        yield con


def run_duckdb(con, sql: str, params: list, limits: ReadLimits, restore=lambda text: text) -> pa.Table:
    """Run ``sql``, stopping at the time limit (interrupt) and past ``limits.max_rows`` rows."""
    timer = threading.Timer(limits.timeout_seconds, con.interrupt)
    timer.start()
    reader = None
    try:
        reader = con.sql(sql, params=params or None).to_arrow_reader(_BATCH_ROWS)
        batches, rows = [], 0
        for batch in reader:
            rows += batch.num_rows
            if rows > limits.max_rows:
                raise too_many_rows(limits.max_rows)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryTimeout(f"The query took longer than {limits.timeout_seconds:g} s") from None
    except duckdb.Error as error:
        message = restore(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise QueryFailed(f"The query failed: {message[:500]}", field="sql") from None
    finally:
        timer.cancel()
        # A live result keeps the DuckDB instance (and a warehouse file's lock) open; the traceback of an
        # error raised here would keep it alive until the garbage collector breaks the cycle.
        if reader is not None:
            reader.close()
        reader = None


# -- SQL over sources ------------------------------------------------------------------------------------
def run_sql(session, settings, principal, sql: str, variables=None, *, row=None) -> pa.Table:
    """SQL over the principal's org's sources, written ``{source name}``, each filtered by its row rules."""
    parsed = None
    if getattr(principal, "scope", None) is not None:
        parsed = parse_source_sql(sql)
        for name in parsed.names:
            refuse_outside_scope(principal, name)
        variables = scoped_variables(principal, variables)
    with reading_as(row or row_context_for(session, principal)):
        return plain_integers(
            sql_over_sources(session, settings, principal.org_id, sql, variables, parsed=parsed)
        )


def sql_over_sources(session, settings, org_id: int, sql, variables=None, *, parsed: SourceSql | None = None):
    variables = check_variables(variables)
    parsed = parsed or parse_source_sql(sql)
    sources = {name: find_source(session, org_id, name) for name in parsed.names}
    from carnet.query.pushdown import pushed_down  # noqa: PLC0415 - it imports this module's neighbours

    # Sources whose rows the reader may see only in part are read one by one, each through its rules.
    whole = not current_row_context.get().restricted or not any(row.row_rules for row in sources.values())
    table = pushed_down(session, settings, parsed, sources, variables) if whole else None
    if table is not None:
        return table
    limits = ReadLimits.from_settings(settings)
    if (
        whole
        and not settings.warehouse_url
        and all(row.kind == "warehouse_table" for row in sources.values())
    ):
        # Every input is in the org's warehouse: DuckDB reads the tables where they are (no copy).
        tables = {parsed.markers[name]: row.options["table"] for name, row in sources.items()}
        with warehouse_duckdb(
            settings.warehouse_path(org_id), tables, settings.warehouse_memory_limit
        ) as con:
            return run_duckdb(con, parsed.duckdb_sql(), [], limits, parsed.restore_names)
    inputs = {
        name: query_source(session, settings, org_id, name, None, own_variables(row, variables))
        for name, row in sources.items()
    }
    with memory_duckdb() as con:
        for name, data in inputs.items():
            con.register(parsed.markers[name], data)
        return run_duckdb(con, parsed.duckdb_sql(), [], limits, parsed.restore_names)


def own_variables(source, variables: dict) -> dict:
    return variables_for(source_kinds.get(source.kind), dict(source.options or {}), variables)


def describe_sql(session, settings, org_id: int, sql, variables=None) -> list[dict]:
    """[{"name", "type"}] of what ``sql`` returns, from the inputs' first zero rows (nothing is scanned)."""
    variables = check_variables(variables)
    parsed = parse_source_sql(sql)
    inputs = {
        name: query_source(
            session,
            settings,
            org_id,
            name,
            {"limit": 0},
            own_variables(find_source(session, org_id, name), variables),
        )
        for name in parsed.names
    }
    with memory_duckdb() as con:
        for name, data in inputs.items():
            con.register(parsed.markers[name], data)
        described = run_duckdb(con, f"DESCRIBE {parsed.duckdb_sql()}", [], ReadLimits.from_settings(settings))
    return [
        {"name": name, "type": dtype}
        for name, dtype in zip(
            described["column_name"].to_pylist(), described["column_type"].to_pylist(), strict=True
        )
    ]
