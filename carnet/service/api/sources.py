"""/api/v1/sources: list, describe, create data sources, and read their data as Arrow IPC."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.data_versions import bump_version
from carnet.db import session_scope
from carnet.db.models import DataSource
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.permissions import Principal, refuse_outside_scope
from carnet.query.cache import forget_source
from carnet.query.service import own_variables, run_query
from carnet.query.spec import MAX_LIMIT as MAX_SPEC_LIMIT
from carnet.query.spec import parse_spec
from carnet.row_security import row_context_for
from carnet.service.api import source_definitions as definitions
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.sources import source_context, source_kinds
from carnet.validation import refuse_hidden_characters

EDITABLE_SOURCE_FIELDS = frozenset({"name", "description", "options", "connection"})
MAX_DESCRIPTION = 10_000


def shows_settings(principal: Principal) -> bool:
    """Connection settings (``options``) are for those who may change sources; analysts see name, kind,
    description and columns only."""
    return principal.can("sources:manage")


def check_source_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200 or "/" in name:
        raise ValidationError("A source needs a name of 1-200 characters, without '/'", field="name")
    return refuse_hidden_characters(name.strip(), "name")


def check_description(description) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ValidationError(
            f"description must be text of at most {MAX_DESCRIPTION} characters", field="description"
        )
    return description


def kind_of(source: DataSource):
    """The source's kind, or None when its package is gone (the source still lists)."""
    try:
        return source_kinds.get(source.kind)
    except ValidationError:
        return None


def source_json(source: DataSource, with_settings: bool, session=None, settings=None) -> dict:
    return definitions.source_answer(session, settings, source, kind_of(source), with_settings)


def request_variables(handler) -> dict:
    """``?var.<name>=<value>``: the caller's values of the source's ``{{variables}}``."""
    return {
        key[4:]: handler.get_query_argument(key)
        for key in handler.request.query_arguments
        if key.startswith("var.") and len(key) > 4
    }


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
            if principal.scope is not None:  # an anonymous visitor's kernel: its app's sources only
                sources = [s for s in sources if principal.scope.allows(s.name)]
            with_settings = shows_settings(principal)
            self.write_json(
                {"sources": [source_json(s, with_settings, session, self.settings_obj) for s in sources]}
            )

    @authorized("sources:create")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        name = check_source_name(body.get("name"))
        description = check_description(body.get("description", ""))
        kind = source_kinds.get(str(body.get("kind", "")))
        # Secret fields are split off the options (encrypted below, once the row has its id).
        options, secrets = definitions.merged_options(kind, body.get("options") or {})
        try:
            with self.db() as session:
                connection = definitions.connection_for(
                    session, principal.org_id, kind, body.get("connection"), options
                )
                kind.check_references(session, principal.org_id, name, options)
                source = DataSource(
                    org_id=principal.org_id,
                    name=name,
                    kind=kind.name,
                    description=description,
                    options=options,
                    connection_id=connection.id if connection else None,
                    created_by=principal.user_id,
                )
                session.add(source)
                session.flush()
                definitions.store_secrets(self.settings_obj, source, secrets)
                # No options in the record: they may hold credentials.
                self.audit(
                    session, "source.create", f"source/{source.name}", source_id=source.id, kind=kind.name
                )
                session.flush()
                self.write_json(source_json(source, True, session, self.settings_obj), status=201)
        except IntegrityError:
            raise Conflict(f"A source named {name!r} already exists") from None


