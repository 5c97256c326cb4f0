"""Issue 8's scheduler benchmark, each part side by side with the plain tool in one run:

1. overhead: one trivial notebook (a parameters cell, a cell summing a list) run by the bare papermill CLI,
   by papermill's Python API in a warm process (kernel started per run, and pre-started), and as a Carnet
   ``notebook`` job: JobExecutor in this process (claim -> run, each step timed), cold (a process per run)
   and with warm notebook workers (carnet/scheduler/notebook_workers.py), and a real scheduler process
   (queued -> succeeded; its pool on, as by default). Where Carnet's time goes comes from the steps'
   timestamps and the executed notebook's papermill metadata (start, cells, end).
2. PDF: the demo app ("World development", a plotly chart and a widget-driven chart) as papermill +
   ``jupyter nbconvert --to webpdf`` makes it vs Carnet's PDF (ViewerPrinter, a warm Chromium printing the
   Viewer's ``/print/<token>`` page), and full report jobs queued -> mailed; charts counted in each PDF.
3. throughput: a real scheduler process with N notebook jobs firing every 20 s for a few minutes: runs
   completed per hour, runs recorded skipped or missed, how late runs started.

Parts 1 and 3 need no stack (a temporary data directory, SQLite, kernels as this user: CARNET_ISOLATION=off).
Part 2 starts a Carnet stack, which uses machine-global OS accounts: the script takes /tmp/carnet-stack.lock
itself while its stack is up (do not wrap it in ``flock``: that would wait for itself).

    .venv/bin/python -m bench.scheduler_jobs [--quick] [--parts overhead,pdf,throughput]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import nbformat

VENV_BIN = Path(sys.executable).parent
STACK_LOCK = "/tmp/carnet-stack.lock"  # noqa: S108 - the machine's agreed lock for Carnet stacks
CHROMIUM_BINARY = "/usr/lib/chromium/chromium"  # the real binary (/usr/bin/chromium is a wrapper script)
TRIVIAL_PARAMETERS = 'numbers = [1, 2, 3]\nscheduled_time = ""  # every Carnet run passes it'
TRIVIAL_WORK = "total = sum(numbers)\nprint(total)"
# The demo app's two charts, found by their titles in the PDF's text (pdftotext): plotly draws titles as
# SVG text, which Chromium prints as PDF text; a chart that was not drawn has no title.
DEMO_CHART_TITLES = ("Life expectancy in Europe", "Wealth and health in Europe")


# -- small helpers ------------------------------------------------------------------------------------------
def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def table(title: str, rows: list[tuple[str, list[float]]], baseline: float | None = None) -> None:
    """Median/min per row and each row's ratio to ``baseline`` (default: the first row, the plain tool)."""
    baseline = baseline if baseline is not None else median(rows[0][1])
    print(f"\n{title}")
    print(f"{'':58s} {'median s':>9s} {'min s':>8s} {'n':>3s} {'x plain':>8s}")
    for name, samples in rows:
        if not samples:
            print(f"{name:58s} {'-':>9s}")
            continue
        print(
            f"{name:58s} {median(samples):9.3f} {min(samples):8.3f} {len(samples):3d} "
            f"{median(samples) / baseline:8.2f}"
        )


def machine_state() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{os.cpu_count()} cores, load average {' / '.join(load)} (1/5/15 min)"


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def papermill_timings(executed: Path) -> dict:
    """What the executed notebook's papermill metadata says: kernel start (papermill's start to the first
    cell's start), the cells' own time, and the end (last cell's end to papermill's end: kernel shutdown)."""
    notebook = json.loads(executed.read_text())
    meta = notebook["metadata"]["papermill"]
    cells = [c["metadata"]["papermill"] for c in notebook["cells"] if c["cell_type"] == "code"]
    start, end = iso(meta["start_time"]), iso(meta["end_time"])
    first, last = iso(cells[0]["start_time"]), iso(cells[-1]["end_time"])
    return {
        "papermill": meta["duration"],
        "kernel start": (first - start).total_seconds(),
        "cells": sum(c["duration"] for c in cells),
        "between cells": (last - first).total_seconds() - sum(c["duration"] for c in cells),
        "kernel shutdown": (end - last).total_seconds(),
    }


def trivial_notebook() -> dict:
    parameters = nbformat.v4.new_code_cell(TRIVIAL_PARAMETERS, metadata={"tags": ["parameters"]})
    notebook = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(TRIVIAL_WORK)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@contextlib.contextmanager
