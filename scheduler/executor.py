"""Runs one job run, in steps (as jupyter-scheduler does): before_start -> execute -> on_complete, or
on_failure when any step raises. Each step is small and overridable; what ``execute`` does is the job's kind
(carnet/scheduler/kinds), and the mail it plans goes through the outbox (carnet/scheduler/outbox.py)."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urljoin

from sqlalchemy import select
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, RunStatus, TokenKind, utcnow
from carnet.errors import CarnetError
from carnet.isolation import account_for
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.kinds import PlannedMail, kind_named
from carnet.scheduler.notebook_workers import (
    RUN_VARIABLES,
    NotebookWorkerPool,
    WorkerGone,
    WorkerTimedOut,
    worker_folder,
)
from carnet.scheduler.outbox import (
    MailNotDelivered,
    deliver_run_mail,
    give_up_run_mail,
    has_run_mail,
    queue_mail,
    queue_notice,
)
from carnet.scheduler.viewer_pdf import Letterhead, ViewerPrinter
from carnet.settings import CarnetSettings
from carnet.sharing import may_open, member_reader
from carnet.tokens import mint_token, revoke_run_tokens

log = logging.getLogger("carnet.scheduler")

# The only variables of the scheduler's environment a job's kernel inherits.
_KERNEL_ENV_KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "IPYTHONDIR",
    "PYTHONPATH",
)


class PdfRenderer(enum.StrEnum):
    """How a run's PDF is made (``JobRun.pdf_renderer``)."""

    viewer = "viewer"  # the app as the Viewer shows it, printed by the scheduler's Chromium (viewer_pdf.py)
    notebook = "notebook"  # papermill runs the notebook, nbconvert's HTML of it is printed (pdf.py)


def pdf_renderer_for(job: Job) -> PdfRenderer:
    """The Viewer prints every report job's app, except a job with papermill parameters: only papermill can
    inject them (the Viewer runs the published snapshot as it is), so such a job keeps the notebook path."""
    return PdfRenderer.notebook if job.parameters else PdfRenderer.viewer


class JobRunError(CarnetError):
    """A run failed; ``step`` says where. Never retried (a notebook error stays an error)."""

    status = 500

    def __init__(self, message: str, step: str):
        super().__init__(message, step=step)
        self.step = step


class TransientRunError(CarnetError):
    """A failure worth retrying (a server that did not answer); the run is retried with the job's backoff."""

    status = 503

    def __init__(self, message: str, step: str):
        super().__init__(message, step=step)
        self.step = step


MAX_RETRY_DELAY = 24 * 3600  # the doubling backoff stops growing at a day

# Failures retried with backoff: the mail server, the platform database or a source's server unreachable.
TRANSIENT_ERRORS = (TransientRunError, MailNotDelivered, OperationalError, InterfaceError, DisconnectionError)


@dataclass
class RunContext:
    """What one run works with, read from the database at its start (kinds must not keep sessions)."""

    run_id: int
    job_id: int
    job_name: str
    kind: str
    org_id: int
    owner_id: int
    owner_email: str
    app_id: int | None
    config: dict
    parameters: dict
    recipients: list[str]
    timezone: str
    scheduled_for: datetime
    trigger: str
    attempt: int
    output_dir: Path
    timeout: float
    # The report kinds' notebook path (papermill) and Viewer path (print page) fill these in prepare().
    notebook: Path | None = None
    token: str = ""
    renderer: str = PdfRenderer.notebook
    print_token: str = ""
    letterhead: Letterhead = field(default_factory=Letterhead)
    extras: dict = field(default_factory=dict)

    @property
    def executed_notebook(self) -> Path:
        return self.output_dir / "executed.ipynb"

    @property
    def pdf(self) -> Path:
        return self.output_dir / f"{safe_file_stem(self.job_name, 'report')}.pdf"


