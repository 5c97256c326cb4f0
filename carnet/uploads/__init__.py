"""Uploaded files (CSV/TSV, Excel .xlsx, Parquet) into an organization's warehouse.

``parse_upload`` turns a file already on disk into an Arrow table with warehouse-safe column names (and the
mapping to the file's own names); ``store_upload`` replaces the warehouse table with it through the load
engine (carnet.loads: one transaction, a load history row), so a failure anywhere leaves the previous table
as it was and creates nothing. The REST side
(streaming the body to disk under a size cap, the source row, the audit) is carnet/service/api/uploads.py.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import math
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from carnet.errors import ValidationError
from carnet.loads import load_table
from carnet.loads.types import AbandonableStream, StreamAbandoned
from carnet.uploads.csv_files import CsvOptions, read_csv
from carnet.uploads.csv_stream import read_csv_fast
from carnet.uploads.growing import BodyFailed, BodyTooSlow, GrowingFile
from carnet.warehouse import check_identifier

log = logging.getLogger("carnet.loads")
FORMATS = ("csv", "tsv", "xlsx", "parquet")
PREVIEW_ROWS = 20
# An .xlsx is a zip of XML: refuse one that would unpack to more than this many times the upload cap, or
# whose members are compressed more than this ratio (zip bombs), before any XML parser sees it.
XLSX_MAX_EXPANSION = 10
XLSX_MAX_RATIO = 200
# A CSV body is loaded while it arrives (follow_load_file) only past this size: below it the overlap gains
# nothing, and the usual path gives the empty/header-only/malformed file messages.
FOLLOW_MIN_BYTES = 8 * 1024 * 1024
_NOT_IDENTIFIER = re.compile(r"[^a-z0-9_]+")


@dataclass
class UploadOptions:
    format: str
    csv: CsvOptions = field(default_factory=CsvOptions)
    sheet: str | None = None  # xlsx: a sheet's name, or its position (1 = first)


@dataclass
class ParsedUpload:
    table: pa.Table | pa.RecordBatchReader  # columns renamed to warehouse identifiers; a reader: stream=True
    renamed: dict  # warehouse column -> the file's own name, for every column whose name changed
    settings: dict  # what was sniffed or given (encoding, delimiter, sheet...)
    sheets: list[str] | None = None


def _flag(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValidationError(f"{name} must be true or false", field=name)


def options_from_query(arg, args) -> UploadOptions:
    """Parser options from query arguments: ``arg(name)`` -> one value or None, ``args(name)`` -> all."""
    fmt = (arg("format") or "").lower()
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}", field="format")
    delimiter = arg("delimiter")
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1 or delimiter in '\r\n"':
            raise ValidationError("delimiter must be one character (or 'tab')", field="delimiter")
    quote = arg("quote") or '"'
    if len(quote) != 1 or quote in "\r\n" or quote == delimiter:
        raise ValidationError("quote must be one character, not the delimiter", field="quote")
    decimal_mark = arg("decimal")
    if decimal_mark not in (None, ".", ","):
        raise ValidationError("decimal must be '.' or ','", field="decimal")
    skip = arg("skip_rows") or "0"
    if not skip.isdigit() or int(skip) > 1_000_000:
        raise ValidationError("skip_rows must be a whole number up to 1000000", field="skip_rows")
    nulls = args("null")
    return UploadOptions(
        format=fmt,
        csv=CsvOptions(
            delimiter=delimiter,
            encoding=arg("encoding") or None,
            header=_flag(arg("header"), "header"),
            skip_rows=int(skip),
            decimal=decimal_mark,
            null_values=nulls if nulls else None,
            quote=quote,
        ),
        sheet=arg("sheet") or None,
    )


def normalize_columns(names: list) -> tuple[list[str], dict]:
    """Warehouse identifiers for a file's column names: accents dropped, other characters turned into
    ``_``, lower case (DuckDB names ignore case, so ``Id`` and ``ID`` would collide), a leading digit
    prefixed, empty names numbered, duplicates suffixed ``_2``, ``_3``..."""
    result, renamed, seen = [], {}, set()
    for position, original in enumerate(names, start=1):
        text = "" if original is None else str(original)
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        name = _NOT_IDENTIFIER.sub("_", ascii_text.lower()).strip("_")[:56]
        if not name:
            name = f"column_{position}"
        elif not name[0].isalpha():
            name = f"c_{name}"
        candidate, suffix = name, 2
        while candidate in seen:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        seen.add(candidate)
        check_identifier(candidate, "column name")
        result.append(candidate)
        if candidate != text:
            renamed[candidate] = text
    return result, renamed


# -- Excel -------------------------------------------------------------------------------------------------
def check_xlsx_archive(path: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        raise ValidationError("This is not an .xlsx workbook (not a zip archive)", field="file") from None
    unpacked = sum(m.file_size for m in members)
    packed = sum(m.compress_size for m in members) or 1
    if unpacked > XLSX_MAX_EXPANSION * max_bytes or unpacked / packed > XLSX_MAX_RATIO:
        raise ValidationError(
            f"This workbook unpacks to {unpacked} bytes ({unpacked // packed}x its size): refused as a "
            "possible zip bomb",
            field="file",
        )


def _column(values: list) -> pa.Array:
    """One Excel column: its own Arrow type when its cells agree, else text."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_null(array.type):
        array = array.cast(pa.string())
    if pa.types.is_time(array.type) or pa.types.is_duration(array.type):
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return array


