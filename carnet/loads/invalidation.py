"""After a load: the ``warehouse_table`` sources over the loaded table get a new version (part of every cache
key), and their stored answers are dropped once that change is committed. Shared by every way of loading
(the REST load and batch routes, push endpoints, syncs of a source into a table)."""

from __future__ import annotations

from sqlalchemy import select

from carnet.data_versions import bump_version
from carnet.db.models import DataSource
from carnet.query.cache import forget_source


def after_load(session, settings, org_id: int, table: str) -> list[int]:
    """Give every warehouse_table source over ``table`` a new version; their ids, whose stored answers the
    caller drops (``forget_all``) once this commits."""
    sources = session.scalars(
        select(DataSource).where(DataSource.org_id == org_id, DataSource.kind == "warehouse_table")
    ).all()
    bumped = []
    for source in sources:
        if (source.options or {}).get("table") == table:
            bump_version(source)
            bumped.append(source.id)
    return bumped


def forget_all(settings, org_id: int, source_ids: list[int]) -> None:
    for source_id in source_ids:
        forget_source(settings, org_id, source_id)
