"""``load``: what one of the organization's sources answers, synced into a warehouse table (replace, append
or upsert on key columns), through the Carnet service: the run POSTs ``warehouse/tables/{table}/sync`` with
its job token, as the CLI and kernels load. Only the service opens the org's DuckDB file
(docs/ARCHITECTURE.md: a second process writing while the service reads is refused by DuckDB).

The job token acts for the job's owner as far as the owner's CURRENT role allows (carnet.permissions
``JOB_OWNER_ACTIONS``): only studio and above make load jobs (they change the warehouse), and a run fails for
good once its owner may no longer load (the route's 403). The load's history names the job and the run
(origin ``job``, actor ``sync <source> by job '<name>' run <id>``).

A source's server that cannot be reached or answers too late (the route's 502 and 504), any other 5xx, and a
service that does not answer (connection refused, timed out) are transient: retried with the job's backoff.
Any other refusal (bad data, a refused query, an unknown source, the row cap) fails the run for good with the
service's message. The run's folder keeps ``load.json``: the load's result (rows in, rows in the table
after). A run retried after its load was recorded does not load again (an append would double the rows):
neither when ``load.json`` is there, nor when the table's history already holds this run's succeeded load (the
service loaded, its answer was lost).
"""

from __future__ import annotations

import json

import requests

from carnet.client import ApiClient, CarnetApiError
from carnet.db.models import Role
from carnet.errors import PermissionDenied, ValidationError
from carnet.loads.sync import check_sync
from carnet.query.service import find_source
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.executor import JobRunError, TransientRunError
from carnet.scheduler.kinds import JobKind, PlannedMail, register

MODES = ("replace", "append", "upsert")
FIELDS = ("source", "table", "mode", "key")
RESULT_FILE = "load.json"
RESULT_FIELDS = ("table", "mode", "status", "load_id", "rows_in", "rows_out", "duration_seconds")
# The route's answers for a source's server that could not be reached (ConnectionFailed) or answered too late
# (ConnectTimeout, QueryTimeout): worth trying again later, as is any other failure of the service itself.
SOURCE_UNREACHABLE = (502, 504)
# How far back a retry looks for its own load in the table's history (newest first).
HISTORY_LOOKBACK = 50


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

    def validate(self, session, settings, principal, body: dict) -> dict:
        if not principal.can("warehouse:load"):
            raise PermissionDenied(f"A load job needs the {self.min_role.value} role or above")
        return check_load_config(session, principal.org_id, body.get("config"))

    def prepare(self, executor, session, job, run, context) -> None:
        # Valid for as long as the run may take: the sync answers once the whole load is done.
        context.token = executor.mint_job_token(session, context, ttl_seconds=int(context.timeout) + 600)

    def execute(self, executor, context) -> list[PlannedMail]:
        result_path = context.output_dir / RESULT_FILE
        if result_path.exists():  # loaded on an earlier try whose end was not recorded
            return []
        config = context.config
        source, table = config["source"], config["table"]
        api = ApiClient(executor.settings.api_url, token=context.token, timeout=context.timeout)
        table_path = f"api/v1/warehouse/tables/{ApiClient.segment(table)}"
        answer = None
        if context.attempt > 1:
            answer = through_service(context, lambda: loaded_by_this_run(api, table_path, context.run_id))
        if answer is None:
            body = {"source": source, "mode": config["mode"], "key": config.get("key") or []}
            answer = through_service(context, lambda: api.post_json(f"{table_path}/sync", body))
        with written_then_renamed(result_path) as partial:
            result = {"source": source, **{name: answer.get(name) for name in RESULT_FIELDS}}
            partial.write_text(json.dumps(result, indent=2))
        return []


def loaded_by_this_run(api: ApiClient, table_path: str, run_id: int) -> dict | None:
    """This run's load as the table's history has it, when an earlier try's sync succeeded but its answer
    was lost (the service loaded, the scheduler stopped or timed out waiting): None when there is none.
    A load of this run still running is a transient failure (look again later)."""
    try:
        history = api.get_json(f"{table_path}/loads", limit=HISTORY_LOOKBACK)["loads"]
    except CarnetApiError as exc:
        if exc.status == 404:  # no such table yet: nothing was loaded into it
            return None
        raise
    for row in history:
        # The sync route's actor for a job token ends with the run (carnet/service/api/sync.py).
        if row["origin"] != "job" or not row["actor"].endswith(f" run {run_id}"):
            continue
        if row["status"] == "running":
            raise TransientRunError(f"This run's earlier load into {row['table']!r} is still running", "load")
        if row["status"] == "succeeded":
            return {**row, "load_id": row["id"]}
    return None


def through_service(context, call):
    """``call()`` against the Carnet service, its failures as the run's: transient (retried with backoff) or
    for good, with the service's message."""
    source, table = context.config["source"], context.config["table"]
    try:
        return call()
    except requests.RequestException as exc:  # refused, reset, timed out: the service may be restarting
        raise TransientRunError(f"The Carnet service did not answer: {type(exc).__name__}", "load") from None
    except CarnetApiError as exc:
        if exc.status in SOURCE_UNREACHABLE:
            raise TransientRunError(f"Reading {source!r}: {exc.message}", "load") from None
        if exc.status >= 500:
            raise TransientRunError(
                f"Loading {source!r} into {table!r}: {exc.message} (HTTP {exc.status})", "load"
            ) from None
        if exc.status == 403:
            raise JobRunError(
                f"The job's owner may no longer load the warehouse from {source!r}: {exc.message}", "load"
            ) from None
        raise JobRunError(f"Loading {source!r} into {table!r}: {exc.message}", "load") from None
