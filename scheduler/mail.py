"""Outgoing mail: through SMTP when a host is set, else as .eml files in the outbox folder.

Where a message goes is an ``SmtpConfig``: the organization's own SMTP settings when it has them, else the
platform's (``CarnetSettings.smtp_host``...), else the local outbox folder (the embedded default). Delivery of
job mail goes through the durable outbox (carnet/scheduler/outbox.py), which calls ``deliver``.

An organization's settings live in ``organizations.settings["smtp"]`` (set by its admins through
/api/v1/org/mail): host, port, security, username, from_address, and the password SecretBox-encrypted, bound
to the organization (context ``org:<id>:smtp``) so that a ciphertext copied to another org does not decrypt.
The password is write-only: ``public_json`` answers ``password_set`` only.

Security: "none" (plain SMTP), "starttls" (upgraded, refused when the server does not offer it: no silent
downgrade) or "ssl" (implicit TLS). Certificates are always verified, against ``smtp_ca_file`` when set.
A password is never sent over a connection that is not encrypted.
"""

from __future__ import annotations

import ipaddress
import re
import smtplib
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from carnet.crypto import SecretBox, redact
from carnet.errors import CarnetError, ValidationError
from carnet.settings import CarnetSettings
from carnet.validation import refuse_hidden_characters, validate_email

SECURITY_MODES = ("none", "starttls", "ssl")
# The usual port of each mode, when an admin gives none.
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
SMTP_TIMEOUT = 30.0
ORG_SETTINGS_KEY = "smtp"
# Fields of PUT /api/v1/org/mail (the password is write-only).
FIELDS = ("host", "port", "security", "username", "password", "from_address")
MAX_USERNAME = 256
MAX_PASSWORD = 1024
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class MailServerFailed(CarnetError):
    """The mail server could not be reached, refused the login or the message, or failed TLS (test mail)."""

    status = 502


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
    ca_file: str = ""  # PEM CAs trusted for TLS; empty: the system's
    timeout: float = SMTP_TIMEOUT

    @property
    def where(self) -> str:
        return f"smtp://{self.host}:{self.port}" if self.host else self.outbox_dir


def platform_smtp(settings: CarnetSettings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.mail_from,
        outbox_dir=settings.outbox_dir,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password,
        ca_file=settings.smtp_ca_file,
    )


def smtp_secret_context(org_id: int) -> str:
    return f"org:{org_id}:smtp"


def stored_org_smtp(org) -> dict | None:
    """The organization's stored SMTP settings (password still encrypted), or None."""
    stored = (org.settings or {}).get(ORG_SETTINGS_KEY) if org is not None else None
    return stored or None


def org_smtp(settings: CarnetSettings, org) -> SmtpConfig | None:
    """The organization's own SmtpConfig (password decrypted), or None when it has no SMTP settings."""
    stored = stored_org_smtp(org)
    if stored is None:
        return None
    password = ""
    if stored.get("password"):
        password = SecretBox(settings).decrypt_json(stored["password"], smtp_secret_context(org.id))
    return SmtpConfig(
        host=stored["host"],
        port=stored["port"],
        sender=stored["from_address"],
        outbox_dir=settings.outbox_dir,
        security=stored["security"],
        username=stored.get("username", ""),
        password=password,
        ca_file=settings.smtp_ca_file,
    )


def smtp_config_for(session, settings: CarnetSettings, org_id: int) -> SmtpConfig:
    """The SMTP settings mail of ``org_id`` goes out with: the organization's own, else the platform's."""
    from carnet.db.models import Organization

    return org_smtp(settings, session.get(Organization, org_id)) or platform_smtp(settings)


