"""Named connections and SQL sources through the real stack, against the real PostgreSQL and MariaDB:
write-only passwords, clear connection errors, read-only queries refused at save, variables, org isolation.

Every response of this module is kept and searched for the connection password at the end (with the audit
export and the stack's log): it must never come back, to anyone.
"""

from __future__ import annotations

import socket

import pyarrow as pa
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Connection, DataSource
from tests.api_support import UNKNOWN_ID, api_url, assert_json_error, auth, unique
from tests.sql_servers import CANARY, Server, setup_server, teardown_server

ARROW_STREAM = "application/vnd.apache.arrow.stream"
STUDIO, ANALYST, VIEWER = "studio@acme.example", "analyst@acme.example", "viewer@acme.example"
SEEN: list[str] = []  # every response body of the module, searched for CANARY by the last test


def call(stack, token, method, path, **kwargs) -> requests.Response:
    response = requests.request(method, api_url(stack, path), headers=auth(token), timeout=60, **kwargs)
    SEEN.append(response.content.decode("latin-1"))
    return response


@pytest.fixture(scope="module")
def maria(mysql_url):
    server = Server("mariadb", mysql_url)
    setup_server(server)
    yield server
    teardown_server(server)


@pytest.fixture(scope="module")
def pg_pair(pg_url):
    """Two PostgreSQL databases with the same table, the second with one more row (one per customer)."""
    first, second = Server("pg", pg_url), Server("pg", pg_url)
    setup_server(first)
    setup_server(second)
    with second.engine.begin() as con:
        con.execute(sa.text("INSERT INTO orders VALUES (5, 'west', 99)"))
    yield first, second
    teardown_server(first)
    teardown_server(second)


@pytest.fixture(scope="module")
def made(carnet_stack):
    """Connection ids this module creates; their sources, then they, are deleted at the end."""
    ids: set[int] = set()
    yield ids
    with session_scope(carnet_stack.settings.db_url) as session:
        if ids:
            session.execute(delete(DataSource).where(DataSource.connection_id.in_(ids)))
            session.execute(delete(Connection).where(Connection.id.in_(ids)))


@pytest.fixture(scope="module")
def studio(hub_token):
    return hub_token(STUDIO)


def settings_of(server: Server) -> dict:
    """The read-only user's settings, without the password (sent as its own field)."""
    return {k: v for k, v in server.ro.items() if k != "password"}


def create_connection(stack, token, made, settings, password=CANARY, name=None) -> dict:
    body = {"name": name or unique("conn"), "kind": "sql", "settings": settings, "password": password}
    response = call(stack, token, "POST", "connections", json=body)
    assert response.status_code == 201, response.text
    made.add(response.json()["id"])
    return response.json()


def create_source(stack, token, body) -> requests.Response:
    return call(stack, token, "POST", "sources", json={"name": unique("sqlsrc"), **body})


def read_data(stack, token, name, query="") -> pa.Table:
    response = call(stack, token, "GET", f"sources/{name}/data{query}")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == ARROW_STREAM
    return pa.ipc.open_stream(response.content).read_all()


def test_password_is_write_only_and_patch_keeps_replaces_or_clears_it(carnet_stack, studio, maria, made):
    stack = carnet_stack
    url = sa.engine.make_url(maria.base_url).set(
        database=maria.database, username=maria.reader, password=CANARY
    )
    # A pasted URL's password is taken as the write-only password, and not kept in the settings.
    conn = call(
        stack,
        studio,
        "POST",
        "connections",
        json={"name": unique("conn-url"), "settings": {"url": url.render_as_string(hide_password=False)}},
    )
    assert conn.status_code == 201, conn.text
    conn = conn.json()
    made.add(conn["id"])
    assert conn["password"] == "set" and conn["kind"] == "sql"
    assert conn["settings"]["username"] == maria.reader and conn["settings"]["database"] == maria.database
    assert conn["settings"]["dialect"] == "mysql" and "password" not in conn["settings"]
    with session_scope(stack.settings.db_url) as session:
        stored = session.get(Connection, conn["id"]).secret
    assert stored.startswith("carnet:v1:") and CANARY not in stored

    path = f"connections/{conn['id']}"

    def works() -> bool:
        response = call(stack, studio, "POST", f"{path}/test", json={})
        assert response.status_code in (200, 502), response.text
        return response.status_code == 200

    assert works()
    for body in ({"name": unique("renamed")}, {"password": "unchanged"}):  # kept
        response = call(stack, studio, "PATCH", path, json=body)
        assert response.status_code == 200 and response.json()["password"] == "set"
        assert works()
    replaced = call(stack, studio, "PATCH", path, json={"password": "not the password"})
    assert replaced.json()["password"] == "set" and not works()
    assert call(stack, studio, "PATCH", path, json={"password": CANARY}).status_code == 200 and works()
    cleared = call(stack, studio, "PATCH", path, json={"password": None})
    assert cleared.json()["password"] == "unset" and not works()
    with session_scope(stack.settings.db_url) as session:
        assert session.get(Connection, conn["id"]).secret is None
    # The settings travel without a password field of their own: one is refused, not stored.
    sneaky = call(stack, studio, "PATCH", path, json={"settings": {**settings_of(maria), "password": "x"}})
    assert assert_json_error(sneaky, 400)["field"] == "settings"


