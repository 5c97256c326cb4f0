"""``burst``: one PDF of an app per recipient, each printed for that recipient's row-level attributes and
variables (filter values), each mailed to that recipient only. Recipients need no account: every PDF is the
Viewer's print page of a token read by nobody (carnet.print_pages ``sign_print``), so the app's row rules
give each recipient only the rows of their own attribute values.

``config`` is either

- ``{"recipients": [{"email", "attributes": {name: [values]}, "variables": {name: value}}, ...]}``
  (1-1000 entries, checked as ``sign_print`` checks them), or
- ``{"recipients_from": {"table", "email_column", "attribute_columns": {attribute: column},
  "variable_columns": {variable: column}}}``: a table of the org's warehouse, read when the run starts
  through the service's warehouse routes with the run's job token, as the owner (only the service opens
  the warehouse; at most 1000 rows; one row per recipient; a row with a bad email or value is skipped and
  reported; the first row of an email wins),

and optionally ``"file_name"``: the PDF's name, a template with ``{{date:...}}`` (scheduler/attachments.py);
default ``<job>-<n>.pdf``.

Who may make one: studio members and admins. The job chooses whose rows go to which address, which row
rules do not narrow for them anyway; an analyst (restricted by the rules) could otherwise print any rows.

How a run goes, and why (docs/SCHEDULER.md):

- The recipient list is frozen in the run's folder the first time the run resolves it (``.burst.json``),
  so every try of one run mails the same people the same PDFs, even if the warehouse table changed.
- Each recipient's PDF is ``burst/<n>/<file name>`` in the run's folder, written then renamed: a try that
  finds a recipient's PDF there does not print it again, so a burst killed at recipient 30 resumes at 30.
- Several PDFs are printed at once (``ViewerPdfSettings.concurrency``), each its own print token, browser
  context and Viewer kernel: no page or kernel ever serves two recipients.
- A recipient whose PDF fails does not stop the others. When all PDFs exist the run returns one mail per
  recipient (the outbox sends each once). When some failed and the run has tries left, the try fails as
  transient: the retry prints only the missing PDFs, and everyone is mailed together once all exist. On
  the last try the recipients whose PDF exists are mailed, then the run fails naming those who got none.
- ``burst-recipients.csv`` (a run output) lists every recipient or skipped row: its state, file, seconds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import requests

from carnet.client import ApiClient, CarnetApiError
from carnet.db import session_scope
from carnet.db.models import App, Job, Role, TokenKind, role_at_least, utcnow
from carnet.errors import NotFound, ValidationError
from carnet.print_pages import sign_print
from carnet.query.service import check_variables
from carnet.row_security import check_attributes
from carnet.scheduler.attachments import render_file_name, written_then_renamed
from carnet.scheduler.kinds import JobKind, PlannedMail, register
from carnet.scheduler.kinds.report import letterhead_of
from carnet.settings import CarnetSettings
from carnet.sharing import member_reader
from carnet.validation import validate_email
from carnet.warehouse import check_identifier, open_warehouse  # validate() only: it runs in the service

log = logging.getLogger("carnet.scheduler")

MAX_RECIPIENTS = 1000
# Rows read from a recipients table: more than this is refused. It is the most the service's warehouse
# preview route (the one route that answers a table's rows) gives in one answer.
MAX_TABLE_ROWS = 1000
SERVICE_TIMEOUT = 120  # seconds: one read of the recipients table through the service
FROZEN_LIST = ".burst.json"
REPORT_FILE = "burst-recipients.csv"
FAILED_NAMED = 10  # recipients named in a run's error; the report file lists them all
_CONFIG_KEYS = {"recipients", "recipients_from", "file_name"}
_FROM_KEYS = {"table", "email_column", "attribute_columns", "variable_columns"}
_RECIPIENT_KEYS = {"email", "attributes", "variables"}


def _refield(exc: ValidationError, field: str) -> ValidationError:
    """``exc`` with its field placed under ``field`` (``attributes.region`` -> ``<field>.region``)."""
    inner = exc.fields.get("field") or ""
    suffix = inner.split(".", 1)[1] if "." in inner else ""
    return ValidationError(exc.message, field=f"{field}.{suffix}" if suffix else field)


def check_recipient(raw, where: str) -> dict:
    """One entry of an explicit list: ``{"email", "attributes", "variables"}``, as sign_print takes them."""
    if not isinstance(raw, dict) or "email" not in raw or not set(raw) <= _RECIPIENT_KEYS:
        raise ValidationError(f"{where} must be an object {{email, attributes, variables}}", field=where)
    email = validate_email(raw["email"], field=f"{where}.email")
    try:
        attributes = check_attributes(raw.get("attributes") or {})
    except ValidationError as exc:
        raise _refield(exc, f"{where}.attributes") from None
    try:
        variables = check_variables(raw.get("variables") or {})
    except ValidationError as exc:
        raise _refield(exc, f"{where}.variables") from None
    return {"email": email, "attributes": attributes, "variables": variables}


def check_recipient_list(raw) -> list[dict]:
    field = "config.recipients"
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_RECIPIENTS:
        raise ValidationError(f"{field} must be a list of 1-{MAX_RECIPIENTS} recipients", field=field)
    recipients, seen = [], set()
    for index, entry in enumerate(raw):
        recipient = check_recipient(entry, f"{field}[{index}]")
        if recipient["email"] in seen:
            # Each address gets one PDF: two entries of one address would be two mails of one key.
            raise ValidationError(
                f"{field}[{index}].email {recipient['email']!r} is listed twice",
                field=f"{field}[{index}].email",
            )
        seen.add(recipient["email"])
        recipients.append(recipient)
    return recipients


def _column_map(raw, name: str, check_name) -> dict[str, str]:
    field = f"config.recipients_from.{name}"
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(c, str) and c for c in raw.values()):
        raise ValidationError(f"{field} must be an object {{name: column}}", field=field)
    try:
        check_name({key: None for key in raw})
    except ValidationError as exc:
        raise ValidationError(exc.message, field=field) from None
    return dict(raw)


def check_recipients_from(raw, settings: CarnetSettings, org_id: int) -> dict:
    """The table and columns exist now (they are read again when each run starts)."""
    field = "config.recipients_from"
    if not isinstance(raw, dict) or not {"table", "email_column"} <= set(raw) or not set(raw) <= _FROM_KEYS:
        raise ValidationError(
            f"{field} must be an object {{table, email_column, attribute_columns, variable_columns}}",
            field=field,
        )
    table = check_identifier(raw["table"], "table name", field=f"{field}.table")
    email_column = raw["email_column"]
    if not isinstance(email_column, str) or not email_column:
        raise ValidationError(f"{field}.email_column must be a column name", field=f"{field}.email_column")
    attribute_columns = _column_map(
        raw.get("attribute_columns"),
        "attribute_columns",
        lambda names: check_attributes({n: [] for n in names}),
    )
    variable_columns = _column_map(raw.get("variable_columns"), "variable_columns", check_variables)
    try:
        columns = {column["name"] for column in open_warehouse(settings, org_id).columns(table)}
    except NotFound:
        raise ValidationError(f"No table {table!r} in the warehouse", field=f"{field}.table") from None
    wanted = [("email_column", email_column)]
    wanted += [(f"attribute_columns.{a}", c) for a, c in attribute_columns.items()]
    wanted += [(f"variable_columns.{v}", c) for v, c in variable_columns.items()]
    for where, column in wanted:
        if column not in columns:
            raise ValidationError(f"The table {table!r} has no column {column!r}", field=f"{field}.{where}")
    return {
        "table": table,
        "email_column": email_column,
        "attribute_columns": attribute_columns,
        "variable_columns": variable_columns,
    }


def _variable_value(value):
    # check_variables takes strings, numbers, booleans and null; dates and decimals are sent as text.
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def recipients_from_table(executor, context, spec: dict) -> tuple[list[dict], list[dict]]:
    """(recipients, skipped rows) of the recipients table as it is now, read through the service's warehouse
    route with the run's job token (only the service opens the warehouse: docs/ARCHITECTURE.md). A row is
    skipped, with the reason, when its email or a value is bad, or its email came in an earlier row (the
    first row wins)."""
    from carnet.scheduler.executor import JobRunError

    table_path = f"api/v1/warehouse/tables/{ApiClient.segment(spec['table'])}"
    api = ApiClient(executor.settings.api_url, token=context.token, timeout=SERVICE_TIMEOUT)
    info = through_service(spec["table"], lambda: api.get_json(table_path))
    if (info.get("rows") or 0) > MAX_TABLE_ROWS:
        raise JobRunError(f"The recipients table has more than {MAX_TABLE_ROWS} rows", step="recipients")
    needed = [spec["email_column"], *spec["attribute_columns"].values(), *spec["variable_columns"].values()]
    missing = sorted(set(needed) - {column["name"] for column in info.get("columns") or []})
    if missing:
        raise JobRunError(f"The recipients table has no column {missing[0]!r} any more", step="recipients")
    rows = through_service(spec["table"], lambda: api.get_json(f"{table_path}/preview", limit=MAX_TABLE_ROWS))
    rows = rows["rows"]
    if len(rows) > MAX_TABLE_ROWS:
        raise JobRunError(f"The recipients table has more than {MAX_TABLE_ROWS} rows", step="recipients")
    recipients, skipped, seen = [], [], set()
    for row_number, row in enumerate(rows, start=1):
        try:
            email = validate_email(row[spec["email_column"]], field="email")
            if email in seen:
                raise ValidationError(f"{email} came in an earlier row (the first row wins)")
            attributes = check_attributes(
                {
                    name: [str(row[column])]
                    for name, column in spec["attribute_columns"].items()
                    if row[column] is not None
                }
            )
            variables = check_variables(
                {name: _variable_value(row[column]) for name, column in spec["variable_columns"].items()}
            )
        except ValidationError as exc:
            skipped.append(
                {"row": row_number, "email": str(row[spec["email_column"]])[:320], "why": exc.message}
            )
            continue
        seen.add(email)
        recipients.append({"email": email, "attributes": attributes, "variables": variables})
    if len(recipients) > MAX_RECIPIENTS:
        raise JobRunError(
            f"The recipients table gives {len(recipients)} recipients, over {MAX_RECIPIENTS}",
            step="recipients",
        )
    return recipients, skipped


def through_service(table: str, call):
    """``call()`` against the Carnet service, its failures as the run's: the service unreachable or failing
    (5xx) is retried with the job's backoff; a table gone (404) or a refusal fails the run for good."""
    from carnet.scheduler.executor import JobRunError, TransientRunError

    try:
        return call()
    except requests.RequestException as exc:  # refused, reset, timed out: the service may be restarting
        raise TransientRunError(
            f"Reading the recipients table: the Carnet service did not answer ({type(exc).__name__})",
            step="recipients",
        ) from None
    except CarnetApiError as exc:
        if exc.status >= 500:
            raise TransientRunError(
                f"Reading the recipients table: {exc.message} (HTTP {exc.status})", step="recipients"
            ) from None
        if exc.status == 404:
            raise JobRunError(f"The recipients table {table!r} is gone", step="recipients") from None
        raise JobRunError(
            f"Reading the recipients table {table!r} was refused: {exc.message} (HTTP {exc.status})",
            step="recipients",
        ) from None


