"""carnet.query.spec: validation, each operator, injection attempts, and the same answers on DuckDB,
PostgreSQL and MariaDB for one small fixture table."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import duckdb
import pytest
import sqlalchemy as sa

from carnet.errors import ValidationError
from carnet.query.spec import parse_spec, to_duckdb, to_sqlalchemy

COLUMNS = ["id", "region", "amount", "note", "day"]
ROWS = [
    (1, "north", 10, "first", dt.date(2024, 1, 1)),
    (2, "north", 20, None, dt.date(2024, 1, 2)),
    (3, "south", 5, "big deal", dt.date(2024, 1, 3)),
    (4, "south", 40, "deal", dt.date(2024, 2, 1)),
    (5, "east", 15, None, dt.date(2024, 2, 2)),
    (6, "west", 20, "o'hara", dt.date(2024, 3, 1)),
]
METADATA = sa.MetaData()
TABLE = sa.Table(
    "sales",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("region", sa.String(20)),
    sa.Column("amount", sa.Integer),
    sa.Column("note", sa.String(40)),
    sa.Column("day", sa.Date),
)


# --- the three engines ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duck():
    con = duckdb.connect()
    con.execute("CREATE TABLE sales (id INTEGER, region VARCHAR, amount INTEGER, note VARCHAR, day DATE)")
    con.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?)", ROWS)
    yield con
    con.close()


def _server_engine(base_url: str, kind: str):
    name = f"carnet_qs_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f"CREATE DATABASE {name}"))
    engine = sa.create_engine(sa.engine.make_url(base_url).set(database=name))
    METADATA.create_all(engine)
    with engine.begin() as con:
        con.execute(TABLE.insert(), [dict(zip(COLUMNS, row, strict=True)) for row in ROWS])
    yield engine
    engine.dispose()
    with admin.connect() as con:
        con.execute(sa.text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "pg" else "")))
    admin.dispose()


@pytest.fixture(scope="module")
def pg(pg_url):
    yield from _server_engine(pg_url, "pg")


@pytest.fixture(scope="module")
def maria(mysql_url):
    yield from _server_engine(mysql_url, "mysql")


def _normal(value):
    # Engines return sums/averages as Decimal, HUGEINT or double, and MariaDB's AVG keeps 4 decimals
    # (div_precision_increment): compare numbers as floats rounded to 4 places.
    if isinstance(value, decimal.Decimal | float | int) and not isinstance(value, bool):
        return round(float(value), 4)
    return value


def _run_all(spec, duck, pg, maria) -> dict[str, list[tuple]]:
    sql, params = to_duckdb(spec, "sales", COLUMNS)
    results = {"duckdb": duck.execute(sql, params).fetchall()}
    for name, engine in (("postgresql", pg), ("mariadb", maria)):
        with engine.connect() as con:
            results[name] = [tuple(r) for r in con.execute(to_sqlalchemy(spec, TABLE))]
    return {k: [tuple(_normal(v) for v in row) for row in rows] for k, rows in results.items()}


# Each operator, with the ids it must select on every engine.
OPERATOR_CASES = [
    (["amount", "=", 20], [2, 6]),
    (["amount", "!=", 20], [1, 3, 4, 5]),
    (["amount", "<", 15], [1, 3]),
    (["amount", "<=", 15], [1, 3, 5]),
    (["amount", ">", 20], [4]),
    (["amount", ">=", 20], [2, 4, 6]),
    (["region", "in", ["east", "west"]], [5, 6]),
    (["region", "not_in", ["north", "south"]], [5, 6]),
    (["region", "in", []], []),
    (["region", "not_in", []], [1, 2, 3, 4, 5, 6]),
    (["note", "like", "%deal"], [3, 4]),
    (["note", "ilike", "%DEAL%"], [3, 4]),
    (["note", "contains", "DEAL"], [3, 4]),
    (["note", "contains", "o'H"], [6]),
    (["note", "contains", "%"], []),  # literal: no note holds a %
    (["note", "contains", "_"], []),
    (["note", "is_null"], [2, 5]),
    (["note", "not_null"], [1, 3, 4, 6]),
    (["amount", "between", [10, 20]], [1, 2, 5, 6]),
    (["day", "between", ["2024-01-02", "2024-02-01"]], [2, 3, 4]),
    (["day", ">=", "2024-02-02"], [5, 6]),
    (["note", "=", "o'hara"], [6]),
]


@pytest.mark.parametrize(
    ("condition", "ids"), OPERATOR_CASES, ids=[c[0][1] + str(i) for i, c in enumerate(OPERATOR_CASES)]
)
def test_each_operator_selects_the_same_rows_on_every_engine(condition, ids, duck, pg, maria):
    spec = {"columns": ["id"], "where": [condition], "order_by": ["id"]}
    results = _run_all(spec, duck, pg, maria)
    for engine, rows in results.items():
        assert [r[0] for r in rows] == ids, engine


def test_aggregates_group_order_and_limit_agree_on_every_engine(duck, pg, maria):
    spec = {
        "where": [["amount", ">=", 5]],
        "group_by": ["region"],
        "aggregates": {"amount": "sum", "*": "count", "note": "count_distinct", "id": "max"},
        "order_by": [["amount", "desc"], "region"],
        "limit": 3,
    }
    results = _run_all(spec, duck, pg, maria)
    # south 45, north 30, then west (20) before east (15).
    expected = [("south", 45.0, 2.0, 2.0, 4.0), ("north", 30.0, 2.0, 1.0, 2.0), ("west", 20.0, 1.0, 1.0, 6.0)]
    assert results["duckdb"] == expected
    assert results["postgresql"] == expected
    assert results["mariadb"] == expected


def test_whole_table_aggregates_without_group_by(duck, pg, maria):
    spec = {"aggregates": {"amount": "avg", "day": "min", "region": "count_distinct"}}
    results = _run_all(spec, duck, pg, maria)
    for engine, rows in results.items():
        assert rows == [(round(110 / 6, 4), dt.date(2024, 1, 1), 4.0)], engine


def test_a_malicious_value_is_just_a_value(duck, pg, maria):
    for value in ["'; DROP TABLE sales; --", "x' OR '1'='1", "north\\' OR 1=1 -- "]:
        spec = {"columns": ["id"], "where": [["region", "=", value]]}
        assert all(rows == [] for rows in _run_all(spec, duck, pg, maria).values())
        spec = {"columns": ["id"], "where": [["region", "in", ["north", value]]], "order_by": ["id"]}
        assert all(rows == [(1.0,), (2.0,)] for rows in _run_all(spec, duck, pg, maria).values())
    # The table is still whole everywhere.
    count = {"aggregates": {"*": "count"}}
    assert all(rows == [(6.0,)] for rows in _run_all(count, duck, pg, maria).values())


@pytest.mark.parametrize(
    "spec",
    [
        {"columns": ["id; DROP TABLE sales"]},
        {"columns": ["id", '"; DROP TABLE sales; --']},
        {"where": [["amount) OR (1=1", "=", 1]]},
        {"order_by": ["id DESC; DELETE FROM sales"]},
        {"group_by": ["region"], "aggregates": {"amount) FROM sales; --": "sum"}},
    ],
)
def test_column_names_that_are_not_columns_are_refused(spec, duck):
    with pytest.raises(ValidationError) as error:
        to_duckdb(spec, "sales", COLUMNS)
    assert "Unknown column" in error.value.message
    with pytest.raises(ValidationError):
        to_sqlalchemy(spec, TABLE)


def test_odd_but_real_column_and_table_names_are_quoted(duck):
    duck.execute('CREATE TABLE "odd ""name"" t" ("we""ird; col" INTEGER, "select" VARCHAR)')
    duck.execute('INSERT INTO "odd ""name"" t" VALUES (1, \'a\'), (2, \'b\')')
    columns = ['we"ird; col', "select"]
    sql, params = to_duckdb(
        {"columns": ["select"], "where": [['we"ird; col', ">", 1]]}, 'odd "name" t', columns
    )
    assert duck.execute(sql, params).fetchall() == [("b",)]
    assert params == [1]


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"where": [["amount", "~", 1]]}, "where", "Unknown operator"),
        ({"where": [["amount", "=", None]]}, "where", "is_null"),
        ({"where": [["amount", "=", float("nan")]]}, "where", "finite"),
        ({"where": [["amount", "=", 2**70]]}, "where", "64-bit"),
        ({"where": [["amount", "=", {"$gt": 1}]]}, "where", "Invalid value"),
        ({"where": [["note", "is_null", "x"]]}, "where", "no value"),
        ({"where": [["amount", "between", [1]]]}, "where", "between"),
        ({"where": [["amount", "in", list(range(10_001))]]}, "where", "at most"),
        ({"where": [["note", "like", 5]]}, "where", "takes a string"),
        ({"where": [["note", "contains", 5]]}, "where", "takes a string"),
        ({"where": ["amount = 1"]}, "where", "[column, operator, value]"),
        ({"aggregates": {"amount": "median"}}, "aggregates", "Unknown aggregate"),
        ({"aggregates": {"*": "sum"}}, "aggregates", "counted"),
        ({"group_by": ["region"], "aggregates": {"region": "count"}}, "aggregates", "twice"),
        ({"columns": ["id"], "group_by": ["region"]}, "columns", "cannot be combined"),
        ({"group_by": ["region"], "order_by": ["amount"]}, "order_by", "Unknown column"),
        ({"order_by": [["amount", "sideways"]]}, "order_by", "direction"),
        ({"limit": 10_000_001}, "limit", "0 to 10000000"),
        ({"limit": -1}, "limit", "limit"),
        ({"limit": True}, "limit", "limit"),
        ({"limit": "10"}, "limit", "limit"),
        ({"select": ["id"]}, "select", "Unknown query field"),
        ({"columns": "id"}, "columns", "must be a list"),
    ],
)
def test_invalid_specs_name_the_field(spec, field, words):
    with pytest.raises(ValidationError) as error:
        parse_spec(spec, COLUMNS)
    assert error.value.fields["field"] == field
    assert words in error.value.message


def test_limit_bounds_and_sql_shape():
    assert parse_spec({"limit": 0}, COLUMNS).limit == 0
    assert parse_spec({"limit": 10_000_000}, COLUMNS).limit == 10_000_000
    sql, params = to_duckdb(
        {"columns": ["id"], "where": [["region", "=", "x"], ["note", "is_null"]], "limit": 5},
        "sales",
        COLUMNS,
    )
    # Values only ever appear as parameters.
    assert sql == 'SELECT "id" FROM "sales" WHERE "region" = ? AND "note" IS NULL LIMIT ?'
    assert params == ["x", 5]
    with pytest.raises(ValidationError):
        to_duckdb({"columns": ["id"]}, "sales")  # a raw spec needs the columns to be checked against
