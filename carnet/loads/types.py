"""Column types of loads: incoming data to Arrow, forced types to DuckDB types, and the check that names the
column, the row and the value a conversion would fail on (before anything is written)."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from carnet.errors import ValidationError

SIMPLE_TYPES = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "decimal": "DECIMAL(18,3)",
    "bool": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "datetime_tz": "TIMESTAMPTZ",
    "text": "VARCHAR",
}
# Row numbers (from 1) added to staged data: rowid is no row number inside a transaction.
ROW_COLUMN = "_carnet_row"
_DECIMAL = re.compile(r"^decimal\(\s*(\d{1,2})\s*,\s*(\d{1,2})\s*\)$")


class StreamAbandoned(Exception):
    """A stream of rows gave up part way (the fast CSV reader met a value its first block's types cannot
    hold): nothing was loaded, and the caller loads again from another reader. Not an error of the data."""


class AbandonableStream:
    """A RecordBatchReader whose producer may give up part way. Inside the load engine the giving up
    surfaces as a DuckDB error; ``abandoned`` tells the engine it was this, so it raises StreamAbandoned
    (and keeps no history row) instead of reporting a failed load."""

    def __init__(self, reader: pa.RecordBatchReader | None, _state: dict | None = None):
        self.reader = reader
        self._state = _state if _state is not None else {"abandoned": False}

    @property
    def abandoned(self) -> bool:
        return self._state["abandoned"]

    def give_up(self) -> None:
        self._state["abandoned"] = True

    def with_reader(self, reader: pa.RecordBatchReader) -> AbandonableStream:
        """The same stream (it gives up with this one) read through ``reader``, e.g. with renamed columns."""
        return AbandonableStream(reader, self._state)


def duckdb_type(name: str, column: str) -> str:
    """The DuckDB type of a forced type name (``int``, ``decimal(12,2)``...)."""
    spelled = name.strip().lower() if isinstance(name, str) else name
    if spelled in SIMPLE_TYPES:
        return SIMPLE_TYPES[spelled]
    match = _DECIMAL.fullmatch(spelled) if isinstance(spelled, str) else None
    if match and 1 <= int(match[1]) <= 38 and int(match[2]) <= int(match[1]):
        return f"DECIMAL({int(match[1])},{int(match[2])})"
    known = ", ".join([*SIMPLE_TYPES, "decimal(p,s)"])
    raise ValidationError(f"Unknown type {name!r} for column {column!r} (known: {known})", field=column)


def quote_column(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_column_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"Column names must be non-empty text, got {name!r}", field="columns")
        # DuckDB identifiers ignore case: "Sales" and "sales" would be the same column.
        if name.lower() in seen:
            raise ValidationError(f"Duplicate column name {name!r} (also {seen[name.lower()]!r})", field=name)
        seen[name.lower()] = name
    if ROW_COLUMN in seen:
        raise ValidationError(f"The column name {ROW_COLUMN!r} is reserved", field=ROW_COLUMN)


def numbered(data: pa.Table | pa.RecordBatchReader) -> pa.RecordBatchReader:
    """``data`` streamed with a ROW_COLUMN of row numbers from 1."""
    reader = data.to_reader() if isinstance(data, pa.Table) else data
    schema = reader.schema.append(pa.field(ROW_COLUMN, pa.int64()))

    def batches():
        start = 1
        for part in reader:
            # numpy builds the numbers in C: pa.array(range(...)) cost 1.5 s per million rows.
            numbers = pa.array(np.arange(start, start + part.num_rows, dtype=np.int64))
            yield pa.RecordBatch.from_arrays([*part.columns, numbers], schema=schema)
            start += part.num_rows

    return pa.RecordBatchReader.from_batches(schema, batches())


def to_arrow(data, forced: dict[str, str]) -> pa.Table | pa.RecordBatchReader:
    """Arrow for a pyarrow Table/RecordBatchReader, a pandas DataFrame or a list of dicts (JSON rows).

    A column mixing Python types (``[1, "x"]``) becomes text when a type is forced on it (the forced-type
    check then names the offending value); otherwise it is an error naming the column, row and value."""
    if isinstance(data, pa.Table | pa.RecordBatchReader):
        return data
    if isinstance(data, AbandonableStream):
        return data.reader
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data):
            raise ValidationError("Rows must be JSON objects (column name -> value)", field="rows")
        names: list[str] = []
        for row in data:
            names.extend(name for name in row if name not in names)
        columns = {name: [row.get(name) for row in data] for name in names}
        return pa.table({name: _column(name, values, forced) for name, values in columns.items()})
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        check_column_names([str(name) for name in data.columns])
        arrays = {}
        for name in data.columns:
            series = data[name]
            if series.dtype == object:
                arrays[str(name)] = _column(str(name), series.tolist(), forced)
            else:
                arrays[str(name)] = pa.Array.from_pandas(series)
        return pa.table(arrays) if arrays else pa.table({})
    raise ValidationError(
        "Data must be a pyarrow Table or RecordBatchReader, a pandas DataFrame or a list of rows",
        field="data",
    )


def _column(name: str, values: list, forced: dict[str, str]) -> pa.Array:
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if name in forced:
        return pa.array([None if _missing(v) else str(v) for v in values], type=pa.string())
    first = next((v for v in values if not _missing(v)), None)
    for row, value in enumerate(values, start=1):
        if not _missing(value) and type(value) is not type(first):
            raise ValidationError(
                f"Column {name!r} mixes types: row {row} has {value!r} ({type(value).__name__}) where "
                f"earlier rows have {type(first).__name__}; force a type for it",
                field=name,
                row=row,
            )
    raise ValidationError(f"Column {name!r} cannot be converted", field=name)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def conversion_problem(con, relation: str, column: str, target: str) -> tuple[int, object] | None:
    """The first (row number, value) of ``relation.column`` that does not convert to ``target``, or None.

    Rows are numbered from 1 in load order (the staging table's ROW_COLUMN). Integers also refuse
    fractions, which a plain CAST would round."""
    col = quote_column(column)
    bad = f"TRY_CAST({col} AS {target}) IS NULL"
    if target == "BIGINT":
        bad += f" OR TRY_CAST({col} AS DOUBLE) IS DISTINCT FROM TRY_CAST({col} AS BIGINT)::DOUBLE"
    row = con.execute(
        f"SELECT {ROW_COLUMN}, {col}::VARCHAR FROM {relation} "  # noqa: S608 - identifiers quoted
        f"WHERE {col} IS NOT NULL AND ({bad}) ORDER BY {ROW_COLUMN} LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


def check_conversions(con, relation: str, targets: dict[str, str], forced: dict[str, str]) -> None:
    """Raise a ValidationError naming column, row and value for the first failing conversion."""
    for column, target in targets.items():
        problem = conversion_problem(con, relation, column, target)
        if problem is not None:
            row, value = problem
            wanted = forced.get(column) or target
            raise ValidationError(
                f"Column {column!r}, row {row}: value {value!r} is not a valid {wanted}",
                field=column,
                row=row,
                value=value,
            )