def read_xlsx(path: Path, options: UploadOptions, max_bytes: int) -> tuple:
    check_xlsx_archive(path, max_bytes)
    from openpyxl import load_workbook

    # A file object, not the path: openpyxl refuses paths that do not end in .xlsx.
    with open(path, "rb") as handle:
        try:
            workbook = load_workbook(handle, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises many types for a damaged workbook
            reason = type(exc).__name__
            raise ValidationError(f"This .xlsx workbook cannot be read ({reason})", field="file") from None
        return _sheet_table(workbook, options)


def _sheet_table(workbook, options: UploadOptions) -> tuple:
    try:
        sheets = list(workbook.sheetnames)
        chosen = options.sheet
        if chosen is None:
            name = sheets[0]
        elif chosen in sheets:
            name = chosen
        elif chosen.isdigit() and 1 <= int(chosen) <= len(sheets):
            name = sheets[int(chosen) - 1]
        else:
            raise ValidationError(
                f"No sheet {chosen!r}: the workbook has {', '.join(map(repr, sheets))}", field="sheet"
            )
        rows = []
        try:
            for index, row in enumerate(workbook[name].iter_rows(values_only=True)):
                if index >= options.csv.skip_rows and any(cell is not None for cell in row):
                    rows.append(list(row))
        except Exception as exc:  # damaged sheet XML, broken shared strings...
            reason = type(exc).__name__
            raise ValidationError(f"Sheet {name!r} cannot be read ({reason})", field="file") from None
    finally:
        workbook.close()
    if not rows:
        raise ValidationError(f"Sheet {name!r} is empty: no rows to load", field="sheet")
    width = max(len(row) for row in rows)
    rows = [row + [None] * (width - len(row)) for row in rows]
    header = options.csv.header
    if header is None:
        header = all(isinstance(cell, str) and cell.strip() for cell in rows[0]) and len(rows) > 1
    names = rows[0] if header else [f"column_{i + 1}" for i in range(width)]
    data = rows[1:] if header else rows
    arrays = [_column([row[i] for row in data]) for i in range(width)]
    table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(width)])
    used = {"sheet": name, "header": bool(header), "skip_rows": options.csv.skip_rows}
    return table, names, used, sheets


# -- Parquet -----------------------------------------------------------------------------------------------
def read_parquet(path: Path) -> tuple:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"This is not a readable Parquet file: {exc}", field="file") from None
    if table.num_columns == 0:
        raise ValidationError("The Parquet file has no columns", field="file")
    return table, list(table.column_names), {}


# -- the whole step ----------------------------------------------------------------------------------------
def parse_upload(
    path: Path, options: UploadOptions, max_bytes: int, stream: bool = False, fast: bool = True
) -> ParsedUpload:
    """Parse the uploaded file at ``path`` (temporary files go beside it, named after it). ``stream``: a
    CSV/TSV that takes the fast path comes back as an AbandonableStream of batches parsed as they are read,
    so that a load never holds the whole file in memory (give it to ``load_file``, which retries)."""
    if path.stat().st_size == 0:
        raise ValidationError("The file is empty", field="file")
    sheets = None
    if options.format in ("csv", "tsv"):
        forced = "\t" if options.format == "tsv" else None
        quick = read_csv_fast(path, options.csv, forced, stream=stream) if fast else None
        table, names, used = quick or read_csv(path, path.parent, options.csv, forced)
    elif options.format == "xlsx":
        table, names, used, sheets = read_xlsx(path, options, max_bytes)
    else:
        table, names, used = read_parquet(path)
    # (A reader, from the fast CSV path, has rows: a header-only file takes the slow path.)
    if isinstance(table, pa.Table) and table.num_rows == 0 and options.format != "parquet":
        # A text file's types come from its values: with none, every column would be text and later
        # appends would quietly store numbers as text. Parquet has real types, so an empty one is a table.
        raise ValidationError(
            "The file has a header but no rows: nothing to load (an empty table with typed columns can be "
            "loaded from Parquet or Arrow)",
            field="file",
        )
    return _with_warehouse_names(table, names, used, sheets)


