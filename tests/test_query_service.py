"""The query service against the real stack: structured queries (POST sources/{name}/query), SQL across
sources (POST query), derived sources, the SQL-server pushdown, and the kernel-side API in a real kernel.

Expected results come from DuckDB run directly on the org's warehouse file (or from PostgreSQL itself),
never from Carnet's own code.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import uuid

import pandas as pd
import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import Connection, DataSource, Role
from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from carnet.errors import CarnetError, QueryTimeout, RowLimitExceeded
from carnet.permissions import Principal
from carnet.query.placeholders import parse_source_sql, substitute_placeholders
from carnet.query.service import run_query, run_sql
from carnet.warehouse import Warehouse, connect_waiting
from tests.api_support import api_url, assert_json_error, auth, unique
from tests.helpers import execute_in_kernel, start_server, stop_server, user_path
from tests.sql_servers import scratch_pg_database

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ANALYST = "analyst@acme.example"
CONTINENTS_TABLE = "h2_continents"


def warehouse_df(stack, sql: str, params=None) -> pd.DataFrame:
    with connect_waiting(stack.settings.warehouse_path(1), read_only=True) as con:
        return con.execute(sql, params or []).df()


def arrow_df(response) -> pd.DataFrame:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == ARROW_STREAM
    return pa.ipc.open_stream(response.content).read_all().to_pandas()


def same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False
    )


@pytest.fixture(scope="module")
def analyst(hub_token):
    return auth(hub_token(ANALYST))


@pytest.fixture(scope="module")
def studio(hub_token):
    return auth(hub_token("studio@acme.example"))


def create_source(stack, headers, created, kind: str, options: dict, name: str | None = None):
    name = name or unique("h2-src")
    response = requests.post(
        api_url(stack, "sources"),
        json={"name": name, "kind": kind, "options": options},
        headers=headers,
        timeout=60,
    )
    if response.status_code == 201:
        created.sources.add(response.json()["id"])
    return name, response


@pytest.fixture(scope="module")
def continents(carnet_stack, studio, created):
    """A second warehouse table + source of acme: one row per continent (a code and a made-up rank)."""
    frame = pd.DataFrame(
        {
            "continent": ["Africa", "Americas", "Asia", "Europe", "Oceania"],
            "code": ["AF", "AM", "AS", "EU", "OC"],
            "rank": [5, 2, 1, 3, 4],
        }
    )
    Warehouse(carnet_stack.settings.warehouse_path(1)).replace_table(CONTINENTS_TABLE, frame)
    name, response = create_source(
        carnet_stack, studio, created, "warehouse_table", {"table": CONTINENTS_TABLE}, unique("continents")
    )
    assert response.status_code == 201, response.text
    return name


def query(stack, headers, source: str, body: dict) -> requests.Response:
    return requests.post(api_url(stack, f"sources/{source}/query"), json=body, headers=headers, timeout=120)


def sql(stack, headers, text: str, variables=None) -> requests.Response:
    body = {"sql": text, "variables": variables or {}}
    return requests.post(api_url(stack, "query"), json=body, headers=headers, timeout=120)


def test_whole_number_sums_come_back_as_integers_and_exact_decimals_stay():
    import decimal

    from carnet.query.service import plain_integers

    table = pa.table(
        {
            "total": pa.array([decimal.Decimal(5), None], pa.decimal128(38, 0)),
            "huge": pa.array([decimal.Decimal(10**30)] * 2, pa.decimal128(38, 0)),
            "money": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2")], pa.decimal128(10, 2)),
        }
    )
    plain = plain_integers(table)
    assert plain.schema.field("total").type == pa.int64() and plain.column("total").to_pylist() == [5, None]
    assert plain.schema.field("huge").type == pa.decimal128(38, 0)  # would not fit: kept exact
    assert plain.schema.field("money").type == pa.decimal128(10, 2)


def test_a_sum_over_the_warehouse_is_an_integer_column(carnet_stack, analyst):
    spec = {"group_by": ["continent"], "aggregates": {"pop": "sum"}, "where": [["year", "=", 2007]]}
    response = requests.post(
        api_url(carnet_stack, f"sources/{DEMO_SOURCE}/query"), json=spec, headers=analyst, timeout=60
    )
    frame = arrow_df(response)
    assert str(frame["pop"].dtype) == "int64" and frame["pop"].sum() > 6_000_000_000


# -- placeholders (no stack) -------------------------------------------------------------------------------
def test_placeholders_are_found_outside_strings_comments_and_struct_literals():
    text, markers = substitute_placeholders(
        "SELECT '{not_a}' AS s, \"{nor_b}\", {'k': 1} AS st, $x${nor_c}$x$ -- {nor_d}\n"
        "FROM {orders} o /* {nor_e} */ JOIN {my customers} c ON o.id = c.id JOIN {orders} p ON TRUE"
    )
    assert list(markers) == ["orders", "my customers"]  # each name once, in order of appearance
    assert "'{not_a}'" in text and '"{nor_b}"' in text and "{'k': 1}" in text and "$x${nor_c}$x$" in text
    assert "{nor_d}" in text and "{nor_e}" in text
    assert text.count(markers["orders"]) == 2 and "{orders}" not in text and "{my customers}" not in text


@pytest.mark.parametrize(
    "text,status",
    [
        ("SELECT * FROM read_csv('/etc/passwd')", 400),
        ("SELECT * FROM {a}, read_parquet('x.parquet')", 400),
        ("SELECT * FROM {a}; SELECT 1", 403),
        ("SELECT * FROM {a}; DROP TABLE x", 403),
        ("ATTACH '/tmp/x.db' AS y", 403),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", 403),
        ("SELECT * FROM information_schema.tables", 400),
        ("SELECT * FROM duckdb_tables()", 400),
        ("SELECT * FROM gapminder", 400),
        ("SELECT * FROM main.{a}", 400),
        ("SELECT {a} FROM {b}", 400),
        ("SELECT current_setting('threads') FROM {a}", 400),
        ("SELECT * FROM {a} WHERE x = {{var}}", 400),
        ("SELECT * FROM {a} WHERE x = 'unterminated", 400),
        ("", 400),
    ],
)
def test_forbidden_or_malformed_sql_is_refused_before_anything_runs(text, status):
    with pytest.raises(CarnetError) as refused:
        parse_source_sql(text)
    assert refused.value.status == status, refused.value
    assert refused.value.fields["field"] == "sql"


def test_ctes_and_subqueries_over_placeholders_are_accepted():
    parsed = parse_source_sql(
        "WITH big AS (SELECT * FROM {orders} WHERE amount > 10) SELECT c.country, sum(b.amount) "
        "FROM big b JOIN (SELECT * FROM {customers}) c ON b.cid = c.id GROUP BY 1"
    )
    assert parsed.names == ["orders", "customers"]
    rendered = parsed.duckdb_sql()
    assert "{" not in rendered and all(marker in rendered for marker in parsed.markers.values())


# -- one source: structured queries ------------------------------------------------------------------------
def test_a_grouped_query_on_the_warehouse_gives_what_duckdb_gives(carnet_stack, analyst):
    body = {
        "group_by": ["continent"],
        "aggregates": {"pop": "sum", "lifeExp": "avg", "*": "count"},
        "where": [["year", "=", 2007]],
        "order_by": [["pop", "desc"]],
        "limit": 3,
    }
    got = arrow_df(query(carnet_stack, analyst, DEMO_SOURCE, body))
    expected = warehouse_df(
        carnet_stack,
        f'SELECT continent, sum(pop) AS pop, avg("lifeExp") AS "lifeExp", count(*) AS count '  # noqa: S608
        f"FROM {DEMO_TABLE} WHERE year = 2007 GROUP BY continent ORDER BY pop DESC LIMIT 3",
    )
    assert list(got.columns) == ["continent", "pop", "lifeExp", "count"]
    same(got, expected)


@pytest.mark.parametrize(
    "where,predicate,params",
    [
        ([["continent", "in", ["Europe", "Oceania"]]], "continent IN ('Europe', 'Oceania')", []),
        (
            [["continent", "not_in", ["Asia", "Africa", "Americas"]]],
            "continent NOT IN ('Asia', 'Africa', 'Americas')",
            [],
        ),
        (
            [["year", "between", [1990, 2000]], ["country", "like", "B%"]],
            "year BETWEEN 1990 AND 2000 AND country LIKE 'B%'",
            [],
        ),
        (
            [["country", "ilike", "%LAND%"], ["pop", ">", 5_000_000]],
            "country ILIKE '%LAND%' AND pop > 5000000",
            [],
        ),
        (
            [["gdpPercap", "<=", 500.5], ["continent", "!=", "Asia"]],
            "\"gdpPercap\" <= 500.5 AND continent <> 'Asia'",
            [],
        ),
        ([["iso_num", "not_null"], ["year", "<", 1960]], "iso_num IS NOT NULL AND year < 1960", []),
    ],
)
def test_where_operators_match_duckdb(carnet_stack, analyst, where, predicate, params):
    body = {"columns": ["country", "year", "pop"], "where": where, "order_by": ["country", "year"]}
    got = arrow_df(query(carnet_stack, analyst, DEMO_SOURCE, body))
    expected = warehouse_df(
        carnet_stack,
        f"SELECT country, year, pop FROM {DEMO_TABLE} WHERE {predicate} ORDER BY country, year",  # noqa: S608
        params,
    )
    assert len(expected) > 0  # each case selects something, so an empty answer cannot pass
    same(got, expected)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"columns": ["nope"]}, "columns"),
        ({"where": [["pop", "~", 1]]}, "where"),
        ({"where": [["pop", ">"]]}, "where"),
        ({"where": "pop > 1"}, "where"),
        ({"order_by": [["pop", "sideways"]]}, "order_by"),
        ({"limit": -1}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"group_by": ["continent"], "aggregates": {"pop": "median"}}, "aggregates"),
        ({"group_by": ["continent"], "aggregates": {"pop": "sum"}, "order_by": ["country"]}, "order_by"),
        ({"select": ["pop"]}, "select"),
        ({"variables": ["x"]}, "variables"),
    ],
)
def test_bad_specs_are_400_naming_the_field(carnet_stack, analyst, body, field):
    answer = assert_json_error(query(carnet_stack, analyst, DEMO_SOURCE, body), 400)
    assert answer["field"] == field, answer


def test_unknown_sources_are_404(carnet_stack, analyst):
    assert_json_error(query(carnet_stack, analyst, "no-such-source", {}), 404)
    answer = assert_json_error(sql(carnet_stack, analyst, "SELECT * FROM {no-such-source}"), 404)
    assert "no-such-source" in answer["message"]


def test_injection_attempts_are_values_or_refused_names(carnet_stack, analyst):
    rows_before = warehouse_df(carnet_stack, f"SELECT count(*) AS n FROM {DEMO_TABLE}")["n"][0]  # noqa: S608
    attack = f"x'; DROP TABLE {DEMO_TABLE}; --"
    got = arrow_df(query(carnet_stack, analyst, DEMO_SOURCE, {"where": [["country", "=", attack]]}))
    assert len(got) == 0  # compared as a value: no country has that name
    for body, field in (
        ({"columns": [f'country" FROM {DEMO_TABLE}; DROP TABLE {DEMO_TABLE}; --']}, "columns"),
        ({"order_by": ["year; DROP TABLE x"]}, "order_by"),
        ({"group_by": ["continent"], "aggregates": {"pop) FROM x; --": "sum"}}, "aggregates"),
    ):
        assert assert_json_error(query(carnet_stack, analyst, DEMO_SOURCE, body), 400)["field"] == field
    assert_json_error(sql(carnet_stack, analyst, f"SELECT * FROM {{{DEMO_SOURCE}}}; DROP TABLE x"), 403)
    after = warehouse_df(carnet_stack, f"SELECT count(*) AS n FROM {DEMO_TABLE}")["n"][0]  # noqa: S608
    assert after == rows_before


# -- SQL across sources ------------------------------------------------------------------------------------
def test_sql_joining_two_sources_gives_what_duckdb_gives(carnet_stack, analyst, continents):
    template = (
        "SELECT c.code, c.rank, sum(g.pop) AS pop, count(*) AS n FROM {gap} g JOIN {cont} c "
        "ON g.continent = c.continent WHERE g.year = 2007 GROUP BY c.code, c.rank ORDER BY c.rank"
    )
    got = arrow_df(
        sql(carnet_stack, analyst, template.format(gap="{gapminder}", cont="{" + continents + "}"))
    )
    expected = warehouse_df(carnet_stack, template.format(gap=DEMO_TABLE, cont=CONTINENTS_TABLE))
    assert list(got["code"]) == ["AS", "AM", "EU", "OC", "AF"]
    same(got, expected)


@pytest.mark.parametrize(
    "text,status",
    [
        ("SELECT * FROM read_csv('/etc/passwd')", 400),
        ("SELECT * FROM {gapminder} g, read_text('/etc/passwd') t", 400),
        ("SELECT * FROM {gapminder}; SELECT 1", 403),
        ("SELECT * FROM information_schema.tables", 400),
        ("SELECT * FROM gapminder", 400),
        ("SELECT * FROM duckdb_settings()", 400),
        # Warehouse-only SQL runs over the attached warehouse: its name gives no way around the placeholders.
        ("SELECT * FROM {gapminder} g, carnet_warehouse.main.gapminder w", 400),
        ("SELECT (SELECT count(*) FROM carnet_warehouse.main.gapminder) FROM {gapminder}", 400),
        ("SELECT * FROM {gapminder} WHERE 0 < (SELECT count(*) FROM duckdb_tables())", 400),
    ],
)
def test_forbidden_sql_over_the_api_is_refused_and_reads_nothing(carnet_stack, analyst, text, status):
    response = sql(carnet_stack, analyst, text)
    assert_json_error(response, status)
    assert "root:" not in response.text and "Afghanistan" not in response.text


@pytest.mark.parametrize("statement", ["ATTACH '{path}' AS stolen", "COPY (SELECT 1) TO '{path}'"])
def test_attach_and_copy_write_no_file(carnet_stack, analyst, statement):
    path = carnet_stack.data_dir / f"h2-{uuid.uuid4().hex}.db"
    assert_json_error(sql(carnet_stack, analyst, statement.format(path=path)), 403)
    assert not path.exists()


def stack_settings(stack, **overrides):
    from carnet.settings import CarnetSettings

    # The stack's own host policy: its service may reach the test database servers on 127.0.0.1.
    overrides.setdefault("sql_allow_hosts", [stack.env["CARNET_SQL_ALLOW_HOSTS"]])
    return CarnetSettings(data_dir=str(stack.data_dir), db_url=stack.settings.db_url, **overrides)


def acme_analyst(stack, created) -> Principal:
    return Principal(
        user_id=created.user_id(ANALYST),
        email=ANALYST,
        org_id=1,
        org_slug="acme",
        role=Role.analyst,
        via="hub",
    )


def assert_warehouse_file_free(settings) -> None:
    """Another process can open the org's warehouse file now. A query stopped by an error must let go of it at
    once, although the test still holds the error (its traceback and frames) and no garbage collection ran."""
    gc.disable()
    try:
        probe = "import sys, duckdb; duckdb.connect(sys.argv[1]).close()"  # fails at once while locked
        opened = subprocess.run(
            [sys.executable, "-c", probe, str(settings.warehouse_path(1))], capture_output=True, text=True
        )
        assert opened.returncode == 0, opened.stderr[-500:]
    finally:
        gc.enable()


def test_past_the_row_limit_is_413_and_within_it_the_rows_come(carnet_stack, created):
    settings = stack_settings(carnet_stack, source_max_rows=100)
    principal = acme_analyst(carnet_stack, created)
    with session_scope(settings.db_url) as session:
        for read in (
            lambda: run_query(session, settings, principal, DEMO_SOURCE, {}),
            lambda: run_query(session, settings, principal, DEMO_SOURCE, {"where": [["year", ">", 1990]]}),
            lambda: run_sql(session, settings, principal, "SELECT 1 FROM {gapminder} LIMIT 101"),
        ):
            with pytest.raises(RowLimitExceeded) as refused:
                read()
            assert refused.value.status == 413 and refused.value.fields["max_rows"] == 100
            assert_warehouse_file_free(settings)
        assert run_query(session, settings, principal, DEMO_SOURCE, {"limit": 100}).num_rows == 100
        grouped = run_query(session, settings, principal, DEMO_SOURCE, {"group_by": ["continent"]})
        assert grouped.num_rows == 5  # the limit is on what is returned, not on what is scanned


def test_past_the_time_limit_is_504(carnet_stack, created):
    settings = stack_settings(carnet_stack, source_timeout_seconds=0.3)
    principal = acme_analyst(carnet_stack, created)
    with session_scope(settings.db_url) as session, pytest.raises(QueryTimeout) as slow:
        # ~5 billion combinations, each computed: far longer than 0.3 s.
        run_sql(
            session,
            settings,
            principal,
            "SELECT sum(a.pop * b.year + c.pop) FROM {gapminder} a, {gapminder} b, {gapminder} c",
        )
    assert slow.value.status == 504
    assert_warehouse_file_free(settings)


# -- derived sources ---------------------------------------------------------------------------------------
def test_a_derived_source_reads_like_any_other_and_refuses_cycles(
    carnet_stack, studio, analyst, created, continents
):
    join = (
        "SELECT g.country, g.year, g.pop, c.code FROM {gapminder} g "
        f"JOIN {{{continents}}} c ON g.continent = c.continent"
    )
    derived, response = create_source(carnet_stack, studio, created, "derived", {"sql": join})
    assert response.status_code == 201, response.text
    described = requests.get(api_url(carnet_stack, f"sources/{derived}"), headers=analyst, timeout=60)
    assert described.status_code == 200, described.text
    assert [c["name"] for c in described.json()["columns"]] == ["country", "year", "pop", "code"]
    body = {
        "group_by": ["code"],
        "aggregates": {"pop": "max"},
        "where": [["year", "=", 1952]],
        "order_by": ["code"],
    }
    got = arrow_df(query(carnet_stack, analyst, derived, body))
    expected = warehouse_df(
        carnet_stack,
        f"SELECT c.code, max(g.pop) AS pop FROM {DEMO_TABLE} g JOIN {CONTINENTS_TABLE} c "  # noqa: S608
        "ON g.continent = c.continent WHERE g.year = 1952 GROUP BY c.code ORDER BY c.code",
    )
    same(got, expected)

    # A derived source over the derived one, then an attempt to close the loop.
    outer, response = create_source(
        carnet_stack, studio, created, "derived", {"sql": f"SELECT * FROM {{{derived}}} WHERE year = 2007"}
    )
    assert response.status_code == 201, response.text
    loop = requests.patch(
        api_url(carnet_stack, f"sources/{derived}"),
        json={"options": {"sql": f"SELECT * FROM {{{outer}}}"}},
        headers=studio,
        timeout=60,
    )
    assert "cannot refer to itself" in assert_json_error(loop, 400)["message"]
    for options, field in (
        ({"sql": "SELECT * FROM {no-such-source}"}, "options.sql"),
        ({"sql": "SELECT * FROM read_csv('/etc/passwd')"}, "options.sql"),
        ({"sql": "SELECT 1"}, "options.sql"),
        ({"sql": "SELECT * FROM {gapminder}", "extra": 1}, "options.extra"),
    ):
        _, refused = create_source(carnet_stack, studio, created, "derived", options)
        assert assert_json_error(refused, 400)["field"] == field
    in_2007 = warehouse_df(carnet_stack, f"SELECT count(*) AS n FROM {DEMO_TABLE} WHERE year = 2007")  # noqa: S608
    assert len(arrow_df(query(carnet_stack, analyst, outer, {}))) == in_2007["n"][0]


# -- pushdown to one SQL server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_shop(pg_url, carnet_stack, created):
    """A PostgreSQL database with orders and customers, a connection to it and two sql_table sources."""
    tables = (
        "CREATE TABLE customers (id int PRIMARY KEY, country text)",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount numeric(10,2))",
        "INSERT INTO customers VALUES (1, 'FR'), (2, 'DE'), (3, 'FR')",
        "INSERT INTO orders SELECT i, 1 + mod(i, 3), mod(i, 97) + 0.5 FROM generate_series(1, 5000) AS i",
    )
    with scratch_pg_database(pg_url, "carnet_h2", *tables) as (url, settings):
        yield from shop_sources(carnet_stack, created, url, settings)


def shop_sources(carnet_stack, created, url, settings):
    names = {}
    with session_scope(carnet_stack.settings.db_url) as session:
        connection = Connection(org_id=1, name=unique("h2-pg"), kind="sql", settings=settings)
        session.add(connection)
        session.flush()
        for table in ("orders", "customers"):
            source = DataSource(
                org_id=1,
                name=unique(f"h2-{table}"),
                kind="sql_table",
                options={"table": table},
                connection_id=connection.id,
            )
            session.add(source)
            session.flush()
            created.sources.add(source.id)
            names[table] = source.name
        connection_id = connection.id
    yield {"url": url, "sources": names}
    with session_scope(carnet_stack.settings.db_url) as session:
        session.execute(delete(DataSource).where(DataSource.connection_id == connection_id))
        session.execute(delete(Connection).where(Connection.id == connection_id))


def test_sql_over_sources_of_one_server_runs_there_as_one_query(carnet_stack, analyst, created, pg_shop):
    orders, customers = pg_shop["sources"]["orders"], pg_shop["sources"]["customers"]
    text = (
        "SELECT c.country, sum(o.amount) AS total, count(*) AS n "
        f"FROM {{{orders}}} o JOIN {{{customers}}} c ON o.customer_id = c.id "
        "GROUP BY c.country ORDER BY c.country"
    )
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    settings = stack_settings(carnet_stack)
    try:
        with session_scope(settings.db_url) as session:
            table = run_sql(session, settings, acme_analyst(carnet_stack, created), text)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before)
    shop = [s for s in statements if "JOIN" in s.upper() or "orders" in s or "customers" in s]
    assert len(shop) == 1, statements  # one query on the server, not one read per source
    assert "JOIN" in shop[0].upper() and "GROUP BY" in shop[0].upper()

    engine = sa.create_engine(pg_shop["url"])
    with engine.connect() as con:
        expected = pd.read_sql(
            "SELECT c.country, sum(o.amount) AS total, count(*) AS n FROM orders o JOIN customers c "
            "ON o.customer_id = c.id GROUP BY c.country ORDER BY c.country",
            con,
        )
    engine.dispose()
    same(table.to_pandas(), expected)
    # Through the API too, same answer.
    same(arrow_df(sql(carnet_stack, analyst, text)), expected)


def test_a_query_on_a_sql_source_connects_once_and_sees_columns_added_since(carnet_stack, created, pg_shop):
    """The spec is checked against column names remembered per source definition (no extra connection per
    query); a column the memo does not know yet makes it ask the server again."""
    customers = pg_shop["sources"]["customers"]
    settings = stack_settings(carnet_stack)
    principal = acme_analyst(carnet_stack, created)
    connections: list[str] = []

    def connected(dbapi_connection, record):
        connections.append("connect")

    sa.event.listen(sa.pool.Pool, "connect", connected)
    try:
        with session_scope(settings.db_url) as session:
            first = run_query(session, settings, principal, customers, {"order_by": ["id"]})
            opened_first = len(connections)
            again = run_query(session, settings, principal, customers, {"where": [["country", "=", "FR"]]})
            opened_again = len(connections) - opened_first
    finally:
        sa.event.remove(sa.pool.Pool, "connect", connected)
    assert first.column("country").to_pylist() == ["FR", "DE", "FR"] and again.num_rows == 2
    assert opened_first >= 1 and opened_again == 1  # the second query: its read only

    shop = sa.create_engine(pg_shop["url"])
    with shop.begin() as con:
        con.exec_driver_sql("ALTER TABLE customers ADD COLUMN region text DEFAULT 'west'")
    shop.dispose()
    with session_scope(settings.db_url) as session:
        regions = run_query(session, settings, principal, customers, {"columns": ["id", "region"]})
        assert regions.column("region").to_pylist() == ["west"] * 3
        with pytest.raises(CarnetError) as unknown:
            run_query(session, settings, principal, customers, {"columns": ["nope"]})
    assert unknown.value.status == 400 and unknown.value.fields["field"] == "columns"


def test_sql_across_sources_hands_each_source_only_its_own_variables(carnet_stack, analyst, created, pg_shop):
    """Two query sources declaring different variables, one call giving both: each gets its own (a source
    refuses variables it does not declare), pushed down or not."""
    with session_scope(carnet_stack.settings.db_url) as session:
        connection_id = session.scalar(
            select(DataSource.connection_id).where(DataSource.name == pg_shop["sources"]["orders"])
        )
        made = {}
        for key, text, variable in (
            (
                "fr",
                "SELECT o.* FROM orders o JOIN customers c ON o.customer_id = c.id "
                "WHERE c.country = {{country}}",
                "country",
            ),
            ("big", "SELECT * FROM orders WHERE amount >= {{floor}}", "floor"),
        ):
            source = DataSource(
                org_id=1,
                name=unique(f"h2-{key}"),
                kind="sql_query",
                options={"sql": text, "variables": [{"name": variable, "default": None}]},
                connection_id=connection_id,
            )
            session.add(source)
            session.flush()
            created.sources.add(source.id)
            made[key] = source.name
    engine = sa.create_engine(pg_shop["url"])
    with engine.connect() as con:
        expected = con.exec_driver_sql(
            "SELECT count(*) FROM orders o JOIN customers c ON o.customer_id = c.id "
            "WHERE c.country = 'FR' AND o.amount >= 90"
        ).scalar_one()
    engine.dispose()
    variables = {"country": "FR", "floor": 90}
    pushed = sql(
        carnet_stack,
        analyst,
        f"SELECT count(*) AS n FROM {{{made['fr']}}} f JOIN {{{made['big']}}} b ON f.id = b.id",
        variables,
    )
    assert int(arrow_df(pushed)["n"][0]) == expected > 0
    # With the warehouse's gapminder in the query, nothing is pushed down: each source is read on its own.
    mixed = sql(
        carnet_stack,
        analyst,
        f"SELECT (SELECT count(*) FROM {{{made['fr']}}} f JOIN {{{made['big']}}} b ON f.id = b.id) AS n, "
        "(SELECT count(*) FROM {gapminder}) AS g",
        variables,
    )
    frame = arrow_df(mixed)
    assert int(frame["n"][0]) == expected and int(frame["g"][0]) > 1000
    # A spec on a SQL table source at the default 10M-row cap (one row over it is asked of the server).
    spec = {"where": [["amount", ">=", 90]], "aggregates": {"*": "count"}}
    counted = requests.post(
        api_url(carnet_stack, f"sources/{pg_shop['sources']['orders']}/query"),
        json=spec,
        headers=analyst,
        timeout=60,
    )
    assert int(arrow_df(counted)["count"][0]) == sum(1 for i in range(1, 5001) if i % 97 + 0.5 >= 90)
    # Called on its own, a source still refuses a variable it does not declare.
    alone = requests.post(
        api_url(carnet_stack, f"sources/{made['big']}/query"),
        json={"variables": variables},
        headers=analyst,
        timeout=60,
    )
    assert_json_error(alone, 400)


# -- the kernel-side API, in a real kernel -----------------------------------------------------------------
KERNEL_CODE = """
import carnet, json
from carnet.errors import NotFound, ValidationError
src = carnet.sources["gapminder"]
out = {"columns": src.columns, "schema": src.schema}
df = src.df(columns=["country", "year", "pop"], where={"continent": "Oceania", "year": [1952, 2007]},
            order_by=["country", ("year", "desc")], limit=3)
