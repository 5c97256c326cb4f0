"""POST /api/v1/warehouse/tables/{table}/sync: load what one of the org's sources answers into a table.

Body ``{"source": name, "mode": "replace"|"append"|"upsert"|"delete", "key": [...], "types": {...},
"variables": {...}}``; the answer is the load route's ``{load_id, table, mode, status, rows_in, rows_out,
duration_seconds}``. Studio's, like any load (``warehouse:load``); the source is read as its caller reads it
(carnet/loads/sync.py), so another org's source is the same 404 as an unknown one. A job run's token (a
``load`` job: scheduler/kinds/load.py) loads as the job's owner; its load history names the job and run
(origin ``job``).
"""

from __future__ import annotations

import asyncio

from carnet.db import session_scope
from carnet.db.models import JobRun, TokenKind
from carnet.errors import ValidationError
from carnet.loads.sync import sync_source
from carnet.service.api.base import API_PREFIX, authorized
from carnet.service.api.warehouse import LOAD, TABLE, WarehouseHandler, result_json, table_name
from carnet.tokens import resolve_token

FIELDS = {"source", "mode", "key", "types", "variables"}


class SyncHandler(WarehouseHandler):
    def job_run_actor(self) -> str | None:
        """What a job run's token is, for the load's history: ``job 'name' run N`` (the owner is the
        history's actor_id), so that the run (and its retry) can find its own load."""
        with self.db() as session:
            resolved = resolve_token(session, self._bearer() or "")
            run_id = resolved[0].job_run_id if resolved is not None else None
            run = session.get(JobRun, run_id) if run_id else None
            return f"job {run.job.name!r} run {run.id}" if run is not None else None

    @authorized(LOAD)
    async def post(self, table):
        table = table_name(table)
        body = self.get_json_body()
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ValidationError("source names the source to read", field="source")
        principal, settings = self.principal(), self.settings_obj
        actor_id, actor, _ = self.actor()
        origin = "sync"
        if principal.via == TokenKind.job:
            origin, actor = "job", self.job_run_actor() or actor

        def work():
            with session_scope(settings.db_url) as session:
                return sync_source(
                    settings,
                    session,
                    principal,
                    source,
                    table,
                    mode=body.get("mode", "replace"),
                    key=body.get("key"),
                    types=body.get("types"),
                    variables=body.get("variables"),
                    actor_id=actor_id,
                    actor=actor,
                    origin=origin,
                )

        result = await asyncio.to_thread(work)
        # The sources over the table are bumped by sync_source already; the audit says which source.
        with self.db() as session:
            self.audit(
                session,
                "warehouse.sync",
                f"table/{table}",
                table=table,
                source=source,
                mode=result.mode,
                rows=result.rows_in,
                rows_out=result.rows_out,
                load_id=result.load_id,
            )
            self.write_json(result_json(result))


default_handlers = [(API_PREFIX + TABLE + r"/sync", SyncHandler)]