def _with_warehouse_names(table, names: list, used: dict, sheets=None) -> ParsedUpload:
    columns, renamed = normalize_columns(names)
    if isinstance(table, AbandonableStream):
        table = table.with_reader(_renamed_reader(table.reader, columns))
    elif isinstance(table, pa.RecordBatchReader):
        table = _renamed_reader(table, columns)
    else:
        table = table.rename_columns(columns)
    return ParsedUpload(table=table, renamed=renamed, settings=used, sheets=sheets)


def _renamed_reader(reader: pa.RecordBatchReader, names: list[str]) -> pa.RecordBatchReader:
    schema = pa.schema([field.with_name(name) for field, name in zip(reader.schema, names, strict=True)])
    batches = (pa.RecordBatch.from_arrays(batch.columns, schema=schema) for batch in reader)
    return pa.RecordBatchReader.from_batches(schema, batches)


def follow_load_file(body: GrowingFile, options: UploadOptions, load) -> tuple | None:
    """(``load(data)``'s result, the renamed columns) for a CSV/TSV body loaded WHILE IT ARRIVES, or None
    when it is not followed: it is small (``FOLLOW_MIN_BYTES``), needs the strict reader, arrives slowly
    (the load would hold the org's warehouse for a slow client) or never arrives whole. None leaves nothing
    behind (the load engine undoes an abandoned stream and keeps no history row): the caller loads the
    file with ``load_file`` once the body is complete, as it would have anyway."""
    if options.format not in ("csv", "tsv"):
        return None
    forced = "\t" if options.format == "tsv" else None
    try:
        if body.wait_for(FOLLOW_MIN_BYTES) < FOLLOW_MIN_BYTES:
            return None  # already complete, and small: nothing to overlap
        quick = read_csv_fast(body, options.csv, forced, stream=True)
        if quick is None:
            return None
        parsed = _with_warehouse_names(*quick)
        return load(parsed.table), parsed.renamed
    except (BodyTooSlow, BodyFailed, StreamAbandoned) as reason:
        # Said once per load, for whoever wonders why a load began only after its upload.
        log.info("Not loading %s while it arrives (loaded once it has): %s", body.path.name, reason)
        return None


def load_file(path: Path, options: UploadOptions, max_bytes: int, load) -> tuple:
    """(``load(data)``'s result, the renamed columns) for the file at ``path``, streamed when it can be:
    when the fast CSV reader gives up part way (a later value does not fit the first block's types),
    ``load`` undid everything (StreamAbandoned) and gets the strict reader's table instead."""
    parsed = parse_upload(path, options, max_bytes, stream=True)
    try:
        return load(parsed.table), parsed.renamed
    except StreamAbandoned:
        parsed = parse_upload(path, options, max_bytes, stream=False, fast=False)
        return load(parsed.table), parsed.renamed


def store_upload(
    settings, org_id: int, table_name: str, parsed: ParsedUpload, *, actor_id=None, actor: str = ""
) -> int:
    """Create or replace the warehouse table through the load engine (one transaction: all or nothing, and
    a load history row like every other load). Returns its row count."""
    result = load_table(
        settings,
        org_id,
        table_name,
        parsed.table,
        mode="replace",
        actor_id=actor_id,
        actor=actor,
        origin="upload",
    )
    return result.rows_out


def columns_json(table: pa.Table) -> list[dict]:
    return [{"name": f.name, "type": str(f.type)} for f in table.schema]


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime, decimal.Decimal)):
        return str(value) if isinstance(value, decimal.Decimal) else value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def preview_rows(table: pa.Table, count: int = PREVIEW_ROWS) -> list[dict]:
    return [{k: _json_safe(v) for k, v in row.items()} for row in table.slice(0, count).to_pylist()]
