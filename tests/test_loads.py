"""The load engine (carnet/loads) in-process, on a fresh SQLite database and data directory: atomic reloads
under concurrent readers, a load killed mid-way, upsert/delete by key, batches, forced types, history and
hostile table names. Everything checks the stored table afterwards, not just the error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from carnet.db import session_scope, upgrade
from carnet.db.models import Organization
from carnet.errors import NotFound, ValidationError
from carnet.loads import batch, load_history, load_table, warehouse_tables
from carnet.query.service import warehouse_duckdb
from carnet.settings import CarnetSettings
from carnet.warehouse import STAGING_PREFIX, open_warehouse


@pytest.fixture
def settings(warehouse_backend):
    """A fresh platform database and org 1, with the warehouse of ``warehouse_backend``: every test here runs
    against the DuckDB files and against the PostgreSQL option."""
    settings = CarnetSettings()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        session.add(Organization(slug="acme", name="Acme"))
    return settings


ORG = 1


def warehouse(settings):
    return open_warehouse(settings, ORG)


@pytest.fixture
def duckdb_only(settings):
    if settings.warehouse_url:
        pytest.skip("about the DuckDB warehouse file")


def rows(settings, table: str, order: str = "id") -> list[dict]:
    return warehouse(settings).read_arrow(table).sort_by(order).to_pylist()


def people(settings):
    load_table(
        settings,
        ORG,
        "people",
        pa.table({"id": [1, 2, 3], "name": ["ann", "bob", "cyd"], "score": [10, 20, 30]}),
    )


# -- atomic reloads under concurrent readers -----------------------------------------------------------------
def version_table(version: int, n: int, bad_last_row: bool = False) -> pa.Table:
    amounts = [str(i) for i in range(n)]
    if bad_last_row:
        amounts[-1] = "not-a-number"
    return pa.table({"version": [version] * n, "row": list(range(n)), "amount": amounts})


def test_readers_see_one_whole_version_during_failing_and_successful_reloads(settings):
    # PostgreSQL readers convert rows in Python, holding the GIL the loading thread needs: fewer rows per
    # version keep the test's length reasonable; a partial or empty read is caught the same way.
    n = 1000 if settings.warehouse_url else 5000
    load_table(settings, ORG, "versions", version_table(0, n), types={"amount": "int"})
    path = settings.warehouse_path(ORG)
    stop = threading.Event()
    seen: list[set] = [set() for _ in range(20)]
    problems: list[str] = []

    def read(index: int) -> pa.Table:
        # Half the readers read the table whole, half through the query service's paths (DuckDB: SQL on the
        # file's instance; PostgreSQL: a query spec run by the server).
        if index % 2:
            return warehouse(settings).read_arrow("versions")
        if settings.warehouse_url:
            return warehouse(settings).query_arrow("versions", {"order_by": ["row"]})
        with warehouse_duckdb(path, {"v": "versions"}) as con:
            return con.sql("SELECT * FROM v").to_arrow_table()

    def reader(index: int):
        while not stop.is_set():
            try:
                table = read(index)
            except Exception as error:  # noqa: BLE001 - any failure to read is a finding
                problems.append(f"reader {index}: {error!r}")
                return
            versions = set(table.column("version").to_pylist())
            if table.num_rows != n or len(versions) != 1:
                problems.append(f"reader {index}: {table.num_rows} rows of versions {sorted(versions)[:5]}")
                return
            seen[index] |= versions
            time.sleep(0.005)  # 20 threads reading back to back would starve the loading thread of the GIL

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    failures = 0
    try:
        for version in range(1, 21):
            with pytest.raises(ValidationError) as failed:
                load_table(
                    settings, ORG, "versions", version_table(-version, n, True), types={"amount": "int"}
                )
            assert failed.value.fields["field"] == "amount" and failed.value.fields["row"] == n
            failures += 1
            load_table(settings, ORG, "versions", version_table(version, n), types={"amount": "int"})
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert failures == 20
    observed = set().union(*seen)
    # Readers overlapped the reloads (several versions seen) and never saw a failed load's rows.
    assert len(observed) > 2 and all(v >= 0 for v in observed)
    final = warehouse(settings).read_arrow("versions")
    assert set(final.column("version").to_pylist()) == {20} and final.num_rows == n
    assert final.schema.field("amount").type == pa.int64()


# -- a load killed mid-way -------------------------------------------------------------------------------
SLOW_LOAD = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from carnet.loads import load_table
    from carnet.settings import CarnetSettings

    marker, pause = sys.argv[1], float(sys.argv[2])
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.int64())])

    def batches():
        for i in range(10_000 if pause else 300):
            ids = list(range(i * 10_000, (i + 1) * 10_000))
            yield pa.record_batch([ids, ["x"] * len(ids), ids], schema=schema)
            if i == 3:
                open(marker, "w").close()  # the load is staging rows now
            time.sleep(pause)

    load_table(CarnetSettings(), 1, "people", pa.RecordBatchReader.from_batches(schema, batches()))
    """
)


