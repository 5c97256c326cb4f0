"""The fast CSV path (carnet/uploads/csv_stream.py) gives exactly what the strict slow path gives, or steps
aside: the same table (names, types, values), the same settings, the same error message and fields."""

from __future__ import annotations

import pyarrow as pa
import pytest

import carnet.uploads.csv_stream as csv_stream
from carnet.errors import CarnetError
from carnet.loads.types import AbandonableStream, StreamAbandoned
from carnet.uploads import UploadOptions, parse_upload

LONG = 700_000  # rows of 4+ bytes: past pyarrow's first block (2 MB), where streaming fixes the types

CASES = [
    ("bad quoting", "csv", b'a,b\n1,2\n3,"x"y\n5,6\n'),
    ("unterminated quote", "csv", b'a,b\n1,2\n3,"open\n5,6\n'),
    ("unterminated quote on the last line", "csv", b'a,b\n1,2\n3,"open\n'),
    ("ragged row", "csv", b"a;b;c\n1;2;3\n4;5\n"),
    ("ragged row after the first block", "csv", b"a;b;c\n" + b"1;2;3\n" * LONG + b"4;5\n"),
    ("binary data", "csv", b"a,b\n" + bytes(range(256)) * 4),
    ("a NUL byte", "csv", b"a,b\n1,\x002\n"),
    ("blank lines only", "tsv", b"\n\n \n"),
    ("header only", "csv", b"a,b\n"),
    ("quoted header", "csv", b'"a","b"\n1,x\n2,y\n'),
    ("quoted data", "csv", b'a,b\n1,"x,y"\n2,y\n'),
    ("int then float after the first block", "csv", b"a,b\n" + b"1,x\n" * LONG + b"1.5,y\n"),
    ("empty then text after the first block", "csv", b"a,b\n" + b"1,\n" * LONG + b"1,y\n"),
    ("a column with no value", "csv", b"a,b\n1,\n2,\n"),
    ("UTF-8 text", "csv", "a,b\n1,Zoé\n2,日本\n".encode()),
    ("UTF-8 split across 1 MiB chunks", "csv", b"a,b\n" + "1,é\n".encode() * 400_000),
    ("invalid UTF-8 after the first chunk", "csv", b"a,b\n" + b"1,x\n" * LONG + b"2,\xe9\n"),
    ("BOM", "csv", b"\xef\xbb\xbfa,b\n1,x\n"),
    ("semicolons and decimal commas", "csv", b"a;b\n1,5;x\n2,25;y\n"),
    ("no header", "csv", b"1,2\n3,4\n"),
    ("repeated header names", "csv", b"id,name,id\n1,x,2\n"),
    ("CRLF", "csv", b"a,b\r\n1,x\r\n2,y\r\n"),
    ("a blank line inside", "csv", b"a,b\n1,x\n\n2,y\n"),
    ("blank lines before the header", "csv", b"\n\na,b\n1,x\n2,y\n"),
    ("bare CR line ends", "csv", b"a,b\r1,x\r2,y\r"),
    ("no line end at the end", "csv", b"a,b\n1,x\n2,y"),
    ("tab separated", "tsv", b"a\tb\n1\tx\n"),
    ("typed columns", "csv", b"i,f,d,t,b\n1,0.5,2026-01-02,2026-01-02 03:04:05,true\n2,,2026-01-03,,false\n"),
]


def parsed(tmp_path, body: bytes, fmt: str, *, fast: bool, stream: bool) -> tuple:
    """What a caller ends up with, as ``load_file`` does it: a stream that gives up part way is replaced by
    the strict reader's table."""
    path = tmp_path / f"body-{fast}-{stream}"
    path.write_bytes(body)
    options = UploadOptions(format=fmt)
    try:
        result = parse_upload(path, options, 10**12, stream=stream, fast=fast)
        if isinstance(result.table, AbandonableStream):
            try:
                return "reader", *_contents(result.table.reader.read_all(), result)
            except StreamAbandoned:
                assert result.table.abandoned
                result = parse_upload(path, options, 10**12, fast=False)
                return "retried", *_contents(result.table, result)
    except CarnetError as error:
        return "refused", type(error), error.to_json()
    return "table", *_contents(result.table, result)


