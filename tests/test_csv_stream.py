"""The fast CSV path (carnet/uploads/csv_stream.py) gives exactly what the strict slow path gives, or steps
aside: the same table (names, types, values), the same settings, the same error message and fields."""

from __future__ import annotations

import pyarrow as pa
import pytest

import carnet.uploads as uploads
from carnet.errors import CarnetError
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
    ("tab separated", "tsv", b"a\tb\n1\tx\n"),
    ("typed columns", "csv", b"i,f,d,t,b\n1,0.5,2026-01-02,2026-01-02 03:04:05,true\n2,,2026-01-03,,false\n"),
]


def parsed(tmp_path, body: bytes, fmt: str, *, fast: bool, stream: bool, monkeypatch) -> tuple:
    path = tmp_path / f"body-{fast}-{stream}"
    path.write_bytes(body)
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(uploads, "read_csv_fast", lambda *args: None)
        try:
            result = parse_upload(path, UploadOptions(format=fmt), 10**12, stream=stream)
        except CarnetError as error:
            return "refused", type(error), error.to_json()
    table = result.table
    kind = "reader" if isinstance(table, pa.RecordBatchReader) else "table"
    data = table.read_all() if kind == "reader" else table
    return kind, data.schema, data.to_pydict(), result.renamed, result.settings


@pytest.mark.parametrize("case,fmt,body", CASES, ids=[c[0] for c in CASES])
def test_the_fast_path_answers_like_the_strict_one(tmp_path, monkeypatch, case, fmt, body):
    slow = parsed(tmp_path, body, fmt, fast=False, stream=False, monkeypatch=monkeypatch)
    for stream in (False, True):
        fast = parsed(tmp_path, body, fmt, fast=True, stream=stream, monkeypatch=monkeypatch)
        if slow[0] == "refused":
            assert fast == slow
        else:
            assert fast[0] in ("table", "reader") and fast[1:] == slow[1:]


def test_a_plain_file_streams_from_a_spool_and_a_quoted_one_does_not(tmp_path, monkeypatch):
    plain = parsed(tmp_path, b"a,b\n1,x\n2,y\n", "csv", fast=True, stream=True, monkeypatch=monkeypatch)
    assert plain[0] == "reader" and plain[2] == {"a": [1, 2], "b": ["x", "y"]}
    assert (tmp_path / "body-True-True.arrow").is_file()  # removed with the body by the caller's cleanup
    quoted = parsed(tmp_path, b'a,b\n1,"x"\n', "csv", fast=True, stream=True, monkeypatch=monkeypatch)
    assert quoted[0] == "table" and quoted[2] == {"a": [1], "b": ["x"]}


def test_a_type_change_after_the_first_block_leaves_no_spool_behind(tmp_path, monkeypatch):
    body = b"a,b\n" + b"1,x\n" * LONG + b"y,x\n"
    result = parsed(tmp_path, body, "csv", fast=True, stream=True, monkeypatch=monkeypatch)
    assert result[0] == "table" and result[1].field("a").type == pa.string()
    assert not (tmp_path / "body-True-True.arrow").exists()
