"""Named connections: one set of SQL server settings and credentials, shared by many sources.

The non-secret settings (dialect, driver, host, port, database, username, driver options) are stored as
JSON; the password is write-only: SecretBox-encrypted in ``Connection.secret``, bound to the row by its
context, and answered only as ``"set"`` / ``"unset"``. ``check_connection`` opens one connection and tells
why it failed in words a person can act on (password, host name, refused, timeout, TLS), never echoing the
password.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.pool import NullPool

from carnet.connectors.sql_settings import (
    ConnectionSettings,
    resolve_url,
    settings_from_url,
    validate_connection,
)
from carnet.crypto import SecretBox, redact
from carnet.data_versions import bump_version
from carnet.db.models import Connection, DataSource
from carnet.errors import ConnectionFailed, ConnectTimeout, NotFound, ValidationError
from carnet.net_guard import sql_host_guard
from carnet.sources import connection_secret_context
from carnet.validation import refuse_hidden_characters

KINDS = frozenset({"sql"})
# Fields kept in Connection.settings (the password goes to Connection.secret).
SETTING_FIELDS = ("dialect", "driver", "host", "port", "database", "username", "options")
UNCHANGED = "unchanged"
DEFAULT_CONNECT_TIMEOUT = 10


def check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200 or "/" in name:
        raise ValidationError("A connection needs a name of 1-200 characters, without '/'", field="name")
    return refuse_hidden_characters(name.strip(), "name")


def check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValidationError(
            f"Unsupported connection kind {kind!r}: use one of {sorted(KINDS)}", field="kind"
        )
    return kind


def split_settings(raw) -> tuple[dict, str | None]:
    """(settings without the password, the password in a pasted URL or None). Accepts the fields, or
    ``{"url": "dialect+driver://user:pw@host:port/db?option=..."}``."""
    if not isinstance(raw, Mapping):
        raise ValidationError("settings must be an object", field="settings")
    raw = dict(raw)
    if "password" in raw:
        # The password is its own write-only body field, never part of the (readable) settings.
        raise ValidationError("Give the password as the 'password' field, not in settings", field="settings")
    url_password = None
    if "url" in raw:
        if set(raw) != {"url"} or not isinstance(raw["url"], str):
            raise ValidationError("settings.url is a connection URL, alone", field="settings.url")
        raw = settings_from_url(raw["url"])
        url_password = raw.pop("password") or None
    return {k: raw[k] for k in SETTING_FIELDS if raw.get(k) is not None}, url_password


def validated(settings: Mapping, password: str | None) -> ConnectionSettings:
    """Check the settings (refused drivers, options, file URLs: a 400 naming the field)."""
    if password is not None and (not isinstance(password, str) or len(password) > 1024):
        raise ValidationError("password must be text of at most 1024 characters", field="password")
    checked = validate_connection({**settings, "password": password or ""})
    return checked


def stored_settings(checked: ConnectionSettings) -> dict:
    return {
        "dialect": checked.dialect,
        "driver": checked.driver,
        "host": checked.host,
        "port": checked.port,
        "database": checked.database,
        "username": checked.username,
        "options": dict(checked.options),
    }


def read_password(settings_obj, row: Connection) -> str | None:
    if not row.secret:
        return None
    return SecretBox(settings_obj).decrypt_json(row.secret, connection_secret_context(row.org_id, row.id))[
        "password"
    ]


def store_password(settings_obj, row: Connection, password: str | None) -> None:
    """Encrypt ``password`` for ``row`` (which must have its id: the context binds the ciphertext to it)."""
    if not password:
        row.secret = None
        return
    context = connection_secret_context(row.org_id, row.id)
    row.secret = SecretBox(settings_obj).encrypt_json({"password": password}, context)


def new_password(body: Mapping, current: str | None) -> str | None:
    """PATCH semantics of a write-only field: absent or "unchanged" keeps, a string replaces, null clears."""
    if "password" not in body or body["password"] == UNCHANGED:
        return current
    value = body["password"]
    if value is not None and not isinstance(value, str):
        raise ValidationError('password must be text, null or "unchanged"', field="password")
    return value or None


def find(session, org_id: int, connection_id) -> Connection:
    """The org's connection; another org's id answers exactly like a missing one."""
    row = session.get(Connection, int(connection_id))
    if row is None or row.org_id != org_id:
        raise NotFound("No such connection")
    return row


def resolve_reference(session, org_id: int, ref) -> Connection:
    """A source's ``connection``: an id or a name in the caller's org (another org's is unknown: 400)."""
    row = None
    if isinstance(ref, int) and not isinstance(ref, bool):
        row = session.get(Connection, ref)
    elif isinstance(ref, str) and ref.strip():
        row = session.scalar(select(Connection).where(Connection.org_id == org_id, Connection.name == ref))
    if row is None or row.org_id != org_id:
        raise ValidationError(f"Unknown connection {ref!r}", field="connection")
    return row


def users_of(session, row: Connection) -> list[DataSource]:
    return list(
        session.scalars(
            select(DataSource).where(DataSource.connection_id == row.id).order_by(DataSource.name)
        ).all()
    )


def bump_sources(session, row: Connection) -> None:
    """A changed connection changes what its sources read: new versions, so no cached result survives."""
    for source in users_of(session, row):
        bump_version(source)


def connection_json(row: Connection) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "settings": dict(row.settings or {}),
        "password": "set" if row.secret else "unset",
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


# -- testing a connection ----------------------------------------------------------------------------------
def connect_timeout(settings: ConnectionSettings) -> int:
    try:
        return max(1, min(60, int(settings.options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))))
    except ValueError:
        return DEFAULT_CONNECT_TIMEOUT


