"""/api/v1/uploads: a CSV/TSV, Excel or Parquet file into the caller's warehouse, as a warehouse_table source.

The body is the raw file (``Content-Type: application/octet-stream``; multipart forms are not accepted: a
form would have to be parsed while it streams). It is streamed to a temporary file in the organization's
data directory and counted as it arrives, so an upload over ``upload_max_bytes`` is refused (413) without
ever being held in memory. ``/uploads/preview`` parses the same way and stores nothing.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from tornado import web

from carnet.data_versions import bump_version
from carnet.db.models import DataSource
from carnet.errors import Conflict
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import source_json
from carnet.service.api.sources import check_source_name
from carnet.service.api.streamed_body import StreamedBodyMixin
from carnet.service.api.warehouse import actor_name
from carnet.uploads import (
    columns_json,
    options_from_query,
    parse_upload,
    preview_rows,
    store_upload,
)
from carnet.warehouse import check_identifier

ACTION = "sources:create"


@web.stream_request_body
class UploadHandler(StreamedBodyMixin, BaseHandler):
    """POST the raw file; query arguments name the format, the table, the source and parser overrides."""

    preview = False

    def prepare_body(self):
        self.check_caller(ACTION)
        self.options = options_from_query(
            lambda name: self.get_query_argument(name, None), self.get_query_arguments
        )
        if not self.preview:
            self.table = check_identifier(self.get_query_argument("table", None) or "", field="table")
            self.source_name = check_source_name(self.get_query_argument("source", None) or self.table)
        self.start_body()

    async def _parse(self):
        path = self.finish_body()
        try:
            return await asyncio.to_thread(
                parse_upload, path, self.options, self.settings_obj.upload_max_bytes
            )
        finally:
            # Before any answer is sent: the client never sees one while the file is still on disk.
            self._cleanup()

    @authorized(ACTION)
    async def post(self):
        principal = self.principal()
        parsed = await self._parse()
        with self.db() as session:
            source = session.scalar(
                select(DataSource).where(
                    DataSource.org_id == principal.org_id, DataSource.name == self.source_name
                )
            )
            # Never turn someone's SQL or REST source, or a source of another table, into this one.
            if source is not None and (
                source.kind != "warehouse_table" or (source.options or {}).get("table") != self.table
            ):
                raise Conflict(
                    f"A source named {self.source_name!r} exists and is not the warehouse table "
                    f"{self.table!r}: choose another ?source=",
                    field="source",
                )
            rows = await asyncio.to_thread(
                store_upload,
                self.settings_obj,
                principal.org_id,
                self.table,
                parsed,
                actor_id=principal.user_id,
                actor=actor_name(principal),
            )
            if source is None:
                source = DataSource(
                    org_id=principal.org_id,
                    name=self.source_name,
                    kind="warehouse_table",
                    description=f"Uploaded {self.options.format} file",
                    options={"table": self.table},
                    created_by=principal.user_id,
                )
                session.add(source)
            else:
                # New data behind the same source: cached results keyed on the old version die.
                bump_version(source)
            session.flush()
            # Sizes and names only: never the file's content.
            self.audit(
                session,
                "upload.create",
                f"table/{self.table}",
                table=self.table,
                rows=rows,
                bytes=self._received,
                format=self.options.format,
                source_id=source.id,
            )
            self.write_json(
                {
                    "table": self.table,
                    "rows": rows,
                    "bytes": self._received,
                    "columns": columns_json(parsed.table),
                    "renamed": parsed.renamed,
                    "settings": parsed.settings,
                    "source": {**source_json(source, with_settings=True), "version": source.version},
                },
                status=201,
            )


class UploadPreviewHandler(UploadHandler):
    """The same parse, nothing stored: what would be loaded, and the settings sniffed (to adjust them)."""

    preview = True

    @authorized(ACTION)
    async def post(self):
        parsed = await self._parse()
        answer = {
            "format": self.options.format,
            "settings": parsed.settings,
            "columns": columns_json(parsed.table),
            "renamed": parsed.renamed,
            "rows": preview_rows(parsed.table),
            "total_rows": parsed.table.num_rows,
        }
        if parsed.sheets is not None:
            answer["sheets"] = parsed.sheets
        self.write_json(answer)


default_handlers = [
    (API_PREFIX + r"uploads", UploadHandler),
    (API_PREFIX + r"uploads/preview", UploadPreviewHandler),
]
