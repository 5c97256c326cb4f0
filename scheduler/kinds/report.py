"""``report``: an app printed to PDF and mailed to its recipients (who need no account).

The PDF is the app as the Viewer shows it (the scheduler's Chromium prints the Viewer's ``/print/<token>``
page, scheduler/viewer_pdf.py), except for a job with papermill ``parameters``: only papermill can inject
them, so such a job runs the notebook with papermill and prints nbconvert's HTML of it (scheduler/pdf.py).

``config`` (optional): ``{"filters": {name: value or [values]}}``, the filter values the PDF is printed for:
they travel in the print page's URL exactly as in an app's URL (``carnet.filters.bind``), so a value the
app's filter does not offer is ignored as it is for a viewer. A webhook's payload ``filters`` (an object)
replaces them for that run.

Pre-rendered print pages: most of a Viewer PDF's time is the cold render of the page (kernel start, the
app's cells). The scheduler's tick (``prerender_report_pages``, scheduler/app.py) signs, shortly before a
report's fire time, the print token its scheduled run will use and asks the Viewer to render that page now
(extension/viewer_print_warm.py); the run's ``prepare`` takes the kept token when its scheduled time, owner,
app and filters match, and the Viewer hands the print its pooled page. The Viewer uses it only for the same
token and query, the same app version and data version (a load in between: the print renders cold over the
new data). Manual and webhook runs, retries, and anything that does not match sign a new token and render
cold, as does every failure of the pre-render (only logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import select

from carnet.branding import branding
from carnet.data_versions import data_version
from carnet.db import session_scope
from carnet.db.models import Job, Membership, Organization, utcnow
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


log = logging.getLogger("carnet.scheduler")

# At most this many pre-rendered print tokens are kept (a few per due report; older ones are dropped).
MAX_PRERENDERS_KEPT = 500
# Pre-renders asked for in one tick (the rest at the next ticks): each is one short POST to the Viewer.
MAX_PRERENDERS_PER_TICK = 10
# Seconds the Viewer may take to answer a pre-render request (it answers before rendering).
PRERENDER_POST_TIMEOUT = 10.0
# A kept token is used only if it still has this long to live beyond the PDF's time budget.
PRERENDER_SPARE_SECONDS = 60


def fire_key(when: datetime) -> datetime:
    """A fire time as a dictionary key: naive UTC (databases give it back with or without its zone)."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


@dataclass(frozen=True)
class PrerenderedPrint:
    """A print token signed ahead of a report's fire time, whose page the Viewer was asked to pre-render or
    the scheduler's browser opened ahead (``held``)."""

    token: str
    query: str
    owner_id: int
    app_id: int
    expires_at: float  # time.time() when the token expires
    fingerprint: str = ""  # page_fingerprint when the page was asked for
    held: object = None  # the page opened in the scheduler's browser (ViewerPrinter.open_page), if any
    printer: object = None  # the ViewerPrinter holding it

    def release(self) -> None:
        """Closes the held page, if any (its run will not print it)."""
        if self.held is not None and self.printer is not None:
            self.printer.discard(self.held)


class PrerenderedPrints:
    """{(job id, fire time): PrerenderedPrint} in the scheduler's memory (lost on restart: those runs render
    cold). Bounded; an entry is dropped when its run takes it or when it is stale."""

    def __init__(self, limit: int = MAX_PRERENDERS_KEPT):
        self.limit = limit
        self._kept: dict[tuple[int, datetime], PrerenderedPrint] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[int, datetime]) -> bool:
        with self._lock:
            return (key[0], fire_key(key[1])) in self._kept

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def keep(self, job_id: int, fire: datetime, prerendered: PrerenderedPrint) -> None:
        self.drop_expired()
        dropped = []
        with self._lock:
            while len(self._kept) >= self.limit:  # the oldest kept first
                dropped.append(self._kept.pop(next(iter(self._kept))))
            self._kept[(job_id, fire_key(fire))] = prerendered
        for kept in dropped:
            kept.release()

    def drop_expired(self) -> list[PrerenderedPrint]:
        """Removes the entries whose token expired (their runs never came: a job disabled or changed, a
        missed fire) and closes their held pages; returns them."""
        with self._lock:
            now = time.time()
            dropped = [self._kept.pop(k) for k, kept in list(self._kept.items()) if kept.expires_at <= now]
        for kept in dropped:
            kept.release()
        return dropped

    def held(self) -> int:
        """How many kept entries hold a page open in the scheduler's browser."""
        with self._lock:
            return sum(1 for kept in self._kept.values() if kept.held is not None)

    def take(self, job_id: int, fire: datetime) -> PrerenderedPrint | None:
        with self._lock:
            return self._kept.pop((job_id, fire_key(fire)), None)

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._kept.values())
            self._kept.clear()
        for kept in dropped:
            kept.release()