out["df"] = df.to_dict("list")
q = src.query(group_by=["continent"], aggregates={"pop": "sum"}, where=[("year", "=", 2007)],
              order_by=[("pop", "desc")], limit=2)
out["query"] = q.to_dict("list")
out["self_sql"] = src.sql("SELECT count(*) AS n FROM {self} WHERE year = 1952")["n"].tolist()
out["join"] = carnet.sources.sql(
    "SELECT c.code, count(*) AS n FROM {gapminder} g JOIN {CONTINENTS} c ON g.continent = c.continent "
    "GROUP BY c.code ORDER BY c.code")["n"].tolist()
try:
    carnet.sources["no-such-source"].df()
except NotFound as error:
    out["missing"] = [error.status, error.message]
try:
    src.df(where=[("nope", "=", 1)])
except ValidationError as error:
    out["bad"] = [error.status, error.fields.get("field")]
print(json.dumps(out, default=str))
"""


def test_the_kernel_api_in_a_real_studio_kernel(carnet_stack, login, hub_token, continents):
    session, token = login(ANALYST), hub_token(ANALYST)
    start_server(carnet_stack.url, session, ANALYST)
    try:
        base = f"{carnet_stack.url}{user_path(ANALYST)}"
        kernel = requests.post(
            f"{base}/api/kernels", json={"name": "python3"}, headers=auth(token), timeout=60
        )
        assert kernel.status_code == 201, kernel.text
        ws_url = (
            f"ws://127.0.0.1:{carnet_stack.ports['HUB']}{user_path(ANALYST)}api/kernels/{kernel.json()['id']}"
            "/channels"
        )
        result = execute_in_kernel(ws_url, token, KERNEL_CODE.replace("CONTINENTS", continents), timeout=120)
    finally:
        stop_server(carnet_stack.url, session, ANALYST)
    assert result["error"] is None, result
    out = json.loads(result["stdout"])
    w = lambda text: warehouse_df(carnet_stack, text)  # noqa: E731
    assert out["columns"] == list(w(f"SELECT * FROM {DEMO_TABLE} LIMIT 0").columns)  # noqa: S608
    assert out["schema"]["country"] == "VARCHAR" and out["schema"]["pop"] == "BIGINT"
    expected_df = w(
        f"SELECT country, year, pop FROM {DEMO_TABLE} WHERE continent = 'Oceania' AND year IN (1952, 2007) "  # noqa: S608
        "ORDER BY country, year DESC LIMIT 3"
    )
    assert out["df"] == json.loads(json.dumps(expected_df.to_dict("list"), default=str))
    expected_q = w(
        f"SELECT continent, sum(pop) AS pop FROM {DEMO_TABLE} WHERE year = 2007 "  # noqa: S608
        "GROUP BY continent ORDER BY pop DESC LIMIT 2"
    )
    # sum(BIGINT) is a 128-bit integer in DuckDB: a Decimal through Arrow, a float in DuckDB's own pandas.
    assert out["query"]["continent"] == expected_q["continent"].tolist()
    assert [int(v) for v in out["query"]["pop"]] == [int(v) for v in expected_q["pop"]]
    assert out["self_sql"] == w(f"SELECT count(*) AS n FROM {DEMO_TABLE} WHERE year = 1952")["n"].tolist()  # noqa: S608
    assert (
        out["join"]
        == w(
            f"SELECT c.code, count(*) AS n FROM {DEMO_TABLE} g JOIN {CONTINENTS_TABLE} c "  # noqa: S608
            "ON g.continent = c.continent GROUP BY c.code ORDER BY c.code"
        )["n"].tolist()
    )
    assert out["missing"][0] == 404 and "no-such-source" in out["missing"][1]
    assert out["bad"] == [400, "where"]
