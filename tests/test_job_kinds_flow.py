"""The job kinds that move work along: ``chain`` (other jobs in order), ``load`` (a source synced into a
warehouse table) and ``warmup`` (an app's page pre-rendered for its people).

Chains and loads run in process (as tests/test_units.py's scheduler tests): a fresh SQLite platform database,
the org's real DuckDB warehouse, sources over a warehouse table or over a throw-away database on the test
PostgreSQL server, the real Carnet service's routes on a loopback port (tests/test_job_notebook.py's
``platform``: load jobs sync through its REST API with their run's job token) and the real JobExecutor on runs
claimed from the real queue. The warehouse is read with DuckDB directly. The warm-up, the analyst's refusal
and the API's answers run on a real stack of their own (the Viewer's render pool on), under the machine's
stack lock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import (
    App,
    Connection,
    DataSource,
    Job,
    JobRun,
    Membership,
    Organization,
    OutboxMail,
    Role,
    RunStatus,
    TokenKind,
    User,
    WarehouseLoad,
    utcnow,
)
from carnet.errors import NotFound, PermissionDenied, ValidationError
from carnet.loads import load_table
from carnet.permissions import Principal
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.kinds import kind_named
from carnet.scheduler.run_queue import claim_next_run, recover_interrupted_runs
from carnet.tokens import mint_token
from carnet.warehouse import connect_waiting
from tests.api_support import assert_json_error
from tests.sql_servers import scratch_pg_database
from tests.test_job_notebook import platform  # noqa: F401 - the fixture: the service on a loopback port

SEED = {"id": [1, 2, 3], "region": ["north", "south", "east"], "amount": [10, 20, 30]}
ORDERS = (
    "CREATE TABLE orders (id int PRIMARY KEY, region text, amount int)",
    "INSERT INTO orders SELECT i, (ARRAY['north','south','east'])[1 + mod(i, 3)], i * 10 "
    "FROM generate_series(1, 40) AS i",
)


# -- a fresh platform, its warehouse and its sources -------------------------------------------------------
@pytest.fixture
def settings(platform, monkeypatch):  # noqa: F811 - pytest's fixture argument
    """The in-process service's settings (the same object the service and the executor read)."""
    settings, _service = platform
    # The test database servers, and closed ports there: for the service's reads and for validate().
    settings.sql_allow_hosts = ["127.0.0.1"]
    monkeypatch.setenv("CARNET_SQL_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("CARNET_API_URL", settings.api_url)
    return settings


@pytest.fixture
def world(settings):
    """acme (sam: studio, owns the jobs; ana: analyst) and globex (gus: studio); acme's warehouse has a
    ``seed`` table and a ``seed`` source over it."""
    with session_scope(settings.db_url) as session:
        acme, globex = Organization(slug="acme", name="Acme"), Organization(slug="globex", name="Globex")
        sam, ana, gus = (
            User(email="sam@acme.example"),
            User(email="ana@acme.example"),
            User(email="gus@gx.example"),
        )
        session.add_all([acme, globex, sam, ana, gus])
        session.flush()
        session.add_all(
            [
                Membership(user_id=sam.id, org_id=acme.id, role=Role.studio),
                Membership(user_id=ana.id, org_id=acme.id, role=Role.analyst),
                Membership(user_id=gus.id, org_id=globex.id, role=Role.studio),
                DataSource(org_id=acme.id, name="seed", kind="warehouse_table", options={"table": "seed"}),
            ]
        )
        ids = {"acme": acme.id, "globex": globex.id, "sam": sam.id, "ana": ana.id, "gus": gus.id}
    load_table(settings, ids["acme"], "seed", pa.table(SEED), mode="replace")
    return ids


def principal(settings, world, who="sam", org="acme") -> Principal:
    with session_scope(settings.db_url) as session:
        membership = session.scalar(
            select(Membership).where(Membership.user_id == world[who], Membership.org_id == world[org])
        )
        return Principal(world[who], membership.user.email, world[org], org, membership.role, via="hub")


def add_job(settings, world, kind: str, config: dict, owner="sam", org="acme", **fields) -> int:
    with session_scope(settings.db_url) as session:
        job = Job(
            org_id=world[org],
            name=f"{kind} {uuid.uuid4().hex[:6]}",
            kind=kind,
            config=config,
            owner_id=world[owner],
            cron=None,
            **fields,
        )
        session.add(job)
        session.flush()
        return job.id


def load_job(settings, world, table: str, source="seed", mode="replace", key=None, **fields) -> int:
    return add_job(
        settings, world, "load", {"source": source, "table": table, "mode": mode, "key": key or []}, **fields
    )


def chain_job(settings, world, steps: list[int], **fields) -> int:
    return add_job(settings, world, "chain", {"steps": steps}, **fields)


def run_now(settings, job_id: int, later: float = 0) -> tuple[int, RunStatus]:
    """Queue a manual run of ``job_id`` (unless one is queued: a retry), claim it ``later`` seconds from now
    as the scheduler would, and execute it."""
    with session_scope(settings.db_url) as session:
        queued = session.scalar(
            select(JobRun.id).where(JobRun.job_id == job_id, JobRun.status == RunStatus.queued)
        )
        if queued is None:
            run = JobRun(job_id=job_id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow())
            session.add(run)
            session.flush()
    run_id = claim_next_run(settings.db_url, now=utcnow() + timedelta(seconds=later))
    assert run_id is not None
    return run_id, JobExecutor(settings, run_id).run()


def run_row(settings, run_id: int) -> JobRun:
    with session_scope(settings.db_url) as session:
        return session.get(JobRun, run_id)


def runs_of(settings, job_id: int) -> list[JobRun]:
    with session_scope(settings.db_url) as session:
        return list(session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id)))


