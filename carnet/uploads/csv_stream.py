"""The fast path of CSV/TSV parsing, for the common file: UTF-8 without a BOM, no NUL byte, and no quote
character outside its header line. Such a file cannot have a quoting error, so the strict line-by-line
check of carnet/uploads/csv_files.py (Python's ``csv``, ~3 s per million rows) and the UTF-8 copy are
skipped; pyarrow reads it, refusing ragged rows itself.

Types come from the first block (~2 MB, as pyarrow's streaming reader does); pyarrow's whole-file reader
would widen a type when later rows need it, so a later block that does not fit the first one's types, or
any other surprise, means the strict path must read the file: before anything is returned, None; part way
through a stream, ``StreamAbandoned`` (the load engine undoes the load, the caller loads again from the
strict path, see ``carnet.uploads.load_file``).

With ``stream`` the rest of the file is cut into chunks at line ends (a line end is always a record's end:
there is no quote) and parsed by ``PARSE_WORKERS`` threads while the consumer takes the batches in order, so
parsing runs in parallel, alongside the warehouse's ingest, and memory holds only a few chunks whatever the
file's size.

The file may still be arriving (a GrowingFile, carnet/uploads/growing.py: a load follows its request body):
nothing reads the whole file before parsing starts, so the checks that make the fast path safe (no NUL byte,
no quote, valid UTF-8) are made on each chunk just before it is parsed, by the parsing thread.
"""

from __future__ import annotations

import codecs
import csv
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from carnet.loads.types import AbandonableStream, StreamAbandoned
from carnet.uploads.csv_files import (
    HEADER_SAMPLE_ROWS,
    SAMPLE_BYTES,
    CsvOptions,
    sniff_decimal,
    sniff_delimiter,
    sniff_header,
)
from carnet.uploads.growing import BodyFailed, BodyTooSlow, GrowingFile

# The first block fixes the types (~20,000 rows of a typical file), as pyarrow's streaming reader does.
BLOCK_BYTES = 2 * 1024 * 1024
# The rest is parsed in chunks of this size (plus the end of their last line), PARSE_WORKERS at a time: at
# most PARSE_WORKERS + 1 chunks wait in memory. Small chunks also keep the warehouse's peak down: DuckDB
# holds on to the Arrow batches it ingests for a while (10M rows: 16 MB chunks peaked at 1.2 GB, 2 MB
# chunks at 535 MB, the earlier spooled stream at 555 MB).
CHUNK_BYTES_PARALLEL = 2 * 1024 * 1024
PARSE_WORKERS = 2


def _open(source: Path | GrowingFile):
    """The file for reading: a growing one's reader waits for the bytes it is asked for."""
    return source.open() if isinstance(source, GrowingFile) else open(source, "rb")  # noqa: SIM115


class NotPlain(pa.ArrowInvalid):
    """A chunk the fast path cannot read safely (a quote, a NUL byte, invalid UTF-8): the strict path must.
    An ArrowInvalid so that it takes the same way out as any other parse surprise."""


def check_plain(chunk: bytes, quote: bytes) -> None:
    """Chunks are cut at line feeds, which never occur inside a UTF-8 sequence: each decodes on its own."""
    if b"\x00" in chunk or quote in chunk:
        raise NotPlain("a quote or NUL byte after the header")
    if not chunk.isascii():
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise NotPlain("not valid UTF-8") from None


def _header_span(source: Path | GrowingFile, skip_rows: int) -> tuple[int, int, bytes]:
    """Byte offsets of the first line after ``skip_rows`` lines, and that line."""
    with _open(source) as raw:
        for _ in range(skip_rows):
            if not raw.readline():
                break
        start = raw.tell()
        line = raw.readline()
        return start, raw.tell(), line


def plain_header(line: bytes, quote: str) -> bool:
    """The header line: valid UTF-8, no NUL, its quotes closed on the line, not ended by a bare CR."""
    if b"\r" in line.rstrip(b"\r\n") or b"\x00" in line:
        return False  # lines end with a bare CR: chunks are cut at LF, so the strict path reads it
    try:
        header = line.decode("utf-8")
        next(csv.reader([header], quotechar=quote, strict=True), None)  # its quotes must close on its line
    except (UnicodeDecodeError, csv.Error):
        return False
    return True


def _sample_lines(source: Path | GrowingFile, skip_rows: int) -> list[str] | None:
    """The lines the settings are sniffed from (None: not UTF-8)."""
    with _open(source) as raw:
        for _ in range(skip_rows):
            if not raw.readline():
                break
        data = raw.read(SAMPLE_BYTES)
    try:
        # Not final: the sample may end inside a character (the last line is dropped below anyway).
        text = codecs.getincrementaldecoder("utf-8")(errors="strict").decode(data, final=False)
    except UnicodeDecodeError:
        return None
    lines = text.splitlines(keepends=True)
    return lines[:-1] if len(data) == SAMPLE_BYTES and len(lines) > 1 else lines  # the last may be cut


