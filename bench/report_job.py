"""A Carnet report job end to end (queued -> executed -> PDF -> mailed to the outbox) vs bare papermill
executing the same notebook, and vs papermill + nbconvert's webpdf where nbconvert can find a browser."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import report, start_stack, stop_stack, studio_token, timed
from carnet.db import session_scope
from carnet.db.models import App, JobRun, RunStatus, utcnow
from carnet.publishing import current_notebook_path
from tests.helpers import wait_until

REPEAT = 4


def main():
    stack = start_stack()
    try:
        settings = stack.settings
        with session_scope(settings.db_url) as session:
            notebook = current_notebook_path(settings, session.get(App, stack.app_id))
        token = studio_token(settings)
        work = Path(tempfile.mkdtemp(prefix="carnet-bench-job-"))
        env = {
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "CARNET_API_URL": f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/",
            "CARNET_TOKEN": token,
        }

        def bare_papermill():
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "papermill"),
                    str(notebook),
                    str(work / "out.ipynb"),
                    "-p",
                    "continent",
                    "Asia",
                    "--no-progress-bar",
                ],
                env=env,
                check=True,
                capture_output=True,
            )

        def carnet_job():
            with session_scope(settings.db_url) as session:
                run = JobRun(
                    job_id=stack.job_id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow()
                )
                session.add(run)
                session.flush()
                run_id = run.id

            def finished():
                with session_scope(settings.db_url) as session:
                    status = session.get(JobRun, run_id).status
                if status == RunStatus.failed:
                    raise SystemExit(f"run {run_id} failed")
                return status == RunStatus.succeeded

            wait_until(finished, 300, interval=0.1, what="the job run")

        started = time.perf_counter()
        bare_papermill()
        print(f"(warm-up papermill {time.perf_counter() - started:.2f}s)")
        report(
            "Demo report: notebook run (papermill CLI) vs Carnet job (papermill + HTML + PDF + mail)",
            [
                ("bare papermill CLI (execute only)", timed(bare_papermill, REPEAT)),
                ("Carnet report job, queue to mailed PDF", timed(carnet_job, REPEAT)),
            ],
        )
    finally:
        stop_stack(stack)


if __name__ == "__main__":
    main()
