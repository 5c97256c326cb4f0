"""The fast path of CSV/TSV parsing, for the common file: UTF-8 without a BOM, no NUL byte, and no quote
character outside its header line. Such a file cannot have a quoting error, so the strict line-by-line
check of carnet/uploads/csv_files.py (Python's ``csv``, ~3 s per million rows) and the UTF-8 copy are
skipped; pyarrow reads it in blocks, refusing ragged rows itself.

With ``spool`` the parsed batches go to an Arrow IPC file there and come back as a RecordBatchReader read
from disk one batch at a time, so a load's memory does not grow with the file (a whole-file read would hold
every row at once). Streaming fixes each column's type from the first block; pyarrow's whole-file reader
widens a type when later rows need it. So the file is parsed once, to the spool, before anything reads it:
a later block that does not fit the first one's types, or any other surprise, returns None and the caller
takes the slow path (csv_files.read_csv), which either names the problem or reads the file whole.
"""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from carnet.uploads.csv_files import (
    CHUNK_BYTES,
    HEADER_SAMPLE_ROWS,
    SAMPLE_BYTES,
    CsvOptions,
    sniff_decimal,
    sniff_delimiter,
    sniff_header,
)

# pyarrow's block: the first one fixes the types (~20,000 rows of a typical file); its reader reads up to 32
# blocks ahead of the consumer, so this also caps that buffer (64 MB; with 8 MB blocks a 1 GB file peaked
# 250 MB higher).
BLOCK_BYTES = 2 * 1024 * 1024


def _header_span(path: Path, skip_rows: int) -> tuple[int, int, bytes]:
    """Byte offsets of the first line after ``skip_rows`` lines, and that line."""
    with open(path, "rb") as raw:
        for _ in range(skip_rows):
            if not raw.readline():
                break
        start = raw.tell()
        line = raw.readline()
        return start, raw.tell(), line


def plain_utf8(path: Path, quote: str, skip_rows: int) -> bool:
    """Valid UTF-8 with no NUL byte and no quote character outside the header line (one C-speed scan)."""
    start, end, line = _header_span(path, skip_rows)
    mark = quote.encode()
    try:
        header = line.decode("utf-8")
        next(csv.reader([header], quotechar=quote, strict=True), None)  # its quotes must close on its line
    except (UnicodeDecodeError, csv.Error):
        return False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with open(path, "rb") as raw:
        while chunk := raw.read(CHUNK_BYTES):
            if b"\x00" in chunk:
                return False
            # Quotes are allowed only in [start, end); a chunk straddling it is checked around it.
            outside = chunk
            if offset < end and offset + len(chunk) > start:
                outside = chunk[: max(start - offset, 0)] + chunk[max(end - offset, 0) :]
            if mark in outside:
                return False
            # An ASCII chunk needs no decoding unless a multi-byte sequence is pending from the last one.
            if not chunk.isascii() or decoder.getstate()[0]:
                try:
                    decoder.decode(chunk, final=False)
                except UnicodeDecodeError:
                    return False
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _sample_lines(path: Path, skip_rows: int) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        for _ in range(skip_rows):
            if not handle.readline():
                break
        text = handle.read(SAMPLE_BYTES)
    lines = text.splitlines(keepends=True)
    return lines[:-1] if len(text) == SAMPLE_BYTES and len(lines) > 1 else lines  # the last may be cut


def read_csv_fast(path: Path, options: CsvOptions, default_delimiter: str | None, spool: Path | None):
    """(Arrow table, or a RecordBatchReader when ``spool`` is given; the file's header texts; the settings
    used), or None when the file needs the slow path."""
    if options.encoding and codecs.lookup(options.encoding).name != "utf-8":
        return None
    with open(path, "rb") as raw:
        if raw.read(3) == codecs.BOM_UTF8:
            return None
    if not plain_utf8(path, options.quote, options.skip_rows):
        return None
    lines = _sample_lines(path, options.skip_rows)
    if not "".join(lines).strip():
        return None  # the slow path says it is empty
    delimiter = options.delimiter or default_delimiter or sniff_delimiter(lines, options.quote)
    rows = [row for row in csv.reader(lines, delimiter=delimiter, quotechar=options.quote) if row]
    rows = rows[:HEADER_SAMPLE_ROWS]
    width = len(rows[0])
    if any(len(row) != width for row in rows[:-1]):  # the last sampled line may be cut
        return None
    header = sniff_header(rows) if options.header is None else options.header
    decimal = options.decimal or sniff_decimal(rows[1:] if header else rows, delimiter)
    names = list(rows[0]) if header else [f"column_{i + 1}" for i in range(width)]
    convert = pacsv.ConvertOptions(decimal_point=decimal, strings_can_be_null=True)
    if options.null_values is not None:
        convert.null_values = options.null_values
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                skip_rows=options.skip_rows + (1 if header else 0),
                column_names=[f"c{i}" for i in range(width)],
                block_size=BLOCK_BYTES,
            ),
            # No quote outside the header line: a value cannot hold a newline, which lets pyarrow split
            # blocks without scanning for quotes.
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=options.quote, double_quote=True
            ),
            convert_options=convert,
        )
        # A column with no value in the first block has Arrow's null type, which the warehouse cannot store:
        # text, as the slow path makes it (a later value in it is a type change: slow path).
        schema = pa.schema(
            [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in reader.schema]
        )
        if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in schema):
            return None
        data = _spool(reader, schema, spool) if spool else _collect(reader, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, _NoRows):
        if spool:
            spool.unlink(missing_ok=True)
        return None  # ragged rows, a type change after the first block...: the slow path says which
    used = {
        "encoding": "utf-8",
        "delimiter": delimiter,
        "header": header,
        "skip_rows": options.skip_rows,
        "decimal": decimal,
        "quote": options.quote,
    }
    return data, names, used


class _NoRows(Exception):
    """A header-only file: the slow path has the message for it."""


def _collect(reader, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_batches([batch.cast(schema) for batch in reader], schema=schema)
    if table.num_rows == 0:
        raise _NoRows
    return table


def _spool(reader, schema: pa.Schema, spool: Path) -> pa.RecordBatchReader:
    rows = 0
    with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in reader:
            writer.write_batch(batch if batch.schema == schema else batch.cast(schema))
            rows += batch.num_rows
    if rows == 0:
        spool.unlink(missing_ok=True)
        raise _NoRows
    # Read back batch by batch from a plain file (a memory map would count the whole file in the RSS).
    return pa.ipc.open_stream(pa.OSFile(str(spool), "rb"))