def safe_file_stem(name: str, fallback: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-") or fallback


def stop_run_processes(process: subprocess.Popen, output_dir: Path) -> None:
    """Kill a run's notebook process and everything it started: its process group, and any process still
    working in the run's folder (a kernel may have a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    kill_processes_in(output_dir)


def kill_processes_in(output_dir: Path) -> None:
    """SIGKILL every process whose working directory is the run's folder."""
    folder = str(output_dir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == folder:
                os.kill(int(entry.name), signal.SIGKILL)


def check_owner_may_run(session, job: Job) -> None:
    """A run acts as the job's owner: it fails if, since the job was made, the owner left the organization,
    was disabled, or may no longer open the app (its sharing was narrowed)."""
    owner = member_reader(session, job.owner_id, job.org_id, TokenKind.job.value)
    if owner is None:
        raise JobRunError("The job's owner is no longer an active member of the organization", "before_start")
    if job.app is not None and not may_open(session, owner, job.app):
        raise JobRunError("The job's owner may no longer open this app (its sharing changed)", "before_start")


def run_link(settings: CarnetSettings, job_id: int, run_id: int) -> str:
    return urljoin(settings.public_url, f"services/carnet/api/v1/jobs/{job_id}/runs/{run_id}")


class JobExecutor:
    """Runs one job run in steps (as jupyter-scheduler does): before_start -> execute -> on_complete, or
    on_failure when any step raises. What ``execute`` does is the job's kind (carnet/scheduler/kinds)."""

    def __init__(
        self,
        settings: CarnetSettings,
        run_id: int,
        cell_timeout: int = 600,
        run_timeout: float | None = None,
        printer: ViewerPrinter | None = None,
        notebook_workers: NotebookWorkerPool | None = None,
    ):
        self.settings = settings
        self.run_id = run_id
        self.cell_timeout = cell_timeout
        # The scheduler's one browser (SchedulerService.printer); a run made without one starts its own,
        # closed when the run ends.
        self.printer = printer
        self._own_printer = printer is None
        # The scheduler's warm notebook workers (notebook_workers.py); without a pool each notebook run
        # starts a process of its own (the cold path).
        self.notebook_workers = notebook_workers
        # Overrides the job's own timeout (tests); else job.timeout_seconds, else the platform's.
        self._run_timeout = run_timeout
        self.run_timeout = run_timeout or settings.job_run_timeout_seconds

    def run(self) -> RunStatus:
        context = None
        try:
            context = self.before_start()
            if context.extras.get("resumed"):
                log.info("Run %s: outputs and mail were recorded before; only unsent mail goes", self.run_id)
            else:
                mails = self.execute(context)
                self.record_mail(context, mails)
            deliver_run_mail(self.settings, self.run_id)
            self.on_complete(context)
            return RunStatus.succeeded
        except Exception as exc:
            return self.on_failure(context, exc)
        finally:
            self.revoke_tokens()
            if self._own_printer and self.printer is not None:
                self.printer.close()
                self.printer = None

    def before_start(self) -> RunContext:
        with session_scope(self.settings.db_url) as session:
            run = session.get(JobRun, self.run_id)
            if run is None:
                raise JobRunError("The job was deleted before its run started", step="before_start")
            job = session.scalar(select(Job).where(Job.id == run.job_id))
            check_owner_may_run(session, job)
            output_dir = self.settings.runs_dir / str(job.org_id) / str(job.id) / str(run.id)
            output_dir.mkdir(parents=True, exist_ok=True)
            run.output_dir = str(output_dir)
            self.run_timeout = (
                self._run_timeout or job.timeout_seconds or self.settings.job_run_timeout_seconds
            )
            scheduled_for = run.scheduled_for or run.created_at
            context = RunContext(
                run_id=run.id,
                job_id=job.id,
                job_name=job.name,
                kind=job.kind,
                org_id=job.org_id,
                owner_id=job.owner_id,
                owner_email=job.owner.email,
                app_id=job.app_id,
                config=dict(job.config or {}),
                parameters={**(job.parameters or {}), **(run.payload or {})},
                recipients=list(job.recipients or []),
                timezone=job.timezone,
                scheduled_for=scheduled_for,
                trigger=run.trigger,
                attempt=run.attempt,
                output_dir=output_dir,
                timeout=self.run_timeout,
            )
            if has_run_mail(session, run.id):
                context.extras["resumed"] = True
                return context
            kind_named(job.kind).prepare(self, session, job, run, context)
        return context

    def mint_job_token(self, session, context: RunContext, ttl_seconds: int = 3600) -> str:
        """A credential that reads as the job's owner inside the job's organization, for this run only."""
        return mint_token(
            session,
            kind=TokenKind.job,
            user_id=context.owner_id,
            org_id=context.org_id,
            ttl_seconds=ttl_seconds,
            note=f"job run {context.run_id}",
            job_run_id=context.run_id,
        )

    def revoke_tokens(self) -> None:
        """The run's job tokens stop working when its work ends (kernels, the Viewer's print page, data
        reads are done); failing to revoke is logged, the tokens then expire on their own."""
        try:
            with session_scope(self.settings.db_url) as session:
                revoke_run_tokens(session, self.run_id)
        except Exception:
            log.exception("Run %s: its job tokens could not be revoked (they expire)", self.run_id)

    def execute(self, context: RunContext) -> list[PlannedMail]:
        return kind_named(context.kind).execute(self, context)

    def record_mail(self, context: RunContext, mails: list[PlannedMail]) -> None:
        """The run's outputs exist (written then renamed); from here on a retry only delivers."""
        with session_scope(self.settings.db_url) as session:
            queue_mail(session, context.run_id, context.org_id, mails)
            # What the kind remembers about this run (an alert's state) commits with its mail, or not at all.
            kind_named(context.kind).on_recorded(session, context)

    def kernel_environment(self, context: RunContext) -> dict:
        env = {k: v for k, v in os.environ.items() if k in _KERNEL_ENV_KEEP}
        env.update(
            CARNET_API_URL=self.settings.api_url,
            CARNET_TOKEN=context.token,
            # carnet.params: the run's parameters, the scheduled time among them.
            CARNET_JOB_PARAMS=json.dumps(context.parameters, default=str),
            # carnet.alert writes the run's alert here (the run's folder: the kernel's account owns it).
            CARNET_RUN_DIR=str(context.output_dir),
            # Self-contained chart HTML so that the PDF printer needs no network.
            PLOTLY_RENDERER="plotly_mimetype+notebook",
        )
        return env

    def run_as_owner(self, context: RunContext, env: dict) -> dict:
        """Popen arguments that run the notebook as the job owner's OS account (when accounts are on)."""
        account = account_for(self.settings, context.owner_id)
        if account is None:
            return {}
        for folder in (context.output_dir.parent.parent, context.output_dir.parent):
            os.chmod(folder, 0o711)  # noqa: S103 - traversable, not listable
        subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(context.output_dir)], check=True)
        env.update(account.environment())
        return {"user": account.uid, "group": account.gid, "extra_groups": [], "cwd": str(context.output_dir)}

    def printer_of(self) -> ViewerPrinter:
        if self.printer is None:
            self.printer = ViewerPrinter(self.settings.chromium_path)
        return self.printer

    def run_notebook(self, context: RunContext, parameters: dict) -> None:
        """papermill runs ``context.notebook`` into ``context.executed_notebook`` as the job's owner, in a
        process of its own (killed past the run's timeout): a warm worker of the scheduler's pool when the
        executor has one (notebook_workers.py: papermill imported, a fresh kernel pre-started), else a new
        process. The output notebook is written under a temporary name and renamed once papermill is done.
        A failed cell: papermill wrote the error into the output notebook, which is kept under its name; the
        run fails (not retried)."""
        env = self.kernel_environment(context)
        as_owner = self.run_as_owner(context, env)
        log.info("Run %s: running the notebook (at most %g s)", context.run_id, self.run_timeout)
        started = time.monotonic()
        with written_then_renamed(context.executed_notebook) as partial:
            if self.notebook_workers is None:
                failure = self._notebook_in_new_process(context, parameters, env, as_owner, partial)
            else:
                failure = self._notebook_in_worker(context, parameters, env, as_owner, partial)
            if failure is not None and not partial.exists():  # papermill wrote nothing (no kernel...)
                raise failure
        if failure is not None:  # the executed notebook with the error cell is kept (renamed above)
            raise failure
        log.info("Run %s: notebook done in %.1f s", context.run_id, time.monotonic() - started)

    def _timed_out(self) -> JobRunError:
        return JobRunError(f"The notebook did not finish within {self.run_timeout:g} s", step="execute")

    def _notebook_in_new_process(
        self, context: RunContext, parameters: dict, env: dict, as_owner: dict, partial: Path
    ) -> JobRunError | None:
        """The cold path: ``python -m carnet.scheduler.notebook_run`` for this run only."""
        command = [
            sys.executable,
            "-m",
            "carnet.scheduler.notebook_run",
            str(context.notebook),
            str(partial),
            "--parameters",
            json.dumps(parameters, default=str),
            "--cwd",
            str(context.output_dir),
            "--timeout",
            str(self.cell_timeout),
        ]
        process = subprocess.Popen(  # noqa: S603 - our own module, arguments are ours
            command,
            env=env,
            **as_owner,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=self.run_timeout)
        except subprocess.TimeoutExpired:
            stop_run_processes(process, context.output_dir)
            raise self._timed_out() from None
        # Kept with the run's outputs (run history: stdout/stderr).
        for name, text in (("stdout.txt", stdout), ("stderr.txt", stderr)):
            if text:
                (context.output_dir / name).write_text(text)
        if process.returncode == 0:
            return None
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]
        return JobRunError(f"The notebook failed: {detail}", step="execute")

    def _notebook_in_worker(
        self, context: RunContext, parameters: dict, env: dict, as_owner: dict, partial: Path
    ) -> JobRunError | None:
        """The warm path: the pool's worker of the owner's account runs the notebook on a fresh kernel,
        which it makes the run's (environment, working directory) before the first cell."""
        pool = self.notebook_workers
        key = (as_owner["user"], as_owner["group"]) if as_owner else None
        # The worker outlives the run: it starts without the run's variables, in a folder of no run.
        worker_env = {name: value for name, value in env.items() if name not in RUN_VARIABLES}
        popen_args = {name: value for name, value in as_owner.items() if name != "cwd"}
        popen_args["cwd"] = str(worker_folder(env, as_owner))
        request = {
            "input": str(context.notebook),
            "output": str(partial),
            "parameters": json.loads(json.dumps(parameters, default=str)),
            "cwd": str(context.output_dir),
            "timeout": self.cell_timeout,
            "env": env,
        }
        deadline = time.monotonic() + self.run_timeout
        try:
            worker = pool.take(key, worker_env, popen_args, deadline)
        except WorkerTimedOut:  # the pool killed the worker that could not start in time
            kill_processes_in(context.output_dir)
            raise self._timed_out() from None
        except WorkerGone as exc:
            return JobRunError(f"The notebook failed: {exc.detail}", step="execute")
        offset = worker.log_size()
        try:
            answer = worker.run(request, deadline)
        except WorkerTimedOut:
            pool.discard(worker)
            kill_processes_in(context.output_dir)
            raise self._timed_out() from None
        except WorkerGone as exc:  # died mid-run: the run fails as a crashed notebook process would
            detail = pool.last_error_line(worker, offset, exc.detail)
            with contextlib.suppress(subprocess.TimeoutExpired):
                if worker.process.wait(timeout=1) < 0:
                    detail = f"its process was killed ({signal.Signals(-worker.process.returncode).name})"
            pool.discard(worker)
            kill_processes_in(context.output_dir)
            return JobRunError(f"The notebook failed: {detail}", step="execute")
        except BaseException:  # anything else (the scheduler stopping...): the worker is not reused
            pool.discard(worker)
            raise
        # Kept with the run's outputs (run history): what the worker and the kernel wrote during the run.
        written = worker.log_since(offset)
        if written.strip():
            (context.output_dir / "stderr.txt").write_text(written)
        pool.release(worker)
        if "error" in answer:
            return JobRunError(f"The notebook failed: {answer['error']}", step="execute")
        return None

    def on_complete(self, context: RunContext) -> None:
        with session_scope(self.settings.db_url) as session:
            run = session.get(JobRun, self.run_id)
            if run is None:  # the job was deleted while it ran
                return
            run.status = RunStatus.succeeded
            run.error = None
            run.finished_at = utcnow()
            job = run.job
            if run.parent_run_id is None:
                queue_followers(session, job, run)
        log.info("Run %s of job %r succeeded", context.run_id, context.job_name)

    def on_failure(self, context: RunContext | None, exc: Exception) -> RunStatus:
        message = exc.message if isinstance(exc, CarnetError) else f"{type(exc).__name__}: {exc}"
        log.warning("Run %s failed: %s", self.run_id, message, exc_info=not isinstance(exc, CarnetError))
        with session_scope(self.settings.db_url) as session:
            run = session.get(JobRun, self.run_id)
            if run is None:  # the job was deleted while it ran
                return RunStatus.failed
            return fail_or_retry(
                session, self.settings, run, message, transient=isinstance(exc, TRANSIENT_ERRORS)
            )


