"""carnet.connectors.sql against the real PostgreSQL and MariaDB: read-only user, push-down, variables,
both read-only layers (parser, then the server's read-only transaction), limits, and credential hygiene."""

from __future__ import annotations

import functools
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from carnet.connectors import Limits, SqlRead, TableRead, validate_connection
from carnet.connectors import read_arrow as _read_arrow
from carnet.connectors.sql_settings import no_host_check
from carnet.connectors.sql_settings import resolve_url as _resolve_url
from carnet.errors import (
    ConnectionFailed,
    MissingDriver,
    QueryFailed,
    QueryTimeout,
    ReadOnlyViolation,
    RowLimitExceeded,
    ValidationError,
)
from tests.sql_servers import CANARY, Server, setup_server, teardown_server

# The connector on its own: the host policy (carnet.net_guard.sql_host_guard) is tested with the sources.
read_arrow = functools.partial(_read_arrow, check_host=no_host_check)


def resolve_url(settings, variables=None, check_host=no_host_check):
    return _resolve_url(settings, variables, check_host=check_host)


@pytest.fixture(scope="module", params=["pg", "mariadb"])
def server(request):
    base = request.getfixturevalue("pg_url" if request.param == "pg" else "mysql_url")
    server = Server(request.param, base)
    setup_server(server)
    yield server
    teardown_server(server)


@pytest.fixture
def sent_sql():
    """Every statement any engine sends, as the server receives it."""
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", capture)
    yield statements
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", capture)


# --- reading ---------------------------------------------------------------------------------------------


def test_read_only_user_reads_a_table_with_a_pushed_down_spec(server, sent_sql):
    spec = {
        "columns": ["id", "amount"],
        "where": [["region", "in", ["north", "east"]]],
        "order_by": [["id", "desc"]],
    }
    table = read_arrow(server.ro, TableRead("orders", spec=spec))
    assert table.column_names == ["id", "amount"]
    assert table.to_pylist() == [{"id": 4, "amount": 15}, {"id": 2, "amount": 20}, {"id": 1, "amount": 10}]
    select = next(s for s in sent_sql if "FROM orders" in s and "WHERE" in s)
    assert "north" not in select  # the filter values travelled as parameters
    assert any("READ ONLY" in s for s in sent_sql)


def test_the_default_ten_million_row_cap_reads_with_and_without_a_spec(server):
    # The cap asks the server for max_rows + 1 rows, one more than a query spec's own largest limit.
    big = Limits(max_rows=10_000_000)
    assert read_arrow(server.ro, TableRead("orders"), limits=big).num_rows == 4
    assert read_arrow(server.ro, TableRead("orders", spec={"limit": 2}), limits=big).num_rows == 2
    spec = {"where": [["region", "=", "north"]]}
    assert read_arrow(server.ro, SqlRead("SELECT * FROM orders", spec), limits=big).num_rows == 2


def test_results_keep_the_servers_column_types_even_when_empty_or_null(server):
    """Types come from the server's description of the result, not from the values: a declared decimal
    keeps its precision, an all-NULL column and an empty result still have their columns' types."""
    with server.engine.begin() as con:
        con.execute(sa.text("DROP TABLE IF EXISTS typed"))
        con.execute(
            sa.text(
                "CREATE TABLE typed (id INTEGER, price DECIMAL(10,2), day DATE, note VARCHAR(20), n BIGINT)"
            )
        )
        con.execute(sa.text("INSERT INTO typed VALUES (1, 88.25, NULL, NULL, 5), (2, NULL, NULL, 'x', NULL)"))
        if server.kind == "pg":
            con.execute(sa.text(f"GRANT SELECT ON typed TO {server.reader}"))
    scale = {"pg": 10, "mariadb": 38}[server.kind]  # pymysql reports no precision: 38 digits hold it
    table = read_arrow(server.ro, TableRead("typed", spec={"order_by": ["id"]}))
    assert table.schema.field("price").type == pa.decimal128(scale, 2)
    assert table.schema.field("day").type == pa.date32()  # every value NULL, still a date column
    assert table.schema.field("n").type == pa.int64() and table.schema.field("note").type == pa.string()
    assert table.column("price").to_pylist() == [Decimal("88.25"), None]
    empty = read_arrow(server.ro, SqlRead("SELECT id, price, day FROM typed WHERE id > 100"))
    assert empty.num_rows == 0 and empty.schema.field("day").type == pa.date32()
    assert empty.schema.field("price").type == pa.decimal128(scale, 2)
    # An aggregate's width is not declared: its values decide (and a sum may outgrow numeric(10,2)).
    total = read_arrow(server.ro, TableRead("typed", spec={"aggregates": {"price": "sum"}}))
    assert total.column("price").to_pylist() == [Decimal("88.25")]


