"""Runs one job run, in steps (as jupyter-scheduler does): before_start -> execute -> on_complete,
or on_failure when any step raises. Each step is small and overridable."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from carnet.branding import branding
from carnet.db import session_scope
from carnet.db.models import Job, JobRun, Organization, RunStatus, TokenKind, utcnow
from carnet.errors import CarnetError
from carnet.isolation import account_for
from carnet.print_pages import sign_print
from carnet.publishing import current_notebook_path
from carnet.scheduler.mail import send_mail
from carnet.scheduler.pdf import notebook_to_pdf
from carnet.scheduler.viewer_pdf import Letterhead, ViewerPrinter
from carnet.settings import CarnetSettings
from carnet.sharing import may_open, member_reader
from carnet.tokens import mint_token

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
    """The Viewer prints every job's app, except a job with papermill parameters: only papermill can inject
    them (the Viewer runs the published snapshot as it is), so such a job keeps the notebook path."""
    return PdfRenderer.notebook if job.parameters else PdfRenderer.viewer


class JobRunError(CarnetError):
    """A run failed; ``step`` says where."""

    status = 500

    def __init__(self, message: str, step: str):
        super().__init__(message, step=step)
        self.step = step


@dataclass
class RunContext:
    run_id: int
    job_id: int
    job_name: str
    org_id: int
    owner_id: int
    parameters: dict
    recipients: list[str]
    notebook: Path
    output_dir: Path
    token: str = ""
    renderer: str = PdfRenderer.notebook
    print_token: str = ""
    letterhead: Letterhead = Letterhead()

    @property
    def executed_notebook(self) -> Path:
        return self.output_dir / "executed.ipynb"

    @property
    def pdf(self) -> Path:
        safe = (
            "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.job_name).strip("-") or "report"
        )
        return self.output_dir / f"{safe}.pdf"


def stop_run_processes(process: subprocess.Popen, output_dir: Path) -> None:
    """Kill a run's notebook process and everything it started: its process group, and any process still
    working in the run's folder (a kernel may have a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
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
    if not may_open(session, owner, job.app):
        raise JobRunError("The job's owner may no longer open this app (its sharing changed)", "before_start")