def test_sql_sources_read_as_analyst_and_hide_their_connection(
    carnet_stack, studio, hub_token, maria, made, created
):
    stack = carnet_stack
    conn = create_connection(stack, studio, made, settings_of(maria))
    table = create_source(
        stack, studio, {"kind": "sql_table", "connection": conn["name"], "options": {"table": "orders"}}
    )
    assert table.status_code == 201, table.text
    query = create_source(
        stack,
        studio,
        {
            "kind": "sql_query",
            "connection": conn["id"],
            "options": {
                "sql": "SELECT region, SUM(amount) AS total FROM orders WHERE amount >= {{floor}} "
                "GROUP BY region",
                "variables": [{"name": "floor", "default": 10}],
            },
        },
    )
    assert query.status_code == 201, query.text
    created.sources.update({table.json()["id"], query.json()["id"]})
    assert table.json()["connection"] == {"id": conn["id"], "name": conn["name"]}
    assert table.json()["secrets"] == {} and table.json()["version"] == 1

    analyst = hub_token(ANALYST)
    rows = read_data(stack, analyst, table.json()["name"])
    assert sorted(rows.column("id").to_pylist()) == [1, 2, 3, 4]
    totals = read_data(stack, analyst, query.json()["name"])
    assert dict(zip(*totals.to_pydict().values(), strict=True)) == {"north": 30, "east": 15}
    # A caller's value replaces the declared default (bound as a parameter).
    high = read_data(stack, analyst, query.json()["name"], "?var.floor=16")
    assert high.to_pylist() == [{"region": "north", "total": 20}]
    undeclared = call(stack, analyst, "GET", f"sources/{query.json()['name']}/data?var.other=1")
    assert assert_json_error(undeclared, 400)["field"] == "other"

    seen_by_analyst = call(stack, analyst, "GET", f"sources/{table.json()['name']}")
    assert seen_by_analyst.status_code == 200
    assert [c["name"] for c in seen_by_analyst.json()["columns"]] == ["id", "region", "amount"]
    assert not {"options", "connection", "secrets"} & set(seen_by_analyst.json())
    for role in (ANALYST, VIEWER):
        for path in ("connections", f"connections/{conn['id']}"):
            assert_json_error(call(stack, hub_token(role), "GET", path), 403)
        attempt = call(
            stack,
            hub_token(role),
            "POST",
            "connections/test",
            json={"settings": settings_of(maria), "password": CANARY},
        )
        assert_json_error(attempt, 403)


def test_each_connection_failure_says_why(carnet_stack, studio, maria, pg_pair):
    silent = socket.socket()  # accepts TCP connections (kernel backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    pg = settings_of(pg_pair[0])
    cases = {
        "authentication": (settings_of(maria), "wrong-" + CANARY, 502),
        "unknown_host": ({**pg, "host": "no-such-host.invalid"}, CANARY, 502),
        "refused": ({**pg, "port": closed.getsockname()[1]}, CANARY, 502),
        "timeout": (
            {**pg, "port": silent.getsockname()[1], "options": {"connect_timeout": "2"}},
            CANARY,
            504,
        ),
        "tls": ({**pg, "options": {"sslmode": "require"}}, CANARY, 502),  # the local server has no TLS
    }
    messages = set()
    try:
        for reason, (settings, password, status) in cases.items():
            response = call(
                carnet_stack,
                studio,
                "POST",
                "connections/test",
                json={"settings": settings, "password": password},
            )
            body = assert_json_error(response, status)
            assert body["reason"] == reason, body
            assert CANARY not in response.text
            messages.add(body["message"])
    finally:
        silent.close()
        closed.close()
    assert len(messages) == len(cases)  # five different explanations
    ok = call(
        carnet_stack,
        studio,
        "POST",
        "connections/test",
        json={"settings": settings_of(maria), "password": CANARY},
    )
    assert ok.status_code == 200 and ok.json()["ok"] is True


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"url": "sqlite:////etc/passwd"}, "dialect"),
        ({"dialect": "mysql", "host": "db.example", "options": {"local_infile": "1"}}, "options"),
        (
            {"dialect": "postgresql", "host": "db.example", "options": {"passfile": "/root/.pgpass"}},
            "options",
        ),
        ({"dialect": "postgresql", "driver": "pg8000", "host": "db.example"}, "driver"),
    ],
    ids=["file url", "local infile", "password file", "unknown driver"],
)
def test_refused_settings_on_save_and_on_test(carnet_stack, studio, settings, field):
    name = unique("refused")
    saved = call(carnet_stack, studio, "POST", "connections", json={"name": name, "settings": settings})
    assert assert_json_error(saved, 400)["field"] == field
    tried = call(carnet_stack, studio, "POST", "connections/test", json={"settings": settings})
    assert assert_json_error(tried, 400)["field"] == field
    listed = call(carnet_stack, studio, "GET", "connections").json()["connections"]
    assert name not in [c["name"] for c in listed]


