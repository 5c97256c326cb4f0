"""/api/v1/sources/{name}/query and /api/v1/query: the query service over REST, answers as Arrow IPC.

``POST sources/{name}/query`` takes a query spec (``columns, where, order_by, limit, group_by,
aggregates``; see carnet/query/spec.py) and ``variables``; ``POST query`` takes ``{"sql": "... {orders} ...",
"variables": {...}}``. Both only read (action ``sources:read_data``: analysts and up, and app kernels), so
nothing is audited, except an admin's ``?as_user=<id>`` (the answer that person's row rules give). The
blocking work runs in a thread with its own database session.
"""

from __future__ import annotations

import asyncio

from carnet.db import session_scope
from carnet.errors import PermissionDenied, ValidationError
from carnet.query.service import run_query, run_sql
from carnet.row_security import row_context_for
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.validation import parse_id


class QueryHandlerBase(BaseHandler):
    async def answer(self, function, *args) -> None:
        settings = self.settings_obj
        as_user = self.as_user()

        def work():
            with session_scope(settings.db_url) as session:
                row = None
                if as_user is not None:
                    row = row_context_for(session, self.principal(), as_user_id=as_user)
                    # Seeing rows as somebody else is an admin's check of the rules: on the record.
                    self.audit(session, "query.as_user", f"user/{as_user}")
                return function(session, settings, *args, row=row)

        await self.send_arrow(await asyncio.to_thread(work))

    def as_user(self) -> int | None:
        """``?as_user=<id>``: an admin reads as that member of the org, through that person's row rules."""
        value = self.get_query_argument("as_user", None)
        if value is None:
            return None
        if not self.principal().can("users:manage"):
            raise PermissionDenied("Only admins may read as another person")
        return parse_id(value, "No such person in this organization")


class SourceQueryHandler(QueryHandlerBase):
    @authorized("sources:read_data")
    async def post(self, name):
        principal = self.principal()
        body = self.get_json_body()
        variables = body.pop("variables", None)
        await self.answer(run_query, principal, name, body, variables)


class SqlQueryHandler(QueryHandlerBase):
    @authorized("sources:read_data")
    async def post(self):
        principal = self.principal()
        body = self.get_json_body()
        unknown = sorted(set(body) - {"sql", "variables"})
        if unknown:
            raise ValidationError(f"Unknown field {unknown[0]!r}: send sql and variables", field=unknown[0])
        await self.answer(run_sql, principal, body.get("sql"), body.get("variables"))


default_handlers = [
    (API_PREFIX + r"sources/(?P<name>[^/]+)/query", SourceQueryHandler),
    (API_PREFIX + r"query", SqlQueryHandler),
]