class ReportExecutor:
    def __init__(
        self,
        settings: CarnetSettings,
        run_id: int,
        cell_timeout: int = 600,
        run_timeout: float | None = None,
        printer: ViewerPrinter | None = None,
    ):
        self.settings = settings
        self.run_id = run_id
        self.cell_timeout = cell_timeout
        # The scheduler's one browser (SchedulerService.printer); a run made without one starts its own,
        # closed when the run ends.
        self.printer = printer
        self._own_printer = printer is None
        # The whole notebook: a run stuck anywhere (a kernel that never answers) fails instead of holding
        # the scheduler's one worker forever.
        self.run_timeout = run_timeout or settings.job_run_timeout_seconds

    def run(self) -> RunStatus:
        context = None
        try:
            context = self.before_start()
            self.execute(context)
            self.on_complete(context)
            return RunStatus.succeeded
        except Exception as exc:
            self.on_failure(context, exc)
            return RunStatus.failed
        finally:
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
            # The run works on its own copy of the snapshot (what ran is kept with what it produced).
            notebook = output_dir / "input.ipynb"
            shutil.copyfile(current_notebook_path(self.settings, job.app), notebook)
            context = RunContext(
                run_id=run.id,
                job_id=job.id,
                job_name=job.name,
                org_id=job.org_id,
                owner_id=job.owner_id,
                parameters=dict(job.parameters or {}),
                recipients=list(job.recipients or []),
                notebook=notebook,
                output_dir=output_dir,
                renderer=pdf_renderer_for(job),
            )
            run.pdf_renderer = context.renderer.value
            if context.renderer == PdfRenderer.viewer:
                # The page reads as the job's owner (a job token minted when the Viewer opens it), for as
                # long as the PDF may take.
                budget = self.printer_of().settings.time_budget
                context.print_token = sign_print(
                    session, self.settings, job.app, as_user=job.owner_id, expires_in=int(budget) + 60
                )
                org = branding(self.settings.data_dir, session.get(Organization, job.org_id), with_logo=False)
                context.letterhead = Letterhead(org["org_name"], org["color"], job.app.title)
                return context
            # The run reads data as the job's owner, inside the job's organization, for one hour at most.
            context.token = mint_token(
                session,
                kind=TokenKind.job,
                user_id=job.owner_id,
                org_id=job.org_id,
                ttl_seconds=3600,
                note=f"job run {run.id}",
            )
        return context

    def kernel_environment(self, context: RunContext) -> dict:
        env = {k: v for k, v in os.environ.items() if k in _KERNEL_ENV_KEEP}
        env.update(
            CARNET_API_URL=self.settings.api_url,
            CARNET_TOKEN=context.token,
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

    def execute(self, context: RunContext) -> None:
        if context.renderer == PdfRenderer.viewer:
            self.print_app(context)
        else:
            self.run_notebook(context)

    def print_app(self, context: RunContext) -> None:
        log.info("Run %s: printing the app as the Viewer shows it", context.run_id)
        try:
            seconds = self.printer_of().print_token(context.print_token, context.pdf, context.letterhead)
        except CarnetError as exc:
            raise JobRunError(exc.message, step="pdf") from None
        log.info("Run %s: PDF printed from the Viewer in %.1f s; mailing it", context.run_id, seconds)

    def run_notebook(self, context: RunContext) -> None:
        env = self.kernel_environment(context)
        as_owner = self.run_as_owner(context, env)
        command = [
            sys.executable,
            "-m",
            "carnet.scheduler.notebook_run",
            str(context.notebook),
            str(context.executed_notebook),
            "--parameters",
            json.dumps(context.parameters),
            "--cwd",
            str(context.output_dir),
            "--timeout",
            str(self.cell_timeout),
        ]
        log.info("Run %s: running the notebook (at most %g s)", context.run_id, self.run_timeout)
        started = time.monotonic()
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
            _stdout, stderr = process.communicate(timeout=self.run_timeout)
        except subprocess.TimeoutExpired:
            stop_run_processes(process, context.output_dir)
            raise JobRunError(
                f"The notebook did not finish within {self.run_timeout:g} s", step="execute"
            ) from None
        if process.returncode != 0:
            detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
            with contextlib.suppress(ValueError, KeyError, TypeError):
                detail = json.loads(detail)["error"]
            raise JobRunError(f"The notebook failed: {detail}", step="execute")
        log.info(
            "Run %s: notebook done in %.1f s; printing the PDF", context.run_id, time.monotonic() - started
        )
        try:
            notebook_to_pdf(context.executed_notebook, context.pdf, self.printer_of().browser())
        except CarnetError as exc:
            raise JobRunError(exc.message, step="pdf") from None
        log.info("Run %s: PDF printed; mailing it", context.run_id)

    def on_complete(self, context: RunContext) -> None:
        where = send_mail(
            self.settings,
            context.recipients,
            subject=f"[Carnet] {context.job_name}",
            body=f"Your report {context.job_name!r} is attached.\n\n-- Carnet",
            attachments=[context.pdf],
        )
        log.info(
            "Run %s of job %r mailed to %s via %s",
            context.run_id,
            context.job_name,
            ", ".join(context.recipients),
            where,
        )
        self._finish(RunStatus.succeeded, None)

    def on_failure(self, context: RunContext | None, exc: Exception) -> None:
        message = exc.message if isinstance(exc, CarnetError) else f"{type(exc).__name__}: {exc}"
        log.warning("Run %s failed: %s", self.run_id, message, exc_info=not isinstance(exc, CarnetError))
        self._finish(RunStatus.failed, message)

    def _finish(self, status: RunStatus, error: str | None) -> None:
        with session_scope(self.settings.db_url) as session:
            run = session.get(JobRun, self.run_id)
            if run is None:  # the job was deleted while it ran
                return
            run.status = status
            run.error = error
            run.finished_at = utcnow()
