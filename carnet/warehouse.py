"""Each organization's warehouse: one DuckDB file in the org's own data directory.

Only Carnet's server processes open these files; kernels read through the API. DuckDB lets one process
hold a file read-write only while no other process has it open, and refuses a second instance of the same
file in one process: so every read and every load of the Carnet service goes through ONE database instance
per file (``open_cursor``), one cursor per operation, and DuckDB's MVCC gives each statement a snapshot
(readers see the old or the new table, never a half-written one). The instance is closed when its last
cursor is, so that the file is free between requests (CLI, scheduler and tests may open it then). Loads
from other processes go through the service's REST API.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from carnet.errors import Conflict, NotFound, ValidationError

# Tables that loads stage data in: never shown as tables, dropped when a file is opened (a killed load).
STAGING_PREFIX = "_carnet_staging_"
# Python objects are handed to DuckDB with ``register`` only: replacement scans and file access are off.
_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str, what: str = "table name", field: str | None = None) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValidationError(
            f"Invalid {what} {name!r}: use letters, digits and underscores, starting with a letter",
            field=field or what,
        )
    return name


def quote(name: str) -> str:
    return '"' + check_identifier(name) + '"'


class _Instance:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.users = 0
        # DuckDB aborts one of two transactions writing the same table: loads of one file take turns.
        self.write_lock = threading.RLock()


_instances: dict[str, _Instance] = {}
_instances_lock = threading.Lock()


# How long to wait for another process (an operator's DuckDB shell, a test) to let go of the file.
LOCK_WAIT_SECONDS = 10.0


def connect_waiting(path: Path, wait: float = LOCK_WAIT_SECONDS, **kwargs) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(path, **kwargs)``, retried while another process holds the file's lock (its reads are
    short); Conflict (409) if it still does after ``wait`` seconds."""
    deadline, pause = time.monotonic() + wait, 0.02
    while True:
        try:
            return duckdb.connect(str(path), **kwargs)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            if time.monotonic() >= deadline:
                raise Conflict("The warehouse is in use by another process; try again") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _open_instance(path: Path, memory_limit: str | None) -> duckdb.DuckDBPyConnection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect_waiting(path, config=_CONFIG)
    # A load killed before its commit leaves nothing behind (one transaction); drop staging tables that a
    # crash of an older layout might have committed, so that they never show up as tables.
    for (name,) in con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'main' AND starts_with(table_name, ?)",
        [STAGING_PREFIX],
    ).fetchall():
        con.execute(f'DROP TABLE IF EXISTS "{name}"')
    # The query service runs checked SQL on these cursors: no setting may be changed back afterwards. DuckDB
    # may hand back a still-alive instance (a result object outlived its cursor) that is locked already.
    if not con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        # Set here, not in the connect config: DuckDB refuses a second connection to a live instance whose
        # config differs, and a still-alive instance keeps the limit it was given.
        if memory_limit:
            con.execute("SET memory_limit = ?", [memory_limit])
        con.execute("SET lock_configuration = true")
    return con


@contextmanager
def open_cursor(path: Path, *, create: bool = False, memory_limit: str | None = None):
    """A cursor on the process's one DuckDB instance of ``path`` (opened on first use, closed after the last
    cursor) and that instance's write lock. Without ``create`` a missing file is a NotFound. ``memory_limit``
    (``CarnetSettings.warehouse_memory_limit``) applies when this call opens the instance."""
    path = Path(path)
    key = str(path.resolve())
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None:
            if not create and not path.exists():
                raise NotFound("This organization's warehouse is empty")
            instance = _instances[key] = _Instance(_open_instance(path, memory_limit))
        instance.users += 1
    cursor = instance.con.cursor()
    try:
        yield cursor, instance.write_lock
    finally:
        cursor.close()
        with _instances_lock:
            instance.users -= 1
            if instance.users == 0:
                del _instances[key]
                instance.con.close()


