"""Issue 4's targets, side by side with raw DuckDB in one run:

- a group-by over a 10,000,000-row warehouse table through ``src.query(...)`` (kernel-side API -> Carnet
  service -> pushed down into the org's DuckDB -> Arrow back) vs the same SQL on DuckDB in this process;
- 1,000,000 rows x 10 columns into a DataFrame through ``src.df()`` vs DuckDB's own ``.df()``;
- the same group-by written as SQL across sources (``carnet.sources.sql``): with only warehouse sources the
  service runs it over the attached warehouse (views, no copy).

Targets (issue 4): within 1.3x of raw DuckDB; 1M rows in <= 0.5 s. Run: ``python -m bench.source_query``.
"""

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

BIG_ROWS = 10_000_000
WIDE_ROWS = 1_000_000


def make_tables(path) -> None:
    with duckdb.connect(str(path)) as con:
        # Generated inside DuckDB: 10M rows never pass through pandas.
        con.execute(
            f"""CREATE OR REPLACE TABLE bench_sales AS
            SELECT i AS id,
                   ['EU', 'US', 'APAC', 'LATAM'][1 + (i % 4)] AS region,
                   'product_' || (i % 50) AS product,
                   (i % 1000) / 10.0 AS amount,
                   DATE '2026-01-01' + CAST(i % 365 AS INTEGER) AS day
            FROM range({BIG_ROWS}) t(i)"""
        )
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({f"c{n}": rng.random(WIDE_ROWS) for n in range(8)})
    wide.insert(0, "id", np.arange(WIDE_ROWS))
    wide.insert(1, "label", rng.choice(["a", "b", "c", "d"], WIDE_ROWS))
    Warehouse(path).replace_table("bench_wide", wide)


def main():
    stack = start_stack()
    try:
        settings = stack.settings
        path = settings.warehouse_path(1)
        make_tables(path)
        with session_scope(settings.db_url) as session:
            for table in ("bench_sales", "bench_wide"):
                session.add(
                    DataSource(org_id=1, name=table, kind="warehouse_table", options={"table": table})
                )
        sources = SourceCollection(
            ApiClient(url=f"{stack.url}/services/carnet/", token=studio_token(settings))
        )
        group_sql = (
            "SELECT region, product, sum(amount) AS amount, count(*) AS n FROM bench_sales "
            "WHERE day >= DATE '2026-03-01' GROUP BY region, product ORDER BY region, product"
        )

        def raw_group():
            with duckdb.connect(str(path), read_only=True) as con:
                return con.sql(group_sql).df()

        def carnet_group():
            return sources["bench_sales"].query(
                group_by=["region", "product"],
                aggregates={"amount": "sum", "*": "count"},
                where=[("day", ">=", "2026-03-01")],
                order_by=["region", "product"],
            )

        def carnet_sql():
            return sources.sql(group_sql.replace("FROM bench_sales", "FROM {bench_sales}"))

        expected, got = raw_group(), carnet_group()
        assert len(expected) == len(got) == 100, (len(expected), len(got))  # i % 4 and i % 50: 100 pairs
        assert abs(float(expected["amount"].sum()) - float(got["amount"].sum())) < 1e-3

        def raw_wide():
            with duckdb.connect(str(path), read_only=True) as con:
                return con.sql("SELECT * FROM bench_wide").df()

        report(
            f"group-by over {BIG_ROWS:,} warehouse rows (100 groups back)",
            [
                ("raw DuckDB (same process, file)", timed(raw_group, 5)),
                ("src.query(group_by=..., aggregates=...) via API", timed(carnet_group, 5)),
            ],
        )
        report(
            f"{WIDE_ROWS:,} rows x 10 columns into a DataFrame",
            [
                ("raw DuckDB .df() (same process, file)", timed(raw_wide, 5)),
                ("src.df() via API", timed(lambda: sources["bench_wide"].df(), 5)),
            ],
        )
        report(
            f"the same group-by as SQL across sources ({BIG_ROWS:,} rows, run over the attached warehouse)",
            [
                ("raw DuckDB (same process, file)", timed(raw_group, 2)),
                ("carnet.sources.sql('... FROM {bench_sales} ...') via API", timed(carnet_sql, 2)),
            ],
        )
    finally:
        stop_stack(stack)


if __name__ == "__main__":
    main()
