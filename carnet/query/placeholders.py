"""SQL over an organization's sources: ``SELECT ... FROM {orders} o JOIN {customers} c ON ...``.

``parse_source_sql`` finds the ``{source name}`` placeholders (outside strings, quoted identifiers and
comments), swaps each for a generated identifier, and checks the result with sqlglot (DuckDB dialect): one
read-only SELECT (``carnet.connectors.read_only_sql``) whose every table reference is a placeholder or a CTE
of the query itself. Table functions (``read_csv(...)``, ``duckdb_tables()``), schema-qualified names
(``information_schema.tables``) and DuckDB's introspection functions are refused before anything runs; the
DuckDB connection that runs the query has no file access either (``carnet.query.service``), a second layer.

The query that runs is sqlglot's re-rendering of the tree that was checked, never the caller's text, so a
difference between sqlglot's parser and DuckDB's cannot smuggle anything past the check.

Limits: a source whose name holds ``{``, ``}``, a quote, ``:`` or a line break cannot be named in SQL (``:``
keeps DuckDB's struct literals ``{'a': 1}`` apart from placeholders).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from carnet.connectors.read_only_sql import check_read_only
from carnet.errors import CarnetError, ValidationError

MAX_SQL_LENGTH = 100_000
_PLACEHOLDER = re.compile(r"\{([^{}'\":\n\r]+)\}")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
# DuckDB functions that read files, the environment or the catalog; refused by name (file access is also off
# in the connection that runs the query).
_REFUSED_FUNCTIONS = frozenset(
    """current_setting getenv query query_table read_text read_blob glob sniff_csv read_csv read_csv_auto
    read_parquet parquet_scan read_json read_json_auto read_ndjson read_json_objects read_xlsx
    iceberg_scan delta_scan sqlite_scan postgres_scan mysql_scan load_extension which_secret""".split()  # noqa: SIM905
)
_REFUSED_PREFIXES = ("duckdb_", "pragma_", "parquet_", "read_", "pg_", "icu_")


@dataclass
class SourceSql:
    """A checked query: ``tree`` (sqlglot, DuckDB dialect), each placeholder replaced by ``markers[name]``."""

    tree: exp.Query
    markers: dict[str, str] = field(default_factory=dict)  # source name -> generated identifier

    @property
    def names(self) -> list[str]:
        return list(self.markers)

    def duckdb_sql(self) -> str:
        return self.tree.sql(dialect="duckdb")

    def restore_names(self, text: str) -> str:
        """An error message with the placeholders as the caller wrote them."""
        for name, marker in self.markers.items():
            text = text.replace(marker, "{" + name + "}")
        return text


def substitute_placeholders(sql: str) -> tuple[str, dict[str, str]]:
    """``sql`` with every ``{name}`` outside quotes and comments replaced by a generated identifier."""
    nonce = secrets.token_hex(4)
    markers: dict[str, str] = {}
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"":
            end = _closing_quote(sql, i)
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise ValidationError("Unterminated /* comment in the query", field="sql")
            out.append(sql[i : end + 2])
            i = end + 2
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag.group(0), tag.end())
            if end < 0:
                raise ValidationError("Unterminated $$ string in the query", field="sql")
            end += len(tag.group(0))
            out.append(sql[i:end])
            i = end
        elif sql.startswith("{{", i):
            raise ValidationError(
                "{{variables}} cannot appear in SQL over sources: pass values in the variables field "
                "(each source that declares them receives them)",
                field="sql",
            )
        elif (
            char == "{" and (match := _PLACEHOLDER.match(sql, i)) and match.group(1) == match.group(1).strip()
        ):
            name = match.group(1)
            marker = markers.setdefault(name, f"carnet_src_{nonce}_{len(markers)}")
            out.append(marker)
            i = match.end()
        else:
            out.append(char)
            i += 1
    return "".join(out), markers


def _closing_quote(sql: str, start: int) -> int:
    quote, j = sql[start], start + 1
    while True:
        k = sql.find(quote, j)
        if k < 0:
            raise ValidationError("Unterminated quote in the query", field="sql")
        if k + 1 < len(sql) and sql[k + 1] == quote:  # a doubled quote is an escaped one
            j = k + 2
            continue
        return k


def parse_source_sql(sql, field_name: str = "sql") -> SourceSql:
    """Check ``sql`` (typed errors naming ``field_name``) and return its tree and placeholders."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The query is empty", field=field_name)
    if len(sql) > MAX_SQL_LENGTH:
        raise ValidationError(f"The query is longer than {MAX_SQL_LENGTH} characters", field=field_name)
    try:
        text, markers = substitute_placeholders(sql)
        check_read_only(text, "duckdb")
        tree = sqlglot.parse_one(text, read="duckdb")
    except (ParseError, TokenError) as error:
        raise ValidationError(
            f"The query does not parse: {str(error).splitlines()[0]}", field=field_name
        ) from None
    except CarnetError as error:  # check_read_only's refusals, named after the caller's field
        error.fields["field"] = field_name
        raise
    check_references(tree, markers, field_name)
    return SourceSql(tree, markers)


def check_references(tree: exp.Expression, markers: dict[str, str], field_name: str = "sql") -> None:
    """Every table is a placeholder or a CTE name; no table function, no qualified name, no refused call."""
    allowed = {m.lower() for m in markers.values()}
    allowed |= {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    seen = set()
    for node in tree.walk():
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                raise ValidationError(
                    f"Table functions are not allowed ({node.this.sql('duckdb')[:80]}): "
                    "read sources as {name}",
                    field=field_name,
                )
            if node.args.get("db") or node.args.get("catalog") or node.name.lower() not in allowed:
                raise ValidationError(
                    f"Unknown table {node.sql('duckdb')!r}: name sources as {{source name}}",
                    field=field_name,
                )
            seen.add(node.name.lower())
        elif isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_PREFIXES):
                raise ValidationError(f"The function {name}() is not allowed here", field=field_name)
    unused = [name for name, marker in markers.items() if marker.lower() not in seen]
    if unused:
        # A placeholder that is not a table (say in a select list) would be read as a column name.
        raise ValidationError(f"{{{unused[0]}}} must be used as a table (FROM/JOIN)", field=field_name)


# -- pushdown: the same query on the SQL server of its sources ---------------------------------------------
_VARIABLE_MARKER = re.compile(r"\bcarnet_var__([A-Za-z_][A-Za-z0-9_]{0,62})\b")


def server_sql(parsed: SourceSql, relations: dict[str, exp.Expression], dialect: str | None) -> str:
    """The query for the server: each placeholder replaced by ``relations[name]`` (a table or a parsed
    subquery), rendered in the server's dialect, ``{{var}}`` markers turned back into variables."""
    tree = parsed.tree.copy()
    by_marker = {marker.lower(): name for name, marker in parsed.markers.items()}

    def replace(node):
        if isinstance(node, exp.Table) and node.name.lower() in by_marker and not node.args.get("db"):
            alias = node.alias or node.name  # qualified columns keep working
            relation = relations[by_marker[node.name.lower()]].copy()
            if isinstance(relation, exp.Table):
                relation.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
                return relation
            return exp.Subquery(this=relation, alias=exp.TableAlias(this=exp.to_identifier(alias)))
        return node

    rendered = tree.transform(replace).sql(dialect=dialect)
    return _VARIABLE_MARKER.sub(lambda m: "{{" + m.group(1) + "}}", rendered)
