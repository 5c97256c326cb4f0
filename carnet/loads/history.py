"""Load history (``warehouse_loads``): one row per load, written ``running`` before the warehouse is touched
and finished as ``succeeded`` or ``failed`` (with the error) after, each in its own short transaction so
that a load in progress is visible to others."""

from __future__ import annotations

from sqlalchemy import select, update

from carnet.db import session_scope
from carnet.db.models import WarehouseLoad, utcnow


def start(settings, org_id: int, table: str, mode: str, actor_id, actor: str, origin: str) -> int:
    with session_scope(settings.db_url) as session:
        row = WarehouseLoad(
            org_id=org_id,
            table_name=table,
            mode=mode,
            actor_id=actor_id,
            actor=actor or "",
            origin=origin or "api",
            status="running",
            rows_in=0,
        )
        session.add(row)
        session.flush()
        return row.id


def finish(
    settings, load_id: int, status: str, rows_in: int, rows_out: int | None, error: str | None
) -> None:
    with session_scope(settings.db_url) as session:
        row = session.get(WarehouseLoad, load_id)
        if row is None:  # the org was deleted meanwhile
            return
        row.status = status
        row.rows_in = rows_in
        row.rows_out = rows_out
        row.error = error[:2000] if error else None
        row.finished_at = utcnow()


def discard(settings, load_id: int) -> None:
    """Forget a load that changed nothing and is being done again (its reader gave up part way)."""
    with session_scope(settings.db_url) as session:
        row = session.get(WarehouseLoad, load_id)
        if row is not None:
            session.delete(row)


INTERRUPTED = "interrupted: the service stopped during the load"


def fail_interrupted(settings) -> int:
    """Mark every load still ``running`` as ``failed``; how many. Called once when the Carnet service starts,
    before it serves anything: loads run only inside that one process, so a row still running then was left
    by a process that died mid-load (its transaction rolled back: the previous table is intact)."""
    with session_scope(settings.db_url) as session:
        result = session.execute(
            update(WarehouseLoad)
            .where(WarehouseLoad.status == "running")
            .values(status="failed", error=INTERRUPTED, finished_at=utcnow())
        )
        return result.rowcount or 0


def as_dict(row: WarehouseLoad) -> dict:
    duration = None
    if row.finished_at is not None:
        duration = round((row.finished_at - row.started_at).total_seconds(), 3)
    return {
        "id": row.id,
        "table": row.table_name,
        "mode": row.mode,
        "actor_id": row.actor_id,
        "actor": row.actor,
        "origin": row.origin,
        "status": row.status,
        "rows_in": row.rows_in,
        "rows_out": row.rows_out,
        "error": row.error,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "duration_seconds": duration,
    }


def load_history(settings, org_id: int, table: str | None = None, limit: int = 50) -> list[dict]:
    """The org's loads, newest first, optionally of one table."""
    query = select(WarehouseLoad).where(WarehouseLoad.org_id == org_id)
    if table is not None:
        query = query.where(WarehouseLoad.table_name == table)
    limit = max(1, min(int(limit), 1000))
    with session_scope(settings.db_url) as session:
        rows = session.scalars(query.order_by(WarehouseLoad.id.desc()).limit(limit)).all()
        return [as_dict(row) for row in rows]
