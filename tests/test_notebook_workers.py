"""Warm notebook workers (carnet/scheduler/notebook_workers.py), in process: real worker processes with real
kernels (this test's own account: CARNET_ISOLATION=off), the real Carnet service on a loopback port (the
kernels' carnet.state calls with the run's token), runs of published notebooks through JobExecutor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, Membership, Organization, Role, RunStatus, User
from carnet.publishing import publish
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.notebook_workers import NotebookWorkerPool
from tests.test_job_notebook import SCHEDULED, make_notebook, parameters_cell, platform  # noqa: F401 - fixture

# Reports what the run's kernel sees, as one JSON line on stdout.
REPORT_CELL = """\
import json, os
import carnet

carnet.state.set("seen", carnet.state.get("seen", 0) + 1)  # the service accepts the run's token
print(json.dumps({
    "left_over": "defined_by_an_earlier_run" in globals(),
    "kernel_pid": os.getpid(),
    "cwd": os.getcwd(),
    "token": os.environ.get("CARNET_TOKEN"),
    "run_dir": os.environ.get("CARNET_RUN_DIR"),
    "params": dict(carnet.params),
    "label": label,
    "setup_in_history": [source for source in In if "__import__" + "('os')" in source],
}))
defined_by_an_earlier_run = True
"""


@pytest.fixture
def world(platform):  # noqa: F811 - platform is the fixture imported above
    settings, _ = platform
    with session_scope(settings.db_url) as session:
        acme, ana = Organization(slug="acme", name="Acme"), User(email="ana@acme.example")
        session.add_all([acme, ana])
        session.flush()
        session.add(Membership(user_id=ana.id, org_id=acme.id, role=Role.analyst))
        session.flush()
        return {"settings": settings, "acme": acme.id, "ana": ana.id}


@pytest.fixture
def pool():
    pool = NotebookWorkerPool(size=2, idle_seconds=600)
    yield pool
    pool.close()


def notebook_job(world, *cells: str, parameters=None) -> int:
    """A notebook job of a freshly published app: a parameters cell (label), then ``cells``."""
    settings = world["settings"]
    slug = f"nb-{uuid.uuid4().hex[:8]}"
    notebook = make_notebook(
        parameters_cell('label = "default"'), *(nbformat.v4.new_code_cell(cell) for cell in cells)
    )
    with session_scope(settings.db_url) as session:
        app = publish(
            session,
            settings,
            org_id=world["acme"],
            user_id=world["ana"],
            slug=slug,
            title=slug,
            notebook=notebook,
        )
        job = Job(
            org_id=world["acme"],
            name=slug,
            kind="notebook",
            app_id=app.id,
            parameters=parameters or {},
            config={"attach": "none", "cooldown_seconds": 3600},
            cron=None,
            recipients=[],
            owner_id=world["ana"],
        )
        session.add(job)
        session.flush()
        return job.id


class RecordingExecutor(JobExecutor):
    """A JobExecutor that remembers the job token it minted (what the kernel must see)."""

    minted: list[str] = []

    def mint_job_token(self, session, context, ttl_seconds: int = 3600) -> str:
        token = super().mint_job_token(session, context, ttl_seconds)
        RecordingExecutor.minted.append(token)
        return token


def run_job(world, job_id, pool=None, run_timeout=120, payload=None) -> JobRun:
    settings = world["settings"]
    with session_scope(settings.db_url) as session:
        run = JobRun(
            job_id=job_id,
            status=RunStatus.running,
            trigger="manual",
            payload=payload,
            scheduled_for=SCHEDULED,
        )
        session.add(run)
        session.flush()
        run_id = run.id
    RecordingExecutor(settings, run_id, cell_timeout=60, run_timeout=run_timeout, notebook_workers=pool).run()
    with session_scope(settings.db_url) as session:
        return session.get(JobRun, run_id)


def executed(run: JobRun) -> nbformat.NotebookNode:
    return nbformat.read(Path(run.output_dir) / "executed.ipynb", as_version=4)


def reported(run: JobRun) -> dict:
    texts = [
        output["text"]
        for cell in executed(run).cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output["text"].startswith("{")
    ]
    assert len(texts) == 1, texts
    return json.loads(texts[0])


def alive(pid: int) -> bool:
    """Running (a zombie, killed and not yet reaped by whoever inherited it, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if parent == pid and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def processes_in(folder: Path) -> list[int]:
    target, found = str(folder.resolve()), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == target and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- a worker is reused, a kernel never ----------------------------------------------------------------------
def test_a_second_run_reuses_the_worker_process_with_a_fresh_kernel_made_the_runs(world, pool):
    job = notebook_job(world, REPORT_CELL, parameters={"label": "job"})
    RecordingExecutor.minted = []
    first = run_job(world, job, pool, payload={"label": "first"})
    assert first.status == RunStatus.succeeded, first.error
    (worker,) = pool.workers()
    second = run_job(world, job, pool)
    assert second.status == RunStatus.succeeded, second.error
    assert [w.pid for w in pool.workers()] == [worker.pid] and worker.runs == 2  # the same process
    one, two = reported(first), reported(second)
    assert one["kernel_pid"] != two["kernel_pid"] and worker.pid not in (one["kernel_pid"], two["kernel_pid"])
    assert (one["left_over"], two["left_over"]) == (False, False)  # run 1's variable is gone in run 2
    # Each kernel had its own run's token (the one the executor minted), folder, and parameters.
    assert [one["token"], two["token"]] == RecordingExecutor.minted and one["token"] != two["token"]
    for run, seen in ((first, one), (second, two)):
        assert seen["cwd"] == seen["run_dir"] == str(Path(run.output_dir).resolve())
    assert one["params"] == {"label": "first", "scheduled_time": SCHEDULED.isoformat()}
    assert (one["label"], two["label"], two["params"]["label"]) == ("first", "job", "job")
    # The worker itself never holds a run's variables: only its kernel did, for one run.
    environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
    assert not [
        v for v in environ if v.startswith((b"CARNET_TOKEN=", b"CARNET_JOB_PARAMS=", b"CARNET_RUN_DIR="))
    ]
    assert os.readlink(f"/proc/{worker.pid}/cwd") != str(Path(first.output_dir).resolve())
    # After its run, a kernel is gone: no process of the worker is left in a run's folder.
    assert processes_in(Path(first.output_dir)) == [] and not alive(one["kernel_pid"])


def test_the_setup_execute_leaves_no_trace_in_the_executed_notebook(world, pool):
    job = notebook_job(world, "x = 1", REPORT_CELL)
    warm = run_job(world, job, pool)
    cold = run_job(world, job)  # no pool: its own process, as before
    assert warm.status == cold.status == RunStatus.succeeded, (warm.error, cold.error)
    assert reported(warm)["setup_in_history"] == [] and reported(warm)["token"]
    warm_nb, cold_nb = executed(warm), executed(cold)
    # The same cells, counted from 1 as in a cold run: the setup took no execution count and left no output.
    counts = [cell.get("execution_count") for cell in warm_nb.cells]
    assert counts == [cell.get("execution_count") for cell in cold_nb.cells] == [1, 2, 3, 4]
    assert [c.source for c in warm_nb.cells] == [c.source for c in cold_nb.cells]
    assert [[o["output_type"] for o in c.get("outputs", [])] for c in warm_nb.cells] == [
        [o["output_type"] for o in c.get("outputs", [])] for c in cold_nb.cells
    ]
    assert "__import__('os')" not in json.dumps(warm_nb) and warm_nb.metadata.papermill.exception is None


# -- failures ------------------------------------------------------------------------------------------------
def test_a_failed_cell_fails_with_the_cold_paths_message_and_keeps_the_notebook(world, pool):
    job = notebook_job(world, "print('before')", "1 / 0")
    warm = run_job(world, job, pool)
    cold = run_job(world, job)
    assert warm.status == cold.status == RunStatus.failed
    assert warm.error == cold.error
    assert warm.error.startswith("The notebook failed: Cell ")
    assert warm.error.endswith(" raised ZeroDivisionError: division by zero")
    notebook = executed(warm)
    assert "papermill-error-cell-tag" in notebook.cells[0].metadata.tags
    assert [
        o["ename"] for c in notebook.cells for o in c.get("outputs", []) if o["output_type"] == "error"
    ] == ["ZeroDivisionError"]
    assert not list(Path(warm.output_dir).glob(".*.part"))
    # The worker survives a notebook's error and serves the next run.
    (worker,) = pool.workers()
    assert run_job(world, notebook_job(world, "print(1)"), pool).status == RunStatus.succeeded
    assert [w.pid for w in pool.workers()] == [worker.pid]


def test_a_run_past_its_time_limit_kills_the_worker_and_the_next_run_gets_a_new_one(world, pool):
    slow = notebook_job(
        world, "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(120)"
    )
    assert run_job(world, notebook_job(world, "print(1)"), pool).status == RunStatus.succeeded
    (worker,) = pool.workers()
    started = time.monotonic()
    run = run_job(world, slow, pool, run_timeout=5)
    assert time.monotonic() - started < 30
    assert run.status == RunStatus.failed and "The notebook did not finish within 5 s" in run.error
    kernel_pid = int((Path(run.output_dir) / "kernel.pid").read_text())
    assert wait_for(lambda: not alive(kernel_pid) and not alive(worker.pid))
    assert processes_in(Path(run.output_dir)) == []
    assert pool.workers() == []  # dropped
    after = run_job(world, notebook_job(world, "print(2)"), pool)
    assert after.status == RunStatus.succeeded, after.error
    assert [w.pid for w in pool.workers()] != [worker.pid] and len(pool.workers()) == 1


def test_a_worker_that_dies_mid_run_fails_the_run_and_is_replaced(world, pool):
    # The kernel kills its parent: the worker.
    killer = notebook_job(
        world, "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(60)"
    )
    run = run_job(world, killer, pool)
    assert run.status == RunStatus.failed and run.error.startswith("The notebook failed: ")
    assert processes_in(Path(run.output_dir)) == [] and pool.workers() == []
    assert "killed" in run.error
    assert run_job(world, notebook_job(world, "print(3)"), pool).status == RunStatus.succeeded


# -- limits --------------------------------------------------------------------------------------------------
def test_idle_workers_stop_with_their_kernel(world):
    pool = NotebookWorkerPool(size=2, idle_seconds=3)
    try:
        assert run_job(world, notebook_job(world, "print(1)"), pool).status == RunStatus.succeeded
        (worker,) = pool.workers()
        assert pool.stop_idle() == 0  # just used
        assert wait_for(lambda: children_of(worker.pid))  # its next kernel, pre-started
        kernels = children_of(worker.pid)
        time.sleep(max(0.0, worker.last_used + 3.1 - time.monotonic()))
        assert pool.stop_idle() == 1 and pool.workers() == []
        assert not alive(worker.pid) and wait_for(lambda: not any(alive(pid) for pid in kernels))
    finally:
        pool.close()


def test_at_most_n_workers_the_least_recently_used_is_stopped(tmp_path):
    pool = NotebookWorkerPool(size=2, idle_seconds=600)
    env = {name: value for name, value in os.environ.items() if not name.startswith("CARNET_")}
    try:
        deadline = time.monotonic() + 60
        started = {}
        for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
            worker = pool.take(key, env, {"cwd": str(tmp_path)}, deadline)
            started.setdefault(key, worker)
            assert worker is started[key]  # "a" again: the same worker
            pool.release(worker)
            assert len(pool.workers()) <= 2
        assert sorted(w.key for w in pool.workers()) == ["a", "c"]
        assert not alive(started["b"].pid) and alive(started["a"].pid)
    finally:
        pool.close()
    assert not alive(started["a"].pid) and not alive(started["c"].pid)


# -- the cold start's speed-up -----------------------------------------------------------------------------
VALIDATES = """\
import sys
import carnet.scheduler.notebook_worker  # blocks rfc3987_syntax, then imports papermill
import nbformat

assert sys.modules["rfc3987_syntax"] is None
notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
nbformat.validate(notebook)
notebook.cells[0]["execution_count"] = "not a number"
try:
    nbformat.validate(notebook)
except nbformat.ValidationError as exc:
    print("refused:", str(exc).splitlines()[0])
"""


def test_without_rfc3987_syntax_notebooks_are_still_validated():
    done = subprocess.run([sys.executable, "-c", VALIDATES], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused: 'not a number' is not of type 'integer', 'null'"


# -- the scheduler's pool ------------------------------------------------------------------------------------
def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_real_scheduler_runs_notebooks_in_a_warm_worker_and_stops_it_on_sigterm(world, tmp_path):
    settings = world["settings"]
    job = notebook_job(world, "print(1)")
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job, status=RunStatus.queued, trigger="manual", scheduled_for=SCHEDULED)
        session.add(run)
        session.flush()
        run_id = run.id
    with open(tmp_path / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "carnet.scheduler"],
            env={**os.environ, "CARNET_SCHEDULER_POLL": "0.1"},
            cwd=Path(__file__).resolve().parents[1],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def status():
            with session_scope(settings.db_url) as session:
                return session.get(JobRun, run_id).status

        assert wait_for(lambda: status() in (RunStatus.succeeded, RunStatus.failed), 120), status()
        assert status() == RunStatus.succeeded, (tmp_path / "scheduler.log").read_text()[-2000:]
        workers = [
            pid for pid in children_of(scheduler.pid) if "carnet.scheduler.notebook_worker" in cmdline(pid)
        ]
        assert len(workers) == 1
        assert wait_for(lambda: children_of(workers[0]))  # its next kernel, pre-started
        kernels = children_of(workers[0])
        scheduler.terminate()  # SIGTERM: the scheduler's way to stop
        assert scheduler.wait(60) == 0
        assert wait_for(lambda: not alive(workers[0]) and not any(alive(pid) for pid in kernels))
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait()
