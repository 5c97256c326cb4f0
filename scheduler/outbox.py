"""The mail outbox: job mail is sent once per (run, purpose, recipient), across crashes and retries.

A run first produces its outputs (files written then renamed), then records its mail here in one
transaction: one row per recipient, keyed by (run, purpose, recipient). Only then is mail handed to the
server, row by row: the row is marked ``sending`` (committed), the server accepts it, the row is marked
``sent``. A run retried or resumed after a crash finds its rows and skips rendering: rows already ``sent``
are never sent again, rows ``pending`` are sent once. The one window left is a crash after the server
accepted a message and before ``sent`` was committed: that row is resent on recovery (it is ``sending``),
with the SAME Message-ID, so a receiving system can recognise the copy. Documented in docs/SCHEDULER.md.

Notices to a job's owner (a run that finally failed, fires recorded as missed) are rows too; they are
delivered by the scheduler's tick (``deliver_due_notices``) with their own backoff.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from carnet.db import session_scope
from carnet.db.models import MailStatus, OutboxMail, utcnow
from carnet.errors import CarnetError
from carnet.scheduler.kinds import PlannedMail
from carnet.scheduler.mail import build_message, deliver, smtp_config_for
from carnet.settings import CarnetSettings

log = logging.getLogger("carnet.scheduler")

# Purposes delivered by the run itself (its retries follow the job's); the others by the tick.
RUN_PURPOSES = ("report", "alert")
NOTICE_ATTEMPTS = 8  # a notice is given up after this many tries, 1, 2, 4 ... 64 minutes apart
NOTICE_BACKOFF = 60


class MailNotDelivered(CarnetError):
    """The mail server could not be reached or refused a message; transient: the run is retried."""

    status = 503

    def __init__(self, message: str, recipient: str):
        super().__init__(message, recipient=recipient)
        self.recipient = recipient


TRANSIENT_MAIL_ERRORS = (OSError, smtplib.SMTPException)


def message_id(run_id: int, purpose: str, recipient: str) -> str:
    """The same for every try of one outbox row: a copy resent after a crash is recognisable."""
    digest = hashlib.sha256(recipient.lower().encode()).hexdigest()[:16]
    return f"<carnet-run-{run_id}-{purpose}-{digest}@carnet>"


def queue_mail(session, run_id: int, org_id: int, mails: list[PlannedMail]) -> int:
    """Record ``mails`` of a run (rows that exist are kept as they are). Returns the rows added."""
    existing = {
        (row.purpose, row.recipient)
        for row in session.scalars(select(OutboxMail).where(OutboxMail.run_id == run_id))
    }
    added = 0
    for mail in mails:
        for recipient in dict.fromkeys(mail.recipients):
            if (mail.purpose, recipient) in existing:
                continue
            session.add(
                OutboxMail(
                    run_id=run_id,
                    org_id=org_id,
                    purpose=mail.purpose,
                    recipient=recipient,
                    subject=mail.subject[:300],
                    body=mail.body,
                    attachments=[str(path) for path in mail.attachments],
                    status=MailStatus.pending,
                    attempts=0,
                    next_attempt_at=utcnow(),
                )
            )
            existing.add((mail.purpose, recipient))
            added += 1
    return added


def queue_notice(session, run_id: int, org_id: int, recipient: str, purpose: str, subject: str, body: str):
    """A notice to a job's owner, once per run and purpose (an existing one is left alone)."""
    try:
        with session.begin_nested():
            queue_mail(session, run_id, org_id, [PlannedMail([recipient], subject, body, purpose=purpose)])
    except IntegrityError:
        pass  # queued by another path already: once is the point


def has_run_mail(session, run_id: int) -> bool:
    """Whether the run already recorded its mail (its outputs exist: rendering is not done again)."""
    return (
        session.scalar(
            select(OutboxMail.id)
            .where(OutboxMail.run_id == run_id, OutboxMail.purpose.in_(RUN_PURPOSES))
            .limit(1)
        )
        is not None
    )


