"""``report``: an app printed to PDF and mailed to its recipients (who need no account).

The PDF is the app as the Viewer shows it (the scheduler's Chromium prints the Viewer's ``/print/<token>``
page, scheduler/viewer_pdf.py), except for a job with papermill ``parameters``: only papermill can inject
them, so such a job runs the notebook with papermill and prints nbconvert's HTML of it (scheduler/pdf.py).
"""

from __future__ import annotations

import shutil

from carnet.branding import branding
from carnet.db.models import Organization
from carnet.errors import CarnetError
from carnet.print_pages import sign_print
from carnet.publishing import current_notebook_path
from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register


def copy_app_notebook(executor, job, context) -> None:
    """The run works on its own copy of the app's published notebook (what ran is kept with its outputs)."""
    context.notebook = context.output_dir / "input.ipynb"
    shutil.copyfile(current_notebook_path(executor.settings, job.app), context.notebook)


def letterhead_of(executor, session, job):
    from carnet.scheduler.viewer_pdf import Letterhead

    org = branding(executor.settings.data_dir, session.get(Organization, job.org_id), with_logo=False)
    return Letterhead(org["org_name"], org["color"], job.app.title)


@register
class ReportKind(JobKind):
    name = "report"
    description = "Print an app to PDF (as the Viewer shows it) and mail it to the recipients."
    needs_app = True
    needs_recipients = True

    def validate(self, session, principal, body: dict) -> dict:
        return {}

    def prepare(self, executor, session, job, run, context) -> None:
        from carnet.scheduler.executor import PdfRenderer, pdf_renderer_for

        copy_app_notebook(executor, job, context)
        context.renderer = pdf_renderer_for(job)
        run.pdf_renderer = context.renderer.value
        if context.renderer == PdfRenderer.viewer:
            # The page reads as the job's owner (a job token minted when the Viewer opens it), for as long
            # as the PDF may take.
            budget = executor.printer_of().settings.time_budget
            context.print_token = sign_print(
                session, executor.settings, job.app, as_user=job.owner_id, expires_in=int(budget) + 60
            )
            context.letterhead = letterhead_of(executor, session, job)
        else:
            context.token = executor.mint_job_token(session, context)

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError, PdfRenderer

        with written_then_renamed(context.pdf) as partial:
            if context.renderer == PdfRenderer.viewer:
                try:
                    executor.printer_of().print_token(context.print_token, partial, context.letterhead)
                except CarnetError as exc:
                    raise JobRunError(exc.message, step="pdf") from None
            else:
                from carnet.scheduler.pdf import notebook_to_pdf

                executor.run_notebook(context, context.parameters)
                try:
                    notebook_to_pdf(context.executed_notebook, partial, executor.printer_of().browser())
                except CarnetError as exc:
                    raise JobRunError(exc.message, step="pdf") from None
        return [
            PlannedMail(
                context.recipients,
                f"[Carnet] {context.job_name}",
                f"Your report {context.job_name!r} is attached.\n\n-- Carnet",
                [context.pdf],
            )
        ]
