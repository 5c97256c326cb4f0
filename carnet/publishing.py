"""Publishing notebooks as apps: validate, snapshot to a read-only file, record a new version.

Used by the REST API and by the demo seeder, so both publish the same way. Who may open an app (and
finding one by id for a caller) is ``carnet.sharing``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
from sqlalchemy import select

from carnet.db.models import App, AppVersion, utcnow
from carnet.errors import ValidationError
from carnet.settings import CarnetSettings

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")


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
    description: str = "",
) -> App:
    """Create the app ``slug`` or add a version to it; the new version becomes current."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise ValidationError("slug must be lowercase letters, digits and dashes", field="slug")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise ValidationError("title is required (1-200 characters)", field="title")
    node = validate_notebook(notebook)
    app = session.scalar(select(App).where(App.org_id == org_id, App.slug == slug))
    if app is None:
        app = App(org_id=org_id, slug=slug, title=title, description=description, published_by=user_id)
        session.add(app)
        session.flush()
    version = app.current_version + 1
    relative = f"{org_id}/{app.id}/v{version}.ipynb"
    target = settings.published_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    # The title travels with the snapshot: the Viewer's header and the PDF's <title> read it.
    node.metadata["title"] = title
    tmp.write_text(json.dumps(nbformat.from_dict(node), indent=1))
    os.chmod(tmp, 0o444)  # a snapshot never changes; a new version is a new file
    tmp.replace(target)
    session.add(AppVersion(app_id=app.id, version=version, notebook_path=relative, created_by=user_id))
    app.current_version = version
    app.title = title
    app.description = description
    app.published_by = user_id
    app.updated_at = utcnow()
    session.flush()
    return app


def current_notebook_path(settings: CarnetSettings, app: App) -> Path:
    version = next(v for v in app.versions if v.version == app.current_version)
    return settings.published_dir / version.notebook_path