@pytest.mark.parametrize(
    "host, reason",
    [
        ("127.0.0.2", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address refused, not one bound
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
    ],
    ids=["loopback", "unspecified", "cloud-metadata", "private-10", "private-192"],
)
def test_non_public_sql_hosts_are_refused_before_connecting(carnet_stack, studio, made, host, reason):
    """Only the operator's CARNET_SQL_ALLOW_HOSTS (127.0.0.1 in the test stack) opens non-public servers:
    otherwise a studio user could point a source at the platform's own database or internal services."""
    settings = {"dialect": "postgresql", "host": host, "port": 5432, "database": "x", "username": "x"}
    tried = call(carnet_stack, studio, "POST", "connections/test", json={"settings": settings})
    body = assert_json_error(tried, 400)
    assert "refused" in body["message"] and reason in body["message"], body
    # Saved anyway (the host may only resolve from the server later), a source on it cannot read.
    connection = create_connection(carnet_stack, studio, made, settings, name=unique("internal"))
    source = create_source(
        carnet_stack,
        studio,
        {
            "name": unique("internal-src"),
            "kind": "sql_table",
            "connection": connection["id"],
            "options": {"table": "t"},
        },
    )
    assert source.status_code == 201, source.text
    made_source = source.json()["name"]
    read = call(carnet_stack, studio, "GET", f"sources/{made_source}/data")
    assert assert_json_error(read, 400)["message"].startswith("URL refused")
    call(carnet_stack, studio, "DELETE", f"sources/{made_source}")


@pytest.mark.parametrize(
    "sql",
    [
        "WITH gone AS (DELETE FROM orders RETURNING id) SELECT * FROM gone",
        "SELECT 1; DELETE FROM orders",
        "SELECT setval('counter', 1)",
    ],
    ids=["cte delete", "stacked", "state function"],
)
def test_disguised_writes_are_refused_at_save(carnet_stack, studio, pg_pair, made, sql):
    conn = create_connection(carnet_stack, studio, made, settings_of(pg_pair[0]))
    name = unique("write")
    response = call(
        carnet_stack,
        studio,
        "POST",
        "sources",
        json={"name": name, "kind": "sql_query", "connection": conn["id"], "options": {"sql": sql}},
    )
    assert_json_error(response, 403)
    assert pg_pair[0].count_orders() == 4
    listed = call(carnet_stack, studio, "GET", "sources").json()["sources"]
    assert name not in [s["name"] for s in listed]


def test_variables_choose_the_database_per_call(carnet_stack, studio, hub_token, pg_pair, made, created):
    first, second = pg_pair
    # One connection for every customer database; the reader is the server's own account (trust auth).
    conn = create_connection(
        carnet_stack, studio, made, {**settings_of(first), "username": "postgres", "database": "{{db}}"}
    )
    source = create_source(
        carnet_stack,
        studio,
        {
            "kind": "sql_table",
            "connection": conn["id"],
            "options": {"table": "orders", "variables": [{"name": "db", "default": first.database}]},
        },
    )
    assert source.status_code == 201, source.text
    created.sources.add(source.json()["id"])
    analyst, name = hub_token(ANALYST), source.json()["name"]
    assert read_data(carnet_stack, analyst, name).num_rows == 4  # the declared default
    assert read_data(carnet_stack, analyst, name, f"?var.db={second.database}").num_rows == 5
    assert read_data(carnet_stack, analyst, name, "?limit=2").num_rows == 2  # pushed down
    bad = call(carnet_stack, analyst, "GET", f"sources/{name}/data?var.db=x%2Fy")
    assert assert_json_error(bad, 400)["field"] == "db"
    # Without a default, a missing value is a 400 naming the variable.
    bare = create_source(
        carnet_stack,
        studio,
        {"kind": "sql_table", "connection": conn["id"], "options": {"table": "orders", "variables": ["db"]}},
    )
    created.sources.add(bare.json()["id"])
    missing = call(carnet_stack, analyst, "GET", f"sources/{bare.json()['name']}/data")
    assert assert_json_error(missing, 400)["field"] == "db"


def test_versions_bump_and_connection_in_use_cannot_be_deleted(
    carnet_stack, studio, admin, maria, made, created
):
    stack = carnet_stack
    conn = create_connection(stack, studio, made, settings_of(maria))
    names = []
    for _ in range(2):
        response = create_source(
            stack, studio, {"kind": "sql_table", "connection": conn["id"], "options": {"table": "orders"}}
        )
        created.sources.add(response.json()["id"])
        names.append(response.json()["name"])
    changed = call(stack, studio, "PATCH", f"sources/{names[0]}", json={"description": "Orders"})
    assert changed.json()["version"] == 2
    call(stack, studio, "PATCH", f"connections/{conn['id']}", json={"password": "unchanged"})
    same = [call(stack, studio, "GET", f"sources/{n}").json()["version"] for n in names]
    assert same == [2, 1]  # nothing changed: no new version
    call(
        stack,
        studio,
        "PATCH",
        f"connections/{conn['id']}",
        json={"settings": {**settings_of(maria), "options": {"charset": "utf8mb4"}}},
    )
    assert [call(stack, studio, "GET", f"sources/{n}").json()["version"] for n in names] == [3, 2]

    refused = call(stack, studio, "DELETE", f"connections/{conn['id']}")
    body = assert_json_error(refused, 409)
    assert sorted(body["sources"]) == sorted(names) and all(n in body["message"] for n in names)
    for name in names:
        assert call(stack, studio, "DELETE", f"sources/{name}").status_code == 204
    assert call(stack, studio, "DELETE", f"connections/{conn['id']}").status_code == 204
    assert_json_error(call(stack, studio, "GET", f"connections/{conn['id']}"), 404)

    with session_scope(stack.settings.db_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.target.like("connection/%")).order_by(AuditEvent.id)
        ).all()
        mine = [e for e in events if e.details.get("connection_id") == conn["id"]]
        assert [e.action for e in mine] == [
            "connection.create",
            "connection.update",
            "connection.update",
            "connection.delete",
        ]
        assert "password" in mine[0].details["fields"] and mine[2].details["fields"] == ["settings"]
        assert all(CANARY not in str(e.details) for e in events)


