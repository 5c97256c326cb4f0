"""Outgoing mail: through SMTP when a host is set, else as .eml files in the outbox folder.

Where a message goes is an ``SmtpConfig``: the organization's own SMTP settings when it has them, else the
platform's (``CarnetSettings.smtp_host``...), else the local outbox folder (the embedded default). Delivery of
job mail goes through the durable outbox (carnet/scheduler/outbox.py), which calls ``deliver``.
"""

from __future__ import annotations

import smtplib
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from carnet.settings import CarnetSettings


@dataclass(frozen=True)
class SmtpConfig:
    """One way out for mail. ``host`` empty: .eml files into ``outbox_dir``."""

    host: str
    port: int
    sender: str
    outbox_dir: str
    security: str = "none"  # "none" | "starttls" | "ssl"
    username: str = ""
    password: str = ""

    @property
    def where(self) -> str:
        return f"smtp://{self.host}:{self.port}" if self.host else self.outbox_dir


def platform_smtp(settings: CarnetSettings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.mail_from,
        outbox_dir=settings.outbox_dir,
    )


def smtp_config_for(session, settings: CarnetSettings, org_id: int) -> SmtpConfig:
    """The SMTP settings mail of ``org_id`` goes out with: the organization's own, else the platform's."""
    return platform_smtp(settings)


def build_message(
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    attachments: list[Path] = (),
    message_id: str | None = None,
) -> EmailMessage:
    from carnet.scheduler.attachments import mime_type_of

    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = message_id or f"<{uuid.uuid4()}@carnet>"
    message.set_content(body)
    for path in attachments:
        maintype, subtype = mime_type_of(path).split("/", 1)
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


def deliver(config: SmtpConfig, message: EmailMessage) -> str:
    """Hand ``message`` over; returns where it went. Raises OSError / smtplib.SMTPException when the server
    cannot be reached or refuses (the outbox retries those)."""
    if config.host:
        with smtplib.SMTP(config.host, config.port, timeout=30) as smtp:
            smtp.send_message(message)
        return config.where
    outbox = Path(config.outbox_dir)
    outbox.mkdir(parents=True, exist_ok=True)
    final = outbox / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
    partial = final.with_suffix(".eml.part")
    partial.write_bytes(bytes(message))
    partial.rename(final)  # a reader of the folder never sees half a message
    return str(final)


def send_mail(
    settings: CarnetSettings, to: list[str], subject: str, body: str, attachments: list[Path] = ()
) -> str:
    """Deliver one message with the platform's settings (mail that is not job mail, e.g. invitations)."""
    config = platform_smtp(settings)
    return deliver(config, build_message(config.sender, to, subject, body, list(attachments)))
