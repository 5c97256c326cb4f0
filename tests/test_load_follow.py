"""A CSV load that follows its body while it arrives (carnet/uploads/growing.py, ``follow_load_file``, the
load route): it loads the same rows as a load of the whole file, it starts before the body has ended, and
when it gives up (slow body, body cut off, a file for the strict reader) it leaves no trace: the previous
table and its history are untouched, and the whole file is then loaded the usual way."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
import requests

from carnet.uploads import FOLLOW_MIN_BYTES, UploadOptions, follow_load_file, load_file
from carnet.uploads.growing import BodyFailed, BodyTooSlow, GrowingFile
from tests.api_support import api_url, auth
from tests.test_load_edges import history
from tests.test_warehouse_api import new_table

PIECE = 256 * 1024


def csv_body(rows: int, tail: bytes = b"") -> bytes:
    return b"id,name,amount\n" + b"".join(b"%d,n%d,%d.5\n" % (i, i % 97, i) for i in range(rows)) + tail


BIG_ROWS = 600_000  # ~12 MB: past FOLLOW_MIN_BYTES


@pytest.fixture
def warehouse(tmp_path, settings_env):
    from carnet.db import session_scope, upgrade
    from carnet.db.models import Organization
    from carnet.settings import CarnetSettings

    settings = CarnetSettings()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        session.add(Organization(id=1, slug="acme", name="Acme"))
    return settings


def loader(settings, calls: list):
    from carnet.loads import load_table

    def load(data):
        calls.append(type(data).__name__)
        return load_table(settings, 1, "t", data, mode="replace", actor="test", origin="api")

    return load


class Sender(threading.Thread):
    """Writes ``body`` into a GrowingFile piece by piece, as the service's IO loop does; ``pause_at``: stop
    after that many bytes until ``resume`` is set (``fail``: then cut the body off instead)."""

    def __init__(self, growing: GrowingFile, body: bytes, pause_at=None, fail=False):
        super().__init__(daemon=True)
        self.growing, self.body, self.pause_at, self.fail = growing, body, pause_at, fail
        self.resume = threading.Event()

    def run(self):
        with open(self.growing.path, "wb") as handle:
            for start in range(0, len(self.body), PIECE):
                if self.pause_at is not None and start >= self.pause_at:
                    self.resume.wait(60)
                    if self.fail:
                        self.growing.fail()
                        return
                    self.pause_at = None
                piece = self.body[start : start + PIECE]
                handle.write(piece)
                handle.flush()
                self.growing.wrote(len(piece))
        self.growing.complete()


def table_rows(settings) -> pa.Table:
    from carnet.warehouse import open_warehouse

    return open_warehouse(settings, 1).read_arrow("t", 10_000_000)


def load_history(settings) -> list:
    from carnet.loads import load_history as read_history

    return [(h["status"], h["rows_out"]) for h in read_history(settings, 1, "t")]


def test_a_body_is_loaded_while_it_arrives_with_the_rows_of_the_whole_file(tmp_path, warehouse):
    body = csv_body(BIG_ROWS)
    assert len(body) > FOLLOW_MIN_BYTES + 2 * PIECE
    growing = GrowingFile(tmp_path / "body", wait_budget=30)
    calls = []
    sender = Sender(growing, body, pause_at=len(body) - 2 * PIECE)
    sender.start()
    started = threading.Event()
    result = {}

    def follow():
        result["value"] = follow_load_file(growing, UploadOptions(format="csv"), load)

    def load(data):
        started.set()
        return loader(warehouse, calls)(data)

    worker = threading.Thread(target=follow)
    worker.start()
    # The load began while the last pieces had not been written yet.
    assert started.wait(30) and not growing.is_complete
    sender.resume.set()
    worker.join(60)
    loaded, renamed = result["value"]
    assert calls == ["AbandonableStream"] and renamed == {} and loaded.rows_out == BIG_ROWS
    table = table_rows(warehouse).sort_by("id")
    assert table.column("id").to_pylist() == list(range(BIG_ROWS))
    assert table.column("amount")[-1].as_py() == BIG_ROWS - 1 + 0.5
    assert table.column("name")[5].as_py() == "n5"
    assert load_history(warehouse) == [("succeeded", BIG_ROWS)]


def previous_table(settings) -> None:
    loader(settings, [])(pa.table({"id": [1, 2], "name": ["old", "rows"], "amount": [0.5, 1.5]}))


@pytest.mark.parametrize("cut", [False, True], ids=["slow-body", "body-cut-off"])
def test_a_body_that_stalls_or_is_cut_off_is_given_up_leaving_nothing(tmp_path, warehouse, cut):
    previous_table(warehouse)
    body = csv_body(BIG_ROWS)
    growing = GrowingFile(tmp_path / "body", wait_budget=0.5)
    sender = Sender(growing, body, pause_at=FOLLOW_MIN_BYTES + 4 * PIECE, fail=cut)
    sender.start()
    calls = []
    if cut:
        threading.Timer(0.2, sender.resume.set).start()  # cut off before the waiting budget is spent
    started = time.monotonic()
    assert follow_load_file(growing, UploadOptions(format="csv"), loader(warehouse, calls)) is None
    assert time.monotonic() - started < 20
    assert calls == ["AbandonableStream"]  # it had started, and undid itself
    assert table_rows(warehouse).column("name").to_pylist() == ["old", "rows"]
    assert load_history(warehouse) == [("succeeded", 2)]  # the abandoned attempt left no row
    if not cut:
        # The body arrives at last: loaded whole, the usual way, once.
        sender.resume.set()
        sender.join(30)
        loaded, _ = load_file(growing.path, UploadOptions(format="csv"), 10**12, loader(warehouse, calls))
        assert loaded.rows_out == BIG_ROWS and load_history(warehouse)[0] == ("succeeded", BIG_ROWS)


def test_a_file_for_the_strict_reader_is_not_followed_and_then_loads_whole(tmp_path, warehouse):
    previous_table(warehouse)
    body = csv_body(BIG_ROWS, tail=b'7,"quoted, name",1.5\n')  # a quote far past the first block
    growing = GrowingFile(tmp_path / "body", wait_budget=30)
    sender = Sender(growing, body)
    sender.start()
    calls = []
    assert follow_load_file(growing, UploadOptions(format="csv"), loader(warehouse, calls)) is None
    assert calls == ["AbandonableStream"] and load_history(warehouse) == [("succeeded", 2)]
    sender.join(30)
    loaded, _ = load_file(growing.path, UploadOptions(format="csv"), 10**12, loader(warehouse, calls))
    assert loaded.rows_out == BIG_ROWS + 1
    assert "quoted, name" in table_rows(warehouse).column("name").to_pylist()


def test_a_small_body_is_left_to_the_usual_load(tmp_path, warehouse):
    growing = GrowingFile(tmp_path / "body", wait_budget=30)
    Sender(growing, csv_body(1000)).start()
    calls = []
    assert follow_load_file(growing, UploadOptions(format="csv"), loader(warehouse, calls)) is None
    assert calls == []


def test_the_growing_file_reader_waits_for_bytes_and_spends_its_budget_once(tmp_path):
    growing = GrowingFile(tmp_path / "body", wait_budget=0.3)
    (tmp_path / "body").write_bytes(b"ab\ncd")
    growing.wrote(5)
    with growing.open() as reader:
        assert reader.readline() == b"ab\n"
        started = time.monotonic()
        with pytest.raises(BodyTooSlow):
            reader.readline()  # "cd" has no line end yet and nothing more comes
        assert 0.25 < time.monotonic() - started < 5
        with pytest.raises(BodyTooSlow):
            reader.read(10)  # the budget is spent: no more waiting at all
    done = GrowingFile(tmp_path / "body")
    done.wrote(5)
    done.complete()
    with done.open() as reader:
        assert reader.read(2) == b"ab" and reader.readline() == b"\n" and reader.readline() == b"cd"
        assert reader.readline() == b"" and reader.read(4) == b""
    failed = GrowingFile(tmp_path / "body")
    failed.fail()
    with failed.open() as reader, pytest.raises(BodyFailed):
        reader.read(1)


# -- through the load route on the real stack ------------------------------------------------------------
def pieces(body: bytes, pause_at: int, pause):
    for start in range(0, len(body), 1024 * 1024):
        if pause is not None and start >= pause_at:
            pause()
            pause = None
        yield body[start : start + 1024 * 1024]


def post_csv(stack, token, table, chunks):
    return requests.post(
        api_url(stack, f"warehouse/tables/{table}/load"),
        params={"format": "csv"},
        data=chunks,  # a generator: sent chunked, as it is produced
        headers={**auth(token), "Content-Type": "text/csv"},
        timeout=120,
    )


def test_the_load_route_loads_while_the_body_arrives(carnet_stack, hub_token):
    stack, token, table = carnet_stack, hub_token("studio@acme.example"), new_table()
    body = csv_body(BIG_ROWS)
    seen = []

    def look_at_the_history():
        # Mid-body: the load is already running (its history row exists), the body not yet complete.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not seen:
            seen.extend(h["status"] for h in history_or_none(stack, token, table))
            time.sleep(0.05)

    response = post_csv(stack, token, table, pieces(body, len(body) - 2 * 1024 * 1024, look_at_the_history))
    assert response.status_code == 200, response.text
    assert response.json()["rows_out"] == BIG_ROWS
    assert seen == ["running"]
    assert [(h["status"], h["rows_out"]) for h in history(stack, token, table)] == [("succeeded", BIG_ROWS)]


def history_or_none(stack, token, table) -> list:
    response = requests.get(
        api_url(stack, f"warehouse/tables/{table}/loads"), headers=auth(token), timeout=30
    )
    return response.json()["loads"] if response.status_code == 200 else []


def test_a_slow_body_through_the_load_route_is_loaded_once_it_has_arrived(carnet_stack, hub_token):
    stack, token, table = carnet_stack, hub_token("studio@acme.example"), new_table()
    body = csv_body(BIG_ROWS)
    during = []

    def stall():
        # Past the follower's waiting budget (2 s, or as long as it worked on the first 10 MB, well under
        # a second): it gives up and undoes its load.
        time.sleep(4)
        during.extend(h["status"] for h in history_or_none(stack, token, table))

    response = post_csv(stack, token, table, pieces(body, FOLLOW_MIN_BYTES + 2 * 1024 * 1024, stall))
    assert response.status_code == 200, response.text
    assert response.json()["rows_out"] == BIG_ROWS
    assert during == []  # the abandoned attempt's history row was discarded, nothing was created
    assert [(h["status"], h["rows_out"]) for h in history(stack, token, table)] == [("succeeded", BIG_ROWS)]