# -- an organization's settings: checked, stored, shown ----------------------------------------------------
def check_host(value) -> str:
    """A host name (letters, digits, hyphens, dots) or an IP address; never a URL or anything else."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("host must be the mail server's host name or IP address", field="host")
    host = value.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValidationError(
            f"host must be a host name (such as smtp.example.com) or an IP address, not {value[:100]!r}",
            field="host",
        )
    return host


def check_port(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError("port must be an integer from 1 to 65535", field="port")
    return value


def check_security(value) -> str:
    if value not in SECURITY_MODES:
        raise ValidationError(
            f"security must be one of {', '.join(SECURITY_MODES)}, not {str(value)[:50]!r}", field="security"
        )
    return value


def check_username(value) -> str:
    if value is None:
        return ""
    if (
        not isinstance(value, str)
        or len(value.strip()) > MAX_USERNAME
        or any(c.isspace() for c in value.strip())
    ):
        raise ValidationError(
            f"username must be text of at most {MAX_USERNAME} characters, without spaces", field="username"
        )
    return refuse_hidden_characters(value.strip(), "username")


def check_password(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_PASSWORD or any(c in value for c in "\r\n\0"):
        raise ValidationError(
            f"password must be text of at most {MAX_PASSWORD} characters, on one line", field="password"
        )
    return value


def validate_org_smtp(body) -> tuple[dict, str | None]:
    """The checked settings of a PUT (the whole set: host, security, from_address required; port defaults
    to the security's usual one) and the password to keep: the new one, or ``None`` when the body omits it
    (the stored one is kept). The first bad field is a 400 naming it, before anything is stored."""
    if not isinstance(body, dict):
        raise ValidationError("The request body must be an object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ValidationError(
            f"Unknown fields: {', '.join(unknown)} (known: {', '.join(FIELDS)})", field=unknown[0]
        )
    for required in ("host", "security", "from_address"):
        if body.get(required) in (None, ""):
            raise ValidationError(f"{required} is required", field=required)
    security = check_security(body["security"])
    checked = {
        "host": check_host(body["host"]),
        "port": check_port(body["port"]) if body.get("port") is not None else DEFAULT_PORTS[security],
        "security": security,
        "username": check_username(body.get("username")),
        "from_address": validate_email(body["from_address"], field="from_address"),
    }
    password = check_password(body["password"]) if "password" in body else None
    if checked["username"] and security == "none":
        # smtplib would send AUTH over the plain connection: anyone on the path would read the password.
        raise ValidationError(
            "A login needs security starttls or ssl: the password would cross the network unencrypted",
            field="security",
        )
    if password and not checked["username"]:
        raise ValidationError("A password needs a username", field="username")
    if not checked["username"]:
        password = ""  # no login: nothing to keep
    return checked, password


def store_org_smtp(settings: CarnetSettings, org, checked: dict, password: str | None) -> dict:
    """Store ``checked`` as the organization's SMTP settings; ``password`` None keeps the stored one. Returns
    what changed, for the audit record (the password only as changed/removed, never its value)."""
    current = stored_org_smtp(org) or {}
    stored = dict(checked)
    if password is None:
        if current.get("password"):
            stored["password"] = current["password"]
    elif password:
        stored["password"] = SecretBox(settings).encrypt_json(password, smtp_secret_context(org.id))
    changed = {
        key: {"from": current.get(key), "to": value}
        for key, value in checked.items()
        if current.get(key) != value
    }
    if password is not None and (password or current.get("password")):
        changed["password"] = "changed" if password else "removed"
    org.settings = {**(org.settings or {}), ORG_SETTINGS_KEY: stored}  # a new dict: JSON columns track it
    return changed


def remove_org_smtp(org) -> bool:
    """Forget the organization's SMTP settings (its mail goes the platform's way again); True if it had."""
    had = stored_org_smtp(org) is not None
    org.settings = {k: v for k, v in (org.settings or {}).items() if k != ORG_SETTINGS_KEY}
    return had


def public_json(org) -> dict:
    """What the API shows of the organization's SMTP settings: never the password, only whether one is set."""
    stored = stored_org_smtp(org)
    if stored is None:
        return {
            "configured": False,
            "host": None,
            "port": None,
            "security": None,
            "username": None,
            "from_address": None,
            "password_set": False,
        }
    return {
        "configured": True,
        **{key: stored.get(key) for key in ("host", "port", "security", "username", "from_address")},
        "password_set": bool(stored.get("password")),
    }


