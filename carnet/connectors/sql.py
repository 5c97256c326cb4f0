"""SQL sources: run a table read (with a pushed-down `query_spec`) or a read-only SQL query, return Arrow.

Every query runs in a read-only transaction with a statement timeout, on a fresh connection that is closed
afterwards (so session settings never leak): PostgreSQL ``SET TRANSACTION READ ONLY`` + ``SET LOCAL
statement_timeout``; MariaDB/MySQL ``SET SESSION TRANSACTION READ ONLY`` + a session statement time limit
+ ``START TRANSACTION READ ONLY``. Other dialects get the parser check only: give them a read-only account.
Rows are streamed and counted, so a result over `Limits.max_rows` stops with RowLimitExceeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from carnet.connectors.read_only_sql import SQLGLOT_DIALECTS, check_read_only
from carnet.connectors.result_types import arrow_types, typed_array
from carnet.connectors.sql_settings import (
    VARIABLE,
    ConnectionSettings,
    HostCheck,
    resolve_url,
    validate_connection,
)
from carnet.errors import (
    ConnectionFailed,
    QueryFailed,
    QueryTimeout,
    ReadOnlyViolation,
    RowLimitExceeded,
    ValidationError,
)
from carnet.query import spec as query_spec

_BATCH = 10_000


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 30.0
    max_rows: int = 1_000_000
    connect_timeout_seconds: int = 10


@dataclass(frozen=True)
class TableRead:
    """A SQL table source read: `spec` (a query_spec mapping) is compiled and run on the server."""

    table: str
    schema: str | None = None
    spec: Mapping | None = None


@dataclass(frozen=True)
class SqlRead:
    """A SQL query source read: one SELECT with `{{var}}` parameters, optionally filtered by `spec`."""

    sql: str
    spec: Mapping | None = None


def bind_variables(sql: str, variables: Mapping[str, object] | None, dialect: str) -> sa.TextClause:
    """`{{var}}` -> a bound parameter (never text). A placeholder inside a quoted string or a comment is
    refused: a driver substituting there would turn a value into SQL."""
    import sqlglot  # local: only query sources need it

    variables = variables or {}
    names = VARIABLE.findall(sql)
    for name in names:
        if name not in variables:
            raise ValidationError(f"Missing variable {name!r}", field=name)
        value = variables[name]
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValidationError(f"Invalid value for the variable {name!r}", field=name)
    marked = VARIABLE.sub(lambda m: f"carnet_var__{m.group(1)}", sql)
    tokens = sqlglot.tokenize(marked, read=SQLGLOT_DIALECTS.get(dialect))
    bare = sum(1 for t in tokens if t.text.startswith("carnet_var__") and t.token_type.name == "VAR")
    if bare != len(names):
        raise ValidationError(
            "A {{variable}} cannot be inside quotes or a comment: write name = {{var}}", field="sql"
        )
    parts, last = [], 0
    for match in VARIABLE.finditer(sql):
        parts.append(sql[last : match.start()].replace(":", "\\:"))  # a literal colon is not a parameter
        parts.append(f":cv_{match.group(1)}")
        last = match.end()
    parts.append(sql[last:].replace(":", "\\:"))
    return sa.text("".join(parts)).bindparams(**{f"cv_{n}": variables[n] for n in set(names)})


def read_arrow(
    conn_settings: Mapping | ConnectionSettings,
    spec_or_sql: TableRead | SqlRead | str,
    variables: Mapping[str, object] | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
    *,
    check_host: HostCheck,
    allowed_file_dir: Path | None = None,
    _skip_parser_check: bool = False,  # tests only: shows the server's read-only mode on its own
) -> pa.Table:
    settings = conn_settings
    if not isinstance(settings, ConnectionSettings):
        settings = validate_connection(conn_settings, allowed_file_dir=allowed_file_dir)
    if isinstance(spec_or_sql, str):
        spec_or_sql = SqlRead(spec_or_sql)
    url = resolve_url(settings, variables, check_host=check_host)
    family = settings.family()
    text = None
    if isinstance(spec_or_sql, SqlRead):
        text = bind_variables(spec_or_sql.sql, variables, settings.dialect)
        if not _skip_parser_check:
            check_read_only(
                VARIABLE.sub(lambda m: f"carnet_var__{m.group(1)}", spec_or_sql.sql), settings.dialect
            )
    connect_args = _connect_args(family, limits)
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as error:
            raise ConnectionFailed(
                f"Cannot connect to {settings.host}: {_redacted(error, settings)}"
            ) from None
        with connection:
            try:
                _begin_read_only(connection, family, limits)
                statement = _statement(connection, spec_or_sql, text, limits)
                return _fetch(connection, statement, limits)
            except sa.exc.DBAPIError as error:
                raise _query_error(error, family, settings) from None
            except sa.exc.NoSuchTableError:
                raise QueryFailed(f"The table {spec_or_sql.table!r} does not exist on the server") from None
            finally:
                if connection.in_transaction():
                    connection.rollback()
    finally:
        engine.dispose()


def _connect_args(family: str, limits: Limits) -> dict:
    if family in ("postgresql", "mysql"):
        return {"connect_timeout": int(limits.connect_timeout_seconds)}
    return {}


def _begin_read_only(connection: sa.Connection, family: str, limits: Limits) -> None:
    millis = max(1, int(limits.timeout_seconds * 1000))
    if family == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {millis}")
    elif family == "mysql":
        # The session is ours alone (no pool); the explicit READ ONLY transaction makes writes fail (1792).
        connection.commit()
        connection.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        if connection.dialect.is_mariadb:
            connection.exec_driver_sql(f"SET SESSION max_statement_time = {millis / 1000:.3f}")
        else:
            connection.exec_driver_sql(f"SET SESSION max_execution_time = {millis}")
        connection.exec_driver_sql("START TRANSACTION READ ONLY")


def _statement(connection, read, text, limits: Limits):
    if isinstance(read, TableRead):
        source = sa.Table(read.table, sa.MetaData(), schema=read.schema, autoload_with=connection)
    elif read.spec is None:
        return text
    else:
        # The query's columns, from a zero-row run, so the spec can be checked and applied around it.
        probe = connection.execute(
            sa.select(sa.literal_column("*")).select_from(text.columns().subquery("q")).limit(0)
        )
        source = text.columns(*map(sa.column, probe.keys())).subquery("q")
    spec = query_spec.parse_spec(read.spec, source.c.keys())
    statement = query_spec.to_sqlalchemy(spec, source)
    cap = limits.max_rows + 1  # one more than allowed tells "over the limit" without fetching the rest
    if spec.limit is None or spec.limit > cap:
        # On the statement, not the spec: a spec's limit stops at query_spec.MAX_LIMIT, the cap may not.
        statement = statement.limit(cap)
    return statement


def _fetch(connection, statement, limits: Limits) -> pa.Table:
    result = connection.execution_options(stream_results=True).execute(statement)
    names = list(result.keys())
    types = arrow_types(connection.dialect.name.replace("mariadb", "mysql"), result.cursor.description)
    rows: list = []
    while batch := result.fetchmany(_BATCH):
        rows.extend(batch)
        if len(rows) > limits.max_rows:
            result.close()
            raise RowLimitExceeded(
                f"The query returns more than {limits.max_rows} rows: add a filter, a limit or an aggregate",
                max_rows=limits.max_rows,
            )
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    types = types if len(types) == len(names) else [None] * len(names)
    return pa.Table.from_arrays(
        [typed_array(list(c), t) for c, t in zip(columns, types, strict=True)], names=names
    )


def _message(error: sa.exc.DBAPIError) -> str:
    lines = [line.strip() for line in str(error.orig).splitlines() if line.strip()]
    return " ".join(lines[:2])[:500] or type(error.orig).__name__


def _redacted(error: sa.exc.DBAPIError, settings: ConnectionSettings) -> str:
    """The driver's message without the password (some drivers echo connection parameters)."""
    message = _message(error)
    if settings.password:
        for form in {settings.password, quote_plus(settings.password), quote(settings.password)}:
            message = message.replace(form, "***")
    return message


def _query_error(error: sa.exc.DBAPIError, family: str, settings: ConnectionSettings) -> Exception:
    orig = error.orig
    if family == "postgresql":
        code = getattr(orig, "sqlstate", None)
    else:
        code = orig.args[0] if getattr(orig, "args", None) else None
    message = _redacted(error, settings)
    if code in ("57014", 1969, 3024):  # PostgreSQL query_canceled; MariaDB/MySQL statement time exceeded
        return QueryTimeout("The query took longer than the time limit", detail=message)
    if code in ("25006", 1792):  # read_only_sql_transaction; ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        return ReadOnlyViolation("The server refused a write: SQL sources are read-only", detail=message)
    if error.connection_invalidated:
        return ConnectionFailed(f"The connection to {settings.host} failed: {message}")
    return QueryFailed(f"The server refused the query: {message}")
