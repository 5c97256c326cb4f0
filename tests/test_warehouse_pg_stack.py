"""The whole stack on the PostgreSQL warehouse option (CARNET_WAREHOUSE_URL): the demo's table, REST loads,
sources and SQL over warehouse tables, the Python client, and org isolation, with every expectation read
from PostgreSQL itself. The load engine's own suite runs on both warehouses in tests/test_loads.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import plotly.data
import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa

import carnet
from carnet.db import session_scope
from carnet.db.models import Membership, Role, TokenKind, User
from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from carnet.tokens import mint_token
from tests.api_support import api_url, assert_json_error, auth, unique
from tests.helpers import CarnetStack, hub_login, make_hub_token
from tests.test_warehouse_api import arrow_bytes, load, new_table, rows

STUDIO, ADMIN = "studio@acme.example", "admin@acme.example"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def pg_stack(pg_warehouse_url, smtp_server):
    prefix = f"s{uuid.uuid4().hex[:10]}_org_"
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-stack-pg-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - kernels' accounts traverse it, as in conftest's stack
    stack = CarnetStack(
        data_dir,
        smtp=smtp_server,
        env={"CARNET_WAREHOUSE_URL": pg_warehouse_url, "CARNET_WAREHOUSE_SCHEMA_PREFIX": prefix},
    )
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = sa.create_engine(pg_warehouse_url)
    with engine.begin() as conn:
        for schema in (
            conn.exec_driver_sql(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %(p)s)", {"p": prefix}
            )
            .scalars()
            .all()
        ):
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


@pytest.fixture(scope="module")
def pg(pg_stack):
    """Run SQL on the warehouse database directly (the expected answers)."""
    engine = sa.create_engine(pg_stack.settings.warehouse_url)

    def run(sql: str, **params) -> pd.DataFrame:
        with engine.connect() as conn:
            return pd.read_sql_query(sa.text(sql), conn, params=params)

    yield run
    engine.dispose()


@pytest.fixture(scope="module")
def token(pg_stack):
    tokens = {}

    def _token(email: str) -> str:
        if email not in tokens:
            session = hub_login(pg_stack.url, email, pg_stack.passwords[email])
            tokens[email] = make_hub_token(pg_stack.url, session, email)
        return tokens[email]

    return _token


def schema(stack, org_id: int = 1) -> str:
    return stack.settings.warehouse_schema(org_id)


def test_the_demo_table_is_in_the_org_schema_not_in_a_file(pg_stack, pg):
    count = pg(f'SELECT count(*) AS n FROM "{schema(pg_stack)}"."{DEMO_TABLE}"')  # noqa: S608
    assert count["n"][0] == len(plotly.data.gapminder())
    assert not pg_stack.settings.warehouse_path(1).exists()


def test_rest_loads_change_the_postgres_table(pg_stack, pg, token):
    studio, table = token(STUDIO), new_table()
    first = load(
        pg_stack, studio, table, arrow_bytes({"id": [1, 2], "city": ["Lyon", "Nantes"], "amount": [1.5, 2.0]})
    )
    assert first.status_code == 200, first.text
    assert (
        load(pg_stack, studio, table, b"id,city,amount\n3,Lille,4.25\n", fmt="csv", mode="append").status_code
        == 200
    )
    upsert = arrow_bytes({"id": [1, 4], "city": ["Lyon 2", "Paris"], "amount": [9.0, 4.0]})
    assert load(pg_stack, studio, table, upsert, mode="upsert", key="id").json()["rows_out"] == 4
    assert (
        load(pg_stack, studio, table, arrow_bytes({"id": [2]}), mode="delete", key="id").json()["rows_out"]
        == 3
    )
    stored = pg(f'SELECT id, city, amount FROM "{schema(pg_stack)}"."{table}" ORDER BY id')  # noqa: S608
    assert stored.to_dict("records") == [
        {"id": 1, "city": "Lyon 2", "amount": 9.0},
        {"id": 3, "city": "Lille", "amount": 4.25},
        {"id": 4, "city": "Paris", "amount": 4.0},
    ]
    assert [(r["id"], r["city"]) for r in rows(pg_stack, studio, table)] == [
        (1, "Lyon 2"),
        (3, "Lille"),
        (4, "Paris"),
    ]

    # A value that does not fit its forced type: 400 naming it, the PostgreSQL table untouched.
    bad = load(pg_stack, studio, table, b"id,city,amount\nx1,Rome,1\n", fmt="csv", type_id="int")
    assert "x1" in assert_json_error(bad, 400)["message"]
    assert len(pg(f'SELECT * FROM "{schema(pg_stack)}"."{table}"')) == 3  # noqa: S608
    # Text PostgreSQL cannot hold (a NUL character): the data's fault, a 400, nothing stored.
    nul = load(
        pg_stack, studio, table, arrow_bytes({"id": [5], "city": ["a\x00b"], "amount": [1.0]}), mode="append"
    )
    assert "refused the data" in assert_json_error(nul, 400)["message"]
    assert len(pg(f'SELECT * FROM "{schema(pg_stack)}"."{table}"')) == 3  # noqa: S608

    typed = load(
        pg_stack,
        studio,
        table,
        b"id,day,amount\n1,2024-01-31,3.10\n",
        fmt="csv",
        type_day="date",
        type_amount="decimal(10,2)",
    )
    assert typed.status_code == 200, typed.text
    described = requests.get(
        api_url(pg_stack, f"warehouse/tables/{table}"), headers=auth(studio), timeout=30
    ).json()
    assert {c["name"]: c["type"] for c in described["columns"]} == {
        "id": "BIGINT",
        "day": "DATE",
        "amount": "DECIMAL(10,2)",
    }
    column_types = pg(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = :s AND table_name = :t",
        s=schema(pg_stack),
        t=table,
    )
    assert dict(zip(column_types["column_name"], column_types["data_type"], strict=True)) == {
        "id": "bigint",
        "day": "date",
        "amount": "numeric",
    }
    history = requests.get(
        api_url(pg_stack, f"warehouse/tables/{table}/loads"), headers=auth(studio), timeout=30
    )
    assert history.status_code == 200, history.text
    statuses = [h["status"] for h in history.json()["loads"]]
    assert statuses.count("failed") == 2 and statuses.count("succeeded") == 5


def arrow(response) -> pd.DataFrame:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == ARROW_STREAM
    return pa.ipc.open_stream(response.content).read_all().to_pandas()


def test_sources_and_sql_read_the_postgres_warehouse(pg_stack, pg, token):
    studio = token(STUDIO)
    grouped = arrow(
        requests.post(
            api_url(pg_stack, f"sources/{DEMO_SOURCE}/query"),
            json={
                "group_by": ["continent"],
                "aggregates": {"pop": "sum"},
                "where": [["year", "=", 2007]],
                "order_by": ["continent"],
            },
            headers=auth(studio),
            timeout=60,
        )
    )
    expected = pg(
        f'SELECT continent, sum(pop) AS pop FROM "{schema(pg_stack)}"."{DEMO_TABLE}" '  # noqa: S608
        "WHERE year = 2007 GROUP BY continent ORDER BY continent"
    )
    assert grouped["continent"].tolist() == expected["continent"].tolist()
    assert grouped["pop"].astype("int64").tolist() == expected["pop"].astype("int64").tolist()

    counted = arrow(
        requests.post(
            api_url(pg_stack, "query"),
            json={
                "sql": f"SELECT country, count(*) AS n FROM {{{DEMO_SOURCE}}} "
                "WHERE country LIKE 'F%' GROUP BY 1 ORDER BY 1"
            },
            headers=auth(studio),
            timeout=60,
        )
    )
    expected = pg(
        f'SELECT country, count(*) AS n FROM "{schema(pg_stack)}"."{DEMO_TABLE}" '  # noqa: S608
        "WHERE country LIKE 'F%%' GROUP BY 1 ORDER BY 1"
    )
    assert counted.to_dict("records") == expected.to_dict("records")


def test_another_org_never_reaches_acme_tables(pg_stack, pg, token):
    with session_scope(pg_stack.settings.db_url) as session:
        globex = session.scalar(
            sa.select(Membership.org_id).join(User).where(User.email.like("%@globex.example"))
        )
        user = User(email=f"{unique('pgwh')}@globex.example", display_name="Globex studio")
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=globex, role=Role.studio))
        session.flush()
        globex_token = mint_token(
            session, kind=TokenKind.studio_kernel, user_id=user.id, org_id=globex, ttl_seconds=600
        )
    listed = requests.get(api_url(pg_stack, "warehouse/tables"), headers=auth(globex_token), timeout=30)
    assert listed.status_code == 200 and DEMO_TABLE not in [t["name"] for t in listed.json()["tables"]]
    theirs = requests.get(
        api_url(pg_stack, f"warehouse/tables/{DEMO_TABLE}/preview"), headers=auth(globex_token), timeout=30
    )
    missing = requests.get(
        api_url(pg_stack, "warehouse/tables/no_such_table/preview"), headers=auth(globex_token), timeout=30
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["message"].replace(DEMO_TABLE, "x") == missing.json()["message"].replace(
        "no_such_table", "x"
    )
    # A load by globex with acme's table name lands in globex's own schema.
    made = load(pg_stack, globex_token, DEMO_TABLE, arrow_bytes({"id": [1]}))
    assert made.status_code == 200, made.text
    assert len(pg(f'SELECT * FROM "{schema(pg_stack, globex)}"."{DEMO_TABLE}"')) == 1  # noqa: S608
    assert len(pg(f'SELECT * FROM "{schema(pg_stack)}"."{DEMO_TABLE}"')) == len(plotly.data.gapminder())  # noqa: S608


def test_the_python_client_on_postgres(pg_stack, pg, token):
    made = requests.post(
        api_url(pg_stack, "keys"),
        json={"name": unique("pg client"), "role": "studio"},
        headers=auth(token(ADMIN)),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    client = carnet.Client(pg_stack.url, made.json()["key"])
    name = new_table()
    table = client.get_or_create_table(name, data=pd.DataFrame({"id": [1, 2], "amount": [1.0, 2.0]}))
    table.load(pd.DataFrame({"id": [2, 3], "amount": [5.0, 3.0]}), mode="upsert", key=["id"])
    stored = pg(f'SELECT id, amount FROM "{schema(pg_stack)}"."{name}" ORDER BY id')  # noqa: S608
    assert stored.to_dict("records") == [
        {"id": 1, "amount": 1.0},
        {"id": 2, "amount": 5.0},
        {"id": 3, "amount": 3.0},
    ]
    assert table.preview().sort_values("id")["amount"].tolist() == [1.0, 5.0, 3.0]