# -- building and delivering -------------------------------------------------------------------------------
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


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """TLS that verifies the certificate chain and host name: against ``ca_file`` if set, else system CAs."""
    return ssl.create_default_context(cafile=ca_file or None)


def deliver(config: SmtpConfig, message: EmailMessage) -> str:
    """Hand ``message`` over; returns where it went. Raises OSError (ssl.SSLError included) /
    smtplib.SMTPException when the server cannot be reached, fails TLS or refuses (the outbox retries
    those). The From header is always the config's sender: an organization's mail goes out as itself."""
    if message.get("From") != config.sender:
        del message["From"]
        message["From"] = config.sender
    if config.host:
        if config.username and config.security not in ("starttls", "ssl"):
            raise smtplib.SMTPException(
                "Refusing to send the SMTP password over an unencrypted connection: use starttls or ssl"
            )
        if config.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                config.host, config.port, timeout=config.timeout, context=tls_context(config.ca_file)
            )
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with smtp:
            if config.security == "starttls":
                # Raises SMTPNotSupportedError when the server does not offer it: never a silent downgrade.
                smtp.starttls(context=tls_context(config.ca_file))
            if config.username:
                smtp.login(config.username, config.password)
            smtp.send_message(message)
        return config.where
    outbox = Path(config.outbox_dir)
    outbox.mkdir(parents=True, exist_ok=True)
    final = outbox / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
    partial = final.with_suffix(".eml.part")
    partial.write_bytes(bytes(message))
    partial.rename(final)  # a reader of the folder never sees half a message
    return str(final)


def _server_reply(exc: smtplib.SMTPResponseException) -> str:
    text = (
        exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    )
    return f"{exc.smtp_code} {' '.join(text.split())}"


def describe_failure(exc: BaseException, config: SmtpConfig) -> str:
    """Why ``deliver`` failed, in words an admin can act on, with the server's own reply where there is one
    (never the password)."""
    where = f"{config.host}:{config.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        text = f"The mail server {where} refused the username or password ({_server_reply(exc)})"
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        text = f"The mail server {where} does not offer what is needed ({exc}): check security (starttls)"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = "; ".join(
            f"{rcpt}: {code} {reply.decode(errors='replace')}"
            for rcpt, (code, reply) in exc.recipients.items()
        )
        text = f"The mail server {where} refused the recipient ({replies})"
    elif isinstance(exc, smtplib.SMTPSenderRefused):
        text = f"The mail server {where} refused the sender {exc.sender} ({_server_reply(exc)})"
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"The mail server {where} refused the message ({_server_reply(exc)})"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        text = (
            f"The TLS certificate of {where} could not be verified ({exc.verify_message}): it must be valid "
            "for this host name and signed by a trusted CA (the platform's smtp_ca_file)"
        )
    elif isinstance(exc, ssl.SSLError):
        text = f"TLS with {where} failed ({exc.reason or exc}): check security and port"
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        text = f"The mail server {where} closed the connection ({exc}): check security and port"
    elif isinstance(exc, ConnectionRefusedError):
        text = f"Connection refused by {where}: no mail server listens there"
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        text = f"No answer from {where} within {config.timeout:g} s: check host, port and security"
    elif isinstance(exc, socket.gaierror):
        text = f"The host name {config.host} could not be resolved"
    elif isinstance(exc, OSError):
        text = f"Could not talk to {where}: {exc.strerror or exc}"
    else:
        text = f"Sending through {where} failed: {exc}"
    return redact(text, [config.password] if config.password else [])


def send_mail(
    settings: CarnetSettings, to: list[str], subject: str, body: str, attachments: list[Path] = ()
) -> str:
    """Deliver one message with the platform's settings (mail that is not job mail, e.g. invitations)."""
    config = platform_smtp(settings)
    return deliver(config, build_message(config.sender, to, subject, body, list(attachments)))