def _contents(data: pa.Table, result) -> tuple:
    return data.schema, data.to_pydict(), result.renamed, result.settings


@pytest.mark.parametrize("case,fmt,body", CASES, ids=[c[0] for c in CASES])
def test_the_fast_path_answers_like_the_strict_one(tmp_path, monkeypatch, case, fmt, body):
    slow = parsed(tmp_path, body, fmt, fast=False, stream=False)
    for stream in (False, True):
        fast = parsed(tmp_path, body, fmt, fast=True, stream=stream)
        if slow[0] == "refused":
            assert fast == slow
        else:
            assert fast[0] in ("table", "reader", "retried") and fast[1:] == slow[1:]


def test_a_plain_file_streams_and_a_quoted_one_does_not(tmp_path):
    plain = parsed(tmp_path, b"a,b\n1,x\n2,y\n", "csv", fast=True, stream=True)
    assert plain[0] == "reader" and plain[2] == {"a": [1, 2], "b": ["x", "y"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body-True-True"]  # nothing spooled beside it
    quoted = parsed(tmp_path, b'a,b\n1,"x"\n', "csv", fast=True, stream=True)
    assert quoted[0] == "table" and quoted[2] == {"a": [1], "b": ["x"]}


def test_a_type_change_after_the_first_block_gives_up_the_stream_for_the_strict_reader(tmp_path):
    body = b"a,b\n" + b"1,x\n" * LONG + b"y,x\n"
    result = parsed(tmp_path, body, "csv", fast=True, stream=True)
    assert result[0] == "retried" and result[1].field("a").type == pa.string()
    assert result[2]["a"][-1] == "y" and len(result[2]["a"]) == LONG + 1


def test_rows_keep_their_order_across_chunks_parsed_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_stream, "CHUNK_BYTES_PARALLEL", 64 * 1024)  # ~100 chunks, 2 parsers at a time
    rows = 900_000
    body = b"id,half\n" + b"".join(b"%d,%.1f\n" % (i, i / 2) for i in range(rows))
    result = parsed(tmp_path, body, "csv", fast=True, stream=True)
    assert result[0] == "reader"
    assert result[2]["id"] == list(range(rows)) and result[2]["half"][-1] == (rows - 1) / 2
    late = body + b"x,1.0\n"  # the last chunk's value does not fit: the strict reader takes the file
    retried = parsed(tmp_path, late, "csv", fast=True, stream=True)
    assert retried[0] == "retried" and retried[2]["id"][-1] == "x"


def test_a_load_whose_stream_gives_up_is_done_once_by_the_strict_reader(tmp_path, settings_env, monkeypatch):
    """Through the load engine: the abandoned attempt leaves no table change and no history row; the retry
    loads the file with the strict reader's (wider) types."""
    from carnet.db import session_scope, upgrade
    from carnet.db.models import Organization
    from carnet.loads import load_history, load_table
    from carnet.settings import CarnetSettings
    from carnet.uploads import load_file
    from carnet.warehouse import open_warehouse

    monkeypatch.setattr(csv_stream, "CHUNK_BYTES_PARALLEL", 64 * 1024)
    settings = CarnetSettings()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        session.add(Organization(id=1, slug="acme", name="Acme"))
    path = tmp_path / "late.csv"
    path.write_bytes(b"a,b\n" + b"1,x\n" * LONG + b"1.5,y\n")
    attempts = []

    def load(data):
        attempts.append(type(data).__name__)
        return load_table(settings, 1, "t", data, mode="replace", actor="test", origin="upload")

    result, renamed = load_file(path, UploadOptions(format="csv"), 10**12, load)
    assert attempts == ["AbandonableStream", "Table"] and renamed == {}
    assert result.rows_out == LONG + 1
    table = open_warehouse(settings, 1).read_arrow("t", LONG + 5)
    assert table.schema.field("a").type == pa.float64() and table.column("a")[-1].as_py() == 1.5
    assert [(h["status"], h["rows_out"]) for h in load_history(settings, 1, "t")] == [("succeeded", LONG + 1)]