def test_aggregates_run_on_the_server(server, sent_sql):
    spec = {"group_by": ["k"], "aggregates": {"v": "sum", "*": "count"}, "order_by": ["k"]}
    # 200k rows in the table, at most 100 may come back: only a server-side GROUP BY fits.
    table = read_arrow(server.ro, TableRead("big", spec=spec), limits=Limits(max_rows=100))
    assert table.num_rows == 7
    assert sum(table.column("count").to_pylist()) == 200_000
    assert int(sum(table.column("v").to_pylist())) == sum(n % 100 for n in range(1, 200_001))
    select = next(s for s in sent_sql if "FROM big" in s)
    assert "GROUP BY" in select and "sum(" in select.lower()
    # The same table without the aggregate is over the limit, and stops there.
    with pytest.raises(RowLimitExceeded) as error:
        read_arrow(server.ro, TableRead("big"), limits=Limits(max_rows=100))
    assert error.value.status == 413 and "100" in error.value.message


def test_query_source_variables_are_bound_parameters(server, sent_sql):
    sql = "SELECT id, amount FROM orders WHERE region = {{region}} AND amount >= {{floor}} ORDER BY id"
    table = read_arrow(server.ro, sql, {"region": "north", "floor": 15})
    assert table.to_pylist() == [{"id": 2, "amount": 20}]
    assert not any("north" in s for s in sent_sql)
    hostile = read_arrow(server.ro, sql, {"region": "north' OR '1'='1", "floor": 0})
    assert hostile.num_rows == 0
    with pytest.raises(ValidationError) as error:
        read_arrow(server.ro, sql, {"region": "north"})
    assert error.value.fields["field"] == "floor" and "Missing variable" in error.value.message
    with pytest.raises(ValidationError, match="inside quotes"):
        read_arrow(server.ro, "SELECT id FROM orders WHERE region = '{{region}}'", {"region": "north"})


def test_query_source_filtered_by_a_spec_and_a_database_variable(server):
    settings = {**server.ro, "database": "{{customer_db}}"}
    read = SqlRead(
        "SELECT region, amount FROM orders",
        spec={"group_by": ["region"], "aggregates": {"amount": "max"}, "order_by": ["region"]},
    )
    table = read_arrow(settings, read, {"customer_db": server.database})
    assert table.to_pylist() == [
        {"region": "east", "amount": 15},
        {"region": "north", "amount": 20},
        {"region": "south", "amount": 5},
    ]
    with pytest.raises(ValidationError) as error:
        read_arrow(settings, read, {"customer_db": f"{server.database}?x=1"})
    assert error.value.fields["field"] == "customer_db"


# --- read-only: two layers --------------------------------------------------------------------------------

WRITES = {
    "pg": [
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        "SELECT 1; DELETE FROM orders",
        "SELECT * INTO stolen FROM orders",
        "SELECT * FROM orders FOR UPDATE",
        "COPY orders TO '/tmp/orders.csv'",
        "CALL something()",
        "UPDATE orders SET amount = 0",
        "SELECT set_config('transaction_read_only', 'off', true)",
    ],
    "mariadb": [
        "SELECT 1; DELETE FROM orders",
        "WITH d AS (SELECT 1) DELETE FROM orders",
        "SELECT * FROM orders FOR UPDATE",
        "SELECT * FROM orders LOCK IN SHARE MODE",
        "INSERT INTO orders SELECT id + 10, region, amount FROM orders",
        "SELECT load_file('/etc/passwd')",
    ],
}


def test_the_parser_refuses_writes_before_sending_anything(server, sent_sql):
    for sql in WRITES[server.kind]:
        with pytest.raises((ReadOnlyViolation, ValidationError)) as error:
            read_arrow(server.admin, sql)
        assert error.value.status in (400, 403), sql
        assert not any("orders" in s for s in sent_sql), sql
    assert server.count_orders() == 4


def test_the_servers_read_only_mode_stops_what_the_parser_misses(server):
    # wipe() deletes rows but reads as a plain SELECT: it passes the parser; the admin account could
    # write, so only the read-only transaction stops it.
    with pytest.raises(ReadOnlyViolation) as error:
        read_arrow(server.admin, "SELECT wipe()")
    assert error.value.status == 403 and "read-only" in error.value.message
    bypassed = {
        "pg": ["SELECT * FROM orders FOR UPDATE", "SELECT nextval('counter')"],
        "mariadb": ["DELETE FROM orders", "UPDATE orders SET amount = 0"],
    }
    for sql in bypassed[server.kind]:
        with pytest.raises(ReadOnlyViolation):
            read_arrow(server.admin, sql, _skip_parser_check=True)
    assert server.count_orders() == 4


def test_statement_timeout(server):
    sleep = "SELECT pg_sleep(3)" if server.kind == "pg" else "SELECT sleep(3)"
    with pytest.raises(QueryTimeout) as error:
        read_arrow(server.ro, sleep, limits=Limits(timeout_seconds=0.5))
    assert error.value.status == 504


def test_server_errors_are_typed_not_crashes(server):
    with pytest.raises(QueryFailed) as error:
        read_arrow(server.ro, "SELECT no_such_column FROM orders")
    assert error.value.status == 400
    with pytest.raises(QueryFailed, match="does not exist"):
        read_arrow(server.ro, TableRead("no_such_table"))
    mistyped = TableRead("orders", spec={"where": [["amount", "=", "not a number"]]})
    if server.kind == "pg":
        with pytest.raises(QueryFailed):
            read_arrow(server.ro, mistyped)
    else:  # MariaDB compares the string as the number 0: no error, no row
        assert read_arrow(server.ro, mistyped).num_rows == 0