def test_another_orgs_connection_is_unknown(carnet_stack, studio, created, made, maria):
    with session_scope(carnet_stack.settings.db_url) as session:
        row = Connection(
            org_id=created.org_id("globex"),
            name=unique("globex-conn"),
            kind="sql",
            settings=settings_of(maria),
        )
        session.add(row)
        session.flush()
        theirs, their_name = row.id, row.name
    made.add(theirs)
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test")):
        body = {} if method in ("PATCH", "POST") else None
        foreign = call(carnet_stack, studio, method, f"connections/{theirs}{suffix}", json=body)
        unknown = call(carnet_stack, studio, method, f"connections/{UNKNOWN_ID}{suffix}", json=body)
        assert assert_json_error(foreign, 404) == assert_json_error(unknown, 404)
    for ref in (theirs, their_name):
        response = create_source(
            carnet_stack, studio, {"kind": "sql_table", "connection": ref, "options": {"table": "orders"}}
        )
        assert assert_json_error(response, 400)["field"] == "connection"
        assert "Unknown connection" in response.json()["message"]
    with session_scope(carnet_stack.settings.db_url) as session:
        assert session.get(Connection, theirs).name == their_name  # untouched


def test_the_password_never_came_back(carnet_stack, admin):
    """Last test of the module: everything answered above, the audit log and the service's log."""
    export = requests.get(api_url(carnet_stack, "audit/export?format=jsonl"), headers=admin, timeout=60)
    assert export.status_code == 200 and "connection.create" in export.text
    assert len(SEEN) > 40
    for text in [*SEEN, export.text, carnet_stack.log_path.read_text(errors="replace")]:
        assert CANARY not in text
