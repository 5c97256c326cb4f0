"""File uploads (CSV/TSV, Excel, Parquet) into the warehouse, through the real stack's REST API.

Every file is made here (encodings, workbooks and Parquet types written by the real libraries), sent raw as
the body, and checked where it lands: the warehouse table read back through ``GET /sources/{name}/data``
(Arrow) as an analyst, the source row, the audit log. Refusals leave the previous table as it was.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import io
import logging
import threading
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from openpyxl import Workbook
from sqlalchemy import select
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from carnet.db import session_scope
from carnet.db.models import DataSource, TokenKind
from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from carnet.service.api.base import API_PREFIX
from carnet.service.api.uploads import UploadHandler
from carnet.settings import CarnetSettings
from carnet.warehouse import Warehouse
from tests.api_support import api_url, assert_json_error, auth, unique

STUDIO, ANALYST, ADMIN = "studio@acme.example", "analyst@acme.example", "admin@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"


def table_name(prefix: str = "up") -> str:
    return unique(prefix).replace("-", "_")


def upload(stack, token, body: bytes, path: str = "uploads", **params):
    return requests.post(
        api_url(stack, path),
        params=params,
        data=body,
        headers={**auth(token), "Content-Type": "application/octet-stream"},
        timeout=60,
    )


def created_upload(stack, token, created, body: bytes, **params) -> dict:
    response = upload(stack, token, body, **params)
    assert response.status_code == 201, response.text
    created.sources.add(response.json()["source"]["id"])
    return response.json()


def read_data(stack, token, source: str) -> pa.Table:
    response = requests.get(api_url(stack, f"sources/{source}/data"), headers=auth(token), timeout=60)
    assert response.status_code == 200, response.text
    return pa.ipc.open_stream(response.content).read_all()


@pytest.fixture(scope="module")
def studio(hub_token):
    return hub_token(STUDIO)


@pytest.fixture(scope="module")
def analyst(hub_token):
    return hub_token(ANALYST)


# -- CSV / TSV ---------------------------------------------------------------------------------------------
def test_semicolon_latin1_csv_is_sniffed_and_readable_as_an_analyst(
    carnet_stack, studio, analyst, created, admin
):
    body = "Ville;Montant;Jour\nSão Paulo;1,5;2024-01-02\nZoé;2,25;\n".encode("latin-1")
    table = table_name()
    answer = created_upload(carnet_stack, studio, created, body, format="csv", table=table)
    assert answer["settings"]["delimiter"] == ";" and answer["settings"]["decimal"] == ","
    assert answer["settings"]["encoding"] in ("cp1252", "iso8859-1") and answer["settings"]["header"] is True
    assert answer["rows"] == 2 and answer["bytes"] == len(body)
    assert answer["renamed"] == {"ville": "Ville", "montant": "Montant", "jour": "Jour"}
    assert answer["source"]["name"] == table and answer["source"]["kind"] == "warehouse_table"
    assert answer["source"]["version"] == 1
    data = read_data(carnet_stack, analyst, table)
    assert data.to_pylist() == [
        {"ville": "São Paulo", "montant": 1.5, "jour": datetime.date(2024, 1, 2)},
        {"ville": "Zoé", "montant": 2.25, "jour": None},
    ]
    # Audited with sizes, never the content.
    events = requests.get(
        api_url(carnet_stack, "audit"), params={"action": "upload."}, headers=admin, timeout=30
    ).json()["events"]
    (event,) = [e for e in events if e["target"] == f"table/{table}"]
    assert event["details"]["rows"] == 2 and event["details"]["bytes"] == len(body)
    assert "Paulo" not in str(event)


def test_tsv_and_a_csv_without_header(carnet_stack, studio, analyst, created):
    tsv = table_name("tsv")
    created_upload(carnet_stack, studio, created, b"name\tcount\nx\t1\ny\t2\n", format="tsv", table=tsv)
    assert read_data(carnet_stack, analyst, tsv).to_pydict() == {"name": ["x", "y"], "count": [1, 2]}
    bare = table_name("bare")
    answer = created_upload(carnet_stack, studio, created, b"1,2.5,a\n3,4.5,b\n", format="csv", table=bare)
    assert answer["settings"]["header"] is False and answer["rows"] == 2
    assert read_data(carnet_stack, analyst, bare).to_pydict() == {
        "column_1": [1, 3],
        "column_2": [2.5, 4.5],
        "column_3": ["a", "b"],
    }


def test_overrides_win_over_sniffing(carnet_stack, studio):
    body = "id;name\n1;é\n2;NA\n".encode()
    sniffed = upload(carnet_stack, studio, body, "uploads/preview", format="csv")
    assert sniffed.status_code == 200, sniffed.text
    assert sniffed.json()["rows"] == [{"id": 1, "name": "é"}, {"id": 2, "name": None}]
    forced = upload(
        carnet_stack,
        studio,
        body,
        "uploads/preview",
        format="csv",
        header="false",
        encoding="latin-1",
        null="nothing",
        skip_rows="1",
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["settings"]["header"] is False
    # latin-1 read of UTF-8 bytes, "NA" no longer null, the first line skipped.
    assert forced.json()["rows"] == [
        {"column_1": 1, "column_2": "Ã©"},
        {"column_1": 2, "column_2": "NA"},
    ]
    assert forced.json()["total_rows"] == 2


# -- Excel and Parquet ---------------------------------------------------------------------------------------
def workbook_bytes() -> bytes:
    book = Workbook()
    first = book.active
    first.title = "Notes"
    first.append(["nothing to load here"])
    second = book.create_sheet("Sales 2024")
    second.append(["Région", "Amount", "Day"])
    second.append(["Nord", 12.5, datetime.datetime(2024, 3, 1)])
    second.append(["Sud", 7, datetime.datetime(2024, 3, 2)])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_excel_with_two_sheets_loads_the_chosen_one(carnet_stack, studio, analyst, created):
    body = workbook_bytes()
    preview = upload(carnet_stack, studio, body, "uploads/preview", format="xlsx", sheet="2")
    assert preview.status_code == 200, preview.text
    assert preview.json()["sheets"] == ["Notes", "Sales 2024"]
    assert preview.json()["settings"]["sheet"] == "Sales 2024"
    table = table_name("xlsx")
    answer = created_upload(
        carnet_stack, studio, created, body, format="xlsx", table=table, sheet="Sales 2024"
    )
    assert answer["renamed"] == {"region": "Région", "amount": "Amount", "day": "Day"}
    data = read_data(carnet_stack, analyst, table)
    assert data.to_pydict() == {
        "region": ["Nord", "Sud"],
        "amount": [12.5, 7.0],
        "day": [datetime.datetime(2024, 3, 1), datetime.datetime(2024, 3, 2)],
    }
    missing = upload(carnet_stack, studio, body, format="xlsx", table=table_name(), sheet="Nope")
    assert "Sales 2024" in assert_json_error(missing, 400)["message"]


def test_parquet_round_trip_keeps_types(carnet_stack, studio, analyst, created):
    original = pa.table(
        {
            "day": pa.array([datetime.date(2024, 1, 1), None, datetime.date(2024, 12, 31)], pa.date32()),
            "price": pa.array(
                [decimal.Decimal("1.10"), decimal.Decimal("-3.25"), None], pa.decimal128(10, 2)
            ),
            "qty": pa.array([1, None, 3], pa.int64()),
            "label": pa.array(["a", "b", None]),
        }
    )
    sink = io.BytesIO()
    pq.write_table(original, sink)
    table = table_name("pq")
    answer = created_upload(carnet_stack, studio, created, sink.getvalue(), format="parquet", table=table)
    assert [c["type"] for c in answer["columns"]] == ["date32[day]", "decimal128(10, 2)", "int64", "string"]
    data = read_data(carnet_stack, analyst, table)
    assert data.schema.types[:3] == [pa.date32(), pa.decimal128(10, 2), pa.int64()]
    assert data.to_pylist() == original.to_pylist()


# -- replacing, refusing -------------------------------------------------------------------------------------
def source_row(stack, name: str) -> DataSource:
    with session_scope(stack.settings.db_url) as session:
        row = session.scalar(select(DataSource).where(DataSource.org_id == 1, DataSource.name == name))
        session.expunge(row)
        return row


def test_reupload_replaces_the_table_and_bumps_the_source_version(carnet_stack, studio, analyst, created):
    table = table_name("again")
    created_upload(carnet_stack, studio, created, b"a,b\n1,x\n2,y\n", format="csv", table=table)
    assert source_row(carnet_stack, table).updated_at is None
    answer = created_upload(carnet_stack, studio, created, b"a,c\n5,z\n6,w\n7,v\n", format="csv", table=table)
    assert answer["source"]["version"] == 2 and answer["rows"] == 3
    row = source_row(carnet_stack, table)
    assert row.version == 2 and row.updated_at is not None
    assert read_data(carnet_stack, analyst, table).to_pydict() == {"a": [5, 6, 7], "c": ["z", "w", "v"]}


def zip_bomb_xlsx() -> bytes:
    out = io.BytesIO(workbook_bytes())
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/padding.xml", b"\0" * (40 * 1024 * 1024))
    return out.getvalue()


MALFORMED = [
    ("bad quoting", "csv", b'a,b\n1,2\n3,"x"y\n5,6\n', "Line 3"),
    ("unterminated quote", "csv", b'a,b\n1,2\n3,"open\n5,6\n', "Line 3"),
    ("ragged row", "csv", b"a;b;c\n1;2;3\n4;5\n", "Line 3"),
    ("wrong encoding", "csv", "a,b\n1,x\n2,é\n".encode("latin-1"), "Line 3"),
    ("binary named .csv", "csv", b"a,b\n" + bytes(range(256)) * 4, "Line 2"),
    ("empty file", "csv", b"", "empty"),
    ("blank lines only", "tsv", b"\n\n \n", "empty"),
    ("not a workbook", "xlsx", b"a,b\n1,2\n", "not an .xlsx"),
    ("zip bomb", "xlsx", None, "zip bomb"),
    ("not parquet", "parquet", b"PAR1 but not really", "Parquet"),
]


@pytest.mark.parametrize("case,fmt,body,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_refused_and_leave_the_table_intact(
    carnet_stack, studio, analyst, created, case, fmt, body, expected
):
    table = table_name("keep")
    created_upload(carnet_stack, studio, created, b"a,b\n1,kept\n", format="csv", table=table)
    params = {"encoding": "utf-8"} if case == "wrong encoding" else {}
    body = zip_bomb_xlsx() if body is None else body
    refused = upload(carnet_stack, studio, body, format=fmt, table=table, **params)
    error = assert_json_error(refused, 400)
    assert expected in error["message"], error
    if expected.startswith("Line"):
        assert error["line"] == int(expected.split()[1])
    assert read_data(carnet_stack, analyst, table).to_pydict() == {"a": [1], "b": ["kept"]}
    assert source_row(carnet_stack, table).version == 1
    uploads_dir = carnet_stack.settings.org_dir(1) / "uploads"
    assert not [p for p in uploads_dir.iterdir() if p.is_file()]  # no temporary file left behind


@pytest.mark.parametrize(
    "name", ['x"; DROP TABLE gapminder; --', "../../etc/passwd", "1abc", "a b", "Zoé", "t" * 64]
)
def test_hostile_table_names_are_refused(carnet_stack, studio, analyst, name):
    before = Warehouse(carnet_stack.settings.warehouse_path(1)).tables()
    response = upload(carnet_stack, studio, b"a\n1\n", format="csv", table=name)
    assert assert_json_error(response, 400)["field"] == "table"
    assert Warehouse(carnet_stack.settings.warehouse_path(1)).tables() == before
    assert read_data(carnet_stack, analyst, DEMO_SOURCE).num_rows > 0


def test_a_source_of_another_table_is_not_taken_over(carnet_stack, studio, analyst):
    before = read_data(carnet_stack, analyst, DEMO_SOURCE)
    table = table_name("takeover")
    response = upload(carnet_stack, studio, b"a\n1\n", format="csv", table=table, source=DEMO_SOURCE)
    assert assert_json_error(response, 409)["field"] == "source"
    assert table not in Warehouse(carnet_stack.settings.warehouse_path(1)).tables()
    assert source_row(carnet_stack, DEMO_SOURCE).options == {"table": DEMO_TABLE}
    assert read_data(carnet_stack, analyst, DEMO_SOURCE).equals(before)


def test_analysts_cannot_upload_and_another_org_never_sees_the_table(carnet_stack, studio, analyst, created):
    table = table_name("private")
    refused = upload(carnet_stack, analyst, b"a\n1\n", format="csv", table=table)
    assert_json_error(refused, 403)
    assert table not in Warehouse(carnet_stack.settings.warehouse_path(1)).tables()
    created_upload(carnet_stack, studio, created, b"secret\n42\n", format="csv", table=table)
    token = created.kernel_token(GLOBEX_VIEWER, "globex", TokenKind.viewer_kernel)
    response = requests.get(api_url(carnet_stack, f"sources/{table}/data"), headers=auth(token), timeout=30)
    assert assert_json_error(response, 404)["message"] == f"No source named {table!r}"
    globex = Warehouse(carnet_stack.settings.warehouse_path(created.org_id("globex")))
    assert table not in globex.tables()


# -- the size cap, on a tiny service with the same handler and a 1000-byte cap ---------------------------
@pytest.fixture
def capped_service(carnet_stack):
    settings = CarnetSettings(
        data_dir=str(carnet_stack.settings.data_dir),
        db_url=carnet_stack.settings.db_url,
        upload_max_bytes=1000,
    )
    app = web.Application(
        [("/" + API_PREFIX + "uploads", UploadHandler)], carnet_settings=settings, log=logging.getLogger("t")
    )
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
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
    yield f"http://127.0.0.1:{port}/{API_PREFIX}uploads"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_uploads_over_the_cap_are_a_413_while_streaming(carnet_stack, capped_service, created):
    token = created.kernel_token(STUDIO, "acme", TokenKind.studio_kernel)
    headers = {**auth(token), "Content-Type": "application/octet-stream"}
    big, big_table, small_table = b"a\n" + b"1\n" * 600, table_name("big"), table_name("small")  # 1202 bytes
    declared = requests.post(
        capped_service, params={"format": "csv", "table": big_table}, data=big, headers=headers, timeout=30
    )
    assert assert_json_error(declared, 413)["limit"] == 1000

    def chunks():  # no Content-Length: only counting the stream can catch it
        yield big[:600]
        yield big[600:]

    streamed = requests.post(
        capped_service,
        params={"format": "csv", "table": big_table},
        data=chunks(),
        headers=headers,
        timeout=30,
    )
    assert_json_error(streamed, 413)
    assert big_table not in Warehouse(carnet_stack.settings.warehouse_path(1)).tables()
    small = requests.post(
        capped_service,
        params={"format": "csv", "table": small_table},
        data=big[:900],
        headers=headers,
        timeout=30,
    )
    assert small.status_code == 201, small.text
    created.sources.add(small.json()["source"]["id"])
    assert not [p for p in (carnet_stack.settings.org_dir(1) / "uploads").iterdir() if p.is_file()]
