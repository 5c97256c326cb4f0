"""Versions of an organization's data: every change of what a source reads (a load, an upload, a new
definition, its connection or its row rules) gives the source a new version, and the organization's data
version is a hash of them all.

Caches key on these: the query service's stored answers (per source version), the Viewer's pooled pages and
snapshots, and the scheduler's held report pages (``data_version``), so nothing rendered over older data is
served as current. Shared by the service and the scheduler, hence not in a REST module.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from carnet.db.models import DataSource, utcnow


def bump_version(source: DataSource) -> None:
    """``source`` reads something new: cached results keyed on its old version are never served again."""
    source.version = (source.version or 1) + 1
    source.updated_at = utcnow()


def data_version(session, org_id: int) -> str:
    """A hash of the versions of the organization's sources: any load or source change gives a new one, so a
    page rendered over older data is never served as current."""
    versions = session.execute(
        select(DataSource.id, DataSource.version).where(DataSource.org_id == org_id).order_by(DataSource.id)
    ).all()
    return hashlib.sha256(json.dumps([list(v) for v in versions]).encode()).hexdigest()[:32]
