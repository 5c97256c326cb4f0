"""/api/v1/sources: list, describe, create data sources, and read their data as Arrow IPC."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.db.models import DataSource
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import source_json
from carnet.sources import source_kinds

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def find_source(session, org_id: int, name: str) -> DataSource:
    source = session.scalar(select(DataSource).where(DataSource.org_id == org_id, DataSource.name == name))
    if source is None:
        raise NotFound(f"No source named {name!r}")
    return source


class SourceListHandler(BaseHandler):
    @authorized("sources:list")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            sources = session.scalars(
                select(DataSource).where(DataSource.org_id == principal.org_id).order_by(DataSource.name)
            ).all()
            self.write_json({"sources": [source_json(s) for s in sources]})

    @authorized("sources:create")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("A source needs a name (1-200 characters)", field="name")
        kind = source_kinds.get(str(body.get("kind", "")))
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ValidationError("options must be an object", field="options")
        options = kind.validate_options(options)
        try:
            with self.db() as session:
                source = DataSource(
                    org_id=principal.org_id,
                    name=name.strip(),
                    kind=kind.name,
                    description=str(body.get("description", "")),
                    options=options,
                    created_by=principal.user_id,
                )
                session.add(source)
                session.flush()
                # No options in the record: they may hold credentials.
                self.audit(
                    session, "source.create", f"source/{source.name}", source_id=source.id, kind=kind.name
                )
                session.flush()
                self.write_json(source_json(source), status=201)
        except IntegrityError:
            raise Conflict(f"A source named {name!r} already exists") from None


class SourceHandler(BaseHandler):
    @authorized("sources:list")
    def get(self, name):
        principal = self.principal()
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            data = source_json(source)
        kind = source_kinds.get(data["kind"])
        data["columns"] = kind.columns(self.settings_obj, principal.org_id, data["options"])
        self.write_json(data)


class SourceDataHandler(BaseHandler):
    """The rows of a source, as an Arrow IPC stream (never JSON: types survive, and it is fast)."""

    @authorized("sources:read_data")
    async def get(self, name):
        principal = self.principal()
        limit = self.get_query_argument("limit", None)
        if limit is not None:
            try:
                limit = int(limit)
            except ValueError:
                raise ValidationError("limit must be an integer", field="limit") from None
            if not 0 <= limit < 2**63:
                raise ValidationError("limit must be between 0 and 2**63 - 1", field="limit")
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            kind, options = source_kinds.get(source.kind), dict(source.options)
        table = await asyncio.to_thread(kind.read, self.settings_obj, principal.org_id, options, limit)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self.set_header("Content-Type", ARROW_STREAM)
        self.finish(sink.getvalue().to_pybytes())


default_handlers = [
    (API_PREFIX + r"sources", SourceListHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)", SourceHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)/data", SourceDataHandler),
]
