"""The PostgreSQL warehouse option (``CarnetSettings.warehouse_url``): one schema per organization.

Reads answer like the DuckDB ``Warehouse`` (tables, columns with DuckDB type names, Arrow tables typed from
the columns, query specs compiled by SQLAlchemy and run by PostgreSQL). Loads keep the engine's checks:
``postgres_target`` stages and checks rows in an in-memory DuckDB, then changes the table in ONE PostgreSQL
transaction (COPY of CSV batches; a reload creates a staging table, drops the old table and renames the new
one), so readers see the old or the new table and a failed or killed load leaves the old one. Loads of one
organization take turns (a transaction-scoped advisory lock), like loads of one DuckDB file.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

try:
    import psycopg
except ImportError:  # the postgres extra is not installed: engine_for says which to install
    psycopg = None

from carnet.errors import ConnectionFailed, LoadFailed, MissingDriver, NotFound, ValidationError
from carnet.loads.targets import key_match, select_list
from carnet.loads.types import ROW_COLUMN, quote_column
from carnet.query.spec import parse_spec, to_sqlalchemy
from carnet.warehouse import STAGING_PREFIX, check_identifier

_COPY_ROWS = 100_000

# PostgreSQL type (information_schema.columns.data_type) -> the DuckDB type name the engine checks with.
_FROM_PG = {
    "bigint": "BIGINT",
    "integer": "INTEGER",
    "smallint": "SMALLINT",
    "double precision": "DOUBLE",
    "real": "FLOAT",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp without time zone": "TIMESTAMP",
    "timestamp with time zone": "TIMESTAMP WITH TIME ZONE",
    "time without time zone": "TIME",
    "text": "VARCHAR",
    "character varying": "VARCHAR",
    "character": "VARCHAR",
    "uuid": "UUID",
}
# DuckDB type -> PostgreSQL column type; anything else is stored as text (cast to VARCHAR first).
_TO_PG = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "SMALLINT": "smallint",
    "TINYINT": "smallint",
    "UTINYINT": "smallint",
    "USMALLINT": "integer",
    "UINTEGER": "bigint",
    "UBIGINT": "numeric(20,0)",
    "HUGEINT": "numeric(38,0)",
    "DOUBLE": "double precision",
    "FLOAT": "real",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP_S": "timestamp",
    "TIMESTAMP_MS": "timestamp",
    "TIMESTAMP_NS": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "TIME": "time",
    "VARCHAR": "text",
    "UUID": "uuid",
}
_ARROW = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "SMALLINT": pa.int16(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    "TIME": pa.time64("us"),
    "VARCHAR": pa.string(),
}
_SQLALCHEMY = {
    "BIGINT": sa.BigInteger,
    "INTEGER": sa.Integer,
    "SMALLINT": sa.SmallInteger,
    "DOUBLE": sa.Double,
    "FLOAT": sa.Float,
    "BOOLEAN": sa.Boolean,
    "DATE": sa.Date,
    "TIMESTAMP": sa.DateTime,
    "TIMESTAMP WITH TIME ZONE": lambda: sa.DateTime(timezone=True),
    "TIME": sa.Time,
    "UUID": sa.Uuid,
}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),(\d+)\)$")

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> sa.Engine:
    """One pooled engine per warehouse URL for the process."""
    with _engines_lock:
        if url not in _engines:
            if psycopg is None:
                raise MissingDriver("psycopg", "postgres")
            _engines[url] = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=30)
        return _engines[url]


def duckdb_type_of(data_type: str, precision, scale) -> str:
    if data_type == "numeric":
        return f"DECIMAL({precision},{scale})" if precision and precision <= 38 else "DOUBLE"
    return _FROM_PG.get(data_type, "VARCHAR")


def pg_type_of(duckdb_type: str) -> str | None:
    match = _DECIMAL.fullmatch(duckdb_type)
    if match:
        return f"numeric({match[1]},{match[2]})"
    return _TO_PG.get(duckdb_type)


def arrow_type_of(duckdb_type: str) -> pa.DataType | None:
    match = _DECIMAL.fullmatch(duckdb_type)
    if match:
        return pa.decimal128(int(match[1]), int(match[2]))
    return _ARROW.get(duckdb_type)


def sqlalchemy_type_of(duckdb_type: str):
    """Typed columns let a query spec's values bind as the column's type (a date string to a DATE)."""
    match = _DECIMAL.fullmatch(duckdb_type)
    if match:
        return sa.Numeric(int(match[1]), int(match[2]))
    return _SQLALCHEMY.get(duckdb_type, sa.Text)()


def qualified(schema: str, table: str) -> str:
    return f"{quote_column(schema)}.{quote_column(table)}"


def _columns(conn, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = :schema AND table_name = :table ORDER BY ordinal_position"
        ),
        {"schema": schema, "table": table},
    ).all()
    return {name: duckdb_type_of(dtype, precision, scale) for name, dtype, precision, scale in rows}


def _to_arrow(names: list[str], rows: list, types: dict[str, pa.DataType | None]) -> pa.Table:
    arrays = []
    for index, name in enumerate(names):
        values = [row[index] for row in rows]
        wanted = types.get(name)
        arrays.append(pa.array(values, type=wanted) if wanted is not None else pa.array(values))
    return pa.Table.from_arrays(arrays, names=names)


class PostgresWarehouse:
    """The warehouse of one organization: the schema ``settings.warehouse_schema(org_id)``."""

    def __init__(self, settings, org_id: int):
        self.settings = settings
        self.schema = settings.warehouse_schema(org_id)

    @contextmanager
    def _connect(self):
        try:
            connection = engine_for(self.settings.warehouse_url).connect()
        except sa.exc.OperationalError as error:
            raise ConnectionFailed(f"The warehouse database cannot be reached: {error.orig}") from None
        timeout_ms = int(self.settings.source_timeout_seconds * 1000)
        with connection, connection.begin():
            # One round trip for the three (a read is a handful of them in all).
            connection.exec_driver_sql(
                "SET TRANSACTION READ ONLY; SET LOCAL TIME ZONE 'UTC'; "
                f"SET LOCAL statement_timeout = {timeout_ms}"
            )
            yield connection

    def _existing(self, conn, table: str) -> dict[str, str]:
        columns = _columns(conn, self.schema, check_identifier(table))
        if not columns or table.startswith(STAGING_PREFIX):
            raise NotFound(f"No table {table!r} in the warehouse")
        return columns

    def tables(self) -> list[str]:
        with self._connect() as conn:
            return self._tables(conn)

    def _tables(self, conn) -> list[str]:
        rows = conn.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            ),
            {"schema": self.schema},
        ).scalars()
        return [name for name in rows if not name.startswith(STAGING_PREFIX)]

    def columns(self, table: str) -> list[dict]:
        with self._connect() as conn:
            return [{"name": n, "type": t} for n, t in self._existing(conn, table).items()]

    def read_arrow(self, table: str, limit: int | None = None) -> pa.Table:
        with self._connect() as conn:
            columns = self._existing(conn, table)
            sql = f"SELECT * FROM {qualified(self.schema, table)}"  # noqa: S608 - checked, quoted
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            result = conn.exec_driver_sql(sql)
            names, rows = list(result.keys()), result.all()
        # Converted after the transaction ended: its lock on the table would hold up a reload meanwhile.
        return _to_arrow(names, rows, {n: arrow_type_of(t) for n, t in columns.items()})

    def query_arrow(self, table: str, spec) -> pa.Table:
        with self._connect() as conn:
            columns = self._existing(conn, table)
            # Built from the columns already read: reflecting the table would cost several catalog queries.
            source = sa.Table(
                table,
                sa.MetaData(),
                *(sa.Column(n, sqlalchemy_type_of(t)) for n, t in columns.items()),
                schema=self.schema,
            )
            parsed = parse_spec(spec, source.c.keys())
            result = conn.execute(to_sqlalchemy(parsed, source))
            names, rows = list(result.keys()), result.all()
        # Plain columns keep the table's types; aggregates take what PostgreSQL returns.
        kept = set(parsed.group_by) if parsed.is_aggregate else set(columns)
        return _to_arrow(names, rows, {n: arrow_type_of(columns[n]) for n in kept if n in columns})

    def table_stats(self) -> list[dict]:
        with self._connect() as conn:
            result = []
            for name in self._tables(conn):
                rows = conn.exec_driver_sql(f"SELECT count(*) FROM {qualified(self.schema, name)}").scalar()  # noqa: S608
                columns = [{"name": n, "type": t} for n, t in _columns(conn, self.schema, name).items()]
                result.append({"name": name, "rows": rows, "columns": columns})
            return result


class PostgresTarget:
    """Load target: staged rows in ``con`` (in-memory DuckDB), changes in ``conn``'s transaction."""

    def __init__(self, con, conn, schema: str):
        self.con = con
        self.conn = conn
        self.schema = schema

    def existing(self, table: str) -> dict[str, str] | None:
        return _columns(self.conn, self.schema, table) or None

    def _stored_select(self, staging: str, targets: dict, order: bool = True) -> tuple[str, dict[str, str]]:
        """The SELECT over the staging table whose rows are copied, and column -> PostgreSQL type."""
        sql = f"SELECT {select_list(targets)} FROM {staging}"  # noqa: S608 - quoted or generated names
        with self.con.cursor() as cursor:  # its own: the engine's last result on con may be unfinished
            types = dict(zip(targets, (str(t) for t in cursor.sql(sql).types), strict=True))
        stored = {name: pg_type_of(dtype) for name, dtype in types.items()}
        # Types PostgreSQL has no column for (lists, structs, blobs) are kept as their text.
        casts = {name: (target if stored[name] else "VARCHAR") for name, target in targets.items()}
        if casts != targets:
            sql = f"SELECT {select_list(casts)} FROM {staging}"  # noqa: S608
        if order:
            sql += f" ORDER BY {ROW_COLUMN}"
        return sql, {name: pg_type or "text" for name, pg_type in stored.items()}

    def _copy(self, select_sql: str, into: str, columns) -> None:
        names = ", ".join(quote_column(name) for name in columns)
        source = self.con.cursor()
        reader = source.sql(select_sql).to_arrow_reader(_COPY_ROWS)
        options = pa_csv.WriteOptions(include_header=False)
        cursor = self.conn.connection.driver_connection.cursor()
        try:
            with cursor.copy(f"COPY {into} ({names}) FROM STDIN (FORMAT csv)") as copy:
                for batch in reader:
                    buffer = io.BytesIO()
                    pa_csv.write_csv(batch, buffer, options)
                    copy.write(buffer.getvalue())
        finally:
            reader.close()
            source.close()
            cursor.close()

    def replace(self, table: str, staging: str, targets: dict, exists: bool, numbered: bool = True) -> None:
        select_sql, types = self._stored_select(staging, targets, order=numbered)
        new = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        definition = ", ".join(f"{quote_column(n)} {t}" for n, t in types.items())
        self.conn.exec_driver_sql(f"CREATE TABLE {qualified(self.schema, new)} ({definition})")
        self._copy(select_sql, qualified(self.schema, new), types)
        if exists:
            self.conn.exec_driver_sql(f"DROP TABLE {qualified(self.schema, table)}")
        self.conn.exec_driver_sql(
            f"ALTER TABLE {qualified(self.schema, new)} RENAME TO {quote_column(table)}"
        )

    def delete_matching(self, table: str, staging: str, key: list[str], targets: dict) -> None:
        keys = {k: targets.get(k) for k in key}
        select_sql, types = self._stored_select(staging, keys, order=False)
        temp = quote_column(f"_carnet_keys_{uuid.uuid4().hex}")
        definition = ", ".join(f"{quote_column(n)} {t}" for n, t in types.items())
        self.conn.exec_driver_sql(f"CREATE TEMP TABLE {temp} ({definition}) ON COMMIT DROP")
        self._copy(select_sql, temp, types)
        self.conn.exec_driver_sql(
            f"DELETE FROM {qualified(self.schema, table)} t USING {temp} s "  # noqa: S608
            f"WHERE {key_match(key, {})}"
        )

    def insert(self, table: str, staging: str, targets: dict) -> None:
        select_sql, _types = self._stored_select(staging, targets)
        self._copy(select_sql, qualified(self.schema, table), targets)

    def count(self, table: str) -> int:
        return self.conn.exec_driver_sql(f"SELECT count(*) FROM {qualified(self.schema, table)}").scalar()  # noqa: S608


@contextmanager
def postgres_target(settings, org_id: int):
    from carnet.query.service import memory_duckdb  # noqa: PLC0415 - the query service imports carnet.loads

    schema = settings.warehouse_schema(org_id)
    engine = engine_for(settings.warehouse_url)  # psycopg is there once this returns
    try:
        with memory_duckdb() as con, engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
            # Loads of one organization take turns, as loads of one DuckDB file do.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"carnet:{schema}"})
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_column(schema)}")
            yield PostgresTarget(con, conn, schema)
    except (sa.exc.DBAPIError, psycopg.Error) as error:
        raise _load_error(error) from None


def _load_error(error: Exception) -> Exception:
    # COPY runs on the driver's cursor, so its errors arrive unwrapped by SQLAlchemy.
    original = getattr(error, "orig", None) or error
    detail = str(original).splitlines()[0][:500] if str(original) else type(original).__name__
    if isinstance(original, psycopg.DataError | psycopg.IntegrityError):
        # The data itself (a NUL character in text, a number too large for the column): the caller's to fix.
        return ValidationError(f"The warehouse refused the data: {detail}", field="data")
    return LoadFailed(f"The warehouse database failed the load: {detail}")
