"""``load``: what one of the organization's sources answers, synced into a warehouse table (replace, append
or upsert on key columns), as POST warehouse/tables/{table}/sync does it: the same code
(carnet/loads/sync.py ``sync_source``), read as the job's owner, recorded in the table's load history
(origin ``job``).

Only studio and above make load jobs (they change the warehouse), and a run fails if its owner may no longer
load. A source's server that cannot be reached (or answers too late) is a transient failure, retried with
the job's backoff; anything else (bad data, a refused query, an unknown source) fails the run for good. The
run's folder keeps ``load.json``: the load's result (rows in, rows in the table after). A run retried after
its load was recorded does not load again (an append would double the rows).
"""

from __future__ import annotations

import json

from carnet.db import session_scope
from carnet.db.models import Role
from carnet.errors import CarnetError, ConnectionFailed, PermissionDenied, QueryTimeout, ValidationError
from carnet.loads.sync import check_sync
from carnet.query.service import find_source
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.executor import JobRunError, TransientRunError
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.sharing import member_reader

MODES = ("replace", "append", "upsert")
FIELDS = ("source", "table", "mode", "key")
RESULT_FILE = "load.json"
# What the job's owner acts through in the load's permission checks: a person's rights (their role), not a
# kernel's (a job token may only read).
OWNER_VIA = "scheduler"
# A source's server down or too slow: worth trying again later.
TRANSIENT_SOURCE_ERRORS = (ConnectionFailed, QueryTimeout)


def config_error(exc: ValidationError) -> ValidationError:
    """The sync checks' error, its field named as the job's body has it (``config.<field>``)."""
    field = f"config.{exc.fields.get('field') or 'source'}"
    return ValidationError(exc.message, field=field)


def check_load_config(session, org_id: int, config) -> dict:
    if not isinstance(config, dict):
        raise ValidationError("config must be an object {source, table, mode, key}", field="config")
    unknown = sorted(set(config) - set(FIELDS))
    if unknown:
        raise ValidationError(f"Unknown field 'config.{unknown[0]}'", field=f"config.{unknown[0]}")
    source = config.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ValidationError("config.source names the source to read", field="config.source")
    mode = config.get("mode", "replace")
    if mode not in MODES:
        raise ValidationError(f"config.mode must be one of {', '.join(MODES)}", field="config.mode")
    try:
        table, mode, key, _types = check_sync(config.get("table"), mode, config.get("key"), None)
    except ValidationError as exc:
        raise config_error(exc) from None
    found = find_source(session, org_id, source)  # another org's source: the same 404 as an unknown one
    if found.kind == "warehouse_table" and (found.options or {}).get("table") == table:
        raise ValidationError(
            f"The source {source!r} is the table {table!r} itself: nothing to load", field="config.source"
        )
    return {"source": source, "table": table, "mode": mode, "key": key}


@register
class LoadKind(JobKind):
    name = "load"
    description = "Sync one of the organization's sources into a warehouse table (replace, append, upsert)."
    min_role = Role.studio

    def validate(self, session, principal, body: dict) -> dict:
        if not principal.can("warehouse:load"):
            raise PermissionDenied(f"A load job needs the {self.min_role.value} role or above")
        return check_load_config(session, principal.org_id, body.get("config"))

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.loads.sync import sync_source

        result_path = context.output_dir / RESULT_FILE
        if result_path.exists():  # loaded on an earlier try whose end was not recorded
            return []
        config = context.config
        settings = executor.settings
        with session_scope(settings.db_url) as session:
            owner = member_reader(session, context.owner_id, context.org_id, OWNER_VIA)
            if owner is None:
                raise JobRunError("The job's owner is no longer an active member of the organization", "load")
            try:
                result = sync_source(
                    settings,
                    session,
                    owner,
                    config["source"],
                    config["table"],
                    mode=config["mode"],
                    key=config.get("key") or None,
                    actor_id=context.owner_id,
                    actor=f"job {context.job_name!r} run {context.run_id}",
                    origin="job",
                )
            except PermissionDenied as exc:
                raise JobRunError(
                    f"The job's owner may no longer load the warehouse: {exc.message}", "load"
                ) from None
            except TRANSIENT_SOURCE_ERRORS as exc:
                raise TransientRunError(f"Reading {config['source']!r}: {exc.message}", "load") from None
            except CarnetError as exc:
                raise JobRunError(
                    f"Loading {config['source']!r} into {config['table']!r}: {exc.message}", "load"
                ) from None
        with written_then_renamed(result_path) as partial:
            partial.write_text(
                json.dumps(
                    {
                        "source": config["source"],
                        "table": result.table,
                        "mode": result.mode,
                        "status": result.status,
                        "load_id": result.load_id,
                        "rows_in": result.rows_in,
                        "rows_out": result.rows_out,
                        "duration_seconds": round(result.duration_seconds, 3),
                    },
                    indent=2,
                )
            )
        return []
