"""Sync a source into a warehouse table: what one of the org's sources answers (any kind: SQL table or query,
REST, derived, a warehouse table...) becomes the data of a load.

The source is read through the query service (``run_query`` with an empty spec, as POST
sources/{name}/query does), so the caller's permission, the row cap, the time limit, the result cache and the
source's variables apply exactly as for any other read; a source over more rows than the cap is refused
(413), never cut short. The rows then go through ``carnet.loads.load_table`` (origin ``sync``, the history's
actor says which source), and the ``warehouse_table`` sources over the table get a new version.

A warehouse_table source over the target table itself is refused: replace and upsert would copy the table
onto itself, append would double it and delete would empty it; none of that is a sync.
"""

from __future__ import annotations

import pyarrow as pa

from carnet.db import session_scope
from carnet.errors import CarnetError, NotFound, PermissionDenied, ValidationError
from carnet.loads import LoadResult, history, load_table
from carnet.loads.invalidation import after_load, forget_all
from carnet.loads.types import duckdb_type
from carnet.query.service import check_variables, find_source, run_query
from carnet.warehouse import check_identifier

MODES = ("replace", "append", "upsert", "delete")
ACTOR_MAX = 320  # WarehouseLoad.actor


def widen_decimals(table: pa.Table) -> pa.Table:
    """Decimals at the widest precision, their scale kept. SQL sources come back with types inferred from
    the values read (``numeric(10,2)`` holding 88.25 arrives as decimal(4,2)): a table made by the first sync
    would then refuse a later upsert of 999.99."""
    for index, field in enumerate(table.schema):
        if pa.types.is_decimal128(field.type) and field.type.precision < 38:
            wide = pa.decimal128(38, field.type.scale)
            column = table.column(index).cast(wide)
            table = table.set_column(index, pa.field(field.name, wide, field.nullable), column)
    return table


def check_sync(table, mode, key, types) -> tuple[str, str, list[str], dict[str, str]]:
    """The checked arguments of a sync, refused (400) before the source is read."""
    table = check_identifier(table, "table name", field="table")
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}", field="mode")
    if key is None:
        key = []
    elif isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not all(isinstance(name, str) for name in key):
        raise ValidationError("key must be a list of column names", field="key")
    key = [check_identifier(name, "key column", field="key") for name in key]
    if mode in ("upsert", "delete") and not key:
        raise ValidationError(f"mode {mode} needs key columns", field="key")
    if types is None:
        types = {}
    if not isinstance(types, dict):
        raise ValidationError("types must be an object {column: type}", field="types")
    for column, name in types.items():
        check_identifier(column, "column", field="types")
        duckdb_type(name, column)  # an unknown type is a 400 naming the column
    return table, mode, key, dict(types)


def sync_source(
    settings,
    session,
    principal,
    source_name: str,
    table: str,
    *,
    mode: str = "replace",
    key: list[str] | None = None,
    types: dict[str, str] | None = None,
    variables: dict | None = None,
    actor_id: int | None = None,
    actor: str = "",
    origin: str = "sync",
) -> LoadResult:
    """Load what ``source_name`` (of the principal's org) answers into ``table`` of the org's warehouse.

    A read that fails (server refused, timeout, over the row cap) is a failed load in the table's history
    and leaves the table as it was. Returns the load's result. ``session`` is only read from (the source);
    the history, the load and the new source versions commit on their own, so on SQLite it must not hold
    uncommitted writes.
    """
    for action in ("sources:read_data", "warehouse:load"):
        if not principal.can(action):
            raise PermissionDenied(f"Your role ({principal.role}) does not allow {action}")
    table, mode, key, types = check_sync(table, mode, key, types)
    variables = check_variables(variables)
    if not isinstance(source_name, str) or not source_name:
        raise ValidationError("source names the source to read", field="source")
    source = find_source(session, principal.org_id, source_name)  # another org's: the same 404
    if source.kind == "warehouse_table" and (source.options or {}).get("table") == table:
        raise ValidationError(
            f"The source {source_name!r} is the table {table!r} itself: nothing to sync", field="source"
        )
    who = f"sync {source_name} by {actor or principal.email}"[:ACTOR_MAX]
    actor_id = principal.user_id if actor_id is None else actor_id
    try:
        data = widen_decimals(run_query(session, settings, principal, source_name, {}, variables))
    except NotFound:
        raise
    except CarnetError as error:
        # The load never started: the history still shows the sync and why it failed.
        load_id = history.start(settings, principal.org_id, table, mode, actor_id, who, origin)
        history.finish(settings, load_id, "failed", 0, None, f"Reading {source_name!r}: {error.message}")
        raise
    result = load_table(
        settings,
        principal.org_id,
        table,
        data,
        mode=mode,
        key=key or None,
        types=types or None,
        actor_id=actor_id,
        actor=who,
        origin=origin,
    )
    # Committed on its own (the caller's session only read), then the cached answers are dropped.
    with session_scope(settings.db_url) as own:
        bumped = after_load(own, settings, principal.org_id, table)
    forget_all(settings, principal.org_id, bumped)
    return result