class SourceHandler(BaseHandler):
    @authorized("sources:list")
    def get(self, name):
        principal = self.principal()
        refuse_outside_scope(principal, name)
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            data = source_json(source, shows_settings(principal), session, self.settings_obj)
            variables = request_variables(self)
            if principal.scope is not None:  # an embed URL's signed variables (those this source takes)
                variables = {**variables, **own_variables(source, principal.scope.variables)}
            context = source_context(session, self.settings_obj, source, variables)
        data["columns"] = source_kinds.get(data["kind"]).columns(context)
        self.write_json(data)

    @authorized("sources:manage")
    def patch(self, name):
        principal = self.principal()
        body = self.get_json_body()
        unknown = sorted(set(body) - EDITABLE_SOURCE_FIELDS)
        if unknown:
            raise ValidationError(f"These fields cannot be changed: {', '.join(unknown)}", field=unknown[0])
        try:
            with self.db() as session:
                source = find_source(session, principal.org_id, name)
                changed = []
                if "name" in body and body["name"] != source.name:
                    source.name = check_source_name(body["name"])
                    changed.append("name")
                if "description" in body:
                    source.description = check_description(body["description"])
                    changed.append("description")
                kind = source_kinds.get(source.kind)
                if "options" in body:
                    current = definitions.read_secrets(self.settings_obj, source)
                    source.options, secrets = definitions.merged_options(kind, body["options"], current)
                    changed.append("options")
                    kind.check_references(session, principal.org_id, source.name, source.options)
                    if secrets != current:
                        definitions.store_secrets(self.settings_obj, source, secrets)
                        changed.append("secrets")
                if "connection" in body or ("options" in body and kind.needs_connection):
                    current_ref = source.connection_id
                    connection = definitions.connection_for(
                        session, principal.org_id, kind, body.get("connection", current_ref), source.options
                    )
                    if (connection.id if connection else None) != current_ref:
                        source.connection_id = connection.id if connection else None
                        changed.append("connection")
                bump_version(source)
                session.flush()
                # Which fields changed, never their values: options may hold credentials.
                self.audit(
                    session, "source.update", f"source/{source.name}", source_id=source.id, fields=changed
                )
                self.write_json(source_json(source, True, session, self.settings_obj))
        except IntegrityError:
            raise Conflict(f"A source named {body.get('name')!r} already exists") from None

    @authorized("sources:manage")
    def delete(self, name):
        principal = self.principal()
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            self.audit(
                session, "source.delete", f"source/{source.name}", source_id=source.id, kind=source.kind
            )
            source_id = source.id
            session.delete(source)
        # Its cached answers can never be asked for again (ids are not reused): free their space.
        forget_source(self.settings_obj, principal.org_id, source_id)
        self.set_status(204)


class SourceTestHandler(BaseHandler):
    """Check that a source answers (its table exists, its columns can be read) without reading its rows."""

    @authorized("sources:manage")
    async def post(self, name):
        principal = self.principal()
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            kind, context = source_kinds.get(source.kind), source_context(session, self.settings_obj, source)
        self.write_json(await asyncio.to_thread(kind.test, context))


def read_rows(kind, context, limit: int | None) -> pa.Table:
    """All the rows, or the first ``limit`` (asked of the source itself when it can take a query)."""
    if limit is not None and kind.pushes_down and limit <= MAX_SPEC_LIMIT:
        return kind.read(context, parse_spec({"limit": limit}, known_columns=()))
    table = kind.read(context, None)
    return table if limit is None else table.slice(0, limit)


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
        refuse_outside_scope(principal, name)
        with self.db() as session:
            source = find_source(session, principal.org_id, name)
            kind = source_kinds.get(source.kind)
            context = source_context(session, self.settings_obj, source, request_variables(self))
            row = row_context_for(session, principal)
        if row.restricted:
            # Row rules (of this source, or of the sources a derived one reads) apply to this person: the
            # query service reads it, under the usual row cap.
            await self.send_arrow(await asyncio.to_thread(self._restricted_rows, name, limit, row))
            return
        await self.send_arrow(await asyncio.to_thread(read_rows, kind, context, limit))

    def _restricted_rows(self, name: str, limit: int | None, row) -> pa.Table:
        spec = {} if limit is None else {"limit": min(limit, MAX_SPEC_LIMIT)}
        with session_scope(self.settings_obj.db_url) as session:
            return run_query(
                session, self.settings_obj, self.principal(), name, spec, request_variables(self), row=row
            )


default_handlers = [
    (API_PREFIX + r"sources", SourceListHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)", SourceHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)/data", SourceDataHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)/test", SourceTestHandler),
]