def fail_or_retry(
    session, settings: CarnetSettings, run: JobRun, message: str, transient: bool, wait: bool = True
) -> RunStatus:
    """A transient failure with tries left requeues the run (attempt + 1) after the job's backoff, doubled
    at each try (at most a day), or at once when ``wait`` is false (an interruption: the downtime was the
    wait); otherwise the run fails, its unsent mail is given up and the job's owner gets a notice with the
    error and a link to the run. A chain's step only fails (its chain decides)."""
    job = run.job
    if transient and run.parent_run_id is None and run.attempt <= job.max_retries:
        delay = min(job.retry_backoff_seconds * 2 ** min(run.attempt - 1, 30), MAX_RETRY_DELAY) if wait else 0
        run.status = RunStatus.queued
        run.not_before = utcnow() + timedelta(seconds=delay) if delay else None
        when = f"retried in {delay} s" if delay else "retried now"
        run.error = f"Try {run.attempt} of {job.max_retries + 1} failed; {when}: {message}"
        run.attempt += 1
        log.info("Run %s: %s", run.id, run.error)
        return RunStatus.queued
    run.status = RunStatus.failed
    run.error = message
    run.finished_at = utcnow()
    give_up_run_mail(session, run.id, message)
    if run.parent_run_id is None:
        tries = f" after {run.attempt} tries" if run.attempt > 1 else ""
        queue_notice(
            session,
            run.id,
            job.org_id,
            job.owner.email,
            "failure",
            f"[Carnet] Job {job.name!r} failed",
            failure_body(settings, job, run, message, tries),
        )
    return RunStatus.failed


