"""The first of two read-only layers for SQL query sources: parse the SQL with sqlglot and accept only ONE
read statement. The second layer is the server's read-only transaction (`carnet.connectors.sql`), which stops
whatever a parser misses; this one gives a clear error before anything is sent.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from carnet.errors import ReadOnlyViolation, ValidationError

# SQLAlchemy dialect name -> sqlglot dialect (None: sqlglot's generic dialect).
SQLGLOT_DIALECTS = {
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mssql": "tsql",
    "oracle": "oracle",
    "snowflake": "snowflake",
    "redshift": "redshift",
    "bigquery": "bigquery",
    "trino": "trino",
    "databricks": "databricks",
    "clickhouse": "clickhouse",
    "duckdb": "duckdb",
}

_WRITES = tuple(
    getattr(exp, name)
    for name in (
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "TruncateTable",
        "Copy",
        "Command",
        "Into",
        "Lock",
        "Set",
        "Use",
        "Transaction",
        "Commit",
        "Rollback",
        "Pragma",
        "LoadData",
        "Grant",
        "Revoke",
        "Analyze",
        "Refresh",
        "Cache",
        "Uncache",
        "Kill",
        "Comment",
    )
    if hasattr(exp, name)
)

# Functions that change server state or read server files, though called from a SELECT.
_FUNCTIONS = frozenset(
    """set_config nextval setval pg_advisory_lock pg_advisory_xact_lock pg_terminate_backend
    pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_read_file pg_read_binary_file pg_ls_dir
    pg_stat_file lo_import lo_export lo_unlink dblink dblink_exec txid_current pg_notify
    load_file get_lock release_lock sys_exec sys_eval xp_cmdshell""".split()  # noqa: SIM905
)


def check_read_only(sql: str, dialect: str) -> None:
    """Raise ReadOnlyViolation unless `sql` is exactly one SELECT (CTEs, set operations allowed) that cannot
    write, lock rows, or call a state-changing function; ValidationError when it does not parse."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The query is empty", field="sql")
    try:
        statements = [s for s in sqlglot.parse(sql, read=SQLGLOT_DIALECTS.get(dialect)) if s is not None]
    except (ParseError, TokenError) as error:
        raise ValidationError(
            f"The query does not parse: {str(error).splitlines()[0]}", field="sql"
        ) from None
    if len(statements) != 1:
        raise ReadOnlyViolation("A query source holds exactly one SELECT statement", field="sql")
    (statement,) = statements
    if not isinstance(statement, exp.Query):
        raise ReadOnlyViolation(f"Only SELECT queries are allowed, not {statement.key.upper()}", field="sql")
    for node in statement.walk():
        if isinstance(node, _WRITES):
            raise ReadOnlyViolation(
                f"The query contains {node.key.upper()}: only reads are allowed", field="sql"
            )
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in _FUNCTIONS:
                raise ReadOnlyViolation(
                    f"The function {name}() is not allowed in a query source", field="sql"
                )
