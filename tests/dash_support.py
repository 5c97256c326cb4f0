"""A stand-in for the Carnet API at its HTTP boundary, for carnet.dash tests: ``post_arrow`` answers a
source's query route by running the body through the real spec parser and DuckDB compiler
(carnet/query/spec.py) over in-memory frames, and records every request."""

from __future__ import annotations

import duckdb
import plotly
import pyarrow as pa

from carnet.errors import NotFound
from carnet.kernel_helpers.dash.query import api_fetch
from carnet.kernel_helpers.sources import SourceCollection
from carnet.query.spec import parse_spec, to_duckdb


class RecordingApi:
    def __init__(self, tables: dict):
        self.tables = tables
        self.requests: list[tuple[str, dict]] = []
        self.fail: set[str] = set()  # source names whose queries fail (an error state)

    def post_arrow(self, path: str, body: dict) -> pa.Table:
        self.requests.append((path, body))
        prefix, _, rest = path.partition("api/v1/sources/")
        name = rest.removesuffix("/query")
        if name not in self.tables or name in self.fail:
            raise NotFound(f"No source {name!r}")
        frame = self.tables[name]
        spec = parse_spec({k: v for k, v in body.items() if k != "variables"}, list(frame.columns))
        sql, params = to_duckdb(spec, "source")
        con = duckdb.connect()
        con.register("source", frame)
        return con.sql(sql, params=params or None).to_arrow_table()

    def fetch(self):
        return api_fetch(SourceCollection(client=self))

    def bodies(self, source: str = "gapminder") -> list[dict]:
        return [body for path, body in self.requests if path == f"api/v1/sources/{source}/query"]


def gapminder():
    return plotly.data.gapminder()