def read_csv_fast(
    source: Path | GrowingFile, options: CsvOptions, default_delimiter: str | None, stream: bool = False
):
    """(Arrow table, or with ``stream`` an AbandonableStream of batches; the file's header texts; the
    settings used), or None when the file needs the slow path. ``source`` may be a file still arriving
    (only with ``stream``); reading it may then raise BodyTooSlow or BodyFailed."""
    if options.encoding and codecs.lookup(options.encoding).name != "utf-8":
        return None
    with _open(source) as raw:
        if raw.read(3) == codecs.BOM_UTF8:
            return None
    header_start, header_end, header_line = _header_span(source, options.skip_rows)
    if not plain_header(header_line, options.quote):
        return None
    lines = _sample_lines(source, options.skip_rows)
    if lines is None or not "".join(lines).strip():
        return None  # the slow path says it is empty, or which bytes are not UTF-8
    delimiter = options.delimiter or default_delimiter or sniff_delimiter(lines, options.quote)
    rows = [row for row in csv.reader(lines, delimiter=delimiter, quotechar=options.quote) if row]
    rows = rows[:HEADER_SAMPLE_ROWS]
    width = len(rows[0])
    if any(len(row) != width for row in rows[:-1]):  # the last sampled line may be cut
        return None
    header = sniff_header(rows) if options.header is None else options.header
    decimal = options.decimal or sniff_decimal(rows[1:] if header else rows, delimiter)
    names = list(rows[0]) if header else [f"column_{i + 1}" for i in range(width)]
    parser = _ChunkParser(width, delimiter, options.quote, decimal, options.null_values)
    with _open(source) as raw:
        start = _data_start(raw, options.skip_rows, header)
        raw.seek(0)
        before = raw.read(start)
        first_chunk = _read_chunk(raw, BLOCK_BYTES)
        after_first = raw.tell()
    try:
        # The lines before the data (skipped rows, blank lines) may hold no quote either, header aside.
        check_plain(before[:header_start] + before[header_end:], parser.quote)
        first = parser.parse(first_chunk)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None  # ragged rows, a quote...: the slow path says which
    # A column with no value in the first block has Arrow's null type, which the warehouse cannot store:
    # text, as the slow path makes it (a later value in it is a type change: slow path).
    schema = pa.schema(
        [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in first.schema]
    )
    if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in schema):
        return None
    if first.num_rows == 0:
        return None  # a header-only file: the slow path has the message for it
    first = first.cast(schema)
    parser.column_types = schema
    try:
        data = (
            _stream(source, after_first, first, parser)
            if stream
            else _collect(source, after_first, first, parser)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None  # a type change after the first block...: the slow path says which
    used = {
        "encoding": "utf-8",
        "delimiter": delimiter,
        "header": header,
        "skip_rows": options.skip_rows,
        "decimal": decimal,
        "quote": options.quote,
    }
    return data, names, used


def _data_start(raw, skip_rows: int, header: bool) -> int:
    """Offset of the first data line: after ``skip_rows`` lines, the blank lines the sniffer ignores too,
    and the header line when there is one."""
    for _ in range(skip_rows):
        if not raw.readline():
            return raw.tell()
    while True:
        position = raw.tell()
        line = raw.readline()
        if not line:
            return position
        if line.strip(b"\r\n"):
            return raw.tell() if header else position


def _read_chunk(raw, size: int) -> bytes:
    """About ``size`` bytes ending at a line end (the rest of the cut line is read too)."""
    chunk = raw.read(size)
    return chunk + raw.readline() if chunk and not chunk.endswith(b"\n") else chunk


class _ChunkParser:
    """Parses one chunk of whole lines (no header) with the file's settings; once ``column_types`` is set,
    a value that does not fit its column's type raises ArrowInvalid."""

    def __init__(self, width: int, delimiter: str, quote: str, decimal: str, null_values):
        self.names = [f"c{i}" for i in range(width)]
        self.quote = quote.encode()
        self.parse_options = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote, double_quote=True)
        self.decimal = decimal
        self.null_values = null_values
        self.column_types: pa.Schema | None = None

    def parse(self, chunk: bytes) -> pa.Table:
        check_plain(chunk, self.quote)
        convert = pacsv.ConvertOptions(
            decimal_point=self.decimal, strings_can_be_null=True, column_types=self.column_types
        )
        if self.null_values is not None:
            convert.null_values = self.null_values
        table = pacsv.read_csv(
            pa.BufferReader(chunk),
            # One chunk per thread: the parallelism is across chunks (PARSE_WORKERS).
            read_options=pacsv.ReadOptions(
                column_names=self.names, use_threads=False, block_size=max(len(chunk), 1 << 20)
            ),
            parse_options=self.parse_options,
            convert_options=convert,
        )
        return table


def _chunks(source: Path | GrowingFile, offset: int):
    with _open(source) as raw:
        raw.seek(offset)
        while chunk := _read_chunk(raw, CHUNK_BYTES_PARALLEL):
            yield chunk


def _collect(source: Path, offset: int, first: pa.Table, parser: _ChunkParser) -> pa.Table:
    tables = [first] + [parser.parse(chunk) for chunk in _chunks(source, offset)]
    return pa.concat_tables([table.cast(first.schema) for table in tables])


def _stream(
    source: Path | GrowingFile, offset: int, first: pa.Table, parser: _ChunkParser
) -> AbandonableStream:
    stream = AbandonableStream(None)

    def batches():
        yield from first.to_batches()
        pool = ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="carnet-csv")
        pending: deque = deque()
        try:
            for chunk in _chunks(source, offset):
                pending.append(pool.submit(parser.parse, chunk))
                if len(pending) > PARSE_WORKERS:
                    yield from _parsed(pending.popleft())
            while pending:
                yield from _parsed(pending.popleft())
        except (BodyTooSlow, BodyFailed) as error:
            stream.give_up()  # the load is undone; it is made again once the whole body is here
            raise StreamAbandoned(f"stopped following the upload: {error}") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _parsed(future):
        try:
            table = future.result()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            stream.give_up()
            raise StreamAbandoned(f"a later part of the file does not fit its first block: {error}") from None
        return table.cast(first.schema).to_batches()

    stream.reader = pa.RecordBatchReader.from_batches(first.schema, batches())
    return stream
