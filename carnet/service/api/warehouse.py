"""/api/v1/warehouse/tables...: the organization's warehouse tables, their load history, and loads.

Reads (list, describe, preview, history) are for analysts and up; loads are studio's (``warehouse:load``).
A load's body is the data itself — an Arrow IPC stream, Parquet, or CSV/TSV/Excel parsed like an upload —
streamed to a temporary file in the org's data directory (carnet/service/api/streamed_body.py), then handed
to the load engine (carnet.loads), which records the load's history. After a load, the sources of kind
``warehouse_table`` over that table get a new version, so cached answers of the old data are not served.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from tornado import web

from carnet import loads
from carnet.errors import NotFound, ValidationError
from carnet.loads.invalidation import after_load, forget_all
from carnet.row_security import refuse_ruled_table, ruled_tables
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.streamed_body import StreamedBodyMixin
from carnet.uploads import follow_load_file, load_file, options_from_query, preview_rows
from carnet.warehouse import check_identifier, open_warehouse

READ, LOAD = "warehouse:read", "warehouse:load"
MODES = ("replace", "append", "upsert", "delete")
FORMATS = ("arrow", "parquet", "csv", "tsv", "xlsx")
BATCH_OPS = ("insert", "upsert", "delete")
MAX_PREVIEW = 1000
# Threads that load a CSV body while it arrives (each waits for its body, so not asyncio's default pool): a
# body that finds them all busy is loaded once it has arrived, as any other.
FOLLOWERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="carnet-follow-load")
TABLE = r"warehouse/tables/(?P<table>[^/]+)"


def table_name(value: str) -> str:
    # One plain identifier: "../x", quoted names and schema.table are refused here, before any SQL.
    return check_identifier(value, "table name", field="table")


def key_columns(value, field: str = "key") -> list[str]:
    """``a,b`` (query) or ``["a", "b"]`` (JSON) -> checked column names."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationError("key must be a list of column names", field=field)
    return [check_identifier(n.strip(), "key column", field=field) for n in names if n.strip()]


def check_mode(mode: str, key: list[str], modes=MODES) -> str:
    if mode not in modes:
        raise ValidationError(f"mode must be one of {', '.join(modes)}", field="mode")
    if mode in ("upsert", "delete") and not key:
        raise ValidationError(f"mode {mode} needs key columns (key=a,b)", field="key")
    return mode


def table_info(settings, org_id: int, table: str) -> dict:
    for info in loads.warehouse_tables(settings, org_id):
        if info["name"] == table:
            return info
    raise NotFound(f"No table {table!r} in the warehouse")


def result_json(result) -> dict:
    return {
        "load_id": result.load_id,
        "table": result.table,
        "mode": result.mode,
        "status": result.status,
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "duration_seconds": round(result.duration_seconds, 3),
    }


def actor_name(principal) -> str:
    """Who a load's history names: the person, or the API key (a program acting for its creator)."""
    return f"api key {principal.key_name}" if principal.via == "api_key" else principal.email


def read_stream_body(path: Path, fmt: str) -> pa.RecordBatchReader:
    """An Arrow or Parquet load body on disk as a stream of batches (never the whole file in memory)."""
    try:
        if fmt == "arrow":
            return pa.ipc.open_stream(pa.memory_map(str(path)))
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet.iter_batches())
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"The body is not a readable {fmt} stream: {exc}", field="body") from None


