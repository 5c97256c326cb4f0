"""Connection settings of SQL sources: validation, driver checks, `{{var}}` variables.

Settings are a JSON-able mapping ``{dialect, driver, host, port, database, username, password, options}``
(or `settings_from_url`). They are checked twice: as a template when saved (`validate_connection`, which
allows `{{var}}` in host/database/username) and again once variables are filled (`resolve_url`). Driver
options are an allow-list per dialect, so nothing can make the driver read local files or run init
statements; file-path options (TLS keys) must point inside `allowed_file_dir`. Host reachability policy is a
hook (`check_host(host, port)`), supplied by the caller (carnet/net_guard.py), a no-op by default.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlalchemy as sa

from carnet.errors import MissingDriver, ValidationError

VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,62})\s*\}\}")
# Values a variable may take in each field: no URL metacharacters (/ @ : ? # % & = space).
_NAME_VALUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-$]{0,62}$")
_HOST_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$")
_FIELD_PATTERNS = {"host": _HOST_VALUE, "database": _NAME_VALUE, "username": _NAME_VALUE}
_FIELDS = ("dialect", "driver", "host", "port", "database", "username", "password", "options")

# dialect -> (default driver, {driver: (module to import, carnet extra)})
DIALECTS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "postgresql": ("psycopg", {"psycopg": ("psycopg", "postgres"), "psycopg2": ("psycopg2", "postgres")}),
    "mysql": ("pymysql", {"pymysql": ("pymysql", "mysql"), "mysqldb": ("MySQLdb", "mysql")}),
    "mariadb": ("pymysql", {"pymysql": ("pymysql", "mysql"), "mariadbconnector": ("mariadb", "mysql")}),
    "mssql": ("pyodbc", {"pyodbc": ("pyodbc", "mssql"), "pymssql": ("pymssql", "mssql")}),
    "oracle": ("oracledb", {"oracledb": ("oracledb", "oracle")}),
    "snowflake": ("snowflake", {"snowflake": ("snowflake.sqlalchemy", "snowflake")}),
    "redshift": ("redshift_connector", {"redshift_connector": ("redshift_connector", "redshift")}),
    "trino": ("trino", {"trino": ("trino", "trino")}),
    "clickhouse": ("http", {"http": ("clickhouse_sqlalchemy", "clickhouse")}),
}
FILE_DIALECTS = frozenset({"sqlite", "duckdb", "access", "firebird"})

# Allowed driver options (URL query parameters). Path-valued ones must lie inside allowed_file_dir.
_PG_OPTIONS = {
    "sslmode",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "channel_binding",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "gssencmode",
    "options",
}
_PG_PATHS = {"sslrootcert", "sslcert", "sslkey", "sslcrl"}
_MY_OPTIONS = {
    "charset",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "ssl_verify_cert",
    "ssl_verify_identity",
    "ssl_disabled",
    "binary_prefix",
}
_MY_PATHS = {"ssl_ca", "ssl_cert", "ssl_key", "ssl_capath"}
_OPTIONS = {"postgresql": (_PG_OPTIONS, _PG_PATHS), "mysql": (_MY_OPTIONS, _MY_PATHS)}
# Named so the error says why; everything not allowed is refused anyway.
_DANGEROUS = {
    "local_infile": "lets the server read local files",
    "init_command": "runs statements at connect",
    "read_default_file": "reads a local option file",
    "read_default_group": "reads a local option file",
    "client_flag": "can enable local files or multiple statements",
    "unix_socket": "connects through a local socket",
    "passfile": "reads a local password file",
    "service": "reads a local service file",
    "servicefile": "reads a local service file",
    "hostaddr": "bypasses the host checks",
}

HostCheck = Callable[[str, int | None], None]


def no_host_check(host: str, port: int | None) -> None:
    """Default hook: carnet/net_guard.py supplies the real policy (private ranges, allow-list)."""


@dataclass(frozen=True)
class ConnectionSettings:
    dialect: str
    driver: str
    host: str
    port: int | None = None
    database: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    options: Mapping[str, str] = field(default_factory=dict)

    def family(self) -> str:
        """'postgresql', 'mysql' (MySQL and MariaDB) or the dialect itself."""
        return "mysql" if self.dialect in ("mysql", "mariadb") else self.dialect


def settings_from_url(url: str, **extra) -> dict:
    """A settings mapping from a SQLAlchemy URL (the form people paste)."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        raise ValidationError("Invalid connection URL", field="url") from None
    dialect, _, driver = parsed.drivername.partition("+")
    return {
        "dialect": dialect,
        "driver": driver or None,
        "host": parsed.host,
        "port": parsed.port,
        "database": parsed.database or "",
        "username": parsed.username or "",
        "password": parsed.password or "",
        "options": {k: v if isinstance(v, str) else ",".join(v) for k, v in parsed.query.items()},
        **extra,
    }


