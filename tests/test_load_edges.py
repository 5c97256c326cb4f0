"""Loads at their edges, on the real stack: loads left running by a killed service, malformed bodies of the
load route, uploads in the load history, and push URLs (size cap before the body is read, tables that do
not exist yet)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from unittest import mock

import pytest
import requests
from sqlalchemy import delete, select
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets.config import Config

from carnet.db import session_scope
from carnet.db.models import WarehouseLoad
from carnet.loads.history import INTERRUPTED
from carnet.service import app as service_app
from carnet.service.api.base import API_PREFIX
from carnet.service.api.push import PushHandler
from carnet.settings import CarnetSettings
from tests.api_support import api_url, assert_json_error, auth
from tests.test_warehouse_api import arrow_bytes, load, new_table, rows

STUDIO = "studio@acme.example"


@pytest.fixture(scope="module")
def studio(hub_token):
    return hub_token(STUDIO)


def history(stack, token, table) -> list[dict]:
    response = requests.get(
        api_url(stack, f"warehouse/tables/{table}/loads"), headers=auth(token), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["loads"]


def describe(stack, token, table) -> requests.Response:
    return requests.get(api_url(stack, f"warehouse/tables/{table}"), headers=auth(token), timeout=30)


def temporary_files(stack) -> list:
    folder = stack.settings.org_dir(1) / "uploads"
    return [p for p in folder.iterdir() if p.is_file()] if folder.exists() else []


# -- 1. loads left "running" by a service that died ----------------------------------------------------------
def test_service_start_fails_loads_left_running(carnet_stack, studio):
    """The service's own start (CarnetService.start, without listening) marks a running load failed."""
    stack, table = carnet_stack, new_table()
    first = load(stack, studio, table, arrow_bytes({"id": [1, 2]}))
    assert first.status_code == 200, first.text
    (finished,) = history(stack, studio, table)
    with session_scope(stack.settings.db_url) as session:
        stuck = WarehouseLoad(org_id=1, table_name=table, mode="append", actor=STUDIO, status="running")
        session.add(stuck)
        session.flush()
        stuck_id = stuck.id
    try:
        config = Config(CarnetSettings={"data_dir": str(stack.data_dir), "db_url": stack.settings.db_url})
        service = service_app.CarnetService(config=config)
        with (
            mock.patch.object(service_app.web.Application, "listen") as listen,
            mock.patch.object(service_app.ioloop.IOLoop, "current"),
        ):
            service.start()
        assert listen.called  # the state was prepared before the service would have listened
        newest, oldest = history(stack, studio, table)
        assert newest["id"] == stuck_id and newest["status"] == "failed" and newest["error"] == INTERRUPTED
        assert newest["finished_at"] is not None and newest["duration_seconds"] is not None
        assert oldest == finished  # a finished load is left as it was
        assert rows(stack, studio, table) == [{"id": 1}, {"id": 2}]
    finally:
        with session_scope(stack.settings.db_url) as session:
            session.execute(delete(WarehouseLoad).where(WarehouseLoad.id == stuck_id))


# -- 2. malformed bodies of the load route -------------------------------------------------------------------
MALFORMED = [
    # A text file's types come from its values. A header without rows would make an all-text table on which
    # later appends silently store numbers as text, so it is a 400 "no rows" (for replace and append alike);
    # an empty typed table is made from a zero-row Arrow or Parquet body (checked below).
    ("header only", "csv", "replace", b"id,city\n", {}, "header but no rows"),
    ("header only, append", "csv", "append", b"id,city\n", {}, "header but no rows"),
    ("0-byte csv", "csv", "replace", b"", {}, "empty"),
    ("0-byte arrow", "arrow", "replace", b"", {}, "not a readable arrow stream"),
    ("blank lines only", "tsv", "replace", b"\n \n", {}, "empty"),
    (
        "wrong encoding",
        "csv",
        "replace",
        "id,city\n1,x\n2,Zoé\n".encode("latin-1"),
        {"encoding": "utf-8"},
        "Line 3",
    ),  # fmt: skip
    ("ragged row", "csv", "append", b"id;city\n3;Lille\n4\n", {}, "Line 3"),
]