class Warehouse:
    """The warehouse of one organization."""

    def __init__(self, path: Path, memory_limit: str | None = None):
        self.path = Path(path)
        self.memory_limit = memory_limit

    @contextmanager
    def _connect(self, read_only: bool):
        with open_cursor(self.path, create=not read_only, memory_limit=self.memory_limit) as (cursor, _lock):
            yield cursor

    def tables(self) -> list[str]:
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            return sorted(self._table_names(con))

    def columns(self, table: str) -> list[dict]:
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                [check_identifier(table)],
            ).fetchall()
        if not rows:
            raise NotFound(f"No table {table!r} in the warehouse")
        return [{"name": name, "type": dtype} for name, dtype in rows]

    def read_arrow(self, table: str, limit: int | None = None) -> pa.Table:
        sql = f"SELECT * FROM {quote(table)}"  # noqa: S608 - identifier validated and quoted
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect(read_only=True) as con:
            if table not in self._table_names(con):
                raise NotFound(f"No table {table!r} in the warehouse")
            return con.sql(sql).to_arrow_table()

    def query_arrow(self, table: str, spec) -> pa.Table:
        """``table`` filtered, grouped, sorted and limited by a ``carnet.query.spec`` (all in DuckDB)."""
        from carnet.query.spec import parse_spec, to_duckdb

        with self._connect(read_only=True) as con:
            if table not in self._table_names(con):
                raise NotFound(f"No table {table!r} in the warehouse")
            # Checked against the table's columns NOW (a QuerySpec may have been parsed before a later load
            # changed the table): an unknown column is a 400 naming it, not DuckDB's binder error.
            columns = [row[0] for row in con.execute(f"DESCRIBE {quote(table)}").fetchall()]
            sql, params = to_duckdb(parse_spec(spec, columns), table)
            return con.sql(sql, params=params).to_arrow_table()

    def table_stats(self) -> list[dict]:
        """[{name, rows, columns: [{name, type}]}] of every table, by name."""
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            result = []
            for name in sorted(self._table_names(con)):
                rows = con.execute(f"SELECT count(*) FROM {quote(name)}").fetchone()[0]  # noqa: S608
                columns = con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                    [name],
                ).fetchall()
                described = [{"name": c, "type": t} for c, t in columns]
                result.append({"name": name, "rows": rows, "columns": described})
            return result

    @staticmethod
    def _table_names(con) -> set[str]:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        return {row[0] for row in rows if not row[0].startswith(STAGING_PREFIX)}

    def replace_table(self, table: str, data) -> int:
        """Create or replace ``table`` from a pandas DataFrame or Arrow table, atomically."""
        check_identifier(table)
        with (
            open_cursor(self.path, create=True, memory_limit=self.memory_limit) as (con, write_lock),
            write_lock,
        ):
            con.register("incoming", data)
            con.execute(f"CREATE OR REPLACE TABLE {quote(table)} AS SELECT * FROM incoming")
            con.unregister("incoming")
            return con.execute(f"SELECT count(*) FROM {quote(table)}").fetchall()[0][0]  # noqa: S608


def open_warehouse(settings, org_id: int):
    """The org's warehouse: its DuckDB file, or its schema in the PostgreSQL database named by
    ``CarnetSettings.warehouse_url`` (carnet/warehouse_pg.py). Both answer the same read calls (tables,
    columns, read_arrow, query_arrow, table_stats); loads go through carnet.loads for both."""
    if settings.warehouse_url:
        from carnet.warehouse_pg import PostgresWarehouse  # noqa: PLC0415 - needs the postgres extra

        return PostgresWarehouse(settings, org_id)
    return Warehouse(settings.warehouse_path(org_id), settings.warehouse_memory_limit)


def write(data, table: str, mode: str = "replace", key=None, types: dict | None = None) -> dict:
    """``carnet.warehouse.write(df, "sales", mode="replace")`` in a kernel. ``carnet.warehouse`` is the
    kernel helper (carnet.kernel_helpers.warehouse) until something imports this module, which then takes
    the name: the call must work either way, so it goes to the helper (REST API, the kernel's token)."""
    from carnet.kernel_helpers import warehouse

    return warehouse.write(data, table, mode=mode, key=key, types=types)


def sync(source: str, table: str, mode: str = "replace", key=None, types=None, variables=None) -> dict:
    """``carnet.warehouse.sync("orders", "orders_copy")`` in a kernel, whichever module holds the name
    (see ``write``)."""
    from carnet.kernel_helpers import warehouse

    return warehouse.sync(source, table, mode=mode, key=key, types=types, variables=variables)