def check_connection(carnet_settings, settings: ConnectionSettings, variables: Mapping | None = None) -> dict:
    """Connect and run ``SELECT 1``; a typed error saying why not (``reason`` names the cause). The host
    must pass the SQL host guard (carnet.net_guard.sql_host_guard) before anything is sent."""
    url = resolve_url(settings, variables, check_host=sql_host_guard(carnet_settings, settings.dialect))
    family = "mysql" if settings.dialect in ("mysql", "mariadb") else settings.dialect
    connect_args = {"connect_timeout": connect_timeout(settings)} if family in ("postgresql", "mysql") else {}
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            version = connection.dialect.server_version_info
    except sa.exc.DBAPIError as error:
        raise describe_failure(error, settings) from None
    finally:
        engine.dispose()
    return {"ok": True, "server_version": ".".join(map(str, version or ()))}


# (reason, words found in the driver's message, what to tell the person) - first match wins.
_CAUSES = [
    (
        "authentication",
        ("password authentication failed", "access denied for user", "authentication failed"),
        "the server refused the user name or password",
    ),
    (
        "tls",
        ("ssl", "tls", "certificate"),
        "the TLS (SSL) handshake failed: check sslmode / the server's certificate",
    ),
    (
        "unknown_host",
        (
            "failed to resolve host",
            "could not translate host name",
            "name or service not known",
            "nodename nor servname",
            "temporary failure in name resolution",
            "getaddrinfo failed",
            "unknown mysql server host",
            "no address associated",
        ),
        "the host name does not resolve",
    ),
    (
        "refused",
        ("connection refused", "errno 111", "can't connect to", "could not connect to server"),
        "nothing accepts connections at that host and port",
    ),
    ("timeout", ("timeout expired", "timed out", "lost connection"), "the server did not answer in time"),
    ("database", ("does not exist", "unknown database", "access denied for user"), "no such database"),
]


def describe_failure(error: sa.exc.DBAPIError, settings: ConnectionSettings) -> ConnectionFailed:
    text = " ".join(line.strip() for line in str(error.orig).splitlines() if line.strip())[:500]
    detail = redact(text, [settings.password] if settings.password else [])
    lowered = text.lower()
    where = f"{settings.host}:{settings.port}" if settings.port else settings.host
    for reason, words, explanation in _CAUSES:
        if any(word in lowered for word in words):
            cls = ConnectTimeout if reason == "timeout" else ConnectionFailed
            return cls(f"Cannot connect to {where}: {explanation}", reason=reason, detail=detail)
    return ConnectionFailed(f"Cannot connect to {where}", reason="other", detail=detail)
