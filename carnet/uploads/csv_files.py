"""CSV/TSV files into Arrow: encoding, delimiter, header and decimal mark sniffed (each overridable), the
structure checked line by line so that a malformed file is refused with the line where it goes wrong.

Three passes over the file on disk, never all of it in memory: decode to a UTF-8 copy (wrong encoding,
binary data), check the records with the ``csv`` module in strict mode (bad quoting, ragged rows), then let
pyarrow parse and type the checked file. pyarrow alone accepts an unterminated quote and names no line.
"""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from carnet.errors import ValidationError

SAMPLE_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
DELIMITERS = (",", ";", "\t", "|")
HEADER_SAMPLE_ROWS = 50
CANDIDATE_ENCODINGS = [
    "cp1252", "latin_1", "iso8859_15", "cp1250", "iso8859_2", "cp1251", "koi8_r", "iso8859_5", "cp1253",
    "cp1254", "cp1257", "shift_jis", "euc_jp", "gb18030", "big5", "euc_kr", "utf_16",
]  # fmt: skip
_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?%?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_DECIMAL_POINT = re.compile(r"^[+-]?\d+\.\d+$")


@dataclass
class CsvOptions:
    """What the caller forced; ``None`` means sniff it."""

    delimiter: str | None = None
    encoding: str | None = None
    header: bool | None = None
    skip_rows: int = 0
    decimal: str | None = None
    null_values: list[str] | None = None
    quote: str = '"'


def sniff_encoding(sample: bytes) -> str:
    """UTF-8 (with or without BOM) when the sample decodes as such, else charset-normalizer's guess, with
    Windows-1252 preferred among the Western single-byte code pages it cannot tell apart."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if b"\x00" in sample:
        at = sample[: sample.index(b"\x00")].count(b"\n") + 1
        message = f"Line {at}: binary data (NUL byte): this is not a CSV text file"
        raise ValidationError(message, field="file", line=at)
    from charset_normalizer import from_bytes

    # Short samples fool the detector into exotic code pages (Korean johab for "São Paulo"): only the
    # encodings CSV files are really written in are candidates.
    results = list(from_bytes(sample, cp_isolation=CANDIDATE_ENCODINGS))
    if not results:
        raise ValidationError("Cannot tell the text encoding of this file: give ?encoding=", field="encoding")
    for result in results[:2]:
        if "cp1252" in result.could_be_from_charset:
            return "cp1252"
    return results[0].encoding


def check_encoding(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ValidationError(f"Unknown text encoding {name!r}", field="encoding") from None


def transcode(source: Path, target: Path, encoding: str) -> None:
    """Write ``source`` decoded from ``encoding`` as UTF-8, refusing undecodable bytes and NUL characters
    with the line where they are."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line = 1
    with open(source, "rb") as raw, open(target, "w", encoding="utf-8", newline="") as out:
        while True:
            chunk = raw.read(CHUNK_BYTES)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                before = chunk[: max(exc.start, 0)].decode(encoding, errors="replace")
                raise ValidationError(
                    f"Line {line + before.count(chr(10))}: bytes that are not valid {encoding} text "
                    "(give the right ?encoding=)",
                    field="encoding",
                    line=line + before.count("\n"),
                ) from None
            nul = text.find("\x00")
            if nul >= 0:
                at = line + text.count("\n", 0, nul)
                raise ValidationError(
                    f"Line {at}: binary data (NUL byte): this is not a CSV text file", field="file", line=at
                )
            out.write(text.lstrip("\ufeff") if line == 1 else text)
            line += text.count("\n")
            if not chunk:
                return


def _skip_lines(handle, count: int) -> None:
    for _ in range(count):
        if not handle.readline():
            return


def sniff_delimiter(lines: list[str], quote: str) -> str:
    """The candidate that splits every sample line into the same number (> 1) of fields, the most fields
    winning; else the one most lines agree on."""
    best, best_score = ",", (-1, 0)
    for delimiter in DELIMITERS:
        counts = [len(row) for row in csv.reader(lines, delimiter=delimiter, quotechar=quote) if row]
        if not counts or max(counts) < 2:
            continue
        consistent = min(counts) == max(counts)
        agree = max(counts.count(c) for c in set(counts)) / len(counts)
        score = (2 if consistent else agree, max(counts) if consistent else 0)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _looks_like_value(cell: str) -> bool:
    cell = cell.strip()
    return not cell or bool(_NUMBER.match(cell.replace(" ", "")) or _DATE.match(cell))


