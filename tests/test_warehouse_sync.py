"""Syncing a source into a warehouse table (POST warehouse/tables/{table}/sync), on the real stack.

The sources read a throw-away database on the test PostgreSQL; expected rows are read from PostgreSQL
itself and the warehouse is read with DuckDB directly, never through Carnet's own code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa

import carnet
from carnet import errors
from carnet.db import session_scope
from carnet.db.models import Connection, DataSource, TokenKind
from carnet.warehouse import connect_waiting
from tests.api_support import api_url, assert_json_error, auth, unique
from tests.sql_servers import scratch_pg_database

STUDIO, ANALYST, ADMIN = "studio@acme.example", "analyst@acme.example", "admin@acme.example"
ORDERS = "SELECT id, region, amount FROM orders ORDER BY id"


def new_table() -> str:
    return unique("sync").replace("-", "_")


def sync(stack, headers, table: str, body: dict) -> requests.Response:
    return requests.post(
        api_url(stack, f"warehouse/tables/{table}/sync"), json=body, headers=headers, timeout=120
    )


def warehouse_rows(stack, table: str, sql: str = "SELECT id, region, amount FROM {t} ORDER BY id"):
    """The table's rows read with DuckDB from acme's file, or None when there is no such table."""
    with connect_waiting(stack.settings.warehouse_path(1), read_only=True) as con:
        names = [row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        if table not in names:
            return None
        return con.execute(sql.format(t=f'"{table}"')).fetchall()


def pg_rows(shop, sql: str = ORDERS, **params) -> list[tuple]:
    with shop["engine"].connect() as con:
        return [tuple(row) for row in con.execute(sa.text(sql), params).fetchall()]


def history(stack, headers, table: str) -> list[dict]:
    response = requests.get(api_url(stack, f"warehouse/tables/{table}/loads"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["loads"]


@pytest.fixture(scope="module")
def studio(hub_token):
    return auth(hub_token(STUDIO))


@pytest.fixture(scope="module")
def analyst(hub_token):
    return auth(hub_token(ANALYST))


def add_source(stack, created, connection_id, kind: str, options: dict, org_id: int = 1) -> str:
    with session_scope(stack.settings.db_url) as session:
        source = DataSource(
            org_id=org_id,
            name=unique(f"sync-{kind.replace('_', '-')}"),
            kind=kind,
            options=options,
            connection_id=connection_id,
        )
        session.add(source)
        session.flush()
        created.sources.add(source.id)
        return source.name


def add_connection(stack, created, settings: dict) -> int:
    with session_scope(stack.settings.db_url) as session:
        connection = Connection(org_id=1, name=unique("sync-pg"), kind="sql", settings=settings)
        session.add(connection)
        session.flush()
        created.connections.add(connection.id)
        return connection.id


@pytest.fixture(scope="module")
def shop(pg_url, carnet_stack, created):
    """A PostgreSQL database with ``orders``, a connection of acme to it, a sql_table source over it and a
    sql_query source taking a ``region`` variable."""
    orders = (
        "CREATE TABLE orders (id int PRIMARY KEY, region text, amount numeric(10,2))",
        "INSERT INTO orders SELECT i, (ARRAY['north','south','east'])[1 + mod(i, 3)], mod(i, 89) + 0.25 "
        "FROM generate_series(1, 500) AS i",
    )
    with scratch_pg_database(pg_url, "carnet_sync", *orders) as (url, settings):
        yield from shop_sources(carnet_stack, created, url, settings)


def shop_sources(carnet_stack, created, url, settings):
    engine = sa.create_engine(url)
    connection_id = add_connection(carnet_stack, created, settings)
    table = add_source(carnet_stack, created, connection_id, "sql_table", {"table": "orders"})
    by_region = add_source(
        carnet_stack,
        created,
        connection_id,
        "sql_query",
        {
            "sql": "SELECT id, region, amount FROM orders WHERE region = {{region}}",
            "variables": [{"name": "region", "default": None}],
        },
    )
    yield {"engine": engine, "settings": settings, "table": table, "by_region": by_region}
    engine.dispose()


def test_sync_replace_then_upsert_then_append_copies_the_postgresql_rows(carnet_stack, studio, shop):
    stack, table = carnet_stack, new_table()
    first = sync(stack, studio, table, {"source": shop["table"]})
    assert first.status_code == 200, first.text
    expected = pg_rows(shop)
    assert first.json()["rows_in"] == first.json()["rows_out"] == len(expected) == 500
    assert set(first.json()) == {
        "load_id",
        "table",
        "mode",
        "status",
        "rows_in",
        "rows_out",
        "duration_seconds",
    }
    assert (first.json()["table"], first.json()["mode"], first.json()["status"]) == (
        table,
        "replace",
        "succeeded",
    )
    assert warehouse_rows(stack, table) == expected
    assert isinstance(expected[0][2], Decimal)  # numeric stays exact, not floats

    # The server's table changes: an upsert by id brings the changed and the new rows, keeps the others.
    with shop["engine"].begin() as con:
        con.exec_driver_sql("UPDATE orders SET amount = 999.99 WHERE id IN (1, 2)")
        con.exec_driver_sql("INSERT INTO orders VALUES (501, 'west', 1.5), (502, 'west', 2.5)")
    try:
        upserted = sync(stack, studio, table, {"source": shop["table"], "mode": "upsert", "key": ["id"]})
        assert upserted.status_code == 200, upserted.text
        assert upserted.json()["rows_in"] == upserted.json()["rows_out"] == 502
        assert warehouse_rows(stack, table) == pg_rows(shop)

        appended = sync(stack, studio, table, {"source": shop["table"], "mode": "append"})
        assert appended.status_code == 200, appended.text
        assert appended.json()["rows_out"] == 2 * 502
        doubled = warehouse_rows(stack, table, "SELECT id, count(*) FROM {t} GROUP BY id ORDER BY id")
        assert doubled == [(row[0], 2) for row in pg_rows(shop)]
    finally:
        with shop["engine"].begin() as con:
            con.exec_driver_sql("DELETE FROM orders WHERE id > 500")
            con.exec_driver_sql("UPDATE orders SET amount = mod(id, 89) + 0.25 WHERE id IN (1, 2)")

    # The history says these were syncs, of which source, by whom, newest first.
    loads = history(stack, studio, table)
    assert [(h["mode"], h["origin"], h["status"]) for h in loads] == [
        ("append", "sync", "succeeded"),
        ("upsert", "sync", "succeeded"),
        ("replace", "sync", "succeeded"),
    ]
    assert all(h["actor"] == f"sync {shop['table']} by {STUDIO}" for h in loads)
    assert loads[-1]["id"] == first.json()["load_id"]


def test_variables_reach_the_source(carnet_stack, studio, shop):
    table = new_table()
    south = sync(carnet_stack, studio, table, {"source": shop["by_region"], "variables": {"region": "south"}})
    assert south.status_code == 200, south.text
    expected = pg_rows(shop, "SELECT id, region, amount FROM orders WHERE region = :r ORDER BY id", r="south")
    assert 0 < len(expected) < 500
    assert warehouse_rows(carnet_stack, table) == expected
    north = sync(carnet_stack, studio, table, {"source": shop["by_region"], "variables": {"region": "north"}})
    assert north.status_code == 200, north.text
    expected = pg_rows(shop, "SELECT id, region, amount FROM orders WHERE region = :r ORDER BY id", r="north")
    assert warehouse_rows(carnet_stack, table) == expected
    # A variable the source does not declare is refused, and the table stays as it was.
    wrong = sync(carnet_stack, studio, table, {"source": shop["by_region"], "variables": {"nope": "x"}})
    assert assert_json_error(wrong, 400)
    assert warehouse_rows(carnet_stack, table) == expected


def cache_entries(stack, source_id: int) -> list[Path]:
    from carnet.query.cache import cache_dir

    folder = Path(cache_dir(stack.settings)) / "1" / str(source_id)
    return sorted(folder.glob("*.arrow")) if folder.exists() else []


def test_a_cached_source_over_the_table_answers_the_synced_data(carnet_stack, studio, analyst, created, shop):
    stack, table = carnet_stack, new_table()
    assert sync(stack, studio, table, {"source": shop["table"]}).status_code == 200
    made = requests.post(
        api_url(stack, "sources"),
        json={"name": table, "kind": "warehouse_table", "options": {"table": table}},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    cached = requests.put(
        api_url(stack, f"sources/{table}/cache"),
        json={"policy": "ttl", "ttl_seconds": 3600},
        headers=studio,
        timeout=30,
    )
    assert cached.status_code == 200, cached.text
    spec = {"aggregates": {"*": "count"}}

    def count() -> int:
        response = requests.post(
            api_url(stack, f"sources/{table}/query"), json=spec, headers=analyst, timeout=60
        )
        assert response.status_code == 200, response.text
        return pa.ipc.open_stream(response.content).read_all()["count"].to_pylist()[0]

    assert count() == 500
    assert cache_entries(stack, made.json()["id"])  # the answer is stored: a stale one could be served
    south = sync(stack, studio, table, {"source": shop["by_region"], "variables": {"region": "south"}})
    assert south.status_code == 200, south.text
    assert count() == len(pg_rows(shop, "SELECT id FROM orders WHERE region = 'south'")) < 500
    with session_scope(stack.settings.db_url) as session:
        assert session.get(DataSource, made.json()["id"]).version >= 2


def test_an_analyst_may_not_sync(carnet_stack, analyst, shop):
    table = new_table()
    refused = sync(carnet_stack, analyst, table, {"source": shop["table"]})
    assert_json_error(refused, 403)
    assert warehouse_rows(carnet_stack, table) is None


def test_another_orgs_source_is_the_same_404_as_an_unknown_one(carnet_stack, studio, created, shop):
    stack, table = carnet_stack, new_table()
    theirs = add_source(stack, created, None, "warehouse_table", {"table": "gapminder"}, org_id=2)
    other = sync(stack, studio, table, {"source": theirs})
    unknown_name = unique("no-such-source")
    unknown = sync(stack, studio, table, {"source": unknown_name})
    assert_json_error(other, 404)
    assert_json_error(unknown, 404)
    assert other.json() == {
        **unknown.json(),
        "message": unknown.json()["message"].replace(unknown_name, theirs),
    }
    assert warehouse_rows(stack, table) is None
    # Nothing was attempted: no history row either (a table never loaded and never made is a 404).
    no_history = requests.get(api_url(stack, f"warehouse/tables/{table}/loads"), headers=studio, timeout=30)
    assert no_history.status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"mode": "merge"}, "mode"),
        ({"mode": "upsert"}, "key"),
        ({"mode": "upsert", "key": ["id; drop"]}, "key"),
        ({"types": {"amount": "money"}}, "amount"),
        ({"types": ["amount"]}, "types"),
        ({"variables": ["south"]}, "variables"),
        ({"colour": "red"}, "colour"),
        ({"source": ""}, "source"),
    ],
    ids=[
        "unknown mode",
        "upsert without key",
        "bad key",
        "unknown type",
        "types not an object",
        "variables not an object",
        "unknown field",
        "empty source",
    ],
)
def test_bad_input_is_a_400_and_nothing_is_loaded(carnet_stack, studio, shop, body, field):
    table = new_table()
    refused = sync(carnet_stack, studio, table, {"source": shop["table"], **body})
    assert assert_json_error(refused, 400)["field"] == field
    assert warehouse_rows(carnet_stack, table) is None


def test_a_bad_table_name_is_a_400(carnet_stack, studio, shop):
    refused = sync(carnet_stack, studio, "orders%20x", {"source": shop["table"]})
    assert assert_json_error(refused, 400)["field"] == "table"


def test_a_source_over_the_table_itself_is_refused(carnet_stack, studio, created, shop):
    stack, table = carnet_stack, new_table()
    assert sync(stack, studio, table, {"source": shop["table"]}).status_code == 200
    itself = add_source(stack, created, None, "warehouse_table", {"table": table})
    for mode in ("replace", "append"):
        refused = sync(stack, studio, table, {"source": itself, "mode": mode})
        assert assert_json_error(refused, 400)["field"] == "source"
    assert warehouse_rows(stack, table) == pg_rows(shop)
    # Into another table, the same source is an ordinary copy.
    copy = new_table()
    assert sync(stack, studio, copy, {"source": itself}).status_code == 200
    assert warehouse_rows(stack, copy) == pg_rows(shop)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once closed


def test_a_failing_source_leaves_the_table_as_it_was(carnet_stack, studio, created, shop):
    stack, table = carnet_stack, new_table()
    assert sync(stack, studio, table, {"source": shop["table"]}).status_code == 200
    before = warehouse_rows(stack, table)
    dead = add_connection(stack, created, {**shop["settings"], "port": closed_port()})
    refused_source = add_source(stack, created, dead, "sql_table", {"table": "orders"})
    failed = sync(stack, studio, table, {"source": refused_source})
    body = assert_json_error(failed, 502)
    assert "cannot connect" in body["message"].lower(), body
    assert warehouse_rows(stack, table) == before
    latest = history(stack, studio, table)[0]
    assert (latest["status"], latest["origin"], latest["rows_out"]) == ("failed", "sync", None)
    assert refused_source in latest["error"] and refused_source in latest["actor"]


def test_python_client_kernel_helper_and_cli(carnet_stack, created, hub_token, shop):
    stack = carnet_stack
    key = requests.post(
        api_url(stack, "keys"),
        json={"name": unique("sync client"), "role": "studio"},
        headers=auth(hub_token(ADMIN)),
        timeout=30,
    )
    assert key.status_code == 201, key.text
    created.keys.add(key.json()["id"])
    client = carnet.Client(stack.url, key.json()["key"])

    table = new_table()
    answer = client.sync_source_to_table(shop["by_region"], table, variables={"region": "east"})
    east = pg_rows(shop, "SELECT id, region, amount FROM orders WHERE region = 'east' ORDER BY id")
    assert answer["rows_out"] == len(east) and warehouse_rows(stack, table) == east
    answer = client.sync_source_to_table(shop["table"], table, mode="upsert", key="id")
    assert answer["rows_out"] == 500 and warehouse_rows(stack, table) == pg_rows(shop)
    with pytest.raises(errors.NotFound):
        client.sync_source_to_table(unique("no-such-source"), table)

    # carnet.warehouse.sync in a fresh interpreter with a Studio kernel's variables, as a kernel has them.
    kernel_table = new_table()
    token = created.kernel_token(STUDIO, "acme", TokenKind.studio_kernel)
    env = {**os.environ, "CARNET_API_URL": f"{stack.url}/services/carnet/", "CARNET_TOKEN": token}
    code = (
        "import carnet; r = carnet.warehouse.sync("
        f"{shop['by_region']!r}, {kernel_table!r}, variables={{'region': 'north'}}); print(r['rows_out'])"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    north = pg_rows(shop, "SELECT id, region, amount FROM orders WHERE region = 'north' ORDER BY id")
    assert ran.stdout.strip() == str(len(north)) and warehouse_rows(stack, kernel_table) == north
    actor = history(stack, auth(hub_token(STUDIO)), kernel_table)[0]["actor"]
    assert actor == f"sync {shop['by_region']} by {STUDIO}"

    # The CLI.
    cli_table = new_table()
    carnet_bin = str(Path(sys.executable).parent / "carnet")
    env = {**os.environ, "CARNET_URL": stack.url, "CARNET_API_KEY": key.json()["key"]}
    done = subprocess.run(
        [carnet_bin, "sync", "acme", cli_table, "--source", shop["by_region"], "--var", "region=south"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    south = pg_rows(shop, "SELECT id, region, amount FROM orders WHERE region = 'south' ORDER BY id")
    assert f"Synced {len(south)} rows of {shop['by_region']} into {cli_table}" in done.stdout
    assert warehouse_rows(stack, cli_table) == south
    wrong = subprocess.run(
        [carnet_bin, "sync", "globex", cli_table, "--source", shop["table"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert wrong.returncode != 0 and "belongs to organization 'acme'" in wrong.stderr


def test_a_source_over_the_row_cap_is_refused_whole(settings_env, shop):
    """In process, with a cap of 100 rows (the stack's is 10M): 500 rows are a 413 and no table, never the
    first 100; 100 rows are synced."""
    from carnet.db import upgrade
    from carnet.db.models import Membership, Organization, Role, User
    from carnet.errors import RowLimitExceeded
    from carnet.loads import load_history, warehouse_tables
    from carnet.loads.sync import sync_source
    from carnet.permissions import Principal
    from carnet.settings import CarnetSettings

    os.environ["CARNET_SOURCE_MAX_ROWS"] = "100"
    os.environ["CARNET_SQL_ALLOW_HOSTS"] = "127.0.0.1"
    settings = CarnetSettings()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        org = Organization(slug="cap", name="Cap")
        user = User(email="cap@cap.example", display_name="Cap")
        session.add_all([org, user])
        session.flush()
        session.add(Membership(user_id=user.id, org_id=org.id, role=Role.studio))
        connection = Connection(org_id=org.id, name="pg", kind="sql", settings=shop["settings"])
        session.add(connection)
        session.flush()
        session.add_all(
            [
                DataSource(
                    org_id=org.id,
                    name=name,
                    kind=kind,
                    options=options,
                    connection_id=connection.id,
                )
                for name, kind, options in (
                    ("all_orders", "sql_table", {"table": "orders"}),
                    ("first_orders", "sql_query", {"sql": "SELECT * FROM orders WHERE id <= 100"}),
                )
            ]
        )
        principal = Principal(user.id, user.email, org.id, org.slug, Role.studio, via="hub")

    with session_scope(settings.db_url) as session, pytest.raises(RowLimitExceeded):
        sync_source(settings, session, principal, "all_orders", "capped")
    assert "capped" not in [t["name"] for t in warehouse_tables(settings, principal.org_id)]
    [failed] = load_history(settings, principal.org_id, "capped")
    assert (failed["status"], failed["origin"], failed["actor"]) == (
        "failed",
        "sync",
        "sync all_orders by cap@cap.example",
    )
    assert "100 rows" in failed["error"]

    with session_scope(settings.db_url) as session:
        result = sync_source(settings, session, principal, "first_orders", "capped")
    assert (result.rows_in, result.rows_out, result.status) == (100, 100, "succeeded")
    listed = {t["name"]: t for t in warehouse_tables(settings, principal.org_id)}
    assert listed["capped"]["rows"] == 100
