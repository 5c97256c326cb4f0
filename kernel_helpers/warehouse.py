"""Writing to the organization's warehouse through the REST API: ``carnet.warehouse.write(df, "sales")`` in a
kernel, ``client.get_or_create_table(name)`` and a source's ``reload_from_dataframe`` with ``carnet.Client``.

Data travels as an Arrow IPC stream (files as they are: Parquet, CSV, Excel), never through a direct
connection: the kernel holds only its Carnet token, and the service's load engine checks and records
every load (``.history()``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pandas as pd
import pyarrow as pa

from carnet.client import ApiClient

ARROW_STREAM = "application/vnd.apache.arrow.stream"
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".xlsx": "xlsx", ".parquet": "parquet", ".arrow": "arrow"}


def arrow_stream(data) -> bytes:
    """A DataFrame or Arrow table as the bytes of an Arrow IPC stream (without the pandas index)."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def load_params(mode: str, key, types: dict | None, fmt: str) -> dict:
    params = {"format": fmt, "mode": mode}
    if key:
        params["key"] = ",".join([key] if isinstance(key, str) else key)
    for column, kind in (types or {}).items():
        params[f"type.{column}"] = kind
    return params


class Table:
    """One warehouse table, by name: ``.load(df, mode=..., key=...)``, ``.load_file(path)``,
    ``.batch(operations, key=...)``, ``.describe()``, ``.preview()``, ``.history()``."""

    def __init__(self, client: ApiClient, name: str):
        self._client = client
        self.name = name

    def __repr__(self):
        return f"<carnet warehouse table {self.name!r}>"

    @property
    def _path(self) -> str:
        return f"api/v1/warehouse/tables/{ApiClient.segment(self.name)}"

    def load(self, data, mode: str = "replace", key=None, types: dict | None = None) -> dict:
        """Load a DataFrame (or Arrow table): ``mode`` replace (atomic), append, upsert or delete by
        ``key``; ``types`` forces column types ({"amount": "decimal(12,2)"}). Returns {load_id, rows_in,
        rows_out, ...}."""
        return self._client.post_body(
            f"{self._path}/load", arrow_stream(data), ARROW_STREAM, load_params(mode, key, types, "arrow")
        )

    def load_file(self, path, mode: str = "replace", key=None, types: dict | None = None, **options) -> dict:
        """Load a file as it is (streamed from disk): .csv/.tsv/.xlsx (parsed like an upload; ``options``
        such as ``delimiter``, ``encoding``), .parquet or .arrow."""
        path = Path(path)
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"Unknown file type {path.suffix!r}: use one of {', '.join(FILE_FORMATS)}")
        params = {**load_params(mode, key, types, fmt), **options}
        with path.open("rb") as body:
            return self._client.post_body(f"{self._path}/load", body, "application/octet-stream", params)

    def batch(self, operations: list[dict], key) -> dict:
        """``[{"op": "insert"|"upsert"|"delete", "rows": [{...}] or a DataFrame}]``, in one transaction."""
        ops = [
            {"op": op["op"], "rows": _rows(op["rows"])}
            for op in operations  # DataFrames become JSON rows (dates as ISO text)
        ]
        keys = [key] if isinstance(key, str) else list(key)
        return self._client.post_json(f"{self._path}/batch", {"key": keys, "operations": ops})

    def sync(
        self, source: str, mode: str = "replace", key=None, types: dict | None = None, variables=None
    ) -> dict:
        """Load what the source ``source`` answers (read on the server, with its ``variables``) into this
        table; same modes and answer as ``load``."""
        body = {"source": source, "mode": mode}
        if key:
            body["key"] = [key] if isinstance(key, str) else list(key)
        if types:
            body["types"] = types
        if variables:
            body["variables"] = variables
        return self._client.post_json(f"{self._path}/sync", body)

    def describe(self) -> dict:
        return self._client.get_json(self._path)

    def preview(self, limit: int = 20) -> pd.DataFrame:
        return pd.DataFrame(self._client.get_json(f"{self._path}/preview", limit=limit)["rows"])

    def history(self, limit: int = 50) -> list[dict]:
        return self._client.get_json(f"{self._path}/loads", limit=limit)["loads"]


def _rows(rows) -> list[dict]:
    if isinstance(rows, pd.DataFrame):
        import json

        return json.loads(rows.to_json(orient="records", date_format="iso"))
    return list(rows)


class Warehouse:
    """``carnet.warehouse``: ``write(df, "sales", mode="replace", key=None, types=None)``, ``tables()``,
    ``table(name)`` (a ``Table``)."""

    def __init__(self, client: ApiClient | None = None):
        self._given_client = client

    @cached_property
    def _client(self) -> ApiClient:
        # Created on first use: importing carnet must work outside a kernel too.
        return self._given_client or ApiClient()

    def write(self, data, table: str, mode: str = "replace", key=None, types: dict | None = None) -> dict:
        return Table(self._client, table).load(data, mode=mode, key=key, types=types)

    def sync(
        self,
        source: str,
        table: str,
        mode: str = "replace",
        key=None,
        types: dict | None = None,
        variables: dict | None = None,
    ) -> dict:
        """``carnet.warehouse.sync("orders_pg", "orders", mode="upsert", key="id")``: the source's rows into
        the table, copied by the service (the data never passes through the kernel)."""
        return Table(self._client, table).sync(source, mode=mode, key=key, types=types, variables=variables)

    def tables(self) -> list[dict]:
        return self._client.get_json("api/v1/warehouse/tables")["tables"]

    def table(self, name: str) -> Table:
        return Table(self._client, name)

    def __repr__(self):
        return "<carnet.warehouse: carnet.warehouse.write(df, 'table', mode='replace') loads a DataFrame>"
