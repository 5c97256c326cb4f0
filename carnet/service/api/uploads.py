"""/api/v1/uploads: a CSV/TSV, Excel or Parquet file into the caller's warehouse, as a warehouse_table source.

The body is the raw file (``Content-Type: application/octet-stream``; multipart forms are not accepted: a
form would have to be parsed while it streams). It is streamed to a temporary file in the organization's
data directory and counted as it arrives, so an upload over ``upload_max_bytes`` is refused (413) without
ever being held in memory. ``/uploads/preview`` parses the same way and stores nothing.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from tornado import web

from carnet.db.models import DataSource, utcnow
from carnet.errors import Conflict, PermissionDenied, UploadTooLarge, ValidationError
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.serialize import source_json
from carnet.service.api.sources import check_source_name
from carnet.uploads import (
    columns_json,
    options_from_query,
    parse_upload,
    preview_rows,
    store_upload,
)
from carnet.warehouse import check_identifier

ACTION = "sources:create"
OCTET_STREAM = "application/octet-stream"
# Tornado itself drops a connection whose body runs this far past the cap (a chunked body has no
# Content-Length to refuse up front); between the cap and this, the answer is our JSON 413.
BODY_SLACK = 1024 * 1024


@web.stream_request_body
class UploadHandler(BaseHandler):
    """POST the raw file; query arguments name the format, the table, the source and parser overrides."""

    preview = False

    def prepare(self):
        self._path: Path | None = None
        self._handle = None
        self._received = 0
        self._too_large = False
        # Refuse before the body arrives: who is calling, what they ask, and a declared size over the cap.
        principal = self.principal()
        if not principal.can(ACTION):
            raise PermissionDenied(f"Your role ({principal.role}) does not allow {ACTION}")
        content_type = self.request.headers.get("Content-Type", OCTET_STREAM).split(";")[0].strip().lower()
        if content_type.startswith("multipart/"):
            raise ValidationError(
                "Send the file itself as the body (Content-Type: application/octet-stream), not a form",
                field="Content-Type",
            )
        self.options = options_from_query(
            lambda name: self.get_query_argument(name, None), self.get_query_arguments
        )
        if not self.preview:
            self.table = check_identifier(self.get_query_argument("table", None) or "", field="table")
            self.source_name = check_source_name(self.get_query_argument("source", None) or self.table)
        cap = self.settings_obj.upload_max_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise UploadTooLarge(f"The file is larger than the upload limit of {cap} bytes", limit=cap)
        connection = self.request.connection
        if hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(cap + BODY_SLACK)
        folder = self.settings_obj.org_dir(principal.org_id) / "uploads"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
        self._path, self._handle = Path(name), os.fdopen(fd, "wb")

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._too_large or self._handle is None:
            return  # refused already (in prepare, or over the cap): the rest is drained, not kept
        if self._received > self.settings_obj.upload_max_bytes:
            # Stop writing at once; the answer (413) is given when the body has ended.
            self._too_large = True
            self._cleanup()
            return
        self._handle.write(chunk)

    def _cleanup(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._path is not None:
            for leftover in self._path.parent.glob(self._path.name + "*"):
                leftover.unlink(missing_ok=True)
            self._path = None

    def on_finish(self):
        self._cleanup()

    def on_connection_close(self):
        self._cleanup()

    async def _parse(self):
        if self._too_large:
            cap = self.settings_obj.upload_max_bytes
            raise UploadTooLarge(f"The file is larger than the upload limit of {cap} bytes", limit=cap)
        self._handle.close()
        self._handle = None
        try:
            return await asyncio.to_thread(
                parse_upload, self._path, self.options, self.settings_obj.upload_max_bytes
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
                store_upload, self.settings_obj, principal.org_id, self.table, parsed
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
                source.version = (source.version or 1) + 1
                source.updated_at = utcnow()
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
