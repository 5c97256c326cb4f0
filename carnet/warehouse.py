"""Each organization's warehouse: one DuckDB file in the org's own data directory.

Only Carnet's server processes open these files; kernels read through the API. Reads use short-lived
read-only connections so that a load in another process never sees a half-open database.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from carnet.errors import NotFound, ValidationError

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


class Warehouse:
    """The warehouse of one organization."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise NotFound("This organization's warehouse is empty")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path), read_only=read_only)

    def tables(self) -> list[str]:
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]

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
        from carnet.query.spec import to_duckdb

        with self._connect(read_only=True) as con:
            if table not in self._table_names(con):
                raise NotFound(f"No table {table!r} in the warehouse")
            sql, params = to_duckdb(spec, table)
            return con.sql(sql, params=params).to_arrow_table()

    @staticmethod
    def _table_names(con) -> set[str]:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        return {row[0] for row in rows}

    def replace_table(self, table: str, data) -> int:
        """Create or replace ``table`` from a pandas DataFrame or Arrow table, atomically."""
        check_identifier(table)
        with self._connect(read_only=False) as con:
            con.register("incoming", data)
            con.execute(f"CREATE OR REPLACE TABLE {quote(table)} AS SELECT * FROM incoming")
            con.unregister("incoming")
            return con.execute(f"SELECT count(*) FROM {quote(table)}").fetchall()[0][0]  # noqa: S608