def _send_row(settings: CarnetSettings, row_id: int) -> bool:
    """Send one row unless it is already sent. True when sent now. Raises TRANSIENT_MAIL_ERRORS."""
    with session_scope(settings.db_url) as session:
        row = session.get(OutboxMail, row_id)
        if row is None or row.status in (MailStatus.sent, MailStatus.failed):
            return False
        config = smtp_config_for(session, settings, row.org_id)
        message = build_message(
            config.sender,
            [row.recipient],
            row.subject,
            row.body,
            [Path(p) for p in row.attachments],
            message_id=message_id(row.run_id, row.purpose, row.recipient),
        )
        row.status = MailStatus.sending
        row.attempts += 1
    # Committed as 'sending' before the server sees it (see the module's docstring).
    try:
        where = deliver(config, message)
    except TRANSIENT_MAIL_ERRORS as exc:
        with session_scope(settings.db_url) as session:
            session.execute(
                update(OutboxMail)
                .where(OutboxMail.id == row_id)
                .values(status=MailStatus.pending, last_error=f"{type(exc).__name__}: {exc}"[:2000])
            )
        raise
    with session_scope(settings.db_url) as session:
        session.execute(
            update(OutboxMail)
            .where(OutboxMail.id == row_id)
            .values(status=MailStatus.sent, sent_at=utcnow(), last_error=None)
        )
    log.info("Mail %s of run %s (%s) sent via %s", row_id, row.run_id, row.purpose, where)
    return True


def deliver_run_mail(settings: CarnetSettings, run_id: int) -> int:
    """Send the run's unsent mail; the number sent now. Raises MailNotDelivered on the first recipient that
    cannot be delivered (the rows sent so far stay sent)."""
    with session_scope(settings.db_url) as session:
        rows = session.execute(
            select(OutboxMail.id, OutboxMail.recipient)
            .where(
                OutboxMail.run_id == run_id,
                OutboxMail.purpose.in_(RUN_PURPOSES),
                OutboxMail.status.in_((MailStatus.pending, MailStatus.sending)),
            )
            .order_by(OutboxMail.id)
        ).all()
    sent = 0
    for row_id, recipient in rows:
        try:
            sent += _send_row(settings, row_id)
        except TRANSIENT_MAIL_ERRORS as exc:
            raise MailNotDelivered(f"Mail to {recipient} was not delivered: {exc}", recipient) from None
    return sent


def give_up_run_mail(session, run_id: int, reason: str) -> None:
    session.execute(
        update(OutboxMail)
        .where(
            OutboxMail.run_id == run_id,
            OutboxMail.status.in_((MailStatus.pending, MailStatus.sending)),
            OutboxMail.purpose.in_(RUN_PURPOSES),
        )
        .values(status=MailStatus.failed, last_error=reason[:2000])
    )


def deliver_due_notices(settings: CarnetSettings, now=None) -> int:
    """Send owner notices that are due; a failure waits 1, 2, 4 ... minutes, up to NOTICE_ATTEMPTS."""
    now = now or utcnow()
    with session_scope(settings.db_url) as session:
        due = session.scalars(
            select(OutboxMail.id)
            .where(
                OutboxMail.purpose.not_in(RUN_PURPOSES),
                OutboxMail.status.in_((MailStatus.pending, MailStatus.sending)),
                OutboxMail.next_attempt_at <= now,
            )
            .order_by(OutboxMail.id)
            .limit(50)
        ).all()
    sent = 0
    for row_id in due:
        try:
            sent += _send_row(settings, row_id)
        except TRANSIENT_MAIL_ERRORS:
            with session_scope(settings.db_url) as session:
                row = session.get(OutboxMail, row_id)
                if row.attempts >= NOTICE_ATTEMPTS:
                    row.status = MailStatus.failed
                else:
                    row.next_attempt_at = now + timedelta(seconds=NOTICE_BACKOFF * 2 ** (row.attempts - 1))
    return sent


def mail_json(row: OutboxMail) -> dict:
    return {
        "recipient": row.recipient,
        "purpose": row.purpose,
        "status": row.status.value,
        "attempts": row.attempts,
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "error": row.last_error,
        "attachments": [Path(p).name for p in row.attachments],
    }
