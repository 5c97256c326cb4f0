"""``carnet load``, ``carnet sync`` and ``carnet warehouse ls|describe|preview``: the warehouse from a shell,
via the REST API.

Connection: ``--url`` and ``--api-key`` (an org API key ``cak_...``, studio role to load), or the environment
variables CARNET_URL and CARNET_API_KEY. ``carnet load`` streams the file (never read whole into memory) and
shows its progress on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from carnet.errors import CarnetError

CHUNK = 1024 * 1024
PROGRESS_EVERY = 0.5  # seconds between two progress lines


def _client(args):
    from carnet.client import Client

    url = args.url or os.environ.get("CARNET_URL")
    key = args.api_key or os.environ.get("CARNET_API_KEY")
    if not url or not key:
        raise CarnetError("Give --url and --api-key (or set CARNET_URL and CARNET_API_KEY)")
    return Client(url, key)


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return str(count)  # not reached


def progress_chunks(path: Path, out=sys.stderr):
    """The file's bytes, chunk by chunk, printing ``sent X / Y (Z%)`` as they go (a generator body: requests
    sends it chunked, so the file is never held in memory)."""
    total, sent, last = path.stat().st_size, 0, 0.0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            sent += len(chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY or sent == total:
                percent = 100 * sent / total if total else 100
                print(f"\rsent {_size(sent)} / {_size(total)} ({percent:.0f}%)", end="", file=out, flush=True)
                last = now
            yield chunk
    print(file=out, flush=True)


def cmd_load(args) -> int:
    from carnet.kernel_helpers.warehouse import FILE_FORMATS, load_params

    client = _client(args)
    me = client.me()
    if me["org"] != args.org:
        raise CarnetError(f"This API key belongs to organization {me['org']!r}, not {args.org!r}")
    path = Path(args.file)
    if not path.is_file():
        raise CarnetError(f"No file {args.file!r}")
    fmt = args.format or FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CarnetError(
            f"Unknown file type {path.suffix!r}: give --format ({', '.join(FILE_FORMATS.values())})"
        )
    types = {}
    for item in args.type or []:
        column, sep, kind = item.partition("=")
        if not sep or not column or not kind:
            raise CarnetError(f"--type takes column=type, not {item!r}")
        types[column] = kind
    params = {**load_params(args.mode, args.key, types, fmt), "origin": "cli"}
    table = client.warehouse.table(args.table)
    started = time.monotonic()
    answer = client._api.post_body(  # noqa: SLF001 - the CLI is part of the client
        f"{table._path}/load",  # noqa: SLF001
        progress_chunks(path),
        "application/octet-stream",
        params,
    )
    print(
        f"Loaded {answer['rows_in']} rows into {args.table} ({args.mode}); the table has "
        f"{answer['rows_out']} rows. Load {answer['load_id']}, {time.monotonic() - started:.1f} s."
    )
    return 0


def cmd_sync(args) -> int:
    client = _client(args)
    me = client.me()
    if me["org"] != args.org:
        raise CarnetError(f"This API key belongs to organization {me['org']!r}, not {args.org!r}")
    variables = {}
    for item in args.var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CarnetError(f"--var takes name=value, not {item!r}")
        variables[name] = value
    answer = client.sync_source_to_table(
        args.source, args.table, mode=args.mode, key=args.key, variables=variables or None
    )
    print(
        f"Synced {answer['rows_in']} rows of {args.source} into {args.table} ({args.mode}); the table has "
        f"{answer['rows_out']} rows. Load {answer['load_id']}."
    )
    return 0


def cmd_warehouse(args) -> int:
    client = _client(args)
    if args.action == "ls":
        for table in client.warehouse.tables():
            print(f"{table['name']:40s} {table['rows']:>12} rows  {len(table['columns'])} columns")
        return 0
    if not args.table:
        raise CarnetError(f"carnet warehouse {args.action} needs a table name")
    table = client.warehouse.table(args.table)
    if args.action == "describe":
        info = table.describe()
        print(f"{info['name']}: {info['rows']} rows")
        for column in info["columns"]:
            print(f"  {column['name']:38s} {column['type']}")
        history = table.history(limit=5)
        for load in history:
            print(
                f"  load {load['id']}: {load['mode']} {load['status']} {load['rows_in']} rows "
                f"by {load['actor']}"
            )
    else:
        frame = table.preview(limit=args.limit)
        print(frame.to_string(index=False) if len(frame) else json.dumps([]))
    return 0


def add_commands(commands) -> None:
    def connection(parser):
        parser.add_argument("--url", help="Carnet's address (default: $CARNET_URL)")
        parser.add_argument("--api-key", help="an org API key, cak_... (default: $CARNET_API_KEY)")

    load = commands.add_parser("load", help="load a file into a warehouse table (through the REST API)")
    load.add_argument("org", help="the organization (its slug); the API key must belong to it")
    load.add_argument("table")
    load.add_argument("file", help=".csv, .tsv, .xlsx, .parquet or .arrow (Arrow IPC stream)")
    load.add_argument("--mode", default="replace", choices=("replace", "append", "upsert", "delete"))
    load.add_argument("--key", nargs="+", metavar="COLUMN", help="key columns (upsert, delete)")
    load.add_argument("--type", action="append", metavar="COLUMN=TYPE", help="force a column's type")
    load.add_argument(
        "--format", choices=("csv", "tsv", "xlsx", "parquet", "arrow"), help="default: by suffix"
    )
    connection(load)
    load.set_defaults(func=cmd_load)
    sync = commands.add_parser("sync", help="copy what a source answers into a warehouse table (server-side)")
    sync.add_argument("org", help="the organization (its slug); the API key must belong to it")
    sync.add_argument("table")
    sync.add_argument("--source", required=True, help="the source to read (any kind)")
    sync.add_argument("--mode", default="replace", choices=("replace", "append", "upsert", "delete"))
    sync.add_argument("--key", nargs="+", metavar="COLUMN", help="key columns (upsert, delete)")
    sync.add_argument("--var", action="append", metavar="NAME=VALUE", help="a variable of the source")
    connection(sync)
    sync.set_defaults(func=cmd_sync)
    warehouse = commands.add_parser("warehouse", help="list, describe or preview warehouse tables")
    warehouse.add_argument("action", choices=("ls", "describe", "preview"))
    warehouse.add_argument("table", nargs="?")
    warehouse.add_argument("--limit", type=int, default=20, help="preview: rows (default 20)")
    connection(warehouse)
    warehouse.set_defaults(func=cmd_warehouse)