class WarehouseHandler(BaseHandler):
    def without_ruled_counts(self, tables: list[dict]) -> list[dict]:
        """A restricted person sees a table with row rules (carnet.row_security) without its row count:
        the count of all rows, or of one region once another is filtered, is what the rules keep from them."""
        with self.db() as session:
            ruled = ruled_tables(session, self.principal())
        return [{**info, "rows": None} if info["name"] in ruled else info for info in tables]

    def actor(self) -> tuple[int, str, str]:
        principal = self.principal()
        name = actor_name(principal)
        origin = "kernel" if principal.via == "studio_kernel" else "api"
        if self.get_query_argument("origin", None) == "cli":
            origin = "cli"
        return principal.user_id, name, origin

    def finish_load(self, table: str, result, answer: dict | None = None, **details) -> None:
        """Audit the load (never the data), bump the sources over the table, answer the result."""
        principal = self.principal()
        with self.db() as session:
            bumped = after_load(session, self.settings_obj, principal.org_id, table)
            self.audit(
                session,
                "warehouse.load",
                f"table/{table}",
                table=table,
                mode=result.mode,
                rows=result.rows_in,
                rows_out=result.rows_out,
                load_id=result.load_id,
                **details,
            )
            self.write_json({**result_json(result), **(answer or {})})
        forget_all(self.settings_obj, principal.org_id, bumped)


class TablesHandler(WarehouseHandler):
    @authorized(READ)
    async def get(self):
        org_id = self.principal().org_id
        tables = await asyncio.to_thread(loads.warehouse_tables, self.settings_obj, org_id)
        self.write_json({"tables": self.without_ruled_counts(tables)})


class TableHandler(WarehouseHandler):
    @authorized(READ)
    async def get(self, table):
        table = table_name(table)
        info = await asyncio.to_thread(table_info, self.settings_obj, self.principal().org_id, table)
        self.write_json(self.without_ruled_counts([info])[0])