def steps_of(settings, run_id: int) -> list[JobRun]:
    with session_scope(settings.db_url) as session:
        return list(session.scalars(select(JobRun).where(JobRun.parent_run_id == run_id).order_by(JobRun.id)))


def warehouse_rows(settings, org_id: int, table: str, sql="SELECT id, region, amount FROM {t} ORDER BY id"):
    """The table's rows read with DuckDB from the org's file, or None when there is no such table."""
    with connect_waiting(settings.warehouse_path(org_id), read_only=True) as con:
        names = [row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        if table not in names:
            return None
        return con.execute(sql.format(t=f'"{table}"')).fetchall()


def loads_into(settings, org_id: int, table: str) -> list[WarehouseLoad]:
    with session_scope(settings.db_url) as session:
        return list(
            session.scalars(
                select(WarehouseLoad)
                .where(WarehouseLoad.org_id == org_id, WarehouseLoad.table_name == table)
                .order_by(WarehouseLoad.id)
            )
        )


def outbox_of(settings, run_ids: list[int]) -> list[tuple[int, str, str]]:
    with session_scope(settings.db_url) as session:
        rows = session.scalars(
            select(OutboxMail).where(OutboxMail.run_id.in_(run_ids)).order_by(OutboxMail.id)
        )
        return [(row.run_id, row.purpose, row.recipient) for row in rows]


SEED_ROWS = [(1, "north", 10), (2, "south", 20), (3, "east", 30)]


# -- chain ------------------------------------------------------------------------------------------------
def test_a_chain_runs_its_steps_in_order_each_as_a_step_run(settings, world):
    tables = ["first", "second", "third"]
    steps = [load_job(settings, world, table) for table in tables]
    chain = chain_job(settings, world, steps)
    run_id, status = run_now(settings, chain)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    children = steps_of(settings, run_id)
    assert [child.job_id for child in children] == steps
    for child in children:
        assert (child.status, child.trigger, child.triggered_by) == (
            RunStatus.succeeded,
            "chain",
            f"chain run {run_id}",
        )
        assert child.parent_run_id == run_id and child.started_at <= child.finished_at
    # One after the other: each step started once the one before it had finished.
    for before, after in zip(children, children[1:], strict=False):
        assert before.finished_at <= after.started_at
    for table in tables:
        assert warehouse_rows(settings, world["acme"], table) == SEED_ROWS
    # The steps ran inside the chain's run: nothing is left queued for the scheduler to claim.
    assert claim_next_run(settings.db_url) is None
    assert outbox_of(settings, [run_id, *(c.id for c in children)]) == []  # no mail of its own


def test_a_failing_step_stops_the_chain_and_only_the_chain_notifies_its_owner(settings, world):
    first = load_job(settings, world, "one")
    broken = load_job(settings, world, "two", source="gone")  # its source no longer exists: not transient
    third = load_job(settings, world, "three")
    chain = chain_job(settings, world, [first, broken, third])
    run_id, status = run_now(settings, chain)
    assert status == RunStatus.failed
    chain_run = run_row(settings, run_id)
    assert chain_run.status == RunStatus.failed and chain_run.attempt == 1  # never retried
    with session_scope(settings.db_url) as session:
        broken_name = session.get(Job, broken).name
    assert chain_run.error.startswith(f"Step 2 of 3 ({broken_name!r}, job {broken}) failed:")
    assert "No source named 'gone'" in chain_run.error
    children = steps_of(settings, run_id)
    assert [(c.job_id, c.status) for c in children] == [
        (first, RunStatus.succeeded),
        (broken, RunStatus.failed),
    ]
    assert runs_of(settings, third) == [] and warehouse_rows(settings, world["acme"], "three") is None
    assert warehouse_rows(settings, world["acme"], "one") == SEED_ROWS
    # One notice, for the chain's run, to the chain's owner; none for the failed step's run.
    assert outbox_of(settings, [run_id, *(c.id for c in children)]) == [
        (run_id, "failure", "sam@acme.example")
    ]


def test_chains_nest(settings, world):
    inner_step = load_job(settings, world, "inner")
    inner = chain_job(settings, world, [inner_step])
    before, after = load_job(settings, world, "before"), load_job(settings, world, "after")
    outer = chain_job(settings, world, [before, inner, after])
    run_id, status = run_now(settings, outer)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    children = steps_of(settings, run_id)
    assert [(c.job_id, c.status) for c in children] == [
        (j, RunStatus.succeeded) for j in (before, inner, after)
    ]
    [grandchild] = steps_of(settings, children[1].id)
    assert (grandchild.job_id, grandchild.status) == (inner_step, RunStatus.succeeded)
    assert (
        children[0].finished_at <= grandchild.started_at <= grandchild.finished_at <= children[2].started_at
    )
    for table in ("before", "inner", "after"):
        assert warehouse_rows(settings, world["acme"], table) == SEED_ROWS
    assert claim_next_run(settings.db_url) is None


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once closed


@pytest.fixture
def shop(pg_url, settings, world):
    """A throw-away PostgreSQL database with 40 ``orders``, acme's connection to it and an ``orders``
    source over it."""
    with scratch_pg_database(pg_url, "carnet_flow", *ORDERS) as (url, pg_settings):
        with session_scope(settings.db_url) as session:
            connection = Connection(org_id=world["acme"], name="shop", kind="sql", settings=pg_settings)
            session.add(connection)
            session.flush()
            session.add(
                DataSource(
                    org_id=world["acme"],
                    name="orders",
                    kind="sql_table",
                    options={"table": "orders"},
                    connection_id=connection.id,
                )
            )
            connection_id = connection.id
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        yield SimpleNamespace(engine=engine, settings=pg_settings, connection_id=connection_id)
        engine.dispose()


def pg_rows(shop) -> list[tuple]:
    import sqlalchemy as sa

    with shop.engine.connect() as con:
        return [
            tuple(row) for row in con.execute(sa.text("SELECT id, region, amount FROM orders ORDER BY id"))
        ]


def set_server(settings, shop, port: int) -> None:
    """Point acme's connection at ``port`` (a closed one: the server is down)."""
    with session_scope(settings.db_url) as session:
        session.get(Connection, shop.connection_id).settings = {**shop.settings, "port": port}


def test_a_step_down_on_a_transient_error_retries_the_chain_without_redoing_succeeded_steps(
    settings, world, shop
):
    first = load_job(settings, world, "first")
    from_pg = load_job(settings, world, "from_pg", source="orders")
    last = load_job(settings, world, "last")
    chain = chain_job(settings, world, [first, from_pg, last], retry_backoff_seconds=30)
    set_server(settings, shop, closed_port())
    run_id, status = run_now(settings, chain)
    # The PostgreSQL server did not answer: the chain is queued again after its backoff, not failed.
    assert status == RunStatus.queued
    chain_run = run_row(settings, run_id)
    assert (chain_run.status, chain_run.attempt) == (RunStatus.queued, 2)
    assert "Try 1 of 4 failed; retried in 30 s: Step 2 of 3" in chain_run.error
    assert [(c.job_id, c.status) for c in steps_of(settings, run_id)] == [
        (first, RunStatus.succeeded),
        (from_pg, RunStatus.failed),
    ]
    assert claim_next_run(settings.db_url) is None  # not before its backoff
    assert outbox_of(settings, [run_id]) == []  # no failure notice: it is retried

    set_server(settings, shop, shop.settings["port"])  # the server is back
    again, status = run_now(settings, chain, later=31)
    assert again == run_id and status == RunStatus.succeeded, run_row(settings, run_id).error
    children = steps_of(settings, run_id)
    # The first step is not run again (one run, one load); the step that failed is tried again on its run.
    assert [(c.job_id, c.status, c.attempt) for c in children] == [
        (first, RunStatus.succeeded, 1),
        (from_pg, RunStatus.succeeded, 2),
        (last, RunStatus.succeeded, 1),
    ]
    assert len(loads_into(settings, world["acme"], "first")) == 1
    assert warehouse_rows(settings, world["acme"], "from_pg") == pg_rows(shop)
    assert warehouse_rows(settings, world["acme"], "last") == SEED_ROWS


def test_a_chain_interrupted_mid_step_resumes_after_its_succeeded_steps(settings, world):
    first, second = load_job(settings, world, "first"), load_job(settings, world, "second")
    chain = chain_job(settings, world, [first, second])
    # What a scheduler killed during the second step leaves: the chain and that step 'running', the first
    # step succeeded (its table was loaded before the crash; here it was not, so a re-run would show).
    with session_scope(settings.db_url) as session:
        chain_run = JobRun(job_id=chain, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(chain_run)
        session.flush()
        for job_id, status in ((first, RunStatus.succeeded), (second, RunStatus.running)):
            session.add(
                JobRun(
                    job_id=job_id,
                    status=status,
                    trigger="chain",
                    triggered_by=f"chain run {chain_run.id}",
                    parent_run_id=chain_run.id,
                    started_at=utcnow(),
                    finished_at=utcnow() if status == RunStatus.succeeded else None,
                )
            )
        run_id = chain_run.id
    assert recover_interrupted_runs(settings) == 2
    assert (run_row(settings, run_id).status, run_row(settings, run_id).attempt) == (RunStatus.queued, 2)
    interrupted = steps_of(settings, run_id)[1]
    assert interrupted.status == RunStatus.failed and "Interrupted" in interrupted.error

    again, status = run_now(settings, chain)
    assert again == run_id and status == RunStatus.succeeded, run_row(settings, run_id).error
    children = steps_of(settings, run_id)
    assert [(c.job_id, c.status) for c in children] == [
        (first, RunStatus.succeeded),
        (second, RunStatus.succeeded),
    ]
    assert children[1].id == interrupted.id and children[1].attempt == 2
    assert warehouse_rows(settings, world["acme"], "first") is None  # the succeeded step was not run again
    assert warehouse_rows(settings, world["acme"], "second") == SEED_ROWS


def validate_chain(settings, world, config, who="sam", org="acme", **body):
    with session_scope(settings.db_url) as session:
        return kind_named("chain").validate(
            session, settings, principal(settings, world, who, org), {"config": config, **body}
        )


def test_chain_steps_are_checked_when_the_chain_is_made(settings, world):
    step = load_job(settings, world, "t")
    assert validate_chain(settings, world, {"steps": [step]}) == {"steps": [step]}
    for config, message in [
        ({"steps": []}, "config.steps must be a list of 1 to 20 job ids"),
        ({"steps": list(range(1, 22))}, "config.steps must be a list of 1 to 20 job ids"),
        ({"steps": [str(step)]}, "config.steps must be a list of 1 to 20 job ids"),
        ({"steps": [True]}, "config.steps must be a list of 1 to 20 job ids"),
        ({"steps": [step, step]}, "config.steps names a job twice"),
        ({"steps": [step], "then": 1}, "Unknown field 'config.then'"),
    ]:
        with pytest.raises(ValidationError) as refused:
            validate_chain(settings, world, config)
        assert refused.value.message == message
        assert refused.value.fields["field"].startswith("config")
    with pytest.raises(ValidationError) as refused:
        validate_chain(settings, world, None)
    assert refused.value.fields["field"] == "config"
    # Unknown, and another organization's: the same 404.
    globex_job = load_job(settings, world, "t", owner="gus", org="globex")
    for missing in (10**9, globex_job):
        with pytest.raises(NotFound, match="^No such job$"):
            validate_chain(settings, world, {"steps": [step, missing]})
    # globex's own chain may name it.
    assert validate_chain(settings, world, {"steps": [globex_job]}, who="gus", org="globex")


def test_chains_never_loop_and_nest_at_most_five_deep(settings, world):
    step = load_job(settings, world, "t")
    inner = chain_job(settings, world, [step])
    outer = chain_job(settings, world, [inner])
    # A chain changed (PATCH passes its id) to run a chain that runs it: a loop.
    with pytest.raises(ValidationError) as refused:
        validate_chain(settings, world, {"steps": [outer]}, id=inner)
    assert "loop" in refused.value.message and refused.value.fields["field"] == "config.steps"
    with pytest.raises(ValidationError, match="loop"):
        validate_chain(settings, world, {"steps": [inner]}, id=inner)
    # Chains already in a loop (their configs changed behind the API): a new chain over them is refused,
    # and running one fails before any step runs.
    with session_scope(settings.db_url) as session:
        session.get(Job, inner).config = {"steps": [step, outer]}
    with pytest.raises(ValidationError, match="loop"):
        validate_chain(settings, world, {"steps": [outer]})
    run_id, status = run_now(settings, outer)
    assert status == RunStatus.failed and "loop" in run_row(settings, run_id).error
    assert steps_of(settings, run_id) == [] and runs_of(settings, step) == []

    # Depth: chain 1 holds a plain job, chain k holds chain k-1; a chain over chain 4 is 5 deep.
    nested = [chain_job(settings, world, [step])]
    for _ in range(3):
        nested.append(chain_job(settings, world, [nested[-1]]))
    assert validate_chain(settings, world, {"steps": [nested[-1]]}) == {"steps": [nested[-1]]}
    too_deep = chain_job(settings, world, [nested[-1]])
    with pytest.raises(ValidationError) as refused:
        validate_chain(settings, world, {"steps": [too_deep]})
    assert refused.value.message == "config.steps: chains may nest at most 5 deep"


# -- load -------------------------------------------------------------------------------------------------
def result_of(settings, run_id: int) -> dict:
    return json.loads((Path(run_row(settings, run_id).output_dir) / "load.json").read_text())


def test_load_jobs_replace_append_and_upsert_the_postgresql_rows(settings, world, shop):
    acme = world["acme"]
    replace = load_job(settings, world, "orders_copy", source="orders")
    run_id, status = run_now(settings, replace)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    assert warehouse_rows(settings, acme, "orders_copy") == pg_rows(shop)
    assert result_of(settings, run_id) == {
        "source": "orders",
        "table": "orders_copy",
        "mode": "replace",
        "status": "succeeded",
        "load_id": result_of(settings, run_id)["load_id"],
        "rows_in": 40,
        "rows_out": 40,
        "duration_seconds": result_of(settings, run_id)["duration_seconds"],
    }
    [history] = loads_into(settings, acme, "orders_copy")
    with session_scope(settings.db_url) as session:
        name = session.get(Job, replace).name
    assert (history.origin, history.actor, history.actor_id, history.status) == (
        "job",
        f"sync orders by job {name!r} run {run_id}",
        world["sam"],
        "succeeded",
    )
    assert not [p for p in Path(run_row(settings, run_id).output_dir).iterdir() if p.name.startswith(".")]

    append = load_job(settings, world, "orders_copy", source="orders", mode="append")
    run_id, status = run_now(settings, append)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    assert warehouse_rows(settings, acme, "orders_copy") == sorted(pg_rows(shop) * 2)
    assert (result_of(settings, run_id)["rows_in"], result_of(settings, run_id)["rows_out"]) == (40, 80)

    # Upsert on id: changed and new rows of the source replace or join the table's (after a replace).
    run_now(settings, replace)
    with shop.engine.begin() as con:
        import sqlalchemy as sa

        con.execute(sa.text("UPDATE orders SET amount = amount + 1 WHERE id <= 5"))
        con.execute(sa.text("INSERT INTO orders VALUES (41, 'west', 7), (42, 'west', 8)"))
    upsert = load_job(settings, world, "orders_copy", source="orders", mode="upsert", key=["id"])
    run_id, status = run_now(settings, upsert)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    rows = warehouse_rows(settings, acme, "orders_copy")
    assert rows == pg_rows(shop) and len(rows) == 42 and rows[0] == (1, "south", 11)
    assert result_of(settings, run_id)["rows_out"] == 42


def test_a_source_server_down_requeues_the_load_with_backoff(settings, world, shop):
    set_server(settings, shop, closed_port())
    job = load_job(settings, world, "orders_copy", source="orders", retry_backoff_seconds=45, max_retries=1)
    run_id, status = run_now(settings, job)
    assert status == RunStatus.queued
    run = run_row(settings, run_id)
    assert (run.status, run.attempt) == (RunStatus.queued, 2)
    assert run.not_before is not None and run.error.startswith(
        "Try 1 of 2 failed; retried in 45 s: Reading 'orders'"
    )
    assert not (Path(run.output_dir) / "load.json").exists()
    assert warehouse_rows(settings, world["acme"], "orders_copy") is None
    assert claim_next_run(settings.db_url) is None  # its backoff first
    # Still down at the last try: the run fails and its owner is told once.
    _, status = run_now(settings, job, later=46)
    assert status == RunStatus.failed
    run = run_row(settings, run_id)
    assert (run.status, run.attempt) == (RunStatus.failed, 2) and run.error.startswith("Reading 'orders'")
    assert outbox_of(settings, [run_id]) == [(run_id, "failure", "sam@acme.example")]
    with session_scope(settings.db_url) as session:
        notice = session.scalar(select(OutboxMail.body).where(OutboxMail.run_id == run_id))
    assert "failed after 2 tries" in notice and "Reading 'orders'" in notice


def test_bad_data_fails_a_load_for_good(settings, world):
    # Upsert on a column the source does not have: the data is wrong, trying again will not help.
    job = load_job(settings, world, "seed_copy", mode="upsert", key=["no_such_column"])
    run_id, status = run_now(settings, job)
    run = run_row(settings, run_id)
    assert (status, run.status, run.attempt) == (RunStatus.failed, RunStatus.failed, 1)
    assert run.error.startswith("Loading 'seed' into 'seed_copy':") and "no_such_column" in run.error
    assert warehouse_rows(settings, world["acme"], "seed_copy") is None


def test_a_load_fails_once_its_owner_may_no_longer_load(settings, world):
    job = load_job(settings, world, "seed_copy")
    with session_scope(settings.db_url) as session:
        session.scalar(
            select(Membership).where(Membership.user_id == world["sam"], Membership.org_id == world["acme"])
        ).role = Role.analyst
    run_id, status = run_now(settings, job)
    assert status == RunStatus.failed
    assert run_row(settings, run_id).error.startswith("The job's owner may no longer load the warehouse")
    assert warehouse_rows(settings, world["acme"], "seed_copy") is None


def test_a_load_whose_service_does_not_answer_is_retried(settings, world):
    # The service's address with nothing listening (a restart): the run is retried, the table untouched.
    served_at = settings.api_url
    settings.api_url = f"http://127.0.0.1:{closed_port()}/services/carnet/"
    job = load_job(settings, world, "seed_copy", retry_backoff_seconds=20)
    run_id, status = run_now(settings, job)
    run = run_row(settings, run_id)
    assert (status, run.attempt) == (RunStatus.queued, 2)
    assert "The Carnet service did not answer: ConnectionError" in run.error
    assert warehouse_rows(settings, world["acme"], "seed_copy") is None
    settings.api_url = served_at  # the service is back: the retry loads
    again, status = run_now(settings, job, later=21)
    assert (again, status) == (run_id, RunStatus.succeeded), run_row(settings, run_id).error
    assert warehouse_rows(settings, world["acme"], "seed_copy") == SEED_ROWS


def test_a_retry_finds_its_loads_answer_in_the_history_and_does_not_load_again(settings, world):
    acme = world["acme"]
    job = load_job(settings, world, "seed_twice", mode="append")
    run_id, status = run_now(settings, job)
    assert status == RunStatus.succeeded, run_row(settings, run_id).error
    first = result_of(settings, run_id)
    # What a scheduler killed after the service loaded, before load.json was written, leaves: the load in
    # the table's history, no load.json, the run queued again for its next try.
    run_dir = Path(run_row(settings, run_id).output_dir)
    (run_dir / "load.json").unlink()
    with session_scope(settings.db_url) as session:
        run = session.get(JobRun, run_id)
        run.status, run.attempt, run.finished_at = RunStatus.queued, 2, None
    again, status = run_now(settings, job)
    assert (again, status) == (run_id, RunStatus.succeeded), run_row(settings, run_id).error
    assert warehouse_rows(settings, acme, "seed_twice") == SEED_ROWS  # appended once, not twice
    assert len(loads_into(settings, acme, "seed_twice")) == 1
    assert result_of(settings, run_id) == {
        **first,
        "duration_seconds": result_of(settings, run_id)["duration_seconds"],
    }
    # Another run of the same job does append again: only this run's own load counts.
    other, status = run_now(settings, job)
    assert other != run_id and status == RunStatus.succeeded
    assert len(warehouse_rows(settings, acme, "seed_twice")) == 6


def job_token(settings, world, who: str, kind=TokenKind.job, job_run_id=None) -> str:
    with session_scope(settings.db_url) as session:
        return mint_token(
            session,
            kind=kind,
            user_id=world[who],
            org_id=world["acme"],
            ttl_seconds=600,
            job_run_id=job_run_id,
        )


def test_through_the_service_a_job_token_loads_as_far_as_its_owners_role_allows(
    settings,
    world,
    platform,  # noqa: F811 - pytest's fixture argument
):
    _, service = platform
    sync_body = {"source": "seed", "mode": "replace"}

    def call(method, path, token, **kwargs):
        return requests.request(
            method, service.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
        )

    # An analyst's job: it may read the warehouse (a burst's recipients) but not load it.
    analyst = job_token(settings, world, "ana")
    assert call("GET", "warehouse/tables", analyst).status_code == 200
    refused = assert_json_error(call("POST", "warehouse/tables/by_ana/sync", analyst, json=sync_body), 403)
    assert refused["message"] == "Your role (analyst) does not allow warehouse:load"
    assert warehouse_rows(settings, world["acme"], "by_ana") is None

    # A studio owner's job: the load is made, and its history names the job's run (origin job).
    job = load_job(settings, world, "by_sam")
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        run_id, name = run.id, session.get(Job, job).name
    studio = job_token(settings, world, "sam", job_run_id=run_id)
    loaded = call("POST", "warehouse/tables/by_sam/sync", studio, json=sync_body)
    assert loaded.status_code == 200, loaded.text
    assert (loaded.json()["rows_in"], loaded.json()["rows_out"]) == (3, 3)
    assert warehouse_rows(settings, world["acme"], "by_sam") == SEED_ROWS
    [history] = loads_into(settings, world["acme"], "by_sam")
    assert (history.origin, history.actor, history.actor_id) == (
        "job",
        f"sync seed by job {name!r} run {run_id}",
        world["sam"],
    )

    # A Viewer kernel's token reads sources only, whatever its person's role: no warehouse at all.
    kernel = job_token(settings, world, "sam", kind=TokenKind.viewer_kernel)
    for method, path, kwargs in (
        ("GET", "warehouse/tables", {}),
        ("GET", "warehouse/tables/seed/loads", {}),
        ("POST", "warehouse/tables/by_kernel/sync", {"json": sync_body}),
    ):
        refused = assert_json_error(call(method, path, kernel, **kwargs), 403)
        assert "does not allow warehouse:" in refused["message"], (path, refused)
    assert warehouse_rows(settings, world["acme"], "by_kernel") is None


def validate_load(settings, world, config, who="sam"):
    with session_scope(settings.db_url) as session:
        reader = principal(settings, world, who)
        return kind_named("load").validate(session, settings, reader, {"config": config})


def test_load_jobs_are_checked_when_made_as_the_sync_route_checks(settings, world):
    good = {"source": "seed", "table": "copy", "mode": "upsert", "key": "id"}
    assert validate_load(settings, world, good) == {
        "source": "seed",
        "table": "copy",
        "mode": "upsert",
        "key": ["id"],
    }
    assert validate_load(settings, world, {"source": "seed", "table": "copy"})["mode"] == "replace"
    for change, field in [
        ({"table": "../x"}, "config.table"),
        ({"table": "a.b"}, "config.table"),
        ({"mode": "delete"}, "config.mode"),
        ({"mode": "upsert", "key": []}, "config.key"),
        ({"key": ["bad name"]}, "config.key"),
        ({"source": ""}, "config.source"),
        ({"table": "seed", "mode": "append"}, "config.source"),  # the source's own table
        ({"extra": 1}, "config.extra"),
    ]:
        with pytest.raises(ValidationError) as refused:
            validate_load(settings, world, {**good, **change})
        assert refused.value.fields["field"] == field, (change, refused.value.message)
    with pytest.raises(NotFound, match="No source named 'nope'"):
        validate_load(settings, world, {**good, "source": "nope"})
    with pytest.raises(PermissionDenied, match="studio role"):
        validate_load(settings, world, good, who="ana")


# -- on a real stack: the analyst's refusal, the API's answers, and the warm-up -------------------------
VIEWER, ANALYST, STUDIO = "viewer@acme.example", "analyst@acme.example", "studio@acme.example"
VIEWER_PREFIX = "/services/carnet-viewer/"


@pytest.fixture(scope="module")
def warm_stack(smtp_server):
    """A stack of its own with the Viewer's render pool on (one page per key)."""
    from tests.helpers import CarnetStack

    data_dir = Path(tempfile.mkdtemp(prefix="carnet-flow-stack-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - kernels' accounts traverse it
    stack = CarnetStack(data_dir, smtp=smtp_server, env={"CARNET_VIEWER_POOL_SIZE": "1"})
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(warm_stack):
    from tests.helpers import hub_login, make_hub_token

    def token(email):
        return make_hub_token(
            warm_stack.url, hub_login(warm_stack.url, email, warm_stack.passwords[email]), email
        )

    return {email: token(email) for email in (ANALYST, STUDIO)}


def post_job(stack, token: str, body: dict) -> requests.Response:
    from tests.api_support import api_url, auth

    return requests.post(
        api_url(stack, "jobs"),
        json={"name": f"flow {uuid.uuid4().hex[:8]}", "cron": None, **body},
        headers=auth(token),
        timeout=30,
    )


def run_on_stack(stack, token: str, job_id: int) -> tuple[dict, str]:
    """Run ``job_id`` now through the API and wait for its end: the run's details and URL."""
    from tests.api_support import api_url, auth
    from tests.helpers import wait_until

    queued = requests.post(api_url(stack, f"jobs/{job_id}/runs"), headers=auth(token), timeout=30)
    assert queued.status_code == 202, queued.text
    run_url = api_url(stack, f"jobs/{job_id}/runs/{queued.json()['id']}")

    def finished():
        run = requests.get(run_url, headers=auth(token), timeout=30).json()
        return run if run["status"] in ("succeeded", "failed") else None

    return wait_until(finished, 240, interval=1, what=f"the run of job {job_id}"), run_url


def test_on_the_stack_the_scheduler_loads_through_the_service(warm_stack, tokens):
    from tests.api_support import api_url, auth

    stack = warm_stack
    made = post_job(
        stack,
        tokens[STUDIO],
        {"kind": "load", "config": {"source": "gapminder", "table": "gapminder_copy", "mode": "replace"}},
    )
    assert made.status_code == 201, made.text
    run, run_url = run_on_stack(stack, tokens[STUDIO], made.json()["id"])
    assert run["status"] == "succeeded", (run.get("error"), stack.log_tail(80))
    result = requests.get(f"{run_url}/outputs/load.json", headers=auth(tokens[STUDIO]), timeout=30).json()
    described = requests.get(
        api_url(stack, "warehouse/tables/gapminder"), headers=auth(tokens[STUDIO]), timeout=30
    ).json()
    assert result["rows_in"] == result["rows_out"] == described["rows"] > 1000
    [load] = requests.get(
        api_url(stack, "warehouse/tables/gapminder_copy/loads"), headers=auth(tokens[STUDIO]), timeout=30
    ).json()["loads"]
    assert (load["id"], load["origin"], load["status"]) == (result["load_id"], "job", "succeeded")
    assert load["actor"] == f"sync gapminder by job {made.json()['name']!r} run {run['id']}"


def test_through_the_api_an_analyst_may_not_make_a_load_job_and_bad_steps_are_refused(warm_stack, tokens):
    stack = warm_stack
    load = {"kind": "load", "config": {"source": "gapminder", "table": "copy"}}
    refused = assert_json_error(post_job(stack, tokens[ANALYST], load), 403)
    assert refused["message"] == "A load job needs the studio role or above"
    bad = assert_json_error(
        post_job(stack, tokens[STUDIO], {**load, "config": {**load["config"], "mode": "delete"}}), 400
    )
    assert bad["field"] == "config.mode"
    # A chain over another organization's job: the same 404 as an unknown one.
    with session_scope(stack.settings.db_url) as session:
        globex = session.scalar(select(Organization).where(Organization.slug == "globex"))
        owner = session.scalar(select(Membership.user_id).where(Membership.org_id == globex.id))
        job = Job(
            org_id=globex.id, name=f"globex {uuid.uuid4().hex[:6]}", kind="load", owner_id=owner, config={}
        )
        session.add(job)
        session.flush()
        globex_job = job.id
    for steps in ([globex_job], [10**9]):
        missing = assert_json_error(
            post_job(stack, tokens[ANALYST], {"kind": "chain", "config": {"steps": steps}}), 404
        )
        assert missing["message"] == "No such job"
    empty = assert_json_error(
        post_job(stack, tokens[ANALYST], {"kind": "chain", "config": {"steps": []}}), 400
    )
    assert empty["field"] == "config.steps"
    # A warm-up for someone outside the organization.
    outsider = assert_json_error(
        post_job(
            stack,
            tokens[ANALYST],
            {"kind": "warmup", "app_id": stack.app_id, "config": {"people": ["viewer@globex.example"]}},
        ),
        400,
    )
    assert outsider["field"] == "config.people" and "not a member" in outsider["message"]


def test_after_a_warm_up_run_the_persons_first_visit_is_handed_the_pooled_page(warm_stack, tokens):
    from bench.viewer_support import kernel_id_of
    from tests.api_support import auth
    from tests.helpers import hub_login
    from tests.test_viewer_pool import PRERENDERED

    stack = warm_stack
    app_id = stack.app_id

    def prerendered() -> list[str]:
        text = stack.log_path.read_text(errors="replace")
        return [kernel for app, kernel in PRERENDERED.findall(text) if int(app) == app_id]

    assert prerendered() == []  # nobody has opened the app on this stack: no page is pooled
    made = post_job(
        stack, tokens[ANALYST], {"kind": "warmup", "app_id": app_id, "config": {"people": [VIEWER]}}
    )
    assert made.status_code == 201, made.text
    headers = auth(tokens[ANALYST])
    run, run_url = run_on_stack(stack, tokens[ANALYST], made.json()["id"])
    assert run["status"] == "succeeded", (run.get("error"), stack.log_tail(80))
    [pooled] = prerendered()
    report = requests.get(f"{run_url}/outputs/warmup.json", headers=headers, timeout=30)
    assert report.status_code == 200
    assert report.json()["people"] == [
        {
            "person": VIEWER,
            "state": "pooled",
            "status": 200,
            "message": "The page is pre-rendered and waits for its person",
        }
    ]

    # The viewer's first visit: the pre-rendered page, and the kernel that made it.
    browser = hub_login(stack.url, VIEWER, stack.passwords[VIEWER])
    page = browser.get(f"{stack.url}{VIEWER_PREFIX}apps/{app_id}", timeout=120)
    assert page.status_code == 200, page.text[:300]
    assert kernel_id_of(page.text) == pooled
    assert f"Handed pre-rendered kernel {pooled}" in stack.log_path.read_text(errors="replace")
    # The warm-up's URL (it holds a token) never reached the kernel's environment nor the run's record.
    assert "carnet/warm/" not in json.dumps(run)
    xsrf = uuid.uuid4().hex
    browser.post(
        f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{pooled}",
        headers={"X-XSRFToken": xsrf},
        cookies={"_xsrf": xsrf},
        timeout=60,
    )


def test_the_warm_route_answers_only_an_authentic_unexpired_warm_token(warm_stack):
    from carnet.print_pages import sign_print
    from carnet.scheduler.kinds.warmup import sign_warm

    stack = warm_stack
    url = f"{stack.url}{VIEWER_PREFIX}carnet/warm/"
    with session_scope(stack.settings.db_url) as session:
        app = session.get(App, stack.app_id)
        print_token = sign_print(session, stack.settings, app, as_user=None)
        app_id, org_id = app.id, app.org_id
    expired = sign_warm(stack.settings, app_id, org_id, VIEWER, -5)
    good = sign_warm(stack.settings, app_id, org_id, VIEWER, 300)
    body, _, signature = good.partition(".")
    tampered = f"{body}.{signature[:-2]}AA"
    for token, status in ((print_token, 404), (tampered, 404), ("e30.AAAA", 404), (expired, 403)):
        answer = requests.post(url + token, timeout=30)
        assert answer.status_code == status, (token, answer.text[:300])
        assert answer.json()["status"] == status and answer.json()["message"]
    assert requests.get(url + good, timeout=30).status_code == 405
    # An authentic token for someone who may not open the app (another org's person): the service's 404.
    outsider = sign_warm(stack.settings, app_id, org_id, "viewer@globex.example", 300)
    answer = requests.post(url + outsider, timeout=60)
    assert answer.status_code == 404 and answer.json()["message"] == "No such app"