def failure_body(settings: CarnetSettings, job: Job, run: JobRun, message: str, tries: str) -> str:
    when = f"{run.scheduled_for or run.created_at:%Y-%m-%d %H:%M} UTC"
    return (
        f"The run of your job {job.name!r} scheduled for {when} failed{tries}.\n\n"
        f"Error: {message}\n\nThe run: {run_link(settings, job.id, run.id)}\n\n-- Carnet"
    )


def queue_followers(session, job: Job, run: JobRun) -> list[int]:
    """Jobs set to start after ``job`` get a queued run (trigger 'after'), unless one is already waiting."""
    queued = []
    followers = session.scalars(select(Job).where(Job.after_job_id == job.id, Job.enabled.is_(True))).all()
    for follower in followers:
        waiting = session.scalar(
            select(JobRun.id).where(
                JobRun.job_id == follower.id, JobRun.status == RunStatus.queued, JobRun.trigger == "after"
            )
        )
        if waiting is not None:
            continue
        follow = JobRun(
            job_id=follower.id,
            status=RunStatus.queued,
            trigger="after",
            triggered_by=f"run {run.id} of job {job.name!r}"[:200],
            scheduled_for=utcnow(),
        )
        session.add(follow)
        session.flush()
        queued.append(follow.id)
    return queued
