"""Loads into an org's warehouse table: replace, append, upsert and delete by key, and batches of them.

Every load is ONE DuckDB transaction on the process's one instance of the file (``open_cursor``): the data
goes to a staging table, is checked (column set, types with the failing row and value, keys), then the
table is changed (replace: drop + rename the staging table) and committed. Readers on other cursors keep
their snapshot until the commit, so they see the old or the new table, never a part of it; an error or a
killed process rolls everything back, the previous table untouched. Loads of one file take turns (the
instance's write lock). Other processes must not open the file while the service runs: they load through
the service's REST API.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import NoReturn

import duckdb

from carnet.errors import CarnetError, LoadFailed, NotFound, ValidationError
from carnet.loads import history
from carnet.loads.targets import load_target
from carnet.loads.types import (
    ROW_COLUMN,
    AbandonableStream,
    StreamAbandoned,
    check_column_names,
    check_conversions,
    duckdb_type,
    numbered,
    quote_column,
    to_arrow,
)
from carnet.warehouse import STAGING_PREFIX, check_identifier, open_warehouse

MODES = ("replace", "append", "upsert", "delete")
BATCH_OPS = {"insert": "append", "upsert": "upsert", "delete": "delete"}


@dataclass
class LoadResult:
    load_id: int | None
    table: str
    mode: str
    rows_in: int
    rows_out: int
    duration_seconds: float
    status: str


def load_table(
    settings,
    org_id: int,
    table: str,
    data,
    *,
    mode: str = "replace",
    key: list[str] | None = None,
    types: dict[str, str] | None = None,
    actor_id: int | None = None,
    actor: str = "",
    origin: str = "api",
) -> LoadResult:
    """Load ``data`` (Arrow table or record batch reader, pandas DataFrame, list of dicts) into ``table``."""
    if mode not in MODES:
        raise ValidationError(f"Unknown mode {mode!r} (known: {', '.join(MODES)})", field="mode")
    return _load(settings, org_id, table, mode, [(mode, data)], key, types, actor_id, actor, origin)


def batch(
    settings,
    org_id: int,
    table: str,
    operations: list[dict],
    *,
    key: list[str],
    actor_id=None,
    actor="",
    origin="api",
) -> LoadResult:
    """Apply ``[{"op": "insert"|"upsert"|"delete", "rows": ...}, ...]`` in order, in one transaction."""
    if not isinstance(operations, list) or not operations:
        raise ValidationError("A batch needs a non-empty list of operations", field="operations")
    steps = []
    for index, operation in enumerate(operations):
        op = operation.get("op") if isinstance(operation, dict) else None
        if op not in BATCH_OPS:
            raise ValidationError(
                f"Operation {index + 1}: op must be insert, upsert or delete", field=f"operations[{index}].op"
            )
        steps.append((BATCH_OPS[op], operation.get("rows")))
    return _load(settings, org_id, table, "batch", steps, key, None, actor_id, actor, origin)


def _load(settings, org_id, table, mode, steps, key, types, actor_id, actor, origin) -> LoadResult:
    check_identifier(table, field="table")
    if table.startswith(STAGING_PREFIX):
        raise ValidationError(f"Table names starting with {STAGING_PREFIX!r} are reserved", field="table")
    key = _check_key(key, required=any(step[0] in ("upsert", "delete") for step in steps))
    forced = {column: duckdb_type(name, column) for column, name in (types or {}).items()}
    started = time.monotonic()
    load_id = history.start(settings, org_id, table, mode, actor_id, actor, origin)
    rows_in = 0
    try:
        rows_in, rows_out = _run(settings, org_id, table, steps, key, forced, types or {})
    except BaseException as error:
        if any(isinstance(data, AbandonableStream) and data.abandoned for _, data in steps):
            # The transaction rolled back and nothing happened: the caller loads again from another reader.
            history.discard(settings, load_id)
            raise StreamAbandoned(str(error).splitlines()[0][:300]) from None
        _record_failure(settings, load_id, table, rows_in, error)
    history.finish(settings, load_id, "succeeded", rows_in, rows_out, None)
    return LoadResult(
        load_id, table, mode, rows_in, rows_out, round(time.monotonic() - started, 3), "succeeded"
    )


def _record_failure(settings, load_id: int, table: str, rows_in: int, error: BaseException) -> NoReturn:
    """Finish the history row as failed and raise what the caller gets (a DuckDB error as a CarnetError)."""
    if isinstance(error, duckdb.Error):
        failure = _load_error(table, error)
        history.finish(settings, load_id, "failed", rows_in, None, failure.message)
        raise failure from None
    message = error.message if isinstance(error, CarnetError) else f"{type(error).__name__}: {error}"
    history.finish(settings, load_id, "failed", rows_in, None, message)
    raise error


# DuckDB errors that come from the data itself (a type DuckDB cannot read, a value it cannot convert): the
# caller's to fix, so a 400; anything else (disk, memory, a bug) is the warehouse's failure, a 500.
_INPUT_ERRORS = (
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.NotImplementedException,
    duckdb.OutOfRangeException,
    duckdb.TypeMismatchException,
    duckdb.ConstraintException,
    duckdb.BinderException,
)


def _load_error(table: str, error: duckdb.Error) -> CarnetError:
    detail = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
    if isinstance(error, _INPUT_ERRORS):
        return ValidationError(f"The data cannot be loaded into {table!r}: {detail}", field="data")
    return LoadFailed(f"The load into {table!r} failed: {detail}")


def _check_key(key, required: bool) -> list[str]:
    if key is None or key == []:
        if required:
            raise ValidationError("Upsert and delete need the key columns (key=[...])", field="key")
        return []
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not all(isinstance(name, str) and name for name in key):
        raise ValidationError("key must be a list of column names", field="key")
    check_column_names(key)
    return key


def _run(settings, org_id, table, steps, key, forced, type_names) -> tuple[int, int]:
    with load_target(settings, org_id) as target:
        rows_in = sum(_apply(target, table, mode, data, key, forced, type_names) for mode, data in steps)
        return rows_in, target.count(table)


def _apply(target, table, mode, data, key, forced, type_names) -> int:
    con = target.con
    incoming = to_arrow(data, type_names)
    names = list(incoming.schema.names)
    if not names:
        raise ValidationError("The data has no columns", field="data")
    check_column_names(names)
    unknown = sorted(set(forced) - set(names))
    if unknown:
        raise ValidationError(f"Type given for unknown column {unknown[0]!r}", field=unknown[0])
    existing = target.existing(table)
    # Row numbers name the row of a bad value or key. A reload (or a new table) without forced types checks
    # no value, so its rows go in as they come: no numbering, no extra column to drop afterwards.
    creates = mode == "replace" or (existing is None and mode in ("append", "upsert"))
    with_numbers = bool(forced) or not creates or mode == "upsert"
    staging = f'"{STAGING_PREFIX}{uuid.uuid4().hex}"'
    view = f"incoming_{uuid.uuid4().hex}"
    con.register(view, numbered(incoming) if with_numbers else incoming)
    try:
        con.execute(f"CREATE TABLE {staging} AS SELECT * FROM {view}")  # noqa: S608 - generated names
    finally:
        con.unregister(view)
    rows = con.execute(f"SELECT count(*) FROM {staging}").fetchone()[0]  # noqa: S608
    if creates:
        _check_conversions(con, staging, forced, type_names)
        targets = {name: forced.get(name) for name in names}
        if mode == "upsert":
            _check_keys(con, staging, key, targets, unique=True)
        target.replace(table, staging, targets, exists=existing is not None, numbered=with_numbers)
    elif existing is None:
        raise NotFound(f"No table {table!r} in the warehouse")
    else:
        targets = _targets(con, existing, names, key, mode, forced)
        _check_conversions(con, staging, targets, type_names)
        if mode in ("upsert", "delete"):
            _check_keys(con, staging, key, targets, unique=mode == "upsert")
            target.delete_matching(table, staging, key, targets)
        if mode in ("append", "upsert"):
            target.insert(table, staging, targets)
    con.execute(f"DROP TABLE IF EXISTS {staging}")
    return rows


def _check_conversions(con, staging, targets, type_names) -> None:
    wanted = {name: target for name, target in targets.items() if target is not None}
    try:
        check_conversions(con, staging, wanted, type_names)
    except duckdb.Error:
        # No conversion between the two types at all (a date column to int): name the first such column.
        for name, target in wanted.items():
            try:
                check_conversions(con, staging, {name: target}, type_names)
            except duckdb.Error:
                raise ValidationError(
                    f"Column {name!r} cannot be converted to {target}", field=name
                ) from None
        raise


def _targets(con, existing: dict[str, str], names, key, mode, forced) -> dict[str, str]:
    """Incoming column -> the existing column's type; the column sets must match (delete: the key only)."""
    lower = {name.lower(): name for name in existing}
    incoming = {name.lower(): name for name in names}
    for k in key:
        if k.lower() not in lower:
            raise ValidationError(f"Key column {k!r} is not a column of the table", field=k)
        if k.lower() not in incoming:
            raise ValidationError(f"Key column {k!r} is missing from the data", field=k)
    if mode == "delete":
        used = [incoming[k.lower()] for k in key]
    else:
        extra = sorted(name for low, name in incoming.items() if low not in lower)
        missing = sorted(name for low, name in lower.items() if low not in incoming)
        if extra or missing:
            parts = [
                f"unknown columns {extra}" if extra else "",
                f"missing columns {missing}" if missing else "",
            ]
            raise ValidationError(
                "The data's columns differ from the table's: " + "; ".join(p for p in parts if p),
                field=(extra or missing)[0],
            )
        used = names
    targets = {}
    for name in used:
        target = existing[lower[name.lower()]]
        if name in forced and _same_type(con, forced[name], target) is False:
            raise ValidationError(
                f"Column {name!r} is {target} in the table, not {forced[name]}: "
                "reload the table to change it",
                field=name,
            )
        targets[name] = target
    return targets