def sniff_header(rows: list[list[str]]) -> bool:
    """A first row of non-empty texts none of which looks like a number or a date is a header if its texts
    are distinct, or, when some repeat (``id,name,id``: renamed ``id_2`` later), if a row below holds a
    number or a date: the first row then differs in kind from the data. Repeated texts above text-only
    rows stay data (``yes,yes,no``)."""
    if not rows:
        return False
    first = [cell.strip() for cell in rows[0]]
    if any(_looks_like_value(cell) for cell in first):
        return False
    if len(set(first)) == len(first):
        return True
    return any(cell.strip() and _looks_like_value(cell) for row in rows[1:] for cell in row)


def sniff_decimal(rows: list[list[str]], delimiter: str) -> str:
    if delimiter == ",":
        return "."
    cells = [cell.strip() for row in rows for cell in row]
    commas = any(_DECIMAL_COMMA.match(c) for c in cells)
    return "," if commas and not any(_DECIMAL_POINT.match(c) for c in cells) else "."


def check_records(path: Path, options: CsvOptions, delimiter: str) -> list[list[str]]:
    """Read every record strictly; return the first few (for sniffing). Refuses bad quoting and rows whose
    number of fields differs from the first row's, naming the line."""
    sample: list[list[str]] = []
    width = None
    with open(path, encoding="utf-8", newline="") as handle:
        _skip_lines(handle, options.skip_rows)
        reader = csv.reader(handle, delimiter=delimiter, quotechar=options.quote, strict=True)
        offset = options.skip_rows
        while True:
            start = reader.line_num + 1 + offset
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ValidationError(
                    f"Line {start}: malformed CSV ({exc}); check the quotes on that line",
                    field="file",
                    line=start,
                ) from None
            if not row:
                continue  # blank line (pyarrow skips them too)
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise ValidationError(
                    f"Line {start}: {len(row)} fields where the first row has {width}",
                    field="file",
                    line=start,
                )
            if len(sample) < HEADER_SAMPLE_ROWS:
                sample.append(row)
    if width is None:
        raise ValidationError("The file is empty: no rows to load", field="file")
    return sample


def _blank_lines_before(lines: list[str]) -> int:
    count = 0
    for line in lines:
        if line.strip("\r\n"):
            break
        count += 1
    return count


def read_csv(path: Path, workdir: Path, options: CsvOptions, default_delimiter: str | None) -> tuple:
    """(Arrow table with the file's own header texts as names, the settings used)."""
    if path.stat().st_size == 0:
        raise ValidationError("The file is empty", field="file")
    with open(path, "rb") as raw:
        head = raw.read(SAMPLE_BYTES)
    encoding = check_encoding(options.encoding) if options.encoding else sniff_encoding(head)
    utf8 = workdir / (path.name + ".utf8")
    transcode(path, utf8, encoding)
    with open(utf8, encoding="utf-8", newline="") as handle:
        _skip_lines(handle, options.skip_rows)
        text = handle.read(SAMPLE_BYTES)
    lines = text.splitlines(keepends=True)
    if len(text) == SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    if not "".join(lines).strip():
        raise ValidationError("The file is empty: no rows to load", field="file")
    delimiter = options.delimiter or default_delimiter or sniff_delimiter(lines, options.quote)
    rows = check_records(utf8, options, delimiter)
    header = sniff_header(rows) if options.header is None else options.header
    decimal = options.decimal or sniff_decimal(rows[1:] if header else rows, delimiter)
    width = len(rows[0])
    names = [cell for cell in rows[0]] if header else [f"column_{i + 1}" for i in range(width)]
    convert = pacsv.ConvertOptions(decimal_point=decimal, strings_can_be_null=True)
    if options.null_values is not None:
        convert.null_values = options.null_values
    try:
        table = pacsv.read_csv(
            utf8,
            read_options=pacsv.ReadOptions(
                # pyarrow counts blank lines before the header as rows; the header sniffer skips them
                skip_rows=options.skip_rows + _blank_lines_before(lines) + (1 if header else 0),
                column_names=[f"c{i}" for i in range(width)],
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=options.quote, double_quote=True, newlines_in_values=True
            ),
            convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"Malformed CSV: {exc}", field="file") from None
    # A column with no value at all has Arrow's null type, which the warehouse cannot store.
    columns = [col.cast(pa.string()) if pa.types.is_null(col.type) else col for col in table.columns]
    table = pa.Table.from_arrays(columns, names=[f"c{i}" for i in range(width)])
    used = {
        "encoding": encoding,
        "delimiter": delimiter,
        "header": header,
        "skip_rows": options.skip_rows,
        "decimal": decimal,
        "quote": options.quote,
    }
    return table, names, used
