"""Arrow types of a SQL result from the server's own description of its columns (DB-API
``cursor.description``), so a declared ``numeric(10,2)`` stays ``decimal128(10,2)``, a column of NULLs keeps
its type, and an empty result still has typed columns. Only PostgreSQL (psycopg) and MariaDB/MySQL (pymysql)
are known; other drivers, and types not listed, are inferred from the values as before."""

from __future__ import annotations

import pyarrow as pa

# PostgreSQL type OIDs (pg_type.oid), stable across versions.
_PG = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
    25: pa.string(),
    1043: pa.string(),
    1042: pa.string(),
}
_PG_NUMERIC = 1700
# MySQL protocol field types (pymysql.constants.FIELD_TYPE).
_MYSQL = {
    1: pa.int64(),  # TINY
    2: pa.int64(),  # SHORT
    3: pa.int64(),  # LONG
    8: pa.int64(),  # LONGLONG
    9: pa.int64(),  # INT24
    4: pa.float32(),
    5: pa.float64(),
    10: pa.date32(),
    12: pa.timestamp("us"),  # DATETIME
    7: pa.timestamp("us"),  # TIMESTAMP
}
_MYSQL_DECIMAL = (0, 246)


def arrow_types(family: str, description) -> list[pa.DataType | None]:
    """One Arrow type (or None: infer) per column of ``description``."""
    if not description:
        return []
    return [_column_type(family, column) for column in description]


def _column_type(family: str, column) -> pa.DataType | None:
    type_code, precision, scale = column[1], column[4], column[5]
    if family == "postgresql":
        if type_code == _PG_NUMERIC:
            # numeric without a declared precision (sum(), avg()) holds any size: inferred from the values.
            return pa.decimal128(precision, scale or 0) if precision and precision <= 38 else None
        return _PG.get(type_code)
    if family == "mysql":
        if type_code in _MYSQL_DECIMAL:
            # pymysql reports the display length, not the precision: 38 digits hold any DECIMAL up to 38.
            return pa.decimal128(38, scale or 0) if scale is not None and scale <= 38 else None
        return _MYSQL.get(type_code)
    return None


def typed_array(values: list, wanted: pa.DataType | None) -> pa.Array:
    """The column as ``wanted``; a value that does not fit (a MySQL DECIMAL(65)) falls back to inference."""
    if wanted is not None:
        try:
            return pa.array(values, type=wanted)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return pa.array(values)
