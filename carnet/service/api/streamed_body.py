"""A request body streamed to a temporary file in the organization's data directory, counted as it arrives.

Shared by the upload routes (carnet/service/api/uploads.py), the warehouse load route
(carnet/service/api/warehouse.py) and push URLs (carnet/service/api/push.py, with their own cap): a body
over the cap (``upload_max_bytes`` unless ``body_limit`` says otherwise) is refused (413) without ever
being held in memory, and the file is removed before any answer is sent. ``follow_body`` lets a reader
start on the file while it still grows (carnet/uploads/growing.py: the load route parses big CSV bodies as
they arrive).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from carnet.errors import CarnetError, PermissionDenied, UploadTooLarge, ValidationError
from carnet.uploads.growing import GrowingFile

OCTET_STREAM = "application/octet-stream"
# Tornado itself drops a connection whose body runs this far past the cap (a chunked body has no
# Content-Length to refuse up front); between the cap and this, the answer is our JSON 413.
BODY_SLACK = 1024 * 1024


class StreamedBodyMixin:
    """For a ``@web.stream_request_body`` BaseHandler: from ``prepare_body``, ``check_caller(action)`` (before
    reading the query: an outsider learns nothing from its validation), then ``start_body()``; in the method,
    ``finish_body()`` returns the file's path.

    A refusal in ``prepare_body`` (401, 403, 404, 400) is answered once the body has arrived (it is read and
    dropped, never stored): answering while the client still sends makes the Hub's proxy report the closed
    connection as a 503 instead of our answer. Only a body declared larger than the cap is refused at once
    (413), rather than read whole for nothing."""

    _path: Path | None = None
    _handle = None
    _received = 0
    _too_large = False
    _refusal: CarnetError | None = None
    _growing: GrowingFile | None = None

    def prepare(self):
        try:
            self.prepare_body()
        except UploadTooLarge:
            raise
        except CarnetError as error:
            self._refusal = error

    def prepare_body(self) -> None:
        raise NotImplementedError

    def check_caller(self, action: str) -> None:
        # Refuse before the body arrives: who is calling, what they send, and (start_body) its declared size.
        principal = self.principal()
        if not principal.can(action):
            raise PermissionDenied(f"Your role ({principal.role}) does not allow {action}")
        content_type = self.request.headers.get("Content-Type", OCTET_STREAM).split(";")[0].strip().lower()
        if content_type.startswith("multipart/"):
            raise ValidationError(
                "Send the file itself as the body (Content-Type: application/octet-stream), not a form",
                field="Content-Type",
            )

    def body_limit(self) -> int:
        return self.settings_obj.upload_max_bytes

    def too_large(self) -> UploadTooLarge:
        cap = self.body_limit()
        return UploadTooLarge(f"The file is larger than the upload limit of {cap} bytes", limit=cap)

    def start_body(self, prefix: str = "upload-", org_id: int | None = None) -> None:
        """``org_id``: whose data directory holds the file (default: the caller's organization)."""
        cap = self.body_limit()
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise self.too_large()
        connection = self.request.connection
        if hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(cap + BODY_SLACK)
        if org_id is None:
            org_id = self.principal().org_id
        folder = self.settings_obj.org_dir(org_id) / "uploads"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
        self._path, self._handle = Path(name), os.fdopen(fd, "wb")

    def follow_body(self) -> GrowingFile:
        """The body as a GrowingFile, for a reader that starts before it has all arrived (after start_body):
        each piece is then flushed to disk as it comes."""
        self._growing = GrowingFile(self._path)
        return self._growing

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._too_large or self._handle is None:
            return  # refused already (in prepare, or over the cap): the rest is drained, not kept
        if self._received > self.body_limit():
            # Stop writing at once; the answer (413) is given when the body has ended.
            self._too_large = True
            self._cleanup()
            return
        self._handle.write(chunk)
        if self._growing is not None:
            self._handle.flush()
            self._growing.wrote(len(chunk))

    def finish_body(self) -> Path:
        """The complete body on disk (413 if it went over the cap). Call ``_cleanup`` when done with it."""
        if self._refusal is not None:
            raise self._refusal
        if self._too_large:
            raise self.too_large()
        self._handle.close()
        self._handle = None
        if self._growing is not None:
            self._growing.complete()
        return self._path

    def _cleanup(self) -> None:
        if self._growing is not None and not self._growing.is_complete:
            self._growing.fail()  # a reader following the body stops waiting for it
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
