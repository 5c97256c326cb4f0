"""The warehouse through REST, push endpoints, the Python client and `carnet load`, on the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import requests
from sqlalchemy import delete

import carnet
from carnet.db import session_scope
from carnet.db.models import Membership, Role, TokenKind, User
from carnet.demo import DEMO_TABLE
from carnet.tokens import mint_token
from tests.api_support import api_url, assert_json_error, auth, unique

ARROW_STREAM = "application/vnd.apache.arrow.stream"
STUDIO, ANALYST, ADMIN = "studio@acme.example", "analyst@acme.example", "admin@acme.example"


def new_table() -> str:
    return unique("wh").replace("-", "_")


def arrow_bytes(data: dict) -> bytes:
    table = pa.table(data)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def load(stack, token, table, body: bytes, fmt="arrow", **params):
    # type_<column>=... stands for the query argument type.<column>=...
    query = {k.replace("type_", "type.", 1): v for k, v in {"format": fmt, **params}.items()}
    return requests.post(
        api_url(stack, f"warehouse/tables/{table}/load"),
        params=query,
        data=body,
        headers={**auth(token), "Content-Type": ARROW_STREAM if fmt == "arrow" else "text/csv"},
        timeout=60,
    )


def rows(stack, token, table) -> list[dict]:
    response = requests.get(
        api_url(stack, f"warehouse/tables/{table}/preview?limit=1000"), headers=auth(token), timeout=30
    )
    assert response.status_code == 200, response.text
    return sorted(response.json()["rows"], key=lambda row: row["id"])


@pytest.fixture(scope="module")
def studio(hub_token):
    return hub_token(STUDIO)


@pytest.fixture(scope="module")
def studio_key(carnet_stack, hub_token, created):
    response = requests.post(
        api_url(carnet_stack, "keys"),
        json={"name": unique("warehouse client"), "role": "studio"},
        headers=auth(hub_token(ADMIN)),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.keys.add(response.json()["id"])
    return response.json()["key"]


@pytest.fixture(scope="module")
def globex_studio(carnet_stack, created):
    """A Studio kernel token of a globex studio user (made in the database: globex has only a viewer)."""
    with session_scope(carnet_stack.settings.db_url) as session:
        user = User(email=f"{unique('wh-studio')}@globex.example", display_name="Globex studio")
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=created.org_id("globex"), role=Role.studio))
        session.flush()
        token = mint_token(
            session,
            kind=TokenKind.studio_kernel,
            user_id=user.id,
            org_id=created.org_id("globex"),
            ttl_seconds=3600,
        )
        user_id = user.id
    yield token
    with session_scope(carnet_stack.settings.db_url) as session:
        session.execute(delete(User).where(User.id == user_id))


def test_load_modes_with_arrow_and_csv_bodies(carnet_stack, studio):
    stack, table = carnet_stack, new_table()
    first = load(
        stack, studio, table, arrow_bytes({"id": [1, 2], "city": ["Lyon", "Nantes"], "amount": [1.5, 2.0]})
    )
    assert first.status_code == 200, first.text
    assert first.json()["rows_in"] == 2 and first.json()["rows_out"] == 2 and first.json()["load_id"]
    appended = load(stack, studio, table, b"id,city,amount\n3,Lille,4.25\n", fmt="csv", mode="append")
    assert appended.json()["rows_out"] == 3, appended.text
    upserted = load(
        stack,
        studio,
        table,
        arrow_bytes({"id": [1, 4], "city": ["Lyon 2", "Paris"], "amount": [9.0, 4.0]}),
        mode="upsert",
        key="id",
    )
    assert upserted.json()["rows_out"] == 4, upserted.text
    deleted = load(stack, studio, table, arrow_bytes({"id": [2]}), mode="delete", key="id")
    assert deleted.json()["rows_out"] == 3, deleted.text
    assert [(r["id"], r["city"]) for r in rows(stack, studio, table)] == [
        (1, "Lyon 2"),
        (3, "Lille"),
        (4, "Paris"),
    ]

    # A forced type that a value does not fit: a 400 naming the column, and the table as it was.
    bad = load(stack, studio, table, b"id,city,amount\nx1,Rome,1\n", fmt="csv", mode="replace", type_id="int")
    body = assert_json_error(bad, 400)
    assert "id" in body["message"] and "x1" in body["message"]
    assert len(rows(stack, studio, table)) == 3
    # Upsert without a key, an unknown mode or format: refused before anything is read.
    assert_json_error(load(stack, studio, table, b"", mode="upsert"), 400)
    assert load(stack, studio, table, b"", mode="merge").json()["field"] == "mode"
    assert load(stack, studio, table, b"", fmt="json").json()["field"] == "format"
    # A replace with forced types: the table's columns have them.
    typed = load(
        stack,
        studio,
        table,
        b"id,day,amount\n1,2024-01-31,3.10\n",
        fmt="csv",
        type_day="date",
        type_amount="decimal(10,2)",
    )
    assert typed.status_code == 200, typed.text
    described = requests.get(
        api_url(stack, f"warehouse/tables/{table}"), headers=auth(studio), timeout=30
    ).json()
    types = {c["name"]: c["type"] for c in described["columns"]}
    assert described["rows"] == 1 and types["day"] == "DATE" and types["amount"] == "DECIMAL(10,2)"


def test_batch_is_one_transaction(carnet_stack, studio):
    stack, table = carnet_stack, new_table()
    assert load(stack, studio, table, arrow_bytes({"id": [1, 2], "n": [10, 20]})).status_code == 200
    url = api_url(stack, f"warehouse/tables/{table}/batch")
    ops = [
        {"op": "insert", "rows": [{"id": 3, "n": 30}]},
        {"op": "upsert", "rows": [{"id": 1, "n": 11}]},
        {"op": "delete", "rows": [{"id": 2}]},
    ]
    done = requests.post(url, json={"key": ["id"], "operations": ops}, headers=auth(studio), timeout=30)
    assert done.status_code == 200, done.text
    assert rows(stack, studio, table) == [{"id": 1, "n": 11}, {"id": 3, "n": 30}]
    # The last operation fails (a NULL key): none of the batch is applied.
    failing = ops[:1] + [
        {"op": "upsert", "rows": [{"id": 5, "n": 50}]},
        {"op": "delete", "rows": [{"id": None}]},
    ]
    refused = requests.post(
        url, json={"key": ["id"], "operations": failing}, headers=auth(studio), timeout=30
    )
    assert_json_error(refused, 400)
    assert rows(stack, studio, table) == [{"id": 1, "n": 11}, {"id": 3, "n": 30}]
    wrong = requests.post(
        url,
        json={"key": ["id"], "operations": [{"op": "merge", "rows": []}]},
        headers=auth(studio),
        timeout=30,
    )
    assert assert_json_error(wrong, 400)["field"] == "operations[0]"


def test_a_load_makes_a_cached_source_answer_the_new_data(carnet_stack, studio, created):
    stack, table = carnet_stack, new_table()
    assert load(stack, studio, table, arrow_bytes({"id": [1], "v": ["old"]})).status_code == 200
    made = requests.post(
        api_url(stack, "sources"),
        json={"name": table, "kind": "warehouse_table", "options": {"table": table}},
        headers=auth(studio),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    policy = requests.put(
        api_url(stack, f"sources/{table}/cache"),
        json={"policy": "invalidate"},
        headers=auth(studio),
        timeout=30,
    )
    assert policy.status_code == 200

    def read():
        response = requests.get(api_url(stack, f"sources/{table}/data"), headers=auth(studio), timeout=30)
        return pa.ipc.open_stream(response.content).read_all().column("v").to_pylist()

    assert read() == ["old"] and read() == ["old"]  # the second answer comes from the cache
    assert load(stack, studio, table, arrow_bytes({"id": [1, 2], "v": ["new", "newer"]})).status_code == 200
    assert read() == ["new", "newer"]


def test_history_lists_who_loaded_what(carnet_stack, studio, hub_token):
    stack, table = carnet_stack, new_table()
    load(stack, studio, table, arrow_bytes({"id": [1, 2]}))
    load(stack, studio, table, b"id\nnot a number\n", fmt="csv", mode="append", type_id="int")
    history = requests.get(
        api_url(stack, f"warehouse/tables/{table}/loads"), headers=auth(hub_token(ANALYST)), timeout=30
    )
    assert history.status_code == 200, history.text
    newest, oldest = history.json()["loads"]
    assert (oldest["mode"], oldest["status"], oldest["rows_in"], oldest["actor"]) == (
        "replace",
        "succeeded",
        2,
        STUDIO,
    )
    assert newest["status"] == "failed" and newest["error"] and newest["origin"] == "api"
    # An analyst reads but does not load.
    assert_json_error(load(stack, hub_token(ANALYST), table, arrow_bytes({"id": [3]}), mode="append"), 403)


def test_push_endpoint_create_push_revoke(carnet_stack, studio, hub_token):
    stack, table = carnet_stack, new_table()
    load(stack, studio, table, arrow_bytes({"id": [1], "city": ["Lyon"]}))
    endpoints = api_url(stack, f"warehouse/tables/{table}/push-endpoints")
    assert_json_error(requests.post(endpoints, json={}, headers=auth(hub_token(ANALYST)), timeout=30), 403)
    made = requests.post(
        endpoints, json={"name": "crm", "mode": "upsert", "key": ["id"]}, headers=auth(studio), timeout=30
    )
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    assert url.startswith(stack.url + "/services/carnet/api/v1/push/")  # the Hub's public address
    listed = requests.get(endpoints, headers=auth(studio), timeout=30).json()["push_endpoints"]
    assert [e["name"] for e in listed] == ["crm"] and url.rsplit("/", 1)[1] not in str(listed)

    # The URL alone is the credential.
    push_url = url
    pushed = requests.post(
        push_url, json={"rows": [{"id": 1, "city": "Lyon 2"}, {"id": 2, "city": "Rome"}]}, timeout=30
    )
    assert pushed.status_code == 200, pushed.text
    as_list = requests.post(push_url, json=[{"id": 3, "city": "Oslo"}], timeout=30)
    assert as_list.status_code == 200, as_list.text
    assert rows(stack, studio, table) == [
        {"id": 1, "city": "Lyon 2"},
        {"id": 2, "city": "Rome"},
        {"id": 3, "city": "Oslo"},
    ]
    history = requests.get(
        api_url(stack, f"warehouse/tables/{table}/loads"), headers=auth(studio), timeout=30
    )
    assert (
        history.json()["loads"][0]["actor"] == "push crm" and history.json()["loads"][0]["origin"] == "push"
    )
    assert_json_error(requests.post(push_url, data=b"not json", timeout=30), 400)

    revoked = requests.delete(f"{endpoints}/{made.json()['id']}", headers=auth(studio), timeout=30)
    assert revoked.status_code == 204
    after = requests.post(push_url, json={"rows": [{"id": 4, "city": "Bern"}]}, timeout=30)
    unknown = requests.post(api_url(stack, "push/abcdef123456_nope"), json={"rows": [{"id": 4}]}, timeout=30)
    assert assert_json_error(after, 404) == assert_json_error(unknown, 404)
    assert len(rows(stack, studio, table)) == 3
    # The token is a credential: the service's request log (200s, the 400, the 404s) never holds it.
    token = push_url.rsplit("/", 1)[1]
    log = stack.log_path.read_text(errors="replace")
    assert token not in log and "abcdef123456_nope" not in log
    assert "POST /services/carnet/api/v1/push/[secret]" in log


@pytest.mark.parametrize("name", ["..%2Fsecrets", "%22gapminder%22", "main.gapminder", "x%3Bdrop"])
def test_path_tricks_in_table_names_are_refused(carnet_stack, studio, name):
    described = requests.get(
        api_url(carnet_stack, f"warehouse/tables/{name}"), headers=auth(studio), timeout=30
    )
    assert assert_json_error(described, 400)["field"] == "table"
    loaded = load(carnet_stack, studio, name, arrow_bytes({"id": [1]}))
    assert assert_json_error(loaded, 400)["field"] == "table"


def test_another_org_cannot_read_or_write_acme_tables(carnet_stack, studio, globex_studio):
    stack = carnet_stack
    listed = requests.get(api_url(stack, "warehouse/tables"), headers=auth(globex_studio), timeout=30)
    assert DEMO_TABLE not in [t["name"] for t in listed.json()["tables"]]
    theirs = requests.get(
        api_url(stack, f"warehouse/tables/{DEMO_TABLE}/preview"), headers=auth(globex_studio), timeout=30
    )
    unknown = requests.get(
        api_url(stack, "warehouse/tables/no_such_table/preview"), headers=auth(globex_studio), timeout=30
    )
    assert assert_json_error(theirs, 404)["message"] == assert_json_error(unknown, 404)["message"].replace(
        "no_such_table", DEMO_TABLE
    )
    # Loading a table named like one of acme's writes the caller's own warehouse; acme's is untouched.
    name = new_table()
    assert load(stack, studio, name, arrow_bytes({"id": [1, 2]})).status_code == 200
    written = load(stack, globex_studio, name, arrow_bytes({"id": [7]}))
    assert written.status_code == 200 and written.json()["rows_out"] == 1, written.text
    assert rows(stack, studio, name) == [{"id": 1}, {"id": 2}]
    assert rows(stack, globex_studio, name) == [{"id": 7}]


def test_the_python_client(carnet_stack, studio_key, studio, created, tmp_path):
    client = carnet.Client(carnet_stack.url, studio_key)
    name = new_table()
    table = client.get_or_create_table(
        name, data=pd.DataFrame({"id": [1, 2], "city": ["Lyon", "Nantes"], "amount": [1.0, 2.0]})
    )
    table.load(
        pd.DataFrame({"id": [2, 3], "city": ["Nantes", "Lille"], "amount": [5.0, 3.0]}),
        mode="upsert",
        key=["id"],
    )
    assert table.describe()["rows"] == 3
    assert table.preview().sort_values("id")["amount"].tolist() == [1.0, 5.0, 3.0]
    assert [h["mode"] for h in table.history()] == ["upsert", "replace"]

    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": name}},
        headers=auth(studio),
        timeout=30,
    )
    created.sources.add(made.json()["id"])
    source = client.get_source(name)
    picked = source.get_data(select=["city", "amount"], where={"city": ["Lyon", "Lille"]}, order_by=["city"])
    assert picked.to_dict("records") == [{"city": "Lille", "amount": 3.0}, {"city": "Lyon", "amount": 1.0}]
    total = source.get_data(select=["sum(amount)"], group_by=["city"], order_by=["city"])
    assert total["amount"].tolist() == [3.0, 1.0, 5.0]

    source.reload_from_dataframe(
        pd.DataFrame({"id": [7], "city": ["Oslo"], "amount": ["12.50"]}),
        force_types={"amount": "decimal(12,2)"},
    )
    assert source.schema["amount"].lower().startswith("decimal")
    csv = tmp_path / "more.csv"
    csv.write_text("id,city,amount\n8,Bern,1.5\n9,Rome,2.5\n")
    assert source.reload_from_file(csv)["rows_out"] == 2
    source.batch([{"op": "delete", "rows": [{"id": 8}]}], key="id")
    assert source.get_data()["city"].tolist() == ["Rome"]
    source.invalidate_cache()
    client.warehouse.write(pd.DataFrame({"id": [1], "city": ["Oslo"], "amount": [0.5]}), name, mode="append")
    assert sorted(source.get_data()["id"].tolist()) == [1, 9]


def test_kernel_helper_writes_with_the_kernel_token(carnet_stack, created, monkeypatch):
    import carnet.kernel_helpers as helpers

    token = created.kernel_token(STUDIO, "acme", TokenKind.studio_kernel)
    monkeypatch.setenv("CARNET_API_URL", f"{carnet_stack.url}/services/carnet/")
    monkeypatch.setenv("CARNET_TOKEN", token)
    monkeypatch.setattr(helpers, "warehouse", helpers.Warehouse())  # a fresh one reads the variables
    name = new_table()
    # carnet.warehouse is the module carnet/warehouse.py in this process (imported by the service code): its
    # write() goes to the helper, as the kernel's carnet.warehouse.write would.
    answer = carnet.warehouse.write(pd.DataFrame({"id": [1, 2]}), name, mode="replace")
    assert answer["rows_out"] == 2
    history = helpers.warehouse.table(name).history()
    assert (history[0]["actor"], history[0]["origin"]) == (STUDIO, "kernel")


def test_cli_load_streams_with_progress(carnet_stack, studio_key, tmp_path):
    data = tmp_path / "big.csv"
    data.write_text("id,label\n" + "".join(f"{i},row {i}\n" for i in range(200_000)))
    name = new_table()
    env = {**os.environ, "CARNET_URL": carnet_stack.url, "CARNET_API_KEY": studio_key}
    carnet_bin = str(Path(sys.executable).parent / "carnet")

    def run(*args):
        return subprocess.run([carnet_bin, *args], capture_output=True, text=True, timeout=180, env=env)

    done = run("load", "acme", name, str(data), "--type", "id=int")
    assert done.returncode == 0, done.stderr
    assert "sent" in done.stderr and "(100%)" in done.stderr
    assert f"Loaded 200000 rows into {name}" in done.stdout
    described = run("warehouse", "describe", name)
    assert described.returncode == 0 and "200000 rows" in described.stdout and "label" in described.stdout
    assert name in run("warehouse", "ls").stdout
    wrong = run("load", "globex", name, str(data))
    assert wrong.returncode == 2 and "belongs to organization 'acme'" in wrong.stderr
