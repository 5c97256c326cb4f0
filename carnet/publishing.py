"""Publishing notebooks as apps: validate, snapshot to a read-only file, record a new version.

Used by the REST API and by the demo seeder, so both publish the same way. Also the app's gallery metadata
(title, description, tags: changed without a new version by ``update_metadata``), the versions list and
rollback (``restore_version``: a new version copying an old snapshot, so history stays linear). Who may open
an app (and finding one by id for a caller) is ``carnet.sharing``; thumbnails are ``carnet.thumbnails``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
from sqlalchemy import select

from carnet.db.models import App, AppVersion, User, utcnow
from carnet.errors import NotFound, ValidationError
from carnet.settings import CarnetSettings
from carnet.validation import parse_id, refuse_hidden_characters

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
MAX_TITLE = 200
MAX_DESCRIPTION = 10_000
MAX_TAGS = 20
MAX_TAG_LENGTH = 40
MAX_NOTE = 500
# What PATCH /apps/<id> may change; everything else (slug, visibility, org_id, versions...) has its own
# route or none, so naming it is refused rather than ignored.
METADATA_FIELDS = ("title", "description", "tags")


def validate_title(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise ValidationError(f"title is required (1-{MAX_TITLE} characters)", field="title")
    return refuse_hidden_characters(value.strip(), "title")


def validate_description(value) -> str:
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise ValidationError(
            f"description must be text of at most {MAX_DESCRIPTION} characters", field="description"
        )
    # Line breaks and tabs are text in a description; other control characters are not.
    refuse_hidden_characters(value.replace("\n", " ").replace("\r", " ").replace("\t", " "), "description")
    return value.strip()


def normalize_tag(value, field: str = "tags") -> str:
    """One label: trimmed, lowercased, 1-40 visible characters."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text labels, not {type(value).__name__}", field=field)
    tag = refuse_hidden_characters(value.strip(), field).lower()
    if not 1 <= len(tag) <= MAX_TAG_LENGTH:
        raise ValidationError(f"each of {field} must be 1-{MAX_TAG_LENGTH} characters", field=field)
    return tag


def normalize_tags(value) -> list[str]:
    """Labels for the gallery: trimmed, lowercased, deduplicated (first spelling kept), at most 20."""
    if not isinstance(value, list):
        raise ValidationError("tags must be a list of labels", field="tags")
    if len(value) > MAX_TAGS:
        raise ValidationError(f"tags may hold at most {MAX_TAGS} labels", field="tags")
    return list(dict.fromkeys(normalize_tag(tag) for tag in value))