def stack_lock():
    """The machine lock for Carnet stacks (their OS accounts are machine-global)."""
    with open(STACK_LOCK, "a") as handle:
        waited = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        print(f"(machine lock {STACK_LOCK} taken after {time.monotonic() - waited:.0f} s)")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for(condition, seconds: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {seconds:g} s waiting for {what}")


# -- a world of our own: temporary data directory, SQLite, one org, one app --------------------------------
class World:
    """A Carnet data directory with acme, its analyst and the trivial notebook published as an app."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="carnet-bench-jobs-"))
        self.env = {
            "JUPYTER_PLATFORM_DIRS": "1",
            "CARNET_DATA_DIR": str(self.root / "data"),
            # Kernels run as this process's user: no OS accounts (machine-global; stacks of others use them).
            "CARNET_ISOLATION": "off",
        }
        for name, sub in (
            ("JUPYTER_CONFIG_DIR", "jupyter-config"),
            ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
            ("IPYTHONDIR", "ipython"),
        ):
            (self.root / sub).mkdir()
            self.env[name] = str(self.root / sub)
        self.activate()
        from carnet.db import session_scope, upgrade
        from carnet.db.models import Membership, Organization, Role, User
        from carnet.publishing import current_notebook_path, publish
        from carnet.settings import CarnetSettings

        self.settings = CarnetSettings()
        upgrade(self.settings.db_url)
        with session_scope(self.settings.db_url) as session:
            org, user = Organization(slug="acme", name="Acme"), User(email="ana@acme.example")
            session.add_all([org, user])
            session.flush()
            session.add(Membership(user_id=user.id, org_id=org.id, role=Role.analyst))
            app = publish(
                session,
                self.settings,
                org_id=org.id,
                user_id=user.id,
                slug="trivial",
                title="Trivial",
                notebook=trivial_notebook(),
            )
            self.org_id, self.user_id, self.app_id = org.id, user.id, app.id
            self.notebook = current_notebook_path(self.settings, app)

    def activate(self) -> None:
        """This world's directories in os.environ (in-process kernels and settings read them)."""
        os.environ.update(self.env)

    def add_notebook_job(self, name: str, cron: str | None = None) -> int:
        from carnet.db import session_scope
        from carnet.db.models import Job, utcnow
        from carnet.scheduler.cron import next_fire_time

        with session_scope(self.settings.db_url) as session:
            job = Job(
                org_id=self.org_id,
                name=name,
                kind="notebook",
                config={"attach": "none", "cooldown_seconds": 3600},
                app_id=self.app_id,
                cron=cron,
                owner_id=self.user_id,
                next_run_at=next_fire_time(cron, "UTC", utcnow()) if cron else None,
            )
            session.add(job)
            session.flush()
            return job.id

    def queue_run(self, job_id: int) -> int:
        from carnet.db import session_scope
        from carnet.db.models import JobRun, RunStatus, utcnow

        with session_scope(self.settings.db_url) as session:
            run = JobRun(job_id=job_id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow())
            session.add(run)
            session.flush()
            return run.id

    def run_row(self, run_id: int):
        from carnet.db import session_scope
        from carnet.db.models import JobRun

        with session_scope(self.settings.db_url) as session:
            run = session.get(JobRun, run_id)
            session.expunge(run)
            return run

    def start_scheduler(self, log_path: Path, poll: float) -> subprocess.Popen:
        env = {**os.environ, **self.env, "CARNET_SCHEDULER_POLL": str(poll)}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "carnet.scheduler"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        wait_for(
            lambda: b"holds the lease" in log_path.read_bytes() or process.poll() is not None,
            120,
            "the scheduler to take its lease",
        )
        if process.poll() is not None:
            raise SystemExit(f"the scheduler exited:\n{log_path.read_text()[-3000:]}")
        return process

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- part 1: overhead per run -------------------------------------------------------------------------------
class StepTimer:
    """Wraps JobExecutor's steps (in this process only) to record how long each took."""

    STEPS = ("before_start", "run_notebook", "record_mail", "on_complete")

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self._saved = []

    def __enter__(self):
        from carnet.scheduler import executor as executor_module

        for name in self.STEPS:
            self._wrap(executor_module.JobExecutor, name, name)
        self._wrap(executor_module, "deliver_run_mail", "deliver_run_mail")
        return self

    def _wrap(self, owner, attribute: str, label: str):
        original = getattr(owner, attribute)
        self._saved.append((owner, attribute, original))

        def timed_step(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                # An executor with warm notebook workers is timed apart from the cold one.
                warm = bool(args) and getattr(args[0], "notebook_workers", None) is not None
                self.samples.setdefault(label + (" (warm)" if warm else ""), []).append(
                    time.perf_counter() - started
                )

        setattr(owner, attribute, timed_step)

    def __exit__(self, *exc):
        for owner, attribute, original in reversed(self._saved):
            setattr(owner, attribute, original)


def bench_overhead(world: World, repeat: int) -> dict:
    import papermill
    from jupyter_client.manager import KernelManager

    from carnet.db.models import RunStatus
    from carnet.scheduler.executor import JobExecutor
    from carnet.scheduler.notebook_workers import NotebookWorkerPool
    from carnet.scheduler.run_queue import claim_next_run

    work = world.root / "bare"
    work.mkdir()
    scheduled = datetime.now().astimezone().isoformat()
    kernel_env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}

    def bare_cli():
        subprocess.run(  # noqa: S603 - our own venv's papermill
            [
                str(VENV_BIN / "papermill"),
                str(world.notebook),
                str(work / "cli.ipynb"),
                "-p",
                "scheduled_time",
                scheduled,
                "--no-progress-bar",
            ],
            env=kernel_env,
            check=True,
            capture_output=True,
        )

    def warm_api():
        papermill.execute_notebook(
            str(world.notebook),
            str(work / "api.ipynb"),
            parameters={"scheduled_time": scheduled},
            kernel_name="python3",
            progress_bar=False,
        )

    prestarted_samples = []

    def prestarted_kernel():
        # A pool's kernel: started (and ready) before the run; the run only executes and shuts it down.
        manager = KernelManager(kernel_name="python3")
        manager.start_kernel()
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(60)
        client.stop_channels()
        started = time.perf_counter()
        papermill.execute_notebook(
            str(world.notebook),
            str(work / "pool.ipynb"),
            parameters={"scheduled_time": scheduled},
            kernel_name="python3",
            progress_bar=False,
            km=manager,
        )
        prestarted_samples.append(time.perf_counter() - started)
        manager.shutdown_kernel(now=True)

    job_id = world.add_notebook_job("overhead in process")
    in_process_inner: list[dict] = []
    warm_inner: list[dict] = []
    # The scheduler's warm notebook workers (as SchedulerService makes them); the cold row has none.
    worker_pool = NotebookWorkerPool(size=2, idle_seconds=600)

    def carnet_in_process(pool=None, inner=in_process_inner):
        run_id = world.queue_run(job_id)
        claimed = claim_next_run(world.settings.db_url)
        assert claimed == run_id, (claimed, run_id)
        status = JobExecutor(world.settings, run_id, notebook_workers=pool).run()
        if status != RunStatus.succeeded:
            raise SystemExit(f"run {run_id} {status}: {world.run_row(run_id).error}")
        inner.append(papermill_timings(Path(world.run_row(run_id).output_dir) / "executed.ipynb"))

    def carnet_warm():
        carnet_in_process(worker_pool, warm_inner)

    def interpreter(code: str):
        def run():
            subprocess.run([sys.executable, "-c", code], env=kernel_env, check=True)  # noqa: S603

        return run

    def kernel_start():
        manager = KernelManager(kernel_name="python3")
        manager.start_kernel()
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(60)
        client.stop_channels()
        manager.shutdown_kernel(now=True)

    # The real scheduler works on a data directory of its own (it would claim this process's runs), with
    # its poll at the stack's 0.5 s.
    scheduler_world = World()
    scheduled_job = scheduler_world.add_notebook_job("overhead via scheduler")
    scheduler = scheduler_world.start_scheduler(scheduler_world.root / "scheduler-overhead.log", poll=0.5)
    queue_wait, run_time = [], []

    def via_scheduler():
        run_id = scheduler_world.queue_run(scheduled_job)
        run = wait_for(
            lambda: (
                (row := scheduler_world.run_row(run_id)).status in (RunStatus.succeeded, RunStatus.failed)
                and row
            ),
            300,
            f"run {run_id}",
            interval=0.02,
        )
        if run.status != RunStatus.succeeded:
            raise SystemExit(f"run {run_id} failed: {run.error}")
        queue_wait.append((run.started_at - run.created_at).total_seconds())
        run_time.append((run.finished_at - run.started_at).total_seconds())

    rows = {
        "cli": bare_cli,
        "api": warm_api,
        "prestarted": prestarted_kernel,
        "carnet": carnet_in_process,
        "carnet warm": carnet_warm,
        "scheduler": via_scheduler,
        "python -c pass": interpreter("pass"),
        "import papermill": interpreter("import papermill"),
        # jsonschema (through nbformat) imports rfc3987_syntax if installed; it builds a grammar at import.
        "import papermill, no rfc3987_syntax": interpreter(
            "import sys; sys.modules['rfc3987_syntax'] = None; import papermill"
        ),
        "kernel start": kernel_start,
    }
    samples = {name: [] for name in rows}
    try:
        # Warm-ups (not counted): file caches, kernel spec lookups, the first SQLite connections.
        for function in rows.values():
            function()
        in_process_inner.clear()
        warm_inner.clear()
        prestarted_samples.clear()
        queue_wait.clear()
        run_time.clear()
        # Rounds, each timing every row once: the machine is shared, and a load that comes and goes then
        # weighs on every row alike instead of on whichever ran at the time.
        with StepTimer() as steps:
            for _ in range(repeat):
                for name, function in rows.items():
                    started = time.perf_counter()
                    function()
                    samples[name].append(time.perf_counter() - started)
    finally:
        worker_pool.close()
        stop_process(scheduler)
        scheduler_world.close()
        world.activate()
    samples["prestarted"] = prestarted_samples  # the run only, not the kernel's start before it
    bare_inner = papermill_timings(work / "cli.ipynb")
    api_inner = papermill_timings(work / "api.ipynb")

    table(
        "1. Trivial notebook (2 cells): bare papermill vs a Carnet notebook job",
        [
            ("bare papermill CLI", samples["cli"]),
            ("papermill.execute_notebook, warm process", samples["api"]),
            ("papermill.execute_notebook, pre-started kernel", samples["prestarted"]),
            ("Carnet job, JobExecutor in process, cold (claim -> run)", samples["carnet"]),
            ("Carnet job, JobExecutor in process, warm workers", samples["carnet warm"]),
            ("Carnet job, real scheduler, warm (queued -> succeeded)", samples["scheduler"]),
        ],
    )
    overhead_cli = median(samples["carnet"]) - median(samples["cli"])
    overhead_api = median(samples["carnet"]) - median(samples["api"])
    own_work = median([t["cells"] for t in in_process_inner])
    print(
        f"overhead, JobExecutor - bare CLI: {overhead_cli:+.3f} s;"
        f" - warm papermill API: {overhead_api:+.3f} s"
    )
    print(
        f"overhead, real scheduler - bare CLI: {median(samples['scheduler']) - median(samples['cli']):+.3f} s"
        f" (of it waiting for the poll: median {median(queue_wait):.3f} s;"
        f" run itself {median(run_time):.3f} s)"
    )
    print(
        f"notebook's own work (cells): {own_work:.3f} s; Carnet in process over it: "
        f"{median(samples['carnet']) - own_work:.3f} s cold (target with warm kernels: <= 0.3 s)"
    )
    warm_work = median([t["cells"] for t in warm_inner])
    warm_over = median(samples["carnet warm"]) - warm_work
    print(
        f"warm workers: notebook's own work {warm_work:.3f} s; Carnet in process over it: {warm_over:.3f} s"
        f" (target <= 0.3 s: {'met' if warm_over <= 0.3 else 'NOT met'});"
        f" cold / warm: {median(samples['carnet']) / median(samples['carnet warm']):.1f}x"
    )

    notebook_step = median(steps.samples["run_notebook"])
    inner = {name: median([t[name] for t in in_process_inner]) for name in in_process_inner[0]}
    warm_inner_median = {name: median([t[name] for t in warm_inner]) for name in warm_inner[0]}
    print("\nWhere a Carnet run's time goes (JobExecutor in process, medians, s):")
    breakdown = [
        ("before_start: DB reads, output folder, copy notebook, mint token", steps.samples["before_start"]),
        ("run_notebook: the papermill subprocess, in all", steps.samples["run_notebook"]),
        (
            "  of it: interpreter start + imports + write (not papermill)",
            [notebook_step - inner["papermill"]],
        ),
        ("  of it: papermill start -> first cell (kernel start)", [inner["kernel start"]]),
        ("  of it: the cells' own work", [inner["cells"]]),
        ("  of it: between cells (nbclient round trips)", [inner["between cells"]]),
        ("  of it: last cell -> papermill end (kernel shutdown)", [inner["kernel shutdown"]]),
        ("run_notebook, warm worker: hand-over to answer, in all", steps.samples["run_notebook (warm)"]),
        (
            "  of it: setup execute, JSON lines, write (not papermill)",
            [median(steps.samples["run_notebook (warm)"]) - warm_inner_median["papermill"]],
        ),
        (
            "  of it: papermill start -> first cell (client on the warm kernel)",
            [warm_inner_median["kernel start"]],
        ),
        ("  of it: the cells' own work", [warm_inner_median["cells"]]),
        ("record_mail (outbox rows: none for this job)", steps.samples.get("record_mail", [])),
        ("deliver_run_mail", steps.samples.get("deliver_run_mail", [])),
        ("on_complete: run marked succeeded, followers", steps.samples["on_complete"]),
    ]
    for name, values in breakdown:
        print(f"  {name:66s} {median(values):7.3f}")
    print("For comparison, alone (medians, s):")
    for name in ("python -c pass", "import papermill", "import papermill, no rfc3987_syntax", "kernel start"):
        print(f"  {name:66s} {median(samples[name]):7.3f}")
    print(f"  {'bare CLI: papermill start -> first cell':66s} {bare_inner['kernel start']:7.3f}")
    print(f"  {'warm API: papermill start -> first cell':66s} {api_inner['kernel start']:7.3f}")
    return {"samples": samples, "steps": steps.samples, "inner": inner}


# -- part 3: throughput -------------------------------------------------------------------------------------
def bench_throughput(world: World, jobs: int, minutes: float, cron: str) -> dict:
    from sqlalchemy import select, update

    from carnet.db import session_scope
    from carnet.db.models import Job, JobRun, RunStatus

    scheduler = world.start_scheduler(world.root / "scheduler-throughput.log", poll=2.0)
    try:
        started = datetime.now().astimezone()
        job_ids = [world.add_notebook_job(f"throughput {index}", cron=cron) for index in range(jobs)]
        time.sleep(minutes * 60)
        with session_scope(world.settings.db_url) as session:
            session.execute(update(Job).where(Job.id.in_(job_ids)).values(enabled=False))
        stopped = datetime.now().astimezone()

        def drained():
            with session_scope(world.settings.db_url) as session:
                return not session.scalar(
                    select(JobRun.id).where(
                        JobRun.job_id.in_(job_ids), JobRun.status.in_((RunStatus.queued, RunStatus.running))
                    )
                )

        wait_for(drained, 600, "the last runs to finish", interval=0.5)
        with session_scope(world.settings.db_url) as session:
            runs = session.scalars(select(JobRun).where(JobRun.job_id.in_(job_ids))).all()
            for run in runs:
                session.expunge(run)
    finally:
        stop_process(scheduler)

    by_status: dict[str, int] = {}
    for run in runs:
        by_status[run.status.value] = by_status.get(run.status.value, 0) + 1
    done = [r for r in runs if r.status == RunStatus.succeeded]
    busy = [(r.finished_at - r.started_at).total_seconds() for r in done]
    late = [(r.started_at - r.scheduled_for).total_seconds() for r in done]
    window_hours = (stopped - started).total_seconds() / 3600
    per_hour = len(done) / window_hours
    capacity = 3600 / median(busy) if busy else 0
    print(
        f"\n3. Throughput: {jobs} notebook jobs on cron {cron!r} for {minutes:g} min, one real scheduler "
        f"(poll 2 s)"
    )
    print(f"  fires recorded: {len(runs)}; by status: {by_status}")
    print(f"  runs completed per hour (extrapolated): {per_hour:.0f} (target >= 200, none skipped or missed)")
    print(
        f"  run time (claimed -> finished): median {median(busy):.2f} s, max {max(busy, default=0):.2f} s; "
        f"sequential capacity ~{capacity:.0f} runs/hour"
    )
    print(
        f"  start lateness (scheduled -> claimed): median {median(late):.2f} s,"
        f" max {max(late, default=0):.2f} s"
    )
    return {"by_status": by_status, "per_hour": per_hour, "busy": busy, "late": late}


# -- part 2: PDFs of the demo app ---------------------------------------------------------------------------
def pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def charts_in(path: Path) -> str:
    text = " ".join(pdf_text(path).split())
    found = [title for title in DEMO_CHART_TITLES if title in text]
    return f"{len(found)}/{len(DEMO_CHART_TITLES)}" + (f" ({', '.join(found)})" if found else "")


def webpdf_browsers_path(root: Path, env: dict) -> Path:
    """A PLAYWRIGHT_BROWSERS_PATH where nbconvert's webpdf finds the system Chromium: a symlink at the path
    Playwright expects (the revision is read from its own error message)."""
    browsers = root / "playwright-browsers"
    browsers.mkdir(exist_ok=True)
    probe = root / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("probe")]), probe)
    failed = subprocess.run(  # noqa: S603 - our own venv's jupyter
        [str(VENV_BIN / "jupyter"), "nbconvert", "--to", "webpdf", str(probe)],
        env={**env, "PLAYWRIGHT_BROWSERS_PATH": str(browsers)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = re.search(r"Executable doesn't exist at (\S+)", failed.stderr)
    if expected:
        target = Path(expected.group(1))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(CHROMIUM_BINARY)
    elif failed.returncode != 0:
        raise SystemExit(f"nbconvert --to webpdf failed for another reason:\n{failed.stderr[-2000:]}")
    return browsers


class TimedPage:
    """A Playwright page (or context) that records when each of the printer's steps on it ended."""

    STEPS = ("new_page", "goto", "wait_for_selector", "wait_for_function", "pdf")

    def __init__(self, wrapped, marks: list):
        self._wrapped, self._marks = wrapped, marks

    def __getattr__(self, name):
        attribute = getattr(self._wrapped, name)
        if name not in self.STEPS:
            return attribute

        def step(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self._marks.append((name, time.perf_counter()))
            return TimedPage(result, self._marks) if name == "new_page" else result

        return step


def timed_printer_class():
    from carnet.scheduler.viewer_pdf import ViewerPrinter

    class TimedPrinter(ViewerPrinter):
        """ViewerPrinter as the scheduler has it, with a timestamp after each step of every PDF."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.prints: list[list] = []

        def new_context(self, **options):
            marks = [("start", time.perf_counter())]
            self.prints.append(marks)
            return TimedPage(super().new_context(**options), marks)

        def print_url(self, *args, **kwargs):
            try:
                return super().print_url(*args, **kwargs)
            finally:
                self.prints[-1].append(("closed", time.perf_counter()))

    return TimedPrinter


def print_phases(prints: list[list]) -> list[tuple[str, list[float]]]:
    """Per PDF: the printer's steps as phases (the Voila render is between the page's response and the
    page's own render-finished mark)."""
    names = {
        ("start", "new_page"): "browser context + page",
        ("new_page", "goto"): "page request -> response starts",
        ("goto", "wait_for_selector"): "response -> render-finished mark (kernel, cells, widgets)",
        ("wait_for_selector", "wait_for_function"): "mark -> charts drawn",
        ("wait_for_function", "wait_for_function"): "print media -> charts drawn again",
        ("wait_for_function", "pdf"): "page.pdf()",
        ("pdf", "closed"): "kernel shutdown + context closed",
    }
    phases: dict[str, list[float]] = {}
    for marks in prints:
        for (before, at), (after, then) in zip(marks, marks[1:], strict=False):
            phases.setdefault(names.get((before, after), f"{before} -> {after}"), []).append(then - at)
    return list(phases.items())


def run_tool(command: list[str], env: dict, timeout: float = 300) -> bool:
    """Runs a plain tool in a session of its own (its kernels too); False if it failed or ran past
    ``timeout`` (then everything it started is killed)."""
    process = subprocess.Popen(  # noqa: S603 - our own venv's tools
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        print(f"({Path(command[0]).name} ran past {timeout:g} s: killed)")
        return False
    if process.returncode != 0:
        print(f"({Path(command[0]).name} failed: {stderr.decode(errors='replace').strip()[-300:]})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a kernel it left behind
    return process.returncode == 0


def bench_pdf(repeat: int) -> dict:
    import requests
    from sqlalchemy import select

    from bench.common import start_stack, stop_stack, studio_token
    from carnet.db import session_scope
    from carnet.db.models import App, Job, JobRun, RunStatus, User, utcnow
    from carnet.print_pages import sign_print
    from carnet.publishing import current_notebook_path
    from carnet.scheduler.viewer_pdf import Letterhead, ViewerPdfSettings

    if shutil.which("pdftotext") is None or not Path(CHROMIUM_BINARY).exists():
        raise SystemExit("part 2 needs pdftotext (poppler-utils) and Chromium at " + CHROMIUM_BINARY)
    with stack_lock():
        # The render pool on (one page per key), as a report's print page pre-rendered ahead of its fire
        # time needs it (extension/viewer_print_warm.py); the cold rows are never pooled.
        stack = start_stack(env={"CARNET_VIEWER_POOL_SIZE": "1"})
        work = Path(tempfile.mkdtemp(prefix="carnet-bench-pdf-"))
        printer = None
        try:
            settings = stack.settings
            with session_scope(settings.db_url) as session:
                app = session.get(App, stack.app_id)
                notebook = current_notebook_path(settings, app)
                studio = session.scalar(select(User).where(User.email == "studio@acme.example"))
                studio_id = studio.id
                # A report job without parameters: the Viewer prints it (a job with parameters takes the
                # papermill path, like the demo's nightly job, also timed below).
                viewer_job = Job(
                    org_id=app.org_id,
                    name="Bench viewer report",
                    kind="report",
                    app_id=app.id,
                    recipients=["bench@acme.example"],
                    owner_id=studio_id,
                )
                session.add(viewer_job)
                session.flush()
                viewer_job_id = viewer_job.id
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CARNET_")},
                "PATH": f"{VENV_BIN}:/usr/bin:/bin",
                "CARNET_API_URL": f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/",
                "CARNET_TOKEN": studio_token(settings),
                # As Carnet's job kernels have it (executor.kernel_environment): self-contained chart HTML,
                # webpdf's best chance to draw charts without a network.
                "PLOTLY_RENDERER": "plotly_mimetype+notebook",
            }
            browsers = webpdf_browsers_path(work, env)

            papermill_samples, webpdf_samples, stalls = [], [], []

            def papermill_then_webpdf():
                executed = work / "executed.ipynb"
                # papermill of this notebook stalls now and then in the widget cell (plotly's show() inside an
                # ipywidgets Output, as STACK-NOTES saw in Voila): a cell may take 60 s, and a stalled try is
                # counted and tried again rather than timed.
                for _ in range(3):
                    started = time.perf_counter()
                    if run_tool(
                        [
                            str(VENV_BIN / "papermill"),
                            str(notebook),
                            str(executed),
                            "--no-progress-bar",
                            "--execution-timeout",
                            "60",
                        ],
                        env,
                    ):
                        break
                    stalls.append(time.perf_counter() - started)
                else:
                    raise SystemExit("papermill failed 3 times on the demo app")
                middle = time.perf_counter()
                if not run_tool(
                    [str(VENV_BIN / "jupyter"), "nbconvert", "--to", "webpdf", "--no-input", str(executed)],
                    {**env, "PLAYWRIGHT_BROWSERS_PATH": str(browsers)},
                ):
                    raise SystemExit("nbconvert --to webpdf failed")
                papermill_samples.append(middle - started)
                webpdf_samples.append(time.perf_counter() - middle)

            printer = timed_printer_class()(
                CHROMIUM_BINARY,
                ViewerPdfSettings(viewer_url=f"{stack.url}/services/carnet-viewer/", time_budget=180),
            )
            carnet_pdf = work / "carnet.pdf"

            def carnet_print():
                with session_scope(settings.db_url) as session:
                    token = sign_print(
                        session, settings, session.get(App, stack.app_id), as_user=studio_id, expires_in=600
                    )
                printer.print_token(token, carnet_pdf, Letterhead("Acme", "#0b7285", "World development"))

            prerendered_pdf = work / "prerendered.pdf"
            print_url = f"{stack.url}/services/carnet-viewer/print/"

            def prerendered_print():
                """What a scheduled report's run takes when the scheduler had its page pre-rendered ahead of
                the fire time (report.py prerender_report_pages): only the print of the pooled page is
                timed; the pre-render is done (and waited for) before."""
                with session_scope(settings.db_url) as session:
                    token = sign_print(
                        session, settings, session.get(App, stack.app_id), as_user=studio_id, expires_in=600
                    )
                warm_url = f"{stack.url}/services/carnet-viewer/carnet/warm-print/{token}"

                def pooled():
                    answer = requests.post(warm_url, timeout=30)
                    if answer.status_code not in (200, 202):
                        raise SystemExit(f"warm-print refused: {answer.status_code} {answer.text[:200]}")
                    return answer.json()["state"] == "pooled"

                wait_for(pooled, 120, "the pre-rendered print page", 0.1)
                started = time.perf_counter()
                letterhead = Letterhead("Acme", "#0b7285", "World development")
                printer.print_url(print_url + token, prerendered_pdf, letterhead)
                prerendered_print.samples.append(time.perf_counter() - started)

            prerendered_print.samples = []
            held_pdf = work / "held.pdf"

            def held_print():
                """What a scheduled report's run spends on its PDF at the fire time when the scheduler held
                its page (report.py, SchedulerService.report_pages_held): the page was opened ahead in the
                scheduler's browser and drew while the scheduler idled (``pump``, as its idle wait does);
                only ``finish_page`` (the print of the drawn page) is timed. The hold itself is timed apart
                (it happens before the fire time)."""
                with session_scope(settings.db_url) as session:
                    token = sign_print(
                        session, settings, session.get(App, stack.app_id), as_user=studio_id, expires_in=600
                    )
                opened = time.perf_counter()
                printing = printer.open_page(print_url + token)

                def drawn():
                    printer.pump(0.1)
                    rendered = "() => document.body && document.body.dataset.carnetRender"
                    return printing.page.evaluate(rendered) == "done"

                wait_for(drawn, 120, "the held page drawn", 0)
                held_print.ahead.append(time.perf_counter() - opened)
                letterhead = Letterhead("Acme", "#0b7285", "World development")
                started = time.perf_counter()
                printer.finish_page(printing, held_pdf, letterhead)
                held_print.samples.append(time.perf_counter() - started)

            held_print.samples, held_print.ahead = [], []

            def report_job(job_id: int):
                def run():
                    with session_scope(settings.db_url) as session:
                        queued = JobRun(
                            job_id=job_id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow()
                        )
                        session.add(queued)
                        session.flush()
                        run_id = queued.id

                    def finished():
                        with session_scope(settings.db_url) as session:
                            row = session.get(JobRun, run_id)
                            if row.status == RunStatus.failed:
                                raise SystemExit(f"run {run_id} failed: {row.error}")
                            return row.status == RunStatus.succeeded and row.output_dir

                    report_job.last_output[job_id] = wait_for(finished, 300, f"report run {run_id}", 0.05)

                return run

            report_job.last_output = {}

            def scheduled_report():
                """A report job of the demo app firing 25 s from now on the stack's own scheduler, with its
                defaults (pre-render lead 90 s, 2 pages held): from the fire time to the run's end (PDF
                written, mail sent). Whether the run printed a held page is read from the stack's log."""
                fire = (utcnow() + timedelta(seconds=25)).replace(microsecond=0)
                with session_scope(settings.db_url) as session:
                    job = Job(
                        org_id=session.get(App, stack.app_id).org_id,
                        name=f"Bench scheduled report {fire:%H%M%S}",
                        kind="report",
                        app_id=stack.app_id,
                        recipients=["bench@acme.example"],
                        owner_id=studio_id,
                        cron=f"{fire.minute} {fire.hour} * * * {fire.second}",
                        next_run_at=fire,
                    )
                    session.add(job)
                    session.flush()
                    job_id = job.id

                def ended():
                    with session_scope(settings.db_url) as session:
                        run = session.scalar(select(JobRun).where(JobRun.job_id == job_id))
                        if run is None or run.status not in (RunStatus.succeeded, RunStatus.failed):
                            return None
                        if run.status == RunStatus.failed:
                            raise SystemExit(f"scheduled report run {run.id} failed: {run.error}")
                        session.get(Job, job_id).enabled = False
                        return run.id, (run.finished_at - run.scheduled_for).total_seconds()

                run_id, seconds = wait_for(ended, 180, "the scheduled report's run", 0.2)
                log_text = stack.log_path.read_text(errors="replace")
                scheduled_report.held.append(f"Run {run_id} prints the page opened ahead" in log_text)
                scheduled_report.samples.append(seconds)

            scheduled_report.samples, scheduled_report.held = [], []
            from bench.common import timed

            # Warm-ups (not counted): the first papermill/webpdf (file caches), the browser's launch and
            # the Viewer's first render, the stack scheduler's first run of each job (its printer launch).
            papermill_then_webpdf()
            papermill_samples.clear()
            webpdf_samples.clear()
            carnet_print()
            prerendered_print()
            prerendered_print.samples.clear()
            held_print()
            held_print.samples.clear()
            held_print.ahead.clear()
            report_job(viewer_job_id)()
            report_job(stack.job_id)()

            timed(papermill_then_webpdf, repeat)
            webpdf_total = [a + b for a, b in zip(papermill_samples, webpdf_samples, strict=True)]
            printer.prints.clear()
            carnet_samples = timed(carnet_print, repeat)
            cold_prints = len(printer.prints)
            for _ in range(repeat):
                prerendered_print()
            prerendered_samples = prerendered_print.samples
            prerendered_phases = printer.prints[cold_prints:]
            del printer.prints[cold_prints:]
            for _ in range(repeat):
                held_print()
            held_samples = held_print.samples
            del printer.prints[cold_prints:]  # the held pages' opens (not print_url's phases)
            viewer_job_samples = timed(report_job(viewer_job_id), repeat)
            papermill_job_samples = timed(report_job(stack.job_id), repeat)
            for _ in range(repeat):
                scheduled_report()

            def job_pdf(job_id: int) -> Path:
                return next(Path(report_job.last_output[job_id]).glob("*.pdf"))

            table(
                "2. The demo app to PDF: papermill + nbconvert --to webpdf vs Carnet",
                [
                    ("papermill CLI + nbconvert --to webpdf --no-input", webpdf_total),
                    ("  of it: papermill CLI", papermill_samples),
                    ("  of it: nbconvert --to webpdf", webpdf_samples),
                    ("Carnet ViewerPrinter, warm browser (print page)", carnet_samples),
                    ("Carnet PDF, page pre-rendered (print of the pooled page)", prerendered_samples),
                    ("Carnet PDF, page held by the scheduler (print at the fire time)", held_samples),
                    ("  (before the fire: the held page's open, load and draw)", held_print.ahead),
                    ("Carnet report job, Viewer PDF, queued -> mailed", viewer_job_samples),
                    ("Carnet report job with parameters (papermill PDF), -> mailed", papermill_job_samples),
                    ("Carnet scheduled report job, fire time -> mailed", scheduled_report.samples),
                ],
            )
            print("Where a Carnet print page's time goes (ViewerPrinter with a warm browser, medians, s):")
            for name, values in print_phases(printer.prints):
                print(f"  {name:66s} {median(values):7.3f}")
            print("Where a pre-rendered print page's time goes (medians, s):")
            for name, values in print_phases(prerendered_phases):
                print(f"  {name:66s} {median(values):7.3f}")
            print("Charts present (their titles in pdftotext's text of the PDF):")
            print(f"  webpdf:                         {charts_in(work / 'executed.pdf')}")
            print(f"  Carnet print page:              {charts_in(carnet_pdf)}")
            print(f"  Carnet pre-rendered print page: {charts_in(prerendered_pdf)}")
            print(f"  Carnet held print page:         {charts_in(held_pdf)}")
            print(f"  Carnet report job (Viewer):     {charts_in(job_pdf(viewer_job_id))}")
            print(f"  Carnet report job (parameters): {charts_in(job_pdf(stack.job_id))}")
            speedup = median(webpdf_total) / median(carnet_samples)
            print(f"Carnet PDF is {speedup:.2f}x faster than papermill + webpdf (target >= 3x)")
            speedup = median(webpdf_total) / median(prerendered_samples)
            print(f"Carnet PDF of a pre-rendered page is {speedup:.2f}x faster than papermill + webpdf")
            speedup = median(webpdf_total) / median(held_samples)
            print(f"Carnet PDF of a held page (a scheduled report at its fire) is {speedup:.2f}x faster")
            used, runs = sum(scheduled_report.held), len(scheduled_report.held)
            print(f"Scheduled report runs that printed their held page: {used} of {runs}")
            speedup = median(webpdf_total) / median(scheduled_report.samples)
            print(f"A scheduled report job, fire -> mailed, is {speedup:.2f}x faster than papermill + webpdf")
            print(f"papermill stalls (killed after a 60 s cell, tried again): {len(stalls)}")
            return {
                "webpdf": webpdf_total,
                "carnet": carnet_samples,
                "prerendered": prerendered_samples,
                "held": held_samples,
            }
        finally:
            if printer is not None:
                printer.close()
            stop_stack(stack)
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats, 2 jobs for 1 minute: a smoke run")
    parser.add_argument("--parts", default="overhead,throughput,pdf", help="comma-separated parts to run")
    parser.add_argument("--repeat", type=int, help="runs per measured row (default 10, --quick 3)")
    parser.add_argument("--pdf-repeat", type=int, help="PDFs per measured row (default 5, --quick 2)")
    parser.add_argument("--jobs", type=int, help="throughput: jobs (default 4, --quick 2)")
    parser.add_argument("--minutes", type=float, help="throughput: minutes (default 3, --quick 1)")
    parser.add_argument("--cron", default="* * * * * */20", help="throughput: the jobs' cron (seconds last)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 10)
    jobs = args.jobs or (2 if args.quick else 4)
    minutes = args.minutes or (1 if args.quick else 3)
    parts = {part.strip() for part in args.parts.split(",")}

    print(f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {machine_state()}")
    if {"overhead", "throughput"} & parts:
        world = World()
        try:
            if "overhead" in parts:
                bench_overhead(world, repeat)
                print(f"(after part 1: {machine_state()})")
            if "throughput" in parts:
                bench_throughput(world, jobs, minutes, args.cron)
                print(f"(after part 3: {machine_state()})")
        finally:
            world.close()
    if "pdf" in parts:
        bench_pdf(args.pdf_repeat or (2 if args.quick else 5))
        print(f"(after part 2: {machine_state()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