class PreviewHandler(WarehouseHandler):
    @authorized(READ)
    async def get(self, table):
        table = table_name(table)
        limit = self.get_query_argument("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PREVIEW:
            raise ValidationError(f"limit must be a whole number from 1 to {MAX_PREVIEW}", field="limit")
        org_id = self.principal().org_id
        with self.db() as session:
            refuse_ruled_table(session, self.principal(), table)
        info = await asyncio.to_thread(table_info, self.settings_obj, org_id, table)
        warehouse = open_warehouse(self.settings_obj, org_id)
        data = await asyncio.to_thread(warehouse.read_arrow, table, int(limit))
        self.write_json({"table": table, "columns": info["columns"], "rows": preview_rows(data, int(limit))})


class HistoryHandler(WarehouseHandler):
    @authorized(READ)
    async def get(self, table):
        table = table_name(table)
        limit = self.get_query_argument("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ValidationError("limit must be a whole number from 1 to 1000", field="limit")
        org_id = self.principal().org_id
        history = await asyncio.to_thread(loads.load_history, self.settings_obj, org_id, table, int(limit))
        if not history:  # a table never loaded through Carnet still exists; an unknown one is a 404
            await asyncio.to_thread(table_info, self.settings_obj, org_id, table)
        self.write_json({"table": table, "loads": history})


@web.stream_request_body
class LoadHandler(StreamedBodyMixin, WarehouseHandler):
    """POST the data as the body: ``?format=arrow|parquet|csv|tsv|xlsx&mode=...&key=a,b&type.<col>=int``."""

    def prepare_body(self):
        self.check_caller(LOAD)
        arg = self.get_query_argument
        self.table = table_name(self.path_kwargs["table"])
        self.format = (arg("format", None) or "arrow").lower()
        if self.format not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}", field="format")
        self.key = key_columns(arg("key", None) or "")
        self.mode = check_mode(arg("mode", None) or "replace", self.key)
        self.types = {
            check_identifier(name.removeprefix("type."), "column", field=name): values[-1].decode()
            for name, values in self.request.query_arguments.items()
            if name.startswith("type.")
        }
        # CSV/TSV/Excel: the upload parser's options (delimiter, encoding, header...) from the same query.
        self.options = (
            options_from_query(lambda name: arg(name, None), self.get_query_arguments)
            if self.format in ("csv", "tsv", "xlsx")
            else None
        )
        self.start_body(prefix="load-")
        self._loader = self._make_loader()
        self._followed = None
        if self.format in ("csv", "tsv") and self._refusal is None:
            # Parse and ingest while the body arrives (it gives up, undoing itself, when the body is
            # small, odd or slow: post() then loads the whole file as before).
            body = self.follow_body()
            self._followed = FOLLOWERS.submit(follow_load_file, body, self.options, self._loader)

    def _make_loader(self):
        actor_id, actor, origin = self.actor()
        org_id = self.principal().org_id

        def load(data):
            return loads.load_table(
                self.settings_obj,
                org_id,
                self.table,
                data,
                mode=self.mode,
                key=self.key or None,
                types=self.types or None,
                actor_id=actor_id,
                actor=actor,
                origin=origin,
            )

        return load

    def _load(self, path: Path):
        if self.options is None:  # Arrow or Parquet
            self.renamed = {}
            return self._loader(read_stream_body(path, self.format))
        # CSV/TSV/Excel: header names made warehouse identifiers (warehouse column -> the file's name, as
        # an upload answers); CSV parsed as it is loaded, again by the strict reader if the fast one gives up.
        result, self.renamed = load_file(path, self.options, self.settings_obj.upload_max_bytes, self._loader)
        return result

    async def _followed_result(self):
        """The load made while the body arrived, or None (not followed, or it gave up)."""
        if self._followed is None or self._followed.cancel():  # never started: all followers were busy
            return None
        followed = await asyncio.wrap_future(self._followed)
        if followed is None:
            return None
        result, self.renamed = followed
        return result

    @authorized(LOAD)
    async def post(self, table):
        path = self.finish_body()
        try:
            result = await self._followed_result()
            if result is None:
                result = await asyncio.to_thread(self._load, path)
        finally:
            self._cleanup()  # before any answer: the data never stays on disk outside the warehouse
        # A parsed file says which of its column names became other warehouse names (duplicates: a_2).
        answer = {"renamed": self.renamed} if self.options is not None else None
        self.finish_load(self.table, result, answer, format=self.format, bytes=self._received)


def batch_operations(body: dict) -> tuple[list[str], list[dict]]:
    unknown = sorted(set(body) - {"key", "operations"})
    if unknown:
        raise ValidationError(f"Unknown field {unknown[0]!r}", field=unknown[0])
    key = key_columns(body.get("key"), "key")
    if not key:
        raise ValidationError("key names the key columns of the table", field="key")
    operations = body.get("operations")
    if not isinstance(operations, list) or not operations:
        raise ValidationError("operations must be a non-empty list", field="operations")
    for position, operation in enumerate(operations):
        field = f"operations[{position}]"
        if not isinstance(operation, dict) or set(operation) != {"op", "rows"}:
            raise ValidationError(f"{field} must be {{op, rows}}", field=field)
        if operation["op"] not in BATCH_OPS:
            raise ValidationError(f"{field}.op must be one of {', '.join(BATCH_OPS)}", field=field)
        rows = operation["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValidationError(f"{field}.rows must be a list of objects", field=field)
    return key, operations


class BatchHandler(WarehouseHandler):
    @authorized(LOAD)
    async def post(self, table):
        table = table_name(table)
        key, operations = batch_operations(self.get_json_body())
        actor_id, actor, origin = self.actor()
        result = await asyncio.to_thread(
            loads.batch,
            self.settings_obj,
            self.principal().org_id,
            table,
            operations,
            key=key,
            actor_id=actor_id,
            actor=actor,
            origin=origin,
        )
        self.finish_load(table, result, operations=len(operations))


default_handlers = [
    (API_PREFIX + r"warehouse/tables", TablesHandler),
    (API_PREFIX + TABLE, TableHandler),
    (API_PREFIX + TABLE + r"/preview", PreviewHandler),
    (API_PREFIX + TABLE + r"/loads", HistoryHandler),
    (API_PREFIX + TABLE + r"/load", LoadHandler),
    (API_PREFIX + TABLE + r"/batch", BatchHandler),
]