def copying_into_postgres(url: str) -> bool:
    """True while some session runs a COPY into the warehouse (the killed load's write phase)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY %%'"
                ).scalar()
            )
    finally:
        engine.dispose()


def stored_table_names(settings) -> list[str]:
    """Every table the warehouse holds, staging ones included (what a killed load could leave)."""
    if settings.warehouse_url:
        import sqlalchemy as sa

        engine = sa.create_engine(settings.warehouse_url)
        try:
            with engine.connect() as conn:
                return list(
                    conn.exec_driver_sql(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %(s)s",
                        {"s": settings.warehouse_schema(ORG)},
                    ).scalars()
                )
        finally:
            engine.dispose()
    with duckdb.connect(str(settings.warehouse_path(ORG)), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]


def test_killed_load_leaves_the_previous_table_intact(settings, tmp_path):
    people(settings)
    before = rows(settings, "people")
    marker = tmp_path / "staging-started"
    # DuckDB: killed while it stages (slow batches). PostgreSQL: killed while the rows are COPYed in, inside
    # the transaction that would replace the table (3M rows, no pauses).
    pause = "0" if settings.warehouse_url else "0.01"
    child = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, "-c", SLOW_LOAD, str(marker), pause], env=dict(os.environ), stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (
            copying_into_postgres(settings.warehouse_url) if settings.warehouse_url else marker.exists()
        ):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2 if settings.warehouse_url else 0.5)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    # This process opens the warehouse again, as a restarted service would.
    assert warehouse(settings).tables() == ["people"]
    assert rows(settings, "people") == before
    assert stored_table_names(settings) == ["people"]
    # The killed load's history row stays "running" (nobody finished it); later loads work.
    assert load_history(settings, ORG, "people")[0]["status"] == "running"
    load_table(settings, ORG, "people", pa.table({"id": [7], "name": ["gus"], "score": [1]}), mode="append")
    assert len(rows(settings, "people")) == 4


def test_staging_leftovers_are_dropped_when_the_file_is_opened(settings, duckdb_only):
    people(settings)
    path = settings.warehouse_path(ORG)
    with duckdb.connect(str(path)) as con:  # what a crash of a committed staging table would leave
        con.execute(f'CREATE TABLE "{STAGING_PREFIX}dead" AS SELECT 1 AS x')
    assert warehouse(settings).tables() == ["people"]
    assert [t["name"] for t in warehouse_tables(settings, ORG)] == ["people"]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0] == 1


# -- append, upsert, delete ----------------------------------------------------------------------------------
def test_upsert_updates_and_inserts_by_key(settings):
    people(settings)
    result = load_table(
        settings,
        ORG,
        "people",
        pd.DataFrame({"id": [2, 4], "name": ["bobby", "dan"], "score": [21, 40]}),
        mode="upsert",
        key=["id"],
    )
    assert (result.rows_in, result.rows_out, result.status) == (2, 4, "succeeded")
    assert rows(settings, "people") == [
        {"id": 1, "name": "ann", "score": 10},
        {"id": 2, "name": "bobby", "score": 21},
        {"id": 3, "name": "cyd", "score": 30},
        {"id": 4, "name": "dan", "score": 40},
    ]


def test_upsert_with_composite_key_and_column_order(settings):
    load_table(
        settings,
        ORG,
        "sales",
        [{"day": "2024-01-01", "shop": "a", "n": 1}, {"day": "2024-01-01", "shop": "b", "n": 2}],
        types={"day": "date"},
    )
    load_table(
        settings,
        ORG,
        "sales",
        [{"n": 5, "shop": "b", "day": "2024-01-01"}],
        mode="upsert",
        key=["day", "shop"],
    )
    stored = warehouse(settings).read_arrow("sales").sort_by("shop").to_pylist()
    assert stored == [
        {"day": date(2024, 1, 1), "shop": "a", "n": 1},
        {"day": date(2024, 1, 1), "shop": "b", "n": 5},
    ]


def test_delete_by_key(settings):
    people(settings)
    result = load_table(settings, ORG, "people", pa.table({"id": [1, 3, 99]}), mode="delete", key=["id"])
    assert result.rows_out == 1
    assert rows(settings, "people") == [{"id": 2, "name": "bob", "score": 20}]
    with pytest.raises(NotFound):
        load_table(settings, ORG, "nowhere", pa.table({"id": [1]}), mode="delete", key=["id"])


@pytest.mark.parametrize("mode", ["upsert", "delete"])
def test_null_keys_are_refused_naming_column_and_row(settings, mode):
    people(settings)
    before = rows(settings, "people")
    data = pa.table({"id": [2, None], "name": ["x", "y"], "score": [1, 2]})
    with pytest.raises(ValidationError) as error:
        load_table(settings, ORG, "people", data, mode=mode, key=["id"])
    assert error.value.fields == {"field": "id", "row": 2}
    assert "'id'" in error.value.message and "row 2" in error.value.message
    assert rows(settings, "people") == before


def test_duplicate_keys_in_an_upsert_are_refused(settings):
    people(settings)
    before = rows(settings, "people")
    data = pa.table({"id": [5, 2, 2], "name": ["e", "x", "y"], "score": [1, 2, 3]})
    with pytest.raises(ValidationError) as error:
        load_table(settings, ORG, "people", data, mode="upsert", key=["id"])
    assert "Duplicate key (id=2) in rows 2, 3" in error.value.message
    assert rows(settings, "people") == before


def test_append_checks_columns_and_types_against_the_table(settings):
    people(settings)
    before = rows(settings, "people")
    with pytest.raises(ValidationError, match=r"unknown columns \['age'\]; missing columns \['score'\]"):
        load_table(settings, ORG, "people", pa.table({"id": [9], "name": ["z"], "age": [3]}), mode="append")
    with pytest.raises(ValidationError, match=r"Column 'score', row 2: value 'lots' is not a valid BIGINT"):
        load_table(
            settings,
            ORG,
            "people",
            pa.table({"id": [8, 9], "name": ["y", "z"], "score": ["1", "lots"]}),
            mode="append",
        )
    with pytest.raises(ValidationError, match="'score' is BIGINT in the table, not DOUBLE"):
        load_table(
            settings,
            ORG,
            "people",
            pa.table({"id": [9], "name": ["z"], "score": [1]}),
            mode="append",
            types={"score": "float"},
        )
    assert rows(settings, "people") == before
    load_table(settings, ORG, "people", pa.table({"score": ["5"], "id": [9], "name": ["z"]}), mode="append")
    assert rows(settings, "people")[-1] == {"id": 9, "name": "z", "score": 5}


# -- batch ---------------------------------------------------------------------------------------------------
def test_batch_applies_all_operations_in_order(settings):
    people(settings)
    result = batch(
        settings,
        ORG,
        "people",
        [
            {"op": "insert", "rows": [{"id": 4, "name": "dan", "score": 40}]},
            {"op": "upsert", "rows": [{"id": 1, "name": "annie", "score": 11}]},
            {"op": "delete", "rows": [{"id": 2}, {"id": 4}]},
        ],
        key=["id"],
        actor="ana@acme.example",
    )
    assert (result.mode, result.rows_in, result.rows_out) == ("batch", 4, 2)
    assert rows(settings, "people") == [
        {"id": 1, "name": "annie", "score": 11},
        {"id": 3, "name": "cyd", "score": 30},
    ]


def test_batch_is_all_or_nothing(settings):
    people(settings)
    before = rows(settings, "people")
    with pytest.raises(ValidationError, match="row 1: value 'high'"):
        batch(
            settings,
            ORG,
            "people",
            [
                {"op": "insert", "rows": [{"id": 4, "name": "dan", "score": 40}]},
                {"op": "delete", "rows": [{"id": 1}]},
                {"op": "upsert", "rows": [{"id": 2, "name": "bob", "score": "high"}]},
            ],
            key=["id"],
        )
    assert rows(settings, "people") == before
    with pytest.raises(ValidationError, match="op must be insert, upsert or delete"):
        batch(settings, ORG, "people", [{"op": "truncate", "rows": []}], key=["id"])
    assert load_history(settings, ORG, "people")[0]["status"] == "failed"


# -- forced types --------------------------------------------------------------------------------------------
def test_each_forced_type(settings):
    data = {
        "i": ["1", "-2"],
        "f": ["1.5", "2"],
        "d": ["1.25", "3"],
        "p": ["12.345", "0.5"],
        "b": ["true", "false"],
        "day": ["2024-02-29", "1999-12-31"],
        "at": ["2024-02-29 10:30:00", "2024-03-01 00:00:00"],
        "at_tz": ["2024-02-29 10:30:00+02:00", "2024-03-01 00:00:00Z"],
        "t": [1, 2],
    }
    types = {
        "i": "int",
        "f": "float",
        "d": "decimal",
        "p": "decimal(8,3)",
        "b": "bool",
        "day": "date",
        "at": "datetime",
        "at_tz": "datetime_tz",
        "t": "text",
    }
    load_table(settings, ORG, "typed", pa.table(data), types=types)
    columns = {c["name"]: c["type"] for c in warehouse(settings).columns("typed")}
    assert columns == {
        "i": "BIGINT",
        "f": "DOUBLE",
        "d": "DECIMAL(18,3)",
        "p": "DECIMAL(8,3)",
        "b": "BOOLEAN",
        "day": "DATE",
        "at": "TIMESTAMP",
        "at_tz": "TIMESTAMP WITH TIME ZONE",
        "t": "VARCHAR",
    }
    first = warehouse(settings).read_arrow("typed").to_pylist()[0]
    assert first["i"] == 1 and first["f"] == 1.5 and first["d"] == Decimal("1.250")
    assert first["p"] == Decimal("12.345") and first["b"] is True and first["day"] == date(2024, 2, 29)
    assert first["at"] == datetime(2024, 2, 29, 10, 30)
    assert first["at_tz"] == datetime(2024, 2, 29, 8, 30, tzinfo=UTC) and first["t"] == "1"


def test_mixed_column_forced_to_int_names_column_row_and_value(settings):
    frame = pd.DataFrame({"id": [1, 2, 3, 4], "qty": [1, "2", "three", 4]})
    with pytest.raises(ValidationError) as error:
        load_table(settings, ORG, "orders", frame, types={"qty": "int"})
    assert error.value.fields == {"field": "qty", "row": 3, "value": "three"}
    assert error.value.message == "Column 'qty', row 3: value 'three' is not a valid int"
    assert warehouse(settings).tables() == []  # nothing half-stored, not even an empty table


def test_type_errors_are_clear(settings):
    people(settings)
    with pytest.raises(ValidationError, match="row 2: value '2.5' is not a valid int"):
        load_table(settings, ORG, "people", pa.table({"id": ["1", "2.5"]}), types={"id": "int"})
    with pytest.raises(ValidationError, match="Unknown type 'money' for column 'id'"):
        load_table(settings, ORG, "people", pa.table({"id": [1]}), types={"id": "money"})
    with pytest.raises(ValidationError, match="row 2 has 'x'"):
        load_table(settings, ORG, "people", pd.DataFrame({"id": [1, "x"]}))
    with pytest.raises(ValidationError, match="Type given for unknown column 'nope'"):
        load_table(settings, ORG, "people", pa.table({"id": [1]}), types={"nope": "int"})
    with pytest.raises(ValidationError, match="Duplicate column name"):
        load_table(settings, ORG, "people", pa.table([pa.array([1]), pa.array([2])], names=["a", "A"]))
    with pytest.raises(ValidationError, match="Column 'day', row 1: value 'true' is not a valid date"):
        load_table(settings, ORG, "people", pa.table({"day": [True]}), types={"day": "date"})
    with pytest.raises(ValidationError, match=r"Column 'tags', row 1: value '\[1, 2\]' is not a valid date"):
        load_table(settings, ORG, "people", pa.table({"tags": [[1, 2]]}), types={"tags": "date"})
    assert rows(settings, "people") == [
        {"id": 1, "name": "ann", "score": 10},
        {"id": 2, "name": "bob", "score": 20},
        {"id": 3, "name": "cyd", "score": 30},
    ]


# -- history, listing, names ---------------------------------------------------------------------------------
def test_history_records_each_load(settings):
    people(settings)
    with pytest.raises(ValidationError):
        load_table(
            settings,
            ORG,
            "people",
            pa.table({"id": [1, None], "name": ["a", "b"], "score": [1, 2]}),
            mode="upsert",
            key=["id"],
            actor_id=None,
            actor="push etl",
            origin="push",
        )
    history = load_history(settings, ORG, "people")
    assert [(h["mode"], h["status"], h["rows_out"]) for h in history] == [
        ("upsert", "failed", None),
        ("replace", "succeeded", 3),
    ]
    assert history[0]["actor"] == "push etl" and history[0]["origin"] == "push"
    assert "Key column 'id' is empty (NULL) in row 2" in history[0]["error"]
    assert history[1]["rows_in"] == 3 and history[1]["error"] is None and history[1]["duration_seconds"] >= 0
    assert load_history(settings, ORG, "other") == []
    listed = warehouse_tables(settings, ORG)
    assert listed == [
        {
            "name": "people",
            "rows": 3,
            "columns": [
                {"name": "id", "type": "BIGINT"},
                {"name": "name", "type": "VARCHAR"},
                {"name": "score", "type": "BIGINT"},
            ],
        }
    ]


@pytest.mark.parametrize(
    "name",
    [
        "../people",
        'peo"ple',
        "main.people",
        "people; DROP TABLE people",
        "",
        "x" * 64,
        f"{STAGING_PREFIX}x",
        None,
    ],
)
def test_hostile_table_names_are_refused(settings, name):
    people(settings)
    with pytest.raises(ValidationError) as error:
        load_table(settings, ORG, name, pa.table({"id": [1]}))
    assert error.value.fields["field"] == "table"
    assert warehouse(settings).tables() == ["people"] and len(rows(settings, "people")) == 3
    assert [h["table"] for h in load_history(settings, ORG)] == ["people"]


def test_warehouse_reopens_while_a_result_outlives_its_cursor(settings, duckdb_only):
    people(settings)
    path = settings.warehouse_path(ORG)
    with warehouse_duckdb(path, {"p": "people"}) as con:
        # A reader abandoned mid-way (a row limit hit) keeps DuckDB's instance alive after the cursor closed.
        pending = con.sql("SELECT * FROM p").to_arrow_reader(1)
    assert len(rows(settings, "people")) == 3
    load_table(settings, ORG, "people", pa.table({"id": [4], "name": ["dan"], "score": [4]}), mode="append")
    assert len(rows(settings, "people")) == 4
    del pending


def test_data_the_warehouse_cannot_store_is_a_clear_400_and_changes_nothing(settings):
    people(settings)
    before = rows(settings, "people")
    half_floats = pa.array(np.array([1.5, 2.5, 3.5], dtype=np.float16))
    with pytest.raises(ValidationError) as unreadable:
        load_table(
            settings,
            ORG,
            "people",
            pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"], "score": half_floats}),
        )
    assert unreadable.value.status == 400 and unreadable.value.fields["field"] == "data"
    assert "cannot be loaded into 'people'" in unreadable.value.message
    if settings.warehouse_url:
        # DuckDB keeps a NUL character in text; PostgreSQL refuses it: still the data's fault, still a 400.
        with pytest.raises(ValidationError) as refused:
            load_table(
                settings,
                ORG,
                "people",
                pa.table({"id": [9], "name": ["a\x00b"], "score": [1]}),
                mode="append",
            )
        assert refused.value.status == 400 and "refused the data" in refused.value.message
    assert rows(settings, "people") == before
    failures = 2 if settings.warehouse_url else 1
    statuses = [h["status"] for h in load_history(settings, ORG, "people")]
    assert statuses == ["failed"] * failures + ["succeeded"]


def test_the_warehouse_memory_limit_setting(settings, duckdb_only):
    from carnet.warehouse import open_cursor

    with pytest.raises(ValueError, match="512MB or 2GB"):
        CarnetSettings(warehouse_memory_limit="lots")
    limited = CarnetSettings(warehouse_memory_limit="256MB")
    people(limited)
    # The instance the load opened is gone (closed with its last cursor); the next opener sets the limit.
    with open_cursor(limited.warehouse_path(ORG), memory_limit="256MB") as (con, _lock):
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"
        with pytest.raises(duckdb.Error):  # and nobody's SQL may raise it again
            con.execute("SET memory_limit = '8GB'")
    assert len(rows(limited, "people")) == 3


def test_a_query_naming_a_column_a_later_load_dropped_is_a_400_naming_it(settings):
    from carnet.query.spec import parse_spec

    people(settings)
    spec = parse_spec({"columns": ["name", "score"], "order_by": ["name"]}, ["id", "name", "score"])
    assert warehouse(settings).query_arrow("people", spec).column("score").to_pylist() == [10, 20, 30]
    load_table(settings, ORG, "people", pa.table({"id": [1], "name": ["ann"]}))  # score is gone
    with pytest.raises(ValidationError) as refused:
        warehouse(settings).query_arrow("people", spec)
    assert refused.value.status == 400 and "score" in refused.value.message