def pdf_name(context, number: int) -> str:
    from carnet.scheduler.executor import safe_file_stem

    template = context.config.get("file_name")
    if not template:
        return f"{safe_file_stem(context.job_name, 'report')}-{number}.pdf"
    name = render_file_name(template, context.scheduled_for, context.timezone, field="config.file_name")
    return name if name.lower().endswith(".pdf") else f"{name}.pdf"


def write_report(folder: Path, rows: list[dict]) -> None:
    """``burst-recipients.csv``: one line per recipient or skipped table row (no attribute values)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, ["n", "email", "state", "file", "seconds", "detail"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with written_then_renamed(folder / REPORT_FILE) as partial:
        partial.write_text(text.getvalue())


@register
class BurstKind(JobKind):
    name = "burst"
    description = (
        "Print an app once per recipient, each for that recipient's row-level attributes and variables, "
        "and mail each recipient their own PDF (recipients need no account)."
    )
    needs_app = True
    needs_recipients = False
    min_role = Role.studio

    def validate(self, session, settings, principal, body: dict) -> dict:
        if body.get("recipients") not in (None, []):
            raise ValidationError(
                "A burst job's recipients are in config.recipients or config.recipients_from",
                field="recipients",
            )
        config = body.get("config")
        if not isinstance(config, dict) or not set(config) <= _CONFIG_KEYS:
            raise ValidationError(
                "config must be an object {recipients | recipients_from, file_name}", field="config"
            )
        if ("recipients" in config) == ("recipients_from" in config):
            raise ValidationError("config needs either recipients or recipients_from", field="config")
        checked: dict = {}
        if "file_name" in config:
            template = config["file_name"]
            if not isinstance(template, str):
                raise ValidationError("config.file_name must be a string", field="config.file_name")
            render_file_name(template, utcnow(), "UTC", field="config.file_name")
            checked["file_name"] = template
        if "recipients" in config:
            checked["recipients"] = check_recipient_list(config["recipients"])
        else:
            checked["recipients_from"] = check_recipients_from(
                config["recipients_from"], settings, principal.org_id
            )
        return checked

    def prepare(self, executor, session, job: Job, run, context) -> None:
        from carnet.scheduler.executor import JobRunError

        owner = member_reader(session, job.owner_id, job.org_id, TokenKind.job.value)
        if owner is None or not role_at_least(owner.role, self.min_role):
            # Made by a studio member who has since become an analyst (restricted by row rules).
            raise JobRunError(
                f"A burst job's owner needs the {self.min_role.value} role", step="before_start"
            )
        context.letterhead = letterhead_of(executor, session, job)
        if "recipients_from" in context.config and not (context.output_dir / FROZEN_LIST).exists():
            # The table is read through the service as the owner (execute(), once this session committed
            # the token: the service must find it).
            context.token = executor.mint_job_token(session, context, ttl_seconds=SERVICE_TIMEOUT * 3)
        # The last try mails those whose PDF exists and fails naming the others (fail_or_retry's rule).
        context.extras["tries_left"] = run.parent_run_id is None and run.attempt <= job.max_retries

    def recipients(self, executor, context) -> tuple[list[dict], list[dict]]:
        """The run's recipients and skipped rows, frozen at the first try (see the module's docstring)."""
        frozen = context.output_dir / FROZEN_LIST
        if frozen.exists():
            kept = json.loads(frozen.read_text())
            return kept["recipients"], kept["skipped"]
        if "recipients" in context.config:
            recipients, skipped = context.config["recipients"], []
        else:
            recipients, skipped = recipients_from_table(executor, context, context.config["recipients_from"])
        with written_then_renamed(frozen) as partial:
            partial.write_text(json.dumps({"recipients": recipients, "skipped": skipped}))
        return recipients, skipped

    def print_jobs(self, executor, context, todo: list[tuple[dict, Path]]):
        """``(print token, pdf)`` of each recipient in ``todo``, the token signed when the printer takes it
        (just before its page opens: a long burst outlives any one token)."""
        from carnet.scheduler.executor import JobRunError

        budget = int(executor.printer_of().settings.time_budget)
        for recipient, pdf in todo:
            with session_scope(executor.settings.db_url) as session:
                app = session.get(App, context.app_id)
                if app is None:
                    raise JobRunError("The job's app was deleted", step="pdf")
                token = sign_print(
                    session,
                    executor.settings,
                    app,
                    attributes=recipient["attributes"],
                    variables=recipient["variables"],
                    expires_in=budget + 60,
                )
            pdf.parent.mkdir(parents=True, exist_ok=True)
            yield token, pdf

    def execute(self, executor, context) -> list[PlannedMail]:
        from carnet.scheduler.executor import JobRunError, TransientRunError

        recipients, skipped = self.recipients(executor, context)
        if not recipients:
            write_report(context.output_dir, [{"state": "skipped", **s, "detail": s["why"]} for s in skipped])
            raise JobRunError(
                f"The recipients table gave no recipient ({len(skipped)} rows skipped: see {REPORT_FILE})",
                step="recipients",
            )
        pdfs = [
            context.output_dir / "burst" / str(number) / pdf_name(context, number)
            for number in range(1, len(recipients) + 1)
        ]
        # Each PDF is its own page, browser context and Viewer kernel (only that recipient's attributes);
        # several are printed at once (ViewerPdfSettings.concurrency), each written then renamed into place.
        todo = [(r, pdf) for r, pdf in zip(recipients, pdfs, strict=True) if not pdf.exists()]
        started = time.monotonic()
        printer = executor.printer_of()
        outcomes = {
            outcome.path: outcome
            for outcome in printer.print_many(self.print_jobs(executor, context, todo), context.letterhead)
        }
        mails, failed, report = [], [], []
        for number, (recipient, pdf) in enumerate(zip(recipients, pdfs, strict=True), start=1):
            line = {"n": number, "email": recipient["email"], "file": f"burst/{number}/{pdf.name}"}
            outcome = outcomes.get(pdf)
            if outcome is None:
                line["state"] = "printed by an earlier try"
            elif outcome.error is not None:
                log.warning(
                    "Run %s: the PDF of recipient %s failed: %s",
                    context.run_id,
                    number,
                    outcome.error.message,
                )
                failed.append(recipient["email"])
                report.append({**line, "file": "", "state": "failed", "detail": outcome.error.message})
                continue
            else:
                line["seconds"], line["state"] = f"{outcome.seconds:.2f}", "printed"
            report.append(line)
            mails.append(
                PlannedMail(
                    [recipient["email"]],
                    f"[Carnet] {context.job_name}",
                    f"Your report {context.job_name!r} is attached.\n\n-- Carnet",
                    [pdf],
                )
            )
        printed = len(outcomes) - len(failed)
        elapsed = time.monotonic() - started
        per_pdf = elapsed / max(printed, 1)
        log.info(
            "Run %s: burst printed %s PDFs in %.1f s (%.2f s per PDF), %s failed, %s rows skipped",
            *(context.run_id, printed, elapsed, per_pdf, len(failed), len(skipped)),
        )
        report += [{"state": "skipped", **row, "detail": row["why"]} for row in skipped]
        write_report(context.output_dir, report)
        if not failed:
            return mails
        named = ", ".join(failed[:FAILED_NAMED])
        if len(failed) > FAILED_NAMED:
            named += f" and {len(failed) - FAILED_NAMED} more"
        if context.extras.get("tries_left"):
            raise TransientRunError(
                f"The PDFs of {len(failed)} of {len(recipients)} recipients failed ({named}); the next try "
                "prints only those, then mails everyone",
                step="pdf",
            )
        delivery = mail_those_printed(executor, context, mails)
        raise JobRunError(
            f"The PDFs of {len(failed)} of {len(recipients)} recipients failed ({named}): they got no mail; "
            f"{len(mails)} recipients were mailed their PDF{delivery} (see {REPORT_FILE})",
            step="pdf",
        )


def mail_those_printed(executor, context, mails: list[PlannedMail]) -> str:
    """On the run's last try: record and send the mail of the recipients whose PDF exists, before the run
    fails for the others. Returns a note for the run's error when a mail could not be delivered (the run's
    failure gives up its unsent rows)."""
    from carnet.scheduler.outbox import MailNotDelivered, deliver_run_mail

    if not mails:
        return ""
    executor.record_mail(context, mails)
    try:
        deliver_run_mail(executor.settings, context.run_id)
    except MailNotDelivered as exc:
        return f" (but: {exc.message}; the undelivered ones are given up)"
    return ""