@pytest.mark.parametrize("case,fmt,mode,body,params,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_load_bodies_are_a_400_and_store_nothing(
    carnet_stack, studio, case, fmt, mode, body, params, expected
):
    stack, table = carnet_stack, new_table()
    kept = {"id": [1, 2], "city": ["Lyon", "Nantes"]}
    assert load(stack, studio, table, arrow_bytes(kept)).status_code == 200
    before = history(stack, studio, table)
    refused = load(stack, studio, table, body, fmt=fmt, mode=mode, **params)
    error = assert_json_error(refused, 400)
    assert expected in error["message"], error
    if expected.startswith("Line"):
        assert error["line"] == int(expected.split()[1])
    assert rows(stack, studio, table) == [{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Nantes"}]
    assert history(stack, studio, table) == before  # refused before the engine: no load was even started
    assert not temporary_files(stack)


def test_an_empty_typed_table_comes_from_a_zero_row_arrow_body(carnet_stack, studio):
    import pyarrow as pa

    stack, table = carnet_stack, new_table()
    empty = pa.table({"id": pa.array([], pa.int64()), "day": pa.array([], pa.date32())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, empty.schema) as writer:
        writer.write_table(empty)
    made = load(stack, studio, table, sink.getvalue().to_pybytes())
    assert made.status_code == 200 and made.json()["rows_out"] == 0, made.text
    columns = {c["name"]: c["type"] for c in describe(stack, studio, table).json()["columns"]}
    assert columns == {"id": "BIGINT", "day": "DATE"}


def test_duplicate_csv_column_names_are_renamed_and_the_answer_says_so(carnet_stack, studio):
    """The load route parses CSV like an upload: a repeated header name gets a suffix (id, id_2), which the
    answer lists in ``renamed``; an append whose renamed columns do not match the table is a 400."""
    stack, table = carnet_stack, new_table()
    loaded = load(stack, studio, table, b"id,city,id\n1,Lyon,10\n2,Nantes,20\n", fmt="csv")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["renamed"] == {"id_2": "id"} and loaded.json()["rows_out"] == 2
    assert [c["name"] for c in describe(stack, studio, table).json()["columns"]] == ["id", "city", "id_2"]
    assert rows(stack, studio, table) == [
        {"id": 1, "city": "Lyon", "id_2": 10},
        {"id": 2, "city": "Nantes", "id_2": 20},
    ]
    # A file whose names are already warehouse names renames nothing, and says so.
    same = load(stack, studio, table, b"id,city,id_2\n3,Lille,30\n", fmt="csv", mode="append")
    assert same.status_code == 200 and same.json()["renamed"] == {}, same.text
    # Appending a file with a duplicated name the table does not have: refused, the table as it was.
    other = new_table()
    assert load(stack, studio, other, arrow_bytes({"id": [1], "city": ["Lyon"]})).status_code == 200
    refused = load(stack, studio, other, b"id,city,city\n2,Rome,Roma\n", fmt="csv", mode="append")
    assert "city_2" in assert_json_error(refused, 400)["message"]
    assert rows(stack, studio, other) == [{"id": 1, "city": "Lyon"}]


# -- 3. uploads are loads ------------------------------------------------------------------------------------
def test_an_upload_writes_a_load_history_row(carnet_stack, studio, created):
    stack, table = carnet_stack, new_table()
    for body in (b"a,b\n1,x\n2,y\n", b"a,b\n3,z\n"):
        response = requests.post(
            api_url(stack, "uploads"),
            params={"format": "csv", "table": table},
            data=body,
            headers={**auth(studio), "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        created.sources.add(response.json()["source"]["id"])
    assert response.json()["rows"] == 1  # still the table's row count
    newest, oldest = history(stack, studio, table)
    assert (oldest["origin"], oldest["mode"], oldest["status"]) == ("upload", "replace", "succeeded")
    assert (oldest["rows_in"], oldest["rows_out"], oldest["actor"]) == (2, 2, STUDIO)
    assert (newest["rows_in"], newest["rows_out"], newest["origin"]) == (1, 1, "upload")
    assert oldest["actor_id"] is not None and oldest["actor_id"] == newest["actor_id"]
    # A refused file changes nothing and starts no load.
    refused = requests.post(
        api_url(stack, "uploads"),
        params={"format": "csv", "table": table},
        data=b"a,b\n",
        headers={**auth(studio), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert_json_error(refused, 400)
    assert len(history(stack, studio, table)) == 2


# -- 4. push URLs --------------------------------------------------------------------------------------------
def make_push(stack, token, table, **body) -> dict:
    made = requests.post(
        api_url(stack, f"warehouse/tables/{table}/push-endpoints"),
        json={"name": "crm", **body},
        headers=auth(token),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return made.json()


@contextlib.contextmanager
def serving(app: web.Application):
    """``app`` on a free loopback port in a thread of this process; yields its base URL."""
    sockets = bind_sockets(0, "127.0.0.1")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        HTTPServer(app).add_sockets(sockets)
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def capped_push(carnet_stack):
    """The push route of the service, with push_max_bytes = 1000, over the stack's database."""
    settings = CarnetSettings(
        data_dir=str(carnet_stack.data_dir), db_url=carnet_stack.settings.db_url, push_max_bytes=1000
    )
    app = web.Application(
        [("/" + API_PREFIX + r"push/(?P<token>[^/]+)", PushHandler)],
        carnet_settings=settings,
        log=logging.getLogger("capped-push"),
    )
    with serving(app) as base:
        yield base


def test_push_bodies_over_the_cap_are_refused_before_they_are_read(carnet_stack, studio, capped_push):
    stack, table = carnet_stack, new_table()
    assert load(stack, studio, table, arrow_bytes({"id": [1], "city": ["Lyon"]})).status_code == 200
    secret = make_push(stack, studio, table)["url"].rsplit("/", 1)[1]
    url = f"{capped_push}/{API_PREFIX}push/{secret}"
    big = json.dumps({"rows": [{"id": i, "city": "x" * 10} for i in range(40)]}).encode()
    assert len(big) > 1000

    # Only headers are sent, announcing 10 MB: the 413 comes back without a byte of the body.
    port = int(capped_push.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(
            f"POST /{API_PREFIX}push/{secret} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(payload) == {
        "status": 413,
        "message": "A push body may hold at most 1000 bytes",
        "limit": 1000,
    }

    declared = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert assert_json_error(declared, 413)["limit"] == 1000

    def chunks():  # no Content-Length: the body is counted as it streams
        yield big[:600]
        yield big[600:]

    streamed = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert assert_json_error(streamed, 413)["limit"] == 1000
    # An unknown URL is the same 404 as ever, whatever the size it announces.
    unknown = requests.post(f"{capped_push}/{API_PREFIX}push/abcdef123456_nope", data=big, timeout=30)
    assert_json_error(unknown, 404)
    assert rows(stack, studio, table) == [{"id": 1, "city": "Lyon"}]
    assert not temporary_files(stack)
    # Under the cap, through the real service: loaded.
    pushed = requests.post(
        make_push(stack, studio, table)["url"], json=[{"id": 2, "city": "Rome"}], timeout=30
    )
    assert pushed.status_code == 200, pushed.text
    assert rows(stack, studio, table) == [{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Rome"}]


def test_a_push_endpoint_for_a_table_that_does_not_exist_yet(carnet_stack, studio):
    stack, table = carnet_stack, new_table()
    endpoints = api_url(stack, f"warehouse/tables/{table}/push-endpoints")
    # No table and no endpoint: listing is a 404 as before.
    assert_json_error(requests.get(endpoints, headers=auth(studio), timeout=30), 404)
    made = make_push(stack, studio, table, mode="upsert", key=["id"])
    assert_json_error(describe(stack, studio, table), 404)  # creating the endpoint made no table
    listed = requests.get(endpoints, headers=auth(studio), timeout=30)
    assert [e["id"] for e in listed.json()["push_endpoints"]] == [made["id"]]

    first = requests.post(made["url"], json={"rows": [{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Rome"}]},
                          timeout=30)  # fmt: skip
    assert first.status_code == 200 and first.json()["rows_out"] == 2, first.text
    second = requests.post(
        made["url"], json=[{"id": 2, "city": "Roma"}, {"id": 3, "city": "Oslo"}], timeout=30
    )
    assert second.status_code == 200 and second.json()["rows_out"] == 3, second.text
    assert rows(stack, studio, table) == [
        {"id": 1, "city": "Lyon"},
        {"id": 2, "city": "Roma"},
        {"id": 3, "city": "Oslo"},
    ]
    assert [(h["origin"], h["actor"]) for h in history(stack, studio, table)] == [("push", "push crm")] * 2

    # Revoked and the table never made: the listing is a 404 again (only live endpoints stand for a table).
    other = new_table()
    lone = make_push(stack, studio, other)
    other_url = api_url(stack, f"warehouse/tables/{other}/push-endpoints")
    gone = requests.delete(f"{other_url}/{lone['id']}", headers=auth(studio), timeout=30)
    assert gone.status_code == 204
    assert_json_error(requests.get(other_url, headers=auth(studio), timeout=30), 404)


def test_upsert_push_into_a_missing_table_checks_its_key_on_the_first_push(carnet_stack, studio):
    stack, table = carnet_stack, new_table()
    made = make_push(stack, studio, table, mode="upsert", key=["id"])
    refused = requests.post(made["url"], json=[{"code": 1}], timeout=30)
    assert assert_json_error(refused, 400) == {
        "status": 400,
        "message": "Key column 'id' is missing from the rows",
        "field": "id",
    }
    assert_json_error(describe(stack, studio, table), 404)
    with session_scope(stack.settings.db_url) as session:
        assert not session.scalars(select(WarehouseLoad).where(WarehouseLoad.table_name == table)).all()