PRERENDERED = PrerenderedPrints()


def config_query(job: Job) -> str:
    return filter_query((job.config or {}).get("filters") or {})


def page_fingerprint(session, job: Job, query: str) -> str:
    """What a report's printed page depends on besides its code: the app's version, the organization's
    data version (every load, source change or row-rule change gives a new one), the owner's role and
    attributes in the organization (the rows they may see) and the filter query. A page opened ahead is
    printed only if this is unchanged at its run."""
    member = session.scalar(
        select(Membership).where(Membership.user_id == job.owner_id, Membership.org_id == job.org_id)
    )
    facts = [
        job.app_id,
        job.app.current_version if job.app is not None else None,
        data_version(session, job.org_id),
        member.role.value if member is not None else None,
        member.attributes if member is not None else None,
        query,
    ]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def prerender_report_pages(
    settings,
    viewer_url: str,
    lead_seconds: float,
    time_budget: float,
    now: datetime | None = None,
    printer=None,
    hold: int = 0,
) -> list[tuple[int, str]]:
    """For each enabled report job on the Viewer path whose next fire is within ``lead_seconds`` and not
    prepared yet: sign the print token its run will use (as its owner, for its config filters, valid until
    past the fire time + the PDF's ``time_budget``) and keep it in ``PRERENDERED``. Then, while fewer than
    ``hold`` pages are held, ``printer`` (the scheduler's browser) opens the page itself and holds it, drawn,
    until the run prints it (state "opened ahead"); the others' pages the Viewer is asked to pre-render
    (``carnet/warm-print/<token>?<query>``). Returns (job id, the state or "unreachable") per job; a refusal
    or failure is only logged: that run renders cold."""
    import requests

    from carnet.print_pages import MAX_PRINT_SECONDS
    from carnet.scheduler.executor import PdfRenderer, pdf_renderer_for

    now = now or utcnow()
    PRERENDERED.drop_expired()
    lifetime = min(int(lead_seconds + time_budget) + PRERENDER_SPARE_SECONDS + 30, MAX_PRINT_SECONDS)
    asked = []
    to_open = []
    free_holds = max(0, hold - PRERENDERED.held()) if printer is not None else 0
    with session_scope(settings.db_url) as session:
        due = session.scalars(
            select(Job)
            .where(
                Job.enabled.is_(True),
                Job.kind == ReportKind.name,
                Job.app_id.is_not(None),
                Job.next_run_at.is_not(None),
                Job.next_run_at <= now + timedelta(seconds=lead_seconds),
            )
            .order_by(Job.next_run_at, Job.id)
        ).all()
        for job in due:
            if len(asked) >= MAX_PRERENDERS_PER_TICK:
                break
            if (job.id, job.next_run_at) in PRERENDERED or pdf_renderer_for(job) != PdfRenderer.viewer:
                continue
            if job.app is None or job.app.current_version is None:
                continue  # unpublished: the run fails as it would
            token = sign_print(session, settings, job.app, as_user=job.owner_id, expires_in=lifetime)
            query = config_query(job)
            kept = PrerenderedPrint(
                token,
                query,
                job.owner_id,
                job.app_id,
                time.time() + lifetime,
                fingerprint=page_fingerprint(session, job, query),
            )
            if len(to_open) < free_holds:
                to_open.append((job.id, job.next_run_at, kept))
                continue
            # Kept even if the Viewer refuses: the run then prints the same token, cold (a retry each tick
            # would only repeat the refusal).
            PRERENDERED.keep(job.id, job.next_run_at, kept)
            asked.append((job.id, kept))
    states = []
    for job_id, fire, kept in to_open:
        url = printer.url_of(kept.token) + (f"?{kept.query}" if kept.query else "")
        try:
            held = printer.open_page(url)
        except CarnetError as exc:  # no browser here (not installed, cannot start): the Viewer pre-renders
            log.warning("Report job %s's page cannot be opened ahead (%s)", job_id, exc.message)
            PRERENDERED.keep(job_id, fire, kept)
            asked.append((job_id, kept))
            continue
        PRERENDERED.keep(job_id, fire, replace(kept, held=held, printer=printer))
        state = "opened ahead" if held.error is None else f"failed to open ({held.error.message})"
        log.info("Report job %s's print page in the scheduler's browser: %s", job_id, state)
        states.append((job_id, state))
    base = viewer_url.rstrip("/") + "/carnet/warm-print/"
    for job_id, kept in asked:
        try:
            answer = requests.post(
                base + kept.token + (f"?{kept.query}" if kept.query else ""), timeout=PRERENDER_POST_TIMEOUT
            )
            json_answer = answer.headers.get("Content-Type", "").startswith("application/json")
            state = (answer.json() if json_answer else {}).get("state") or f"refused ({answer.status_code})"
        except (requests.RequestException, ValueError) as exc:
            # Never the URL in the log: it holds the token.
            state = f"unreachable ({type(exc).__name__})"
        log.info("Pre-render of report job %s's print page asked for: %s", job_id, state)
        states.append((job_id, state))
    return states


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
            context.letterhead = letterhead_of(executor, session, job)
            payload = (run.payload or {}).get("filters")
            filters = context.config.get("filters") or {}
            if payload is not None:
                try:
                    filters = check_filters(payload, "payload.filters")
                except ValidationError as exc:
                    raise JobRunError(exc.message, "before_start") from None
            context.extras["query"] = filter_query(filters)
            budget = executor.printer_of().settings.time_budget
            # A scheduled run's page may have been pre-rendered for its fire time with a token signed then
            # (prerender_report_pages): used only if it prints the same page, with time to spare.
            kept = PRERENDERED.take(job.id, run.scheduled_for) if run.trigger == "schedule" else None
            usable = kept is not None and (
                (kept.owner_id, kept.app_id, kept.query)
                == (job.owner_id, job.app_id, context.extras["query"])
                and kept.expires_at - time.time() >= budget + PRERENDER_SPARE_SECONDS
            )
            if usable and kept.held is not None:
                # Printed as held only if nothing it shows changed since it was opened; else closed.
                if kept.fingerprint == page_fingerprint(session, job, context.extras["query"]):
                    context.extras["held"] = kept.held
                    log.info("Run %s prints the page opened ahead for its fire time", run.id)
                else:
                    kept.release()
                    log.info(
                        "Run %s: the page opened ahead is not used (the app, its data or the owner's "
                        "access changed since); printed cold",
                        run.id,
                    )
                usable = False  # a token of its own, should the held page fail
            elif kept is not None and not usable:
                kept.release()
            if usable:
                context.print_token = kept.token
                context.extras["prerendered"] = True
                log.info("Run %s prints the page pre-rendered for its fire time", run.id)
            else:
                # The page reads as the job's owner (a job token minted when the Viewer opens it), for as
                # long as the PDF may take.
                context.print_token = sign_print(
                    session, executor.settings, job.app, as_user=job.owner_id, expires_in=int(budget) + 60
                )
        else:
            context.token = executor.mint_job_token(session, context)

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError, PdfRenderer, TransientRunError
        from carnet.scheduler.viewer_pdf import PdfViewerBusy

        with written_then_renamed(context.pdf) as partial:
            if context.renderer == PdfRenderer.viewer:
                printer = executor.printer_of()
                held = context.extras.pop("held", None)
                if held is not None:
                    try:
                        printer.finish_page(held, partial, context.letterhead)
                        return report_mail(context)
                    except CarnetError as exc:
                        log.warning("The page opened ahead failed (%s); printing it cold", exc.message)
                url = printer.url_of(context.print_token)
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
        return report_mail(context)


def report_mail(context) -> list[PlannedMail]:
    return [
        PlannedMail(
            context.recipients,
            f"[Carnet] {context.job_name}",
            f"Your report {context.job_name!r} is attached.\n\n-- Carnet",
            [context.pdf],
        )
    ]
