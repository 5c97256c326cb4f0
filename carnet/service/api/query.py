"""/api/v1/sources/{name}/query and /api/v1/query: the query service over REST, answers as Arrow IPC.

``POST sources/{name}/query`` takes a query spec (``columns, where, order_by, limit, group_by,
aggregates``; see carnet/query/spec.py) and ``variables``; ``POST query`` takes ``{"sql": "... {orders} ...",
"variables": {...}}``. Both only read (action ``sources:read_data``: analysts and up, and app kernels), so
nothing is audited. The blocking work runs in a thread with its own database session.
"""

from __future__ import annotations

import asyncio

from carnet.db import session_scope
from carnet.errors import ValidationError
from carnet.query.service import run_query, run_sql
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized


class QueryHandlerBase(BaseHandler):
    async def answer(self, function, *args) -> None:
        settings = self.settings_obj

        def work():
            with session_scope(settings.db_url) as session:
                return function(session, settings, *args)

        await self.send_arrow(await asyncio.to_thread(work))


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
