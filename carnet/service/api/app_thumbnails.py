"""/api/v1/apps/<id>/thumbnail: the gallery picture of an app (PUT a PNG/JPEG body, GET it, DELETE it).

The body is streamed and counted like uploads (``StreamedBodyMixin``): past 1 MB it is refused with a JSON
413, by its Content-Length before anything is read, or while it arrives. What is stored is decided by
``carnet.thumbnails`` (the file's own first bytes; SVG refused). The image is served with headers that stop a
browser from treating it as anything but an image.
"""

from __future__ import annotations

from tornado import web

from carnet.errors import UploadTooLarge
from carnet.service.api.apps import app_answer
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.streamed_body import StreamedBodyMixin
from carnet.sharing import find_openable_app
from carnet.thumbnails import MAX_THUMBNAIL_BYTES, remove_file, store_thumbnail, thumbnail_file

WRITE_ACTION = "apps:publish"
# An image needs nothing else: no script, no styles, no plugins, and it is sandboxed if opened as a page.
IMAGE_CSP = "default-src 'none'; img-src 'self'; sandbox"


@web.stream_request_body
class AppThumbnailHandler(StreamedBodyMixin, BaseHandler):
    def prepare_body(self):
        if self.request.method != "PUT":
            return
        self.check_caller(WRITE_ACTION)
        # Unknown, another org's or not shared: 404 (answered once the body is drained), nothing kept.
        with self.db() as session:
            find_openable_app(session, self.principal(), self.path_kwargs["app_id"])
        self.start_body(prefix="thumbnail-")

    def body_limit(self) -> int:
        return MAX_THUMBNAIL_BYTES

    def too_large(self) -> UploadTooLarge:
        return UploadTooLarge(
            f"The thumbnail is larger than {MAX_THUMBNAIL_BYTES} bytes", limit=MAX_THUMBNAIL_BYTES
        )

    @authorized(WRITE_ACTION)
    def put(self, app_id):
        path = self.finish_body()
        try:
            data = path.read_bytes()  # at most 1 MB, checked while it arrived
        finally:
            self._cleanup()
        principal = self.principal()
        with self.db() as session:
            app = find_openable_app(session, principal, app_id)
            previous = store_thumbnail(self.settings_obj, app, data)
            self.audit(session, "app.thumbnail", f"app/{app.id}", slug=app.slug, bytes=len(data))
            session.flush()
            self.write_json(app_answer(self, session, principal, app))
        remove_file(self.settings_obj, previous)  # only once the new one is committed

    @authorized("apps:read")
    def get(self, app_id):
        with self.db() as session:
            app = find_openable_app(session, self.principal(), app_id)
            path, content_type = thumbnail_file(self.settings_obj, app)
        self.set_header("Content-Type", content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", IMAGE_CSP)
        self.set_header("Cache-Control", "private, no-cache")
        self.finish(path.read_bytes())

    @authorized(WRITE_ACTION)
    def delete(self, app_id):
        """Idempotent: an app without a thumbnail answers 204 too."""
        with self.db() as session:
            app = find_openable_app(session, self.principal(), app_id)
            previous, app.thumbnail_path = app.thumbnail_path, None
            if previous:
                self.audit(session, "app.thumbnail_delete", f"app/{app.id}", slug=app.slug)
        remove_file(self.settings_obj, previous)
        self.set_status(204)
        self.finish()


default_handlers = [
    (API_PREFIX + r"apps/(?P<app_id>[^/]+)/thumbnail", AppThumbnailHandler),
]
