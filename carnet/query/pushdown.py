"""SQL over sources, pushed down whole: when every ``{source}`` of a query is a ``sql_table`` or ``sql_query``
source on one and the same connection, the query is rewritten for that server (tables and subqueries in
place of the placeholders, sqlglot transpiling from DuckDB's dialect to the server's) and runs there, in
the connector's read-only transaction with its timeout and row cap. One query, one result: a join or an
aggregate over big tables never brings their rows to Carnet.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from carnet.connectors.read_only_sql import SQLGLOT_DIALECTS
from carnet.connectors.sql import SqlRead, read_arrow
from carnet.connectors.sql_settings import VARIABLE
from carnet.errors import QueryFailed
from carnet.query.placeholders import SourceSql, server_sql
from carnet.sources import source_context, source_kinds, variables_for

PUSHDOWN_KINDS = frozenset({"sql_table", "sql_query"})


def can_push_down(sources: dict) -> bool:
    """Every source is a SQL table/query source, all on one connection."""
    if not sources or any(s.kind not in PUSHDOWN_KINDS or s.connection_id is None for s in sources.values()):
        return False
    return len({s.connection_id for s in sources.values()}) == 1


def own_variables(source, variables: dict) -> dict:
    return variables_for(source_kinds.get(source.kind), dict(source.options or {}), variables)


def pushed_down(session, settings, parsed: SourceSql, sources: dict, variables: dict):
    """The result, computed by the sources' SQL server; None when the query cannot be pushed down."""
    if not can_push_down(sources):
        return None
    contexts = {
        name: source_context(session, settings, row, own_variables(row, variables))
        for name, row in sources.items()
    }
    first = next(iter(contexts.values()))
    kind = source_kinds.get(first.kind)
    connection = kind.connection_settings(first)
    dialect = SQLGLOT_DIALECTS.get(connection.dialect)
    relations, values = {}, {}
    for name, ctx in contexts.items():
        source_kind = source_kinds.get(ctx.kind)
        values.update(source_kind.variables(ctx))  # each source's declared defaults, then the caller's
        relations[name] = _relation(ctx, dialect)
    values.update(variables)
    sql = server_sql(parsed, relations, dialect)
    return read_arrow(
        connection, SqlRead(sql), values, kind.limits(first), check_host=kind.host_check(first, connection)
    )


def _relation(ctx, dialect: str | None) -> exp.Expression:
    if ctx.kind == "sql_table":
        return exp.table_(ctx.options["table"], db=ctx.options.get("schema"), quoted=True)
    # {{var}} as an identifier while transpiling; source_sql.server_sql turns it back into {{var}}.
    marked = VARIABLE.sub(lambda m: f"carnet_var__{m.group(1)}", ctx.options["sql"])
    try:
        return sqlglot.parse_one(marked, read=dialect)
    except (ParseError, TokenError) as error:
        raise QueryFailed(f"The query of the source {ctx.name!r} does not parse: {error}") from None
