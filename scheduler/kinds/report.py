"""``report``: an app printed to PDF and mailed to its recipients (who need no account).

The PDF is the app as the Viewer shows it (the scheduler's Chromium prints the Viewer's ``/print/<token>``
page, scheduler/viewer_pdf.py), except for a job with papermill ``parameters``: only papermill can inject
them, so such a job runs the notebook with papermill and prints nbconvert's HTML of it (scheduler/pdf.py).

``config`` (optional): ``{"filters": {name: value or [values]}}``, the filter values the PDF is printed for:
they travel in the print page's URL exactly as in an app's URL (``carnet.filters.bind``), so a value the
app's filter does not offer is ignored as it is for a viewer. A webhook's payload ``filters`` (an object)
replaces them for that run.
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import urlencode

from carnet.branding import branding
from carnet.db.models import Organization
from carnet.errors import CarnetError, ValidationError
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


MAX_FILTERS = 50
_FILTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SCALAR = (str, int, float, bool)


def check_filters(raw, field: str = "config.filters") -> dict:
    """``{name: value or [values]}``: names as carnet.filters.bind takes them, scalar values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_FILTERS:
        raise ValidationError(f"{field} must be an object of at most {MAX_FILTERS} filters", field=field)
    for name, value in raw.items():
        if not _FILTER_NAME.fullmatch(str(name)):
            raise ValidationError(f"{field}: {name!r} is not a filter name", field=f"{field}.{name}"[:200])
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > 100 or not all(isinstance(v, _SCALAR) for v in values):
            raise ValidationError(
                f"{field}.{name} must be a text, number or boolean, or a list of 1-100 of them",
                field=f"{field}.{name}",
            )
        if any(len(str(v)) > 500 for v in values):
            raise ValidationError(
                f"{field}.{name}: a value is longer than 500 characters", field=f"{field}.{name}"
            )
    return dict(raw)


def filter_query(filters: dict) -> str:
    """The URL query of ``filters`` (a list: comma-separated, as the Viewer writes several choices)."""

    def text(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return urlencode(
        {
            name: ",".join(text(v) for v in (value if isinstance(value, list) else [value]))
            for name, value in filters.items()
        }
    )


@register
class ReportKind(JobKind):
    name = "report"
    description = "Print an app to PDF (as the Viewer shows it) and mail it to the recipients."
    needs_app = True
    needs_recipients = True

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise ValidationError("config must be an object", field="config")
        unknown = sorted(set(config) - {"filters"})
        if unknown:
            raise ValidationError(f"Unknown field 'config.{unknown[0]}'", field=f"config.{unknown[0]}")
        filters = check_filters(config.get("filters"))
        return {"filters": filters} if filters else {}

    def prepare(self, executor, session, job, run, context) -> None:
        from carnet.scheduler.executor import JobRunError, PdfRenderer, pdf_renderer_for

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
            payload = (run.payload or {}).get("filters")
            filters = context.config.get("filters") or {}
            if payload is not None:
                try:
                    filters = check_filters(payload, "payload.filters")
                except ValidationError as exc:
                    raise JobRunError(exc.message, "before_start") from None
            context.extras["query"] = filter_query(filters)
        else:
            context.token = executor.mint_job_token(session, context)

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError, PdfRenderer, TransientRunError
        from carnet.scheduler.viewer_pdf import PdfViewerBusy

        with written_then_renamed(context.pdf) as partial:
            if context.renderer == PdfRenderer.viewer:
                printer = executor.printer_of()
                url = printer.settings.viewer_url.rstrip("/") + "/print/" + context.print_token
                if context.extras.get("query"):
                    url += "?" + context.extras["query"]
                try:
                    printer.print_url(url, partial, context.letterhead)
                except PdfViewerBusy as exc:  # the Viewer's kernel cap: retried with the job's backoff
                    raise TransientRunError(exc.message, step="pdf") from None
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
