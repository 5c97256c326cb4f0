"""carnet.sources["..."].df() through the Carnet API (Arrow IPC) vs reading the same table with raw DuckDB."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from bench.common import report, start_stack, stop_stack, studio_token, timed
from carnet.client import ApiClient
from carnet.db import session_scope
from carnet.db.models import DataSource
from carnet.kernel_helpers import SourceCollection
from carnet.warehouse import Warehouse

ROWS = 1_000_000


def main():
    stack = start_stack()
    try:
        settings = stack.settings
        warehouse_path = settings.warehouse_path(1)
        rng = np.random.default_rng(0)
        frame = pd.DataFrame(
            {
                "id": np.arange(ROWS),
                "region": rng.choice(["EU", "US", "APAC"], ROWS),
                "amount": rng.random(ROWS) * 100,
                "day": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 365, ROWS), unit="D"),
            }
        )
        Warehouse(warehouse_path).replace_table("bench_orders", frame)
        with session_scope(settings.db_url) as session:
            session.add(
                DataSource(
                    org_id=1, name="bench_orders", kind="warehouse_table", options={"table": "bench_orders"}
                )
            )
        sources = SourceCollection(
            ApiClient(url=f"{stack.url}/services/carnet/", token=studio_token(settings))
        )

        def raw_small():
            with duckdb.connect(str(warehouse_path), read_only=True) as con:
                con.sql("SELECT * FROM gapminder").df()

        def raw_big():
            with duckdb.connect(str(warehouse_path), read_only=True) as con:
                con.sql("SELECT * FROM bench_orders").df()

        report(
            "gapminder (1,704 rows): DataFrame in the caller",
            [
                ("raw DuckDB (same process, file)", timed(raw_small, 20)),
                ("carnet.sources['gapminder'].df() via API", timed(lambda: sources["gapminder"].df(), 20)),
            ],
        )
        report(
            f"bench_orders ({ROWS:,} rows): DataFrame in the caller",
            [
                ("raw DuckDB (same process, file)", timed(raw_big, 5)),
                (
                    "carnet.sources['bench_orders'].df() via API",
                    timed(lambda: sources["bench_orders"].df(), 5),
                ),
            ],
        )
    finally:
        stop_stack(stack)


if __name__ == "__main__":
    main()
