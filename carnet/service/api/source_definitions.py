"""What the sources API needs beyond name and options: write-only secret fields and named connections.

A kind's ``secret_fields`` arrive inside ``options`` (as people write them) and are split off here: kept
SecretBox-encrypted in ``DataSource.secret`` (bound to the row), answered as ``"set"``/``"unset"`` only. In a
PATCH, a secret field that is absent or ``"unchanged"`` keeps its value, a string replaces it, null clears it.
"""

from __future__ import annotations

from carnet import connections
from carnet.crypto import SecretBox
from carnet.db.models import Connection, DataSource
from carnet.errors import ValidationError
from carnet.service.api.serialize import source_json
from carnet.sources import SourceKind, source_secret_context

UNCHANGED = "unchanged"


def read_secrets(settings, source: DataSource) -> dict:
    if not source.secret:
        return {}
    return SecretBox(settings).decrypt_json(source.secret, source_secret_context(source.org_id, source.id))


def merged_options(kind: SourceKind, options, current_secrets: dict | None = None) -> tuple[dict, dict]:
    """(options checked by the kind, secrets) from a body's ``options``; ``current_secrets`` (PATCH) are kept
    unless replaced or cleared. The kind validates the whole (secrets included) and keeps only non-secrets."""
    if not isinstance(options, dict):
        raise ValidationError("options must be an object", field="options")
    secrets = dict(current_secrets or {})
    for field in kind.secret_fields:
        if field not in options or options[field] == UNCHANGED:
            continue
        value = options[field]
        if value is not None and not isinstance(value, str):
            raise ValidationError(
                f'options.{field} must be text, null or "unchanged"', field=f"options.{field}"
            )
        if value:
            secrets[field] = value
        else:
            secrets.pop(field, None)
    plain = {k: v for k, v in options.items() if k not in kind.secret_fields}
    checked = kind.validate_options({**plain, **secrets})
    return {k: v for k, v in checked.items() if k not in kind.secret_fields}, secrets


def store_secrets(settings, source: DataSource, secrets: dict) -> None:
    """Encrypt for ``source`` (flushed: the context holds its id)."""
    if not secrets:
        source.secret = None
        return
    source.secret = SecretBox(settings).encrypt_json(secrets, source_secret_context(source.org_id, source.id))


def connection_for(session, org_id: int, kind: SourceKind, ref, options: dict):
    """The connection row a source of ``kind`` names (None for kinds without), with save-time checks."""
    if not kind.needs_connection:
        if ref is not None:
            raise ValidationError(f"A {kind.name} source takes no connection", field="connection")
        return None
    if ref is None:
        raise ValidationError(f"A {kind.name} source needs a connection (its id or name)", field="connection")
    row = connections.resolve_reference(session, org_id, ref)
    check = getattr(kind, "check_with_connection", None)
    if check is not None:
        check(options, row.settings or {})
    return row


def source_answer(session, settings, source: DataSource, kind: SourceKind | None, with_settings: bool):
    """The source's JSON; with settings also which secret fields are set (never their values) and its
    connection."""
    data = source_json(source, with_settings=with_settings)
    data["version"] = source.version or 1
    if with_settings:
        fields = sorted(kind.secret_fields) if kind is not None else []
        stored = read_secrets(settings, source) if fields else {}
        data["secrets"] = {f: "set" if stored.get(f) else "unset" for f in fields}
        data["connection"] = None
        if source.connection_id is not None:
            row = session.get(Connection, source.connection_id)
            data["connection"] = {"id": row.id, "name": row.name} if row else None
    return data
