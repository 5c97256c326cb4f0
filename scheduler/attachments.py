"""Files a run produces and mails: their MIME types, their names (date templates), and how they are written
(to a temporary name in the same folder, then renamed: a crash never leaves half a file under the real
name, and a retry finds either the whole file or none)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from carnet.errors import ValidationError

MIME_TYPES = {
    ".pdf": "application/pdf",
    ".csv": "text/csv",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".ipynb": "application/x-ipynb+json",
    ".html": "text/html",
    ".txt": "text/plain",
}
# {{date:%Y-%m-%d}} in a file name: the run's scheduled time in the job's time zone, formatted.
_DATE_TEMPLATE = re.compile(r"\{\{\s*date\s*(?::([^}]*))?\}\}")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")
MAX_NAME = 120


def mime_type_of(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")


def render_file_name(template: str, when: datetime, timezone: str, field: str = "file_name") -> str:
    """``sales_{{date:%Y-%m-%d}}.xlsx`` -> ``sales_2026-11-28.xlsx`` (``when`` read in ``timezone``). The
    result is a plain file name: no folders, no hidden file, only letters, digits and ``._ -``."""
    local = when.replace(tzinfo=when.tzinfo or ZoneInfo("UTC")).astimezone(ZoneInfo(timezone))

    def expand(match: re.Match) -> str:
        return local.strftime(match.group(1) or "%Y-%m-%d")

    name = _DATE_TEMPLATE.sub(expand, template)
    if "{{" in name or "}}" in name:
        raise ValidationError(
            f"{field}: only {{{{date}}}} or {{{{date:<strftime format>}}}} may appear between braces",
            field=field,
        )
    name = _SAFE_NAME.sub("-", name).strip(" .")
    if not name or len(name) > MAX_NAME:
        raise ValidationError(f"{field} must give a file name of 1-{MAX_NAME} characters", field=field)
    return name


@contextlib.contextmanager
def written_then_renamed(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; once the block ends without error, the file is synced and
    renamed to ``final``; on error the temporary file is removed and ``final`` is untouched."""
    partial = final.with_name(f".{final.name}.part")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
