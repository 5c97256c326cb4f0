"""An organization's branding: primary colour, custom CSS and logo, shown by the Viewer's app pages and the
gallery of that organization only.

Colour and CSS are organization settings (``carnet.org_settings`` uses the checks below); the logo is a
file under ``<data_dir>/orgs/<org_id>/branding/`` described by ``settings["logo"]`` (type, size, digest).
Custom CSS is placed inside a ``<style>`` element of pages on the platform's origin, so it may neither end
that element nor load anything: the rules are in ``check_custom_css`` and the README.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from carnet.db.models import Organization
from carnet.errors import UploadTooLarge, ValidationError

COLOR = re.compile(r"#[0-9a-fA-F]{6}")
MAX_CSS_BYTES = 20 * 1024
MAX_LOGO_BYTES = 512 * 1024
LOGO_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.DOTALL)
_URL = re.compile(r"url\(\s*(['\"]?)\s*([^'\")\s]*)")
# data: images CSS may embed (no SVG: an SVG document can carry script and links of its own).
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]")
# Each is refused anywhere in the CSS (lowercased, comments removed), with the reason given to the admin.
_FORBIDDEN = (
    ("<", "'<' is not allowed (it could end the page's style element)"),
    ("\\", "backslash escapes are not allowed (they can disguise the forbidden words)"),
    ("@import", "@import is not allowed (custom CSS cannot load other stylesheets)"),
    ("expression(", "expression() is not allowed"),
    ("javascript:", "javascript: is not allowed"),
    ("image-set(", "image-set() is not allowed (use url(data:image/...))"),
)


def check_color(key: str, value) -> str:
    """``#RRGGBB`` (stored lowercase), or "" for Carnet's own colour."""
    if value == "" or value is None:
        return ""
    if not isinstance(value, str) or not COLOR.fullmatch(value.strip()):
        raise ValidationError(f"{key} must be a colour written #RRGGBB (e.g. #1f6feb), or empty", field=key)
    return value.strip().lower()


def check_custom_css(key: str, value) -> str:
    """The CSS as given, if it follows the rules; else a 400 naming ``key`` and the rule broken."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be text", field=key)
    if len(value.encode("utf-8")) > MAX_CSS_BYTES:
        raise ValidationError(f"{key} must be at most {MAX_CSS_BYTES // 1024} KB", field=key)
    if "\x00" in value:
        raise ValidationError(f"{key} must not contain NUL characters", field=key)
    # Both with and without comments: "@im/**/port" reads as "@import" once comments are gone.
    lowered = value.lower()
    for text in (lowered, _COMMENT.sub("", lowered)):
        compact = re.sub(r"\s+", "", text)
        for word, reason in _FORBIDDEN:
            if word in text or word in compact:
                raise ValidationError(f"{key}: {reason}", field=key)
        for at in (m.start() for m in re.finditer(r"url\(", compact)):
            target = _URL.match(compact, at)
            if not target or not _DATA_IMAGE.match(target.group(2)):
                raise ValidationError(
                    f"{key}: url() may only hold data:image/png, jpeg, gif or webp (no links to elsewhere)",
                    field=key,
                )
    return value


def check_logo(data: bytes) -> str:
    """The logo's content type (image/png or image/jpeg), read from its first bytes, never from a header."""
    if len(data) > MAX_LOGO_BYTES:
        raise UploadTooLarge(f"The logo must be at most {MAX_LOGO_BYTES // 1024} KB", field="logo")
    if not data:
        raise ValidationError("The logo is empty: send the PNG or JPEG file as the body", field="logo")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        raise ValidationError("SVG logos are refused (they can carry script): use PNG or JPEG", field="logo")
    for magic, content_type in LOGO_TYPES.items():
        if data.startswith(magic):
            return content_type
    raise ValidationError("The logo must be a PNG or JPEG image", field="logo")


def logo_path(data_dir: str | Path, org_id: int) -> Path:
    return Path(data_dir) / "orgs" / str(org_id) / "branding" / "logo"


def store_logo(data_dir: str | Path, org: Organization, data: bytes) -> dict:
    """Check and store ``data`` as the org's logo (atomically replaced); returns its description."""
    content_type = check_logo(data)
    path = logo_path(data_dir, org.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"logo.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)
    logo = {"content_type": content_type, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    org.settings = {**(org.settings or {}), "logo": logo}  # a new dict: JSON columns track reassignment
    return logo


def remove_logo(data_dir: str | Path, org: Organization) -> bool:
    """Forget the org's logo; False when it had none."""
    had = bool((org.settings or {}).get("logo"))
    org.settings = {k: v for k, v in (org.settings or {}).items() if k != "logo"}
    logo_path(data_dir, org.id).unlink(missing_ok=True)
    return had


def read_logo(data_dir: str | Path, org: Organization) -> tuple[bytes, str] | None:
    """(bytes, content type) of the org's logo, or None. The file must still match what was checked."""
    logo = (org.settings or {}).get("logo")
    if not logo:
        return None
    try:
        data = logo_path(data_dir, org.id).read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() != logo.get("sha256"):
        return None
    return data, logo["content_type"]


def branding(data_dir: str | Path, org: Organization, with_logo: bool = True) -> dict:
    """What pages of ``org`` show: colour, custom CSS and the logo as a data: URI (pages embed it, so the
    Viewer needs no route of its own for it). Values are checked again: a row edited by hand shows nothing
    rather than something unchecked."""
    settings = org.settings or {}
    result = {"org_name": org.name, "color": "", "custom_css": "", "logo": None}
    try:
        result["color"] = check_color("primary_color", settings.get("primary_color", ""))
        result["custom_css"] = check_custom_css("custom_css", settings.get("custom_css", ""))
    except ValidationError:
        result["color"], result["custom_css"] = "", ""
    logo = read_logo(data_dir, org) if with_logo else None
    if logo:
        data, content_type = logo
        result["logo"] = f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
    return result


_KERNEL_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def brand_color_env(color: str | None) -> dict[str, str]:
    """``CARNET_BRAND_COLOR`` for a kernel (carnet.dash's Theme), only for a checked ``#rrggbb``: the value
    is written into dashboards' HTML and styles."""
    return {"CARNET_BRAND_COLOR": color.lower()} if _KERNEL_COLOR.fullmatch(color or "") else {}