# --- credentials ------------------------------------------------------------------------------------------


def test_wrong_password_is_a_connection_error_without_the_password(server):
    wrong = "Wrong-pw-42!"
    # The PostgreSQL here trusts every local connection, so a wrong password only fails on MariaDB;
    # PostgreSQL shows the same path with a user that does not exist.
    user = server.reader if server.kind == "mariadb" else "carnet_nobody"
    with pytest.raises(ConnectionFailed) as error:
        read_arrow({**server.ro, "username": user, "password": wrong}, "SELECT 1")
    assert error.value.status == 502
    text = str(error.value.to_json()) + repr(error.value) + str(error.value.__cause__)
    assert wrong not in text and CANARY not in text
    assert error.value.__suppress_context__  # the driver's exception (with its arguments) is not chained
    # A driver that echoes a parameter (here: the user name equal to the password) is redacted too.
    with pytest.raises(ConnectionFailed) as error:
        read_arrow({**server.ro, "username": "echo_me_x", "password": "echo_me_x"}, "SELECT 1")
    assert "echo_me_x" not in error.value.message and "***" in error.value.message


# --- connection settings -------------------------------------------------------------------------------


def _pg(**extra):
    return {"dialect": "postgresql", "host": "db.example.com", "database": "sales", "username": "u", **extra}


def _my(**extra):
    return {"dialect": "mariadb", "host": "db.example.com", "database": "sales", "username": "u", **extra}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (_my(options={"local_infile": "1"}), "local files"),
        (_my(options={"init_command": "SET GLOBAL x=1"}), "runs statements"),
        (_my(options={"read_default_file": "/etc/my.cnf"}), "option file"),
        (_my(options={"read_default_group": "client"}), "option file"),
        (_my(options={"client_flag": "128"}), "multiple statements"),
        (_my(options={"ssl_key": "/etc/ssl/private/server.key"}), "local file"),
        (_my(options={"unknown_opt": "1"}), "not allowed"),
        (_pg(options={"options": "-c default_transaction_read_only=off"}), "-c"),
        (_pg(options={"passfile": "/root/.pgpass"}), "password file"),
        (_pg(options={"service": "prod"}), "service file"),
        (_pg(options={"servicefile": "/etc/pg_service.conf"}), "service file"),
        (_pg(options={"sslrootcert": "/etc/ssl/certs/ca.pem"}), "local file"),
        (_pg(host="/var/run/postgresql"), "Invalid host"),
        (_pg(host="db.example.com:5432@evil"), "Invalid host"),
        (_pg(database="sales/../x"), "Invalid database"),
        (_pg(dialect="sqlite"), "files on this machine"),
        (_pg(dialect="duckdb"), "files on this machine"),
        (_pg(dialect="nosuchdb"), "Unsupported dialect"),
        (_pg(driver="asyncpg"), "Unsupported driver"),
        (_pg(options={"sslmode": "{{mode}}"}), "Invalid value"),
    ],
)
def test_dangerous_or_invalid_settings_are_refused(raw, words):
    with pytest.raises(ValidationError) as error:
        validate_connection(raw)
    assert words in error.value.message


def test_file_options_only_inside_the_allowed_folder(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    settings = validate_connection(_pg(options={"sslrootcert": "ca.pem"}), allowed_file_dir=tmp_path)
    assert settings.options == {"sslrootcert": "ca.pem"}
    with pytest.raises(ValidationError, match="inside"):
        validate_connection(_pg(options={"sslrootcert": "../ca.pem"}), allowed_file_dir=tmp_path)


def test_missing_driver_names_the_extra():
    with pytest.raises(MissingDriver) as error:
        resolve_url(validate_connection({"dialect": "mssql", "host": "sql.example.com", "database": "x"}))
    assert "pip install carnet[mssql]" in error.value.message


def test_variables_in_fields_are_checked_and_the_host_hook_sees_the_result():
    seen = []
    template = validate_connection(
        _pg(host="{{tenant}}.db.example.com", database="{{tenant}}_sales", port=5433)
    )
    url = resolve_url(template, {"tenant": "acme"}, check_host=lambda host, port: seen.append((host, port)))
    assert (url.host, url.database) == ("acme.db.example.com", "acme_sales")
    assert seen == [("acme.db.example.com", 5433)]
    for bad in ["acme@evil.com", "a/b", "x:1", "a b", "x?sslmode=disable", "a#b", ""]:
        with pytest.raises(ValidationError) as error:
            resolve_url(template, {"tenant": bad})
        assert error.value.fields["field"] in ("tenant", "host"), bad
    with pytest.raises(ValidationError) as error:
        resolve_url(template, {})
    assert error.value.fields["field"] == "tenant" and "Missing variable" in error.value.message

    def refuse(host, port):
        raise ValidationError(f"Host {host} is not allowed", field="host")

    with pytest.raises(ValidationError, match="not allowed"):
        resolve_url(template, {"tenant": "acme"}, check_host=refuse)