def validate_note(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise ValidationError(f"note must be text of at most {MAX_NOTE} characters", field="note")
    return refuse_hidden_characters(value.strip(), "note")


def validate_notebook(notebook) -> nbformat.NotebookNode:
    if not isinstance(notebook, dict):
        raise ValidationError("notebook must be a Jupyter notebook (JSON object)", field="notebook")
    try:
        # normalize() adds what older writers leave out (cell ids) instead of warning about it.
        _, normalized = nbformat.validator.normalize(notebook)
        node = nbformat.from_dict(normalized)
        nbformat.validate(node)
    except nbformat.ValidationError as exc:
        raise ValidationError(f"Invalid notebook: {exc.message}", field="notebook") from None
    except Exception as exc:  # nbformat raises several unrelated types for malformed input
        raise ValidationError(f"Invalid notebook: {exc}", field="notebook") from None
    return node


def publish(
    session,
    settings: CarnetSettings,
    *,
    org_id: int,
    user_id: int | None,
    slug: str,
    title: str,
    notebook: dict,
    description: str | None = None,
    tags: list | None = None,
    note: str | None = None,
) -> App:
    """Create the app ``slug`` or add a version to it; the new version becomes current. ``description``
    and ``tags`` left out (None) keep the app's (empty for a new app); sharing is never touched here."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise ValidationError("slug must be lowercase letters, digits and dashes", field="slug")
    title = validate_title(title)
    description = None if description is None else validate_description(description)
    tags = None if tags is None else normalize_tags(tags)
    note = validate_note(note)
    node = validate_notebook(notebook)
    app = session.scalar(select(App).where(App.org_id == org_id, App.slug == slug))
    if app is None:
        app = App(org_id=org_id, slug=slug, title=title, description="", tags=[], published_by=user_id)
        session.add(app)
        session.flush()
    app.title = title
    if description is not None:
        app.description = description
    if tags is not None:
        app.tags = tags
    _add_version(session, settings, app, node, user_id, note)
    app.published_by = user_id
    session.flush()
    return app


def _add_version(session, settings: CarnetSettings, app: App, node, user_id: int | None, note: str) -> None:
    version = app.current_version + 1
    relative = f"{app.org_id}/{app.id}/v{version}.ipynb"
    target = settings.published_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    # The title travels with the snapshot: the Viewer's header and the PDF's <title> read it.
    node.metadata["title"] = app.title
    tmp.write_text(json.dumps(nbformat.from_dict(node), indent=1))
    os.chmod(tmp, 0o444)  # a snapshot never changes; a new version is a new file
    tmp.replace(target)
    session.add(
        AppVersion(app_id=app.id, version=version, notebook_path=relative, created_by=user_id, note=note)
    )
    app.current_version = version
    app.updated_at = utcnow()


def update_metadata(app: App, body: dict) -> dict:
    """PATCH: title, description and/or tags, without a new version. Returns {field: {from, to}} to audit;
    any other field is a 400 naming it, and nothing changes unless every field is valid."""
    unknown = sorted(set(body) - set(METADATA_FIELDS))
    if unknown:
        raise ValidationError(f"These fields cannot be changed here: {', '.join(unknown)}", field=unknown[0])
    if not body:
        raise ValidationError(f"Send at least one of {', '.join(METADATA_FIELDS)}")
    checks = {"title": validate_title, "description": validate_description, "tags": normalize_tags}
    values = {name: checks[name](value) for name, value in body.items()}
    changes = {}
    for name, value in values.items():
        if getattr(app, name) != value:
            changes[name] = {"from": getattr(app, name), "to": value}
            setattr(app, name, value)
    if changes:
        app.updated_at = utcnow()
    return changes


def versions_json(session, app: App) -> list[dict]:
    """The app's versions, newest first, with who published each (email, or None once they are gone)."""
    rows = session.execute(
        select(AppVersion, User.email)
        .outerjoin(User, User.id == AppVersion.created_by)
        .where(AppVersion.app_id == app.id)
        .order_by(AppVersion.version.desc())
    ).all()
    return [
        {
            "version": row.version,
            "created_at": row.created_at.isoformat(),
            "created_by": email,
            "note": row.note or "",
            "current": row.version == app.current_version,
        }
        for row, email in rows
    ]


def restore_version(
    session, settings: CarnetSettings, app: App, version, user_id: int | None, note=None
) -> int:
    """Roll back: a NEW version whose snapshot copies ``version``'s (history stays linear and every step
    is in it). Returns the new version number; an unknown version is a 404."""
    number = parse_id(version, "No such version")
    # Checked before the query: a number past the column's range is an error in PostgreSQL, not a miss.
    if number > app.current_version:
        raise NotFound("No such version")
    old = session.scalar(select(AppVersion).where(AppVersion.app_id == app.id, AppVersion.version == number))
    if old is None:
        raise NotFound("No such version")
    note = validate_note(note) or f"Restored version {number}"
    node = nbformat.read(settings.published_dir / old.notebook_path, as_version=4)
    _add_version(session, settings, app, node, user_id, note)
    session.flush()
    return app.current_version


def current_notebook_path(settings: CarnetSettings, app: App) -> Path:
    version = next(v for v in app.versions if v.version == app.current_version)
    return settings.published_dir / version.notebook_path