def validate_connection(raw: Mapping, *, allowed_file_dir: Path | None = None) -> ConnectionSettings:
    """Check a settings template (variables allowed in host/database/username)."""
    if not isinstance(raw, Mapping):
        raise ValidationError("Connection settings must be an object", field="connection")
    unknown = sorted(set(raw) - set(_FIELDS), key=str)
    if unknown:
        raise ValidationError(f"Unknown connection field {unknown[0]!r}", field=str(unknown[0]))
    dialect = raw.get("dialect")
    if dialect in FILE_DIALECTS:
        raise ValidationError(
            f"{dialect} databases are files on this machine and cannot be SQL sources; load the data "
            "into the warehouse instead",
            field="dialect",
        )
    if not isinstance(dialect, str) or dialect not in DIALECTS:
        raise ValidationError(
            f"Unsupported dialect {dialect!r}: use one of {sorted(DIALECTS)}", field="dialect"
        )
    default_driver, drivers = DIALECTS[dialect]
    driver = raw.get("driver") or default_driver
    if driver not in drivers:
        raise ValidationError(
            f"Unsupported driver {driver!r} for {dialect}: use one of {sorted(drivers)}", field="driver"
        )
    text = {}
    for name in ("host", "database", "username", "password"):
        value = raw.get(name) or ""
        if not isinstance(value, str) or len(value) > 1024 or "\x00" in value:
            raise ValidationError(f"Invalid {name}", field=name)
        text[name] = value
    if not text["host"]:
        raise ValidationError("The host is required", field="host")
    for name, pattern in _FIELD_PATTERNS.items():
        _check_template(name, text[name], pattern)
    port = raw.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValidationError("The port must be a number from 1 to 65535", field="port")
    settings = ConnectionSettings(
        dialect,
        driver,
        text["host"],
        port,
        text["database"],
        text["username"],
        text["password"],
        _options(raw.get("options"), dialect, allowed_file_dir),
    )
    return settings


def _check_template(name: str, value: str, pattern: re.Pattern) -> None:
    literal = VARIABLE.sub("x", value)  # a variable stands for a checked value
    if value and not pattern.fullmatch(literal):
        raise ValidationError(f"Invalid {name} {value!r}", field=name)


def _options(raw, dialect: str, allowed_file_dir: Path | None) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError("options must be an object", field="options")
    allowed, paths = _OPTIONS.get("mysql" if dialect == "mariadb" else dialect, (set(), set()))
    result = {}
    for key, value in raw.items():
        if key in _DANGEROUS:
            raise ValidationError(
                f"The driver option {key!r} is refused: it {_DANGEROUS[key]}", field="options"
            )
        if key not in allowed and key not in paths:
            raise ValidationError(f"The driver option {key!r} is not allowed for {dialect}", field="options")
        if not isinstance(value, str | int) or isinstance(value, bool) or VARIABLE.search(str(value)):
            raise ValidationError(f"Invalid value for the driver option {key!r}", field="options")
        value = str(value)
        if key == "options" and ("-c" in value or "--" in value):
            raise ValidationError(
                "The PostgreSQL option 'options' cannot set server settings (-c)", field="options"
            )
        if key in paths:
            _check_path(key, value, allowed_file_dir)
        result[key] = value
    return result


def _check_path(key: str, value: str, allowed_file_dir: Path | None) -> None:
    if allowed_file_dir is None:
        raise ValidationError(
            f"The driver option {key!r} names a local file: not allowed here", field="options"
        )
    root = os.path.realpath(allowed_file_dir)
    path = os.path.realpath(os.path.join(root, value))
    if os.path.commonpath([root, path]) != root:
        raise ValidationError(f"The file of {key!r} must be inside the connection's folder", field="options")


def check_driver(settings: ConnectionSettings) -> None:
    """MissingDriver("pip install carnet[<extra>]") when the driver's module is not installed."""
    module, extra = DIALECTS[settings.dialect][1][settings.driver]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        found = False
    if not found:
        raise MissingDriver(module, extra)


def substitute(settings: ConnectionSettings, variables: Mapping[str, object] | None) -> ConnectionSettings:
    """Fill `{{var}}` in host/database/username; each value is checked before it is used."""
    variables = variables or {}
    filled = {}
    for name, pattern in _FIELD_PATTERNS.items():

        def fill(match, name=name, pattern=pattern):
            var = match.group(1)
            if var not in variables:
                raise ValidationError(f"Missing variable {var!r}", field=var)
            value = variables[var]
            if (
                isinstance(value, bool)
                or not isinstance(value, str | int)
                or not pattern.fullmatch(str(value))
            ):
                raise ValidationError(f"Invalid value for the variable {var!r} (used as {name})", field=var)
            return str(value)

        filled[name] = VARIABLE.sub(fill, getattr(settings, name))
        if filled[name] and not pattern.fullmatch(filled[name]):
            raise ValidationError(f"Invalid {name} {filled[name]!r}", field=name)
    return replace(settings, **filled)


def resolve_url(
    settings: ConnectionSettings,
    variables: Mapping[str, object] | None = None,
    *,
    check_host: HostCheck,
) -> sa.URL:
    """The SQLAlchemy URL, once variables are filled, the driver present and the host accepted."""
    check_driver(settings)
    settings = substitute(settings, variables)
    check_host(settings.host, settings.port)
    dialect = "mysql" if settings.dialect == "mariadb" and settings.driver == "pymysql" else settings.dialect
    return sa.URL.create(
        f"{dialect}+{settings.driver}",
        username=settings.username or None,
        password=settings.password or None,
        host=settings.host,
        port=settings.port,
        database=settings.database or None,
        query=dict(settings.options),
    )