def _same_type(con, first: str, second: str) -> bool:
    row = con.execute(f"SELECT typeof(CAST(NULL AS {first})) = typeof(CAST(NULL AS {second}))").fetchone()
    return bool(row[0])


def _check_keys(con, staging, key, targets, unique: bool) -> None:
    for k in key:
        row = con.execute(
            f"SELECT {ROW_COLUMN} FROM {staging} "  # noqa: S608 - quoted or generated names
            f"WHERE {quote_column(k)} IS NULL ORDER BY {ROW_COLUMN} LIMIT 1"
        ).fetchone()
        if row:
            raise ValidationError(f"Key column {k!r} is empty (NULL) in row {row[0]}", field=k, row=row[0])
    if not unique:
        return
    # Duplicates are refused rather than "last wins": two versions of a row in one upsert is most often a bug
    # upstream, and silently keeping one would hide it.
    cast = ", ".join(
        quote_column(k) if targets.get(k) is None else f"CAST({quote_column(k)} AS {targets[k]})" for k in key
    )
    row = con.execute(
        f"SELECT {cast}, list({ROW_COLUMN} ORDER BY {ROW_COLUMN}) FROM {staging} "  # noqa: S608
        f"GROUP BY ALL HAVING count(*) > 1 ORDER BY min({ROW_COLUMN}) LIMIT 1"
    ).fetchone()
    if row:
        values = ", ".join(f"{k}={v!r}" for k, v in zip(key, row[:-1], strict=True))
        raise ValidationError(
            f"Duplicate key ({values}) in rows {', '.join(map(str, row[-1][:5]))}",
            field=key[0],
            rows=row[-1][:5],
        )


def warehouse_tables(settings, org_id: int) -> list[dict]:
    """[{name, rows, columns: [{name, type}]}] of the org's warehouse tables."""
    return open_warehouse(settings, org_id).table_stats()
