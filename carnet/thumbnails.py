"""App thumbnails for the gallery: a PNG or JPEG, at most 1 MB, stored read-only next to the app's snapshots.

The type is decided by the file's first bytes, never by what the client says: SVG (which can carry script)
and anything else is refused. Each upload gets a new file name, so a failed commit leaves the previous
thumbnail in place and the database never points to a half-written file; the file replaced is removed once
the change has committed (``remove_file``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from carnet.db.models import App
from carnet.errors import NotFound, ValidationError
from carnet.settings import CarnetSettings

MAX_THUMBNAIL_BYTES = 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


def image_kind(data: bytes) -> str:
    """'png' or 'jpg' from the magic bytes; anything else (SVG, GIF, HTML, a renamed file) is a 400."""
    # A PNG's first chunk must be its header (IHDR): a signature glued onto other bytes is not an image.
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR":
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpg"
    raise ValidationError(
        "The thumbnail must be a PNG or JPEG image (SVG and other formats are refused)", field="thumbnail"
    )


def store_thumbnail(settings: CarnetSettings, app: App, data: bytes) -> str | None:
    """Write ``data`` as the app's thumbnail file and point the app at it. Returns the path of the file it
    replaces (relative to ``published_dir``), to remove after the commit."""
    if len(data) > MAX_THUMBNAIL_BYTES:
        raise ValidationError(f"The thumbnail is larger than {MAX_THUMBNAIL_BYTES} bytes", field="thumbnail")
    kind = image_kind(data)
    relative = f"{app.org_id}/{app.id}/thumbnail-{secrets.token_hex(8)}.{kind}"
    target = settings.published_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o444)  # like snapshots: nobody changes it in place
    tmp.replace(target)
    previous, app.thumbnail_path = app.thumbnail_path, relative
    return previous


def thumbnail_file(settings: CarnetSettings, app: App) -> tuple[Path, str]:
    """The app's thumbnail file and its Content-Type, or 404 when it has none."""
    if not app.thumbnail_path:
        raise NotFound("This app has no thumbnail")
    path = settings.published_dir / app.thumbnail_path
    kind = path.suffix.lstrip(".")
    if kind not in CONTENT_TYPES or not path.is_file():
        raise NotFound("This app has no thumbnail")
    return path, CONTENT_TYPES[kind]


def remove_file(settings: CarnetSettings, relative: str | None) -> None:
    if relative:
        (settings.published_dir / relative).unlink(missing_ok=True)
