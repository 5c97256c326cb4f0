"""/api/v1/connections: named SQL server connections (studio and admin only: they hold credentials).

Answers never hold the password, only ``"password": "set"|"unset"``; analysts and viewers cannot even list
connections (their settings name servers and accounts).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet import connections
from carnet.db.models import Connection, utcnow
from carnet.errors import Conflict, ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized

EDITABLE = frozenset({"name", "settings", "password"})
CREATE_FIELDS = frozenset({"name", "kind", "settings", "password"})


def _refuse_unknown(body: dict, allowed: frozenset) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])


def _settings_and_password(body: dict, current_password: str | None = None):
    """(stored settings, password) from a body, both checked; a password pasted in a URL counts as given."""
    settings, url_password = connections.split_settings(body.get("settings"))
    password = connections.new_password(body, current_password)
    if url_password is not None and body.get("password") in (None, connections.UNCHANGED):
        password = url_password
    checked = connections.validated(settings, password)
    return connections.stored_settings(checked), password, checked


class ConnectionListHandler(BaseHandler):
    @authorized("connections:read")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            rows = session.scalars(
                select(Connection).where(Connection.org_id == principal.org_id).order_by(Connection.name)
            ).all()
            self.write_json({"connections": [connections.connection_json(r) for r in rows]})

    @authorized("connections:manage")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        _refuse_unknown(body, CREATE_FIELDS)
        name = connections.check_name(body.get("name"))
        kind = connections.check_kind(body.get("kind", "sql"))
        settings, password, _ = _settings_and_password(body)
        try:
            with self.db() as session:
                row = Connection(
                    org_id=principal.org_id,
                    name=name,
                    kind=kind,
                    settings=settings,
                    created_by=principal.user_id,
                )
                session.add(row)
                session.flush()  # the id binds the ciphertext to this row
                connections.store_password(self.settings_obj, row, password)
                self.audit(
                    session,
                    "connection.create",
                    f"connection/{row.name}",
                    connection_id=row.id,
                    kind=kind,
                    fields=sorted(settings) + (["password"] if password else []),
                )
                session.flush()
                self.write_json(connections.connection_json(row), status=201)
        except IntegrityError:
            raise Conflict(f"A connection named {name!r} already exists") from None


class ConnectionHandler(BaseHandler):
    @authorized("connections:read")
    def get(self, connection_id):
        principal = self.principal()
        with self.db() as session:
            row = connections.find(session, principal.org_id, connection_id)
            data = connections.connection_json(row)
            data["sources"] = [s.name for s in connections.users_of(session, row)]
            self.write_json(data)

    @authorized("connections:manage")
    def patch(self, connection_id):
        principal = self.principal()
        body = self.get_json_body()
        _refuse_unknown(body, EDITABLE)
        try:
            with self.db() as session:
                row = connections.find(session, principal.org_id, connection_id)
                changed = []
                if "name" in body and body["name"] != row.name:
                    row.name = connections.check_name(body["name"])
                    changed.append("name")
                current = connections.read_password(self.settings_obj, row)
                merged = {**body, "settings": body.get("settings", row.settings)}
                settings, password, _ = _settings_and_password(merged, current)
                if settings != row.settings:
                    row.settings = settings
                    changed.append("settings")
                if password != current:
                    connections.store_password(self.settings_obj, row, password)
                    changed.append("password")
                if changed:
                    row.updated_at = utcnow()
                    if set(changed) - {"name"}:
                        connections.bump_sources(session, row)
                session.flush()
                # Field names only, never values.
                target = f"connection/{row.name}"
                self.audit(session, "connection.update", target, connection_id=row.id, fields=changed)
                self.write_json(connections.connection_json(row))
        except IntegrityError:
            raise Conflict(f"A connection named {body.get('name')!r} already exists") from None

    @authorized("connections:manage")
    def delete(self, connection_id):
        principal = self.principal()
        with self.db() as session:
            row = connections.find(session, principal.org_id, connection_id)
            users = [s.name for s in connections.users_of(session, row)]
            if users:
                raise Conflict(
                    f"The connection is used by {len(users)} source(s): {', '.join(users)}", sources=users
                )
            self.audit(session, "connection.delete", f"connection/{row.name}", connection_id=row.id)
            session.delete(row)
        self.set_status(204)


def _variables(body: dict) -> dict:
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        raise ValidationError("variables must be an object", field="variables")
    return variables


class ConnectionTestHandler(BaseHandler):
    """Connect with a saved connection's settings and password."""

    @authorized("connections:manage")
    async def post(self, connection_id):
        principal = self.principal()
        body = self.get_json_body()
        _refuse_unknown(body, frozenset({"variables"}))
        with self.db() as session:
            row = connections.find(session, principal.org_id, connection_id)
            checked = connections.validated(row.settings, connections.read_password(self.settings_obj, row))
        self.write_json(
            await asyncio.to_thread(
                connections.check_connection, self.settings_obj, checked, _variables(body)
            )
        )


class ConnectionTryHandler(BaseHandler):
    """Connect with settings that are not saved yet (the form's "Test" button)."""

    @authorized("connections:manage")
    async def post(self):
        body = self.get_json_body()
        _refuse_unknown(body, frozenset({"kind", "settings", "password", "variables"}))
        connections.check_kind(body.get("kind", "sql"))
        _, _, checked = _settings_and_password(body)
        self.write_json(
            await asyncio.to_thread(
                connections.check_connection, self.settings_obj, checked, _variables(body)
            )
        )


default_handlers = [
    (API_PREFIX + r"connections", ConnectionListHandler),
    (API_PREFIX + r"connections/test", ConnectionTryHandler),
    (API_PREFIX + r"connections/(?P<connection_id>[0-9]{1,18})", ConnectionHandler),
    (API_PREFIX + r"connections/(?P<connection_id>[0-9]{1,18})/test", ConnectionTestHandler),
]
