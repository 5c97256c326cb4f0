"""Outgoing mail: through SMTP when a host is set, else as .eml files in the outbox folder."""

from __future__ import annotations

import smtplib
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

from carnet.settings import CarnetSettings


def build_message(
    settings: CarnetSettings, to: list[str], subject: str, body: str, attachments: list[Path]
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4()}@carnet>"
    message.set_content(body)
    for path in attachments:
        message.add_attachment(path.read_bytes(), maintype="application", subtype="pdf", filename=path.name)
    return message


def send_mail(
    settings: CarnetSettings, to: list[str], subject: str, body: str, attachments: list[Path] = ()
) -> str:
    """Deliver the message. Returns where it went: 'smtp://host:port' or the path of the .eml file."""
    message = build_message(settings, to, subject, body, list(attachments))
    if settings.smtp_host:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
            smtp.send_message(message)
        return f"smtp://{settings.smtp_host}:{settings.smtp_port}"
    outbox = Path(settings.outbox_dir)
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
    path.write_bytes(bytes(message))
    return str(path)
