"""Where a load's checked rows go: the warehouse's own DuckDB file, or the org's PostgreSQL schema.

The load engine (carnet/loads/engine.py) stages incoming data in a DuckDB connection (``target.con``) and
checks it there (columns, forced types naming the row and value, keys); a target then changes the table.
``DuckDBTarget`` does everything in ONE transaction of the warehouse file's own instance. The PostgreSQL
target (carnet/warehouse_pg.py) stages in an in-memory DuckDB and writes in one PostgreSQL transaction.
Both take ``targets``: incoming column -> the DuckDB type to cast it to (None: keep the staged type).
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import duckdb

from carnet.loads.types import ROW_COLUMN, quote_column
from carnet.warehouse import open_cursor, quote


def select_list(targets: dict[str, str | None]) -> str:
    return ", ".join(
        quote_column(name)
        if target is None
        else f"CAST({quote_column(name)} AS {target}) AS {quote_column(name)}"
        for name, target in targets.items()
    )


def key_match(key: list[str], targets: dict[str, str | None], table="t", staged="s") -> str:
    return " AND ".join(
        f"{table}.{quote_column(k)} = "
        + (
            f"{staged}.{quote_column(k)}"
            if targets.get(k) is None
            else f"CAST({staged}.{quote_column(k)} AS {targets[k]})"
        )
        for k in key
    )


class DuckDBTarget:
    """The org's DuckDB warehouse file: staging tables live next to the table, in the same transaction."""

    def __init__(self, con):
        self.con = con

    def existing(self, table: str) -> dict[str, str] | None:
        """Column -> DuckDB type of ``table``, or None when there is no such table."""
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {name: dtype for name, dtype in rows} or None

    def replace(self, table: str, staging: str, targets: dict, exists: bool, numbered: bool = True) -> None:
        """``numbered``: the staging table has the row-number column (ROW_COLUMN), which never goes in."""
        if exists:
            self.con.execute(f"DROP TABLE {quote(table)}")
        if any(targets.values()):
            self.con.execute(
                f"CREATE TABLE {quote(table)} AS "  # noqa: S608 - quoted or generated names
                f"SELECT {select_list(targets)} FROM {staging} ORDER BY {ROW_COLUMN}"
            )
            self.con.execute(f"DROP TABLE {staging}")
        else:  # nothing to convert: the staging table becomes the table
            if numbered:
                self.con.execute(f"ALTER TABLE {staging} DROP COLUMN {ROW_COLUMN}")
            self.con.execute(f"ALTER TABLE {staging} RENAME TO {quote(table)}")

    def delete_matching(self, table: str, staging: str, key: list[str], targets: dict) -> None:
        self.con.execute(
            f"DELETE FROM {quote(table)} t "  # noqa: S608 - quoted or generated names
            f"WHERE EXISTS (SELECT 1 FROM {staging} s WHERE {key_match(key, targets)})"
        )

    def insert(self, table: str, staging: str, targets: dict) -> None:
        columns = ", ".join(quote_column(name) for name in targets)
        self.con.execute(
            f"INSERT INTO {quote(table)} ({columns}) "  # noqa: S608 - quoted or generated names
            f"SELECT {select_list(targets)} FROM {staging} ORDER BY {ROW_COLUMN}"
        )

    def count(self, table: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]  # noqa: S608


@contextmanager
def duckdb_target(path, memory_limit: str | None = None):
    """One transaction on the file's instance; loads of one file take turns (its write lock)."""
    with open_cursor(path, create=True, memory_limit=memory_limit) as (con, write_lock), write_lock:
        con.execute("BEGIN TRANSACTION")
        try:
            yield DuckDBTarget(con)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended the transaction
                con.execute("ROLLBACK")
            raise


def load_target(settings, org_id: int):
    """The context manager of the org's load target, chosen by ``CarnetSettings.warehouse_url``."""
    if settings.warehouse_url:
        from carnet.warehouse_pg import postgres_target  # noqa: PLC0415 - needs the postgres extra

        return postgres_target(settings, org_id)
    return duckdb_target(settings.warehouse_path(org_id), settings.warehouse_memory_limit)
