"""The SQL source kinds: ``sql_table`` (one table of a SQL server) and ``sql_query`` (one read-only SELECT).

Both read through a named connection (``needs_connection``) and push the query spec down to the server:
filters, aggregates and limits run there, in a read-only transaction with the statement timeout and row cap
of ``ctx.limits`` (carnet.connectors.sql). ``{{var}}`` placeholders in the connection's host / database /
username and in the SQL are filled from the caller's variables, then from the defaults the source declares
(``options.variables``); a variable with neither is a 400 naming it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from carnet.connections import describe_failure
from carnet.connectors.read_only_sql import check_read_only
from carnet.connectors.sql import Limits, SqlRead, TableRead, read_arrow
from carnet.connectors.sql_settings import VARIABLE, ConnectionSettings, resolve_url, validate_connection
from carnet.errors import QueryFailed, ValidationError
from carnet.net_guard import sql_host_guard
from carnet.sources import SourceContext, SourceKind

MAX_VARIABLES = 50


def _text(options: dict, key: str, *, required: bool, limit: int = 200) -> str | None:
    value = options.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
        raise ValidationError(f"options.{key} must be text of 1-{limit} characters", field=f"options.{key}")
    return value.strip()


def _declared_variables(raw) -> list[dict]:
    """``["region", {"name": "db", "default": "sales"}]`` -> ``[{"name", "default"}]``."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_VARIABLES:
        raise ValidationError(
            f"options.variables is a list of at most {MAX_VARIABLES} names", field="options.variables"
        )
    result, seen = [], set()
    for item in raw:
        name, default = (item, None) if isinstance(item, str) else (None, None)
        if isinstance(item, dict) and set(item) <= {"name", "default"}:
            name, default = item.get("name"), item.get("default")
        if not isinstance(name, str) or not VARIABLE.fullmatch("{{" + name + "}}") or name in seen:
            raise ValidationError(f"Invalid variable declaration {item!r}", field="options.variables")
        if default is not None and (isinstance(default, bool) or not isinstance(default, str | int | float)):
            raise ValidationError(f"Invalid default of the variable {name!r}", field="options.variables")
        seen.add(name)
        result.append({"name": name, "default": default})
    return result


def _refuse_unknown(options: dict, allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed, key=str)
    if unknown:
        raise ValidationError(f"Unknown option {unknown[0]!r}", field=f"options.{unknown[0]}")


class _SqlKind(SourceKind):
    needs_connection = True
    pushes_down = True

    def connection_settings(self, ctx: SourceContext) -> ConnectionSettings:
        if not ctx.connection:
            raise ValidationError(f"A {self.name} source needs a connection", field="connection")
        password = (ctx.connection.get("secrets") or {}).get("password") or ""
        return validate_connection({**ctx.connection["settings"], "password": password})

    def variables(self, ctx: SourceContext) -> dict:
        """The caller's values over the declared defaults; undeclared names are refused."""
        declared = {v["name"]: v["default"] for v in ctx.options.get("variables") or []}
        unknown = sorted(set(ctx.variables) - set(declared))
        if unknown:
            raise ValidationError(f"The source declares no variable {unknown[0]!r}", field=unknown[0])
        values = {name: value for name, value in declared.items() if value is not None}
        values.update(ctx.variables)
        return values

    def variable_names(self, options: dict) -> frozenset[str]:
        return frozenset(v["name"] for v in options.get("variables") or [])

    def host_check(self, ctx: SourceContext, settings: ConnectionSettings):
        return sql_host_guard(ctx.settings, settings.dialect)

    def limits(self, ctx: SourceContext) -> Limits:
        return Limits(timeout_seconds=ctx.limits.timeout_seconds, max_rows=ctx.limits.max_rows)

    def check_with_connection(self, options: dict, settings: dict) -> None:
        """Save-time checks that need the connection's dialect (none by default)."""


class SqlTableKind(_SqlKind):
    """One table (or view) of a SQL server."""

    name = "sql_table"

    def validate_options(self, options: dict) -> dict:
        _refuse_unknown(options, {"table", "schema", "variables"})
        result = {"table": _text(options, "table", required=True)}
        schema = _text(options, "schema", required=False)
        if schema:
            result["schema"] = schema
        variables = _declared_variables(options.get("variables"))
        if variables:
            result["variables"] = variables
        return result

    def _read(self, ctx: SourceContext, spec=None):
        return TableRead(ctx.options["table"], ctx.options.get("schema"), spec)

    def columns(self, ctx):
        # Inspection reads the catalog only, so the types are the server's own (a zero-row read has none).
        settings = self.connection_settings(ctx)
        url = resolve_url(settings, self.variables(ctx), check_host=self.host_check(ctx, settings))
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                found = sa.inspect(connection).get_columns(ctx.options["table"], ctx.options.get("schema"))
        except sa.exc.NoSuchTableError:
            raise QueryFailed(f"The table {ctx.options['table']!r} does not exist on the server") from None
        except sa.exc.DBAPIError as error:
            raise describe_failure(error, settings) from None
        finally:
            engine.dispose()
        return [{"name": c["name"], "type": str(c["type"])} for c in found]

    def read(self, ctx, spec=None):
        settings = self.connection_settings(ctx)
        return read_arrow(
            settings,
            self._read(ctx, spec),
            self.variables(ctx),
            self.limits(ctx),
            check_host=self.host_check(ctx, settings),
        )


class SqlQueryKind(_SqlKind):
    """One read-only SELECT; a query spec is applied over it as a subquery, on the server."""

    name = "sql_query"

    def validate_options(self, options: dict) -> dict:
        _refuse_unknown(options, {"sql", "variables"})
        sql = _text(options, "sql", required=True, limit=100_000)
        variables = _declared_variables(options.get("variables"))
        declared = {v["name"] for v in variables}
        for used in VARIABLE.findall(sql):
            if used not in declared:
                raise ValidationError(
                    f"The query uses the variable {used!r}: declare it in options.variables", field=used
                )
        # The generic dialect first; check_with_connection repeats it in the server's own dialect.
        check_read_only(_marked(sql), "")
        result = {"sql": sql}
        if variables:
            result["variables"] = variables
        return result

    def check_with_connection(self, options: dict, settings: dict) -> None:
        check_read_only(_marked(options["sql"]), settings.get("dialect") or "")

    def columns(self, ctx):
        # One row at most: enough for names and Arrow types (a NULL-only column reads as "null").
        table = self.read(ctx, {"limit": 1})
        return [{"name": f.name, "type": str(f.type)} for f in table.schema]

    def read(self, ctx, spec=None):
        settings = self.connection_settings(ctx)
        return read_arrow(
            settings,
            SqlRead(ctx.options["sql"], spec),
            self.variables(ctx),
            self.limits(ctx),
            check_host=self.host_check(ctx, settings),
        )


def _marked(sql: str) -> str:
    """``{{var}}`` as a plain identifier, so the SQL parses as it will run (variables become parameters)."""
    return VARIABLE.sub(lambda m: f"carnet_var__{m.group(1)}", sql)
