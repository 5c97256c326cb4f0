"""An organization's own SMTP server: STARTTLS, implicit TLS and plain SMTP, logins, verified certificates,
the password encrypted at rest and never shown, and each organization's mail going its own way.

Real servers: aiosmtpd on loopback, with a test CA and a certificate for 127.0.0.1 made here (the platform
trusts the CA through smtp_ca_file, as an operator with a private CA would). The in-process tests need no
stack; the API tests at the end use the real stack (run them under the machine lock).
"""
# ruff: noqa: F811 - tests take the settings and world fixtures imported from tests/test_units.py

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pypdf import PdfWriter
from sqlalchemy import select, text

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Organization
from carnet.errors import DecryptionError, ValidationError
from carnet.scheduler.kinds import PlannedMail
from carnet.scheduler.mail import (
    SmtpConfig,
    build_message,
    deliver,
    describe_failure,
    platform_smtp,
    public_json,
    remove_org_smtp,
    send_mail,
    smtp_config_for,
    store_org_smtp,
    validate_org_smtp,
)
from carnet.scheduler.outbox import deliver_run_mail, queue_mail
from carnet.settings import CarnetSettings
from tests.api_support import api_url, assert_json_error, unique
from tests.helpers import free_port
from tests.test_units import add_job, queue_run, settings, world  # noqa: F401 - fixtures

# The implicit-TLS server requires a login without aiosmtpd's STARTTLS check (the whole connection is TLS).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

USER, PASSWORD = "reports@acme.example", "correct horse battery staple"  # noqa: S105 - a test server's


# -- a test CA and a server certificate for 127.0.0.1 ------------------------------------------------------
@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Carnet test CA"))
        .issuer_name(_name("Carnet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        # Valid for the address only: a client that connects by another name must refuse it.
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


# -- real SMTP servers -------------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    login: str | None  # who logged in, None when nobody did
    tls: bool  # whether the message came over TLS


class MailServer:
    """aiosmtpd on loopback. ``mode``: "plain", "starttls" (STARTTLS required before anything else, AUTH
    only over TLS) or "ssl" (implicit TLS). With ``users`` ({login: password}), a login is required."""

    def __init__(self, mode: str, pki: Pki | None = None, users: dict[str, str] | None = None):
        self.mode, self.pki, self.users = mode, pki, users or {}
        self.port = free_port()
        self.received: list[Received] = []
        self.logins: list[tuple[str, bool]] = []
        self._controller = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = self.users.get(login) == password
        self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def start(self) -> MailServer:
        from aiosmtpd.controller import Controller

        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):  # noqa: N802 - aiosmtpd's name
                server.received.append(
                    Received(
                        mail_from=envelope.mail_from,
                        rcpt_tos=list(envelope.rcpt_tos),
                        message=email.message_from_bytes(envelope.content, policy=email.policy.default),
                        login=session.auth_data if session.authenticated else None,
                        tls=smtp.transport.get_extra_info("ssl_object") is not None,
                    )
                )
                return "250 Message accepted for delivery"

        options = {}
        if self.users:
            options.update(authenticator=self._authenticate, auth_required=True)
        if self.mode == "starttls":
            options.update(
                tls_context=self.pki.server_context(), require_starttls=True, auth_require_tls=True
            )
        elif self.mode == "ssl":
            # The whole connection is TLS: aiosmtpd's STARTTLS-based check does not apply.
            options.update(ssl_context=self.pki.server_context(), auth_require_tls=False)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture(scope="module")
def starttls_server(pki):
    server = MailServer("starttls", pki, users={USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ssl_server(pki):
    server = MailServer("ssl", pki, users={USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_server():
    server = MailServer("plain").start()
    yield server
    server.stop()


def arrived(server: MailServer, subject: str) -> list[Received]:
    return [r for r in server.received if r.message["Subject"] == subject]


def make_pdf(path: Path) -> Path:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    with open(path, "wb") as f:
        writer.write(f)
    return path


def org_settings_body(server: MailServer, **changes) -> dict:
    body = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": server.mode if server.mode != "plain" else "none",
        "from_address": "Reports@Acme.example",
    }
    if server.users:
        body.update(username=USER, password=PASSWORD)
    return {**body, **changes}


def put_org_smtp(settings, org_id: int, body: dict) -> dict:
    """What PUT /api/v1/org/mail does: validate the whole body, then store it."""
    checked, password = validate_org_smtp(body)
    with session_scope(settings.db_url) as session:
        return store_org_smtp(settings, session.get(Organization, org_id), checked, password)


def config_of(settings, org_id: int) -> SmtpConfig:
    with session_scope(settings.db_url) as session:
        return smtp_config_for(session, settings, org_id)


@pytest.fixture
def trusting(settings, pki):
    """The platform's settings trusting the test CA (smtp_ca_file), the platform's own server unset."""
    settings.smtp_ca_file = str(pki.ca_file)
    return settings


# -- delivery through each kind of server -----------------------------------------------------------------
@pytest.mark.parametrize("server_fixture", ["starttls_server", "ssl_server"])
def test_the_orgs_mail_goes_over_tls_with_its_login_and_from_address(
    request, trusting, world, tmp_path, server_fixture
):
    server = request.getfixturevalue(server_fixture)
    put_org_smtp(trusting, world["acme"], org_settings_body(server))
    config = config_of(trusting, world["acme"])
    pdf = make_pdf(tmp_path / "Weekly report.pdf")
    subject = f"[Carnet] {unique('weekly')}"
    message = build_message(
        "someone-else@example.com",
        ["a@acme.example", "b@globex.example"],
        subject,
        "See the attached report.",
        [pdf],
    )
    assert deliver(config, message) == f"smtp://127.0.0.1:{server.port}"

    [received] = arrived(server, subject)
    assert received.tls is True and received.login == USER
    # The org's From, as the header and as the envelope sender, whatever the message said before.
    assert received.message["From"] == "reports@acme.example" and received.mail_from == "reports@acme.example"
    assert sorted(received.rcpt_tos) == ["a@acme.example", "b@globex.example"]
    assert received.message.get_body(preferencelist=("plain",)).get_content().strip() == (
        "See the attached report."
    )
    [attachment] = [p for p in received.message.walk() if p.get_content_disposition() == "attachment"]
    assert attachment.get_filename() == "Weekly report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf.read_bytes()


def test_job_mail_of_the_outbox_goes_through_the_orgs_own_server(trusting, world, starttls_server, tmp_path):
    """The executor's path: outbox rows of an acme run are delivered with acme's settings."""
    put_org_smtp(trusting, world["acme"], org_settings_body(starttls_server))
    run_id = queue_run(trusting, add_job(trusting, world))
    pdf = make_pdf(tmp_path / "report.pdf")
    subject = f"[Carnet] {unique('job mail')}"
    with session_scope(trusting.db_url) as session:
        queue_mail(session, run_id, world["acme"], [PlannedMail(["x@acme.example"], subject, "Body", [pdf])])
    assert deliver_run_mail(trusting, run_id) == 1
    [received] = arrived(starttls_server, subject)
    assert received.login == USER and received.tls
    assert received.message["From"] == "reports@acme.example" and received.rcpt_tos == ["x@acme.example"]
    assert received.message["Message-ID"].startswith(f"<carnet-run-{run_id}-report-")


def test_plain_smtp_delivers_without_tls_or_login(settings, world, plain_server):
    put_org_smtp(settings, world["acme"], org_settings_body(plain_server))
    subject = unique("plain")
    send = config_of(settings, world["acme"])
    deliver(send, build_message(send.sender, ["a@acme.example"], subject, "plain body"))
    [received] = arrived(plain_server, subject)
    assert received.tls is False and received.login is None
    assert received.message["From"] == "reports@acme.example"


def test_the_platforms_own_starttls_login_settings(settings_env, pki, starttls_server, monkeypatch):
    """The platform's server (not an org's), with the CARNET_SMTP_* variables."""
    for name, value in {
        "CARNET_SMTP_HOST": "127.0.0.1",
        "CARNET_SMTP_PORT": str(starttls_server.port),
        "CARNET_SMTP_SECURITY": "starttls",
        "CARNET_SMTP_USERNAME": USER,
        "CARNET_SMTP_PASSWORD": PASSWORD,
        "CARNET_SMTP_CA_FILE": str(pki.ca_file),
        "CARNET_MAIL_FROM": "carnet@platform.example",
    }.items():
        monkeypatch.setenv(name, value)
    subject = unique("platform")
    assert send_mail(CarnetSettings(), ["a@acme.example"], subject, "body") == (
        f"smtp://127.0.0.1:{starttls_server.port}"
    )
    [received] = arrived(starttls_server, subject)
    assert received.login == USER and received.tls and received.mail_from == "carnet@platform.example"
    monkeypatch.setenv("CARNET_SMTP_SECURITY", "tls please")
    with pytest.raises(ValueError, match="smtp_security must be none, starttls or ssl"):
        CarnetSettings().smtp_security  # noqa: B018 - reading the setting is what checks it


# -- what is refused ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("server_fixture", ["starttls_server", "ssl_server"])
def test_a_wrong_password_is_a_clear_error_and_nothing_is_sent(request, trusting, world, server_fixture):
    server = request.getfixturevalue(server_fixture)
    put_org_smtp(trusting, world["acme"], org_settings_body(server, password="not the password"))
    config = config_of(trusting, world["acme"])
    subject = unique("wrong password")
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        deliver(config, build_message(config.sender, ["a@acme.example"], subject, "body"))
    reason = describe_failure(caught.value, config)
    assert reason.startswith(f"The mail server 127.0.0.1:{server.port} refused the username or password (535")
    assert "not the password" not in reason
    assert (USER, False) in server.logins and arrived(server, subject) == []


@pytest.mark.parametrize("server_fixture", ["starttls_server", "ssl_server"])
def test_a_certificate_the_platform_does_not_trust_is_refused(request, settings, world, server_fixture):
    """Without smtp_ca_file the system's CAs are used: the test CA is not one of them."""
    server = request.getfixturevalue(server_fixture)
    assert settings.smtp_ca_file == ""
    put_org_smtp(settings, world["acme"], org_settings_body(server))
    config = config_of(settings, world["acme"])
    subject, logins_before = unique("untrusted"), len(server.logins)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        deliver(config, build_message(config.sender, ["a@acme.example"], subject, "body"))
    assert describe_failure(caught.value, config).startswith(
        f"The TLS certificate of 127.0.0.1:{server.port} could not be verified (unable to get local issuer"
    )
    # Refused before the login: the password never went to a server that could not prove who it is.
    assert arrived(server, subject) == [] and len(server.logins) == logins_before


def test_a_certificate_for_another_name_is_refused(trusting, world, starttls_server):
    """The certificate is for 127.0.0.1; reaching the same server as "localhost" must fail verification."""
    put_org_smtp(trusting, world["acme"], org_settings_body(starttls_server, host="localhost"))
    config = config_of(trusting, world["acme"])
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        deliver(config, build_message(config.sender, ["a@acme.example"], unique("name"), "body"))
    assert "could not be verified" in describe_failure(caught.value, config)
    assert "localhost" in caught.value.verify_message or "mismatch" in caught.value.verify_message.lower()


def test_starttls_is_never_silently_dropped(trusting, world, plain_server):
    """security starttls against a server that does not offer it: refused, not sent in clear."""
    put_org_smtp(trusting, world["acme"], org_settings_body(plain_server, security="starttls"))
    config = config_of(trusting, world["acme"])
    subject = unique("downgrade")
    with pytest.raises(smtplib.SMTPNotSupportedError) as caught:
        deliver(config, build_message(config.sender, ["a@acme.example"], subject, "body"))
    assert "check security" in describe_failure(caught.value, config)
    assert arrived(plain_server, subject) == []


def test_a_login_over_plain_smtp_is_refused(settings, plain_server):
    config = SmtpConfig("127.0.0.1", plain_server.port, "c@acme.example", "", "none", USER, PASSWORD)
    subject = unique("plain login")
    with pytest.raises(smtplib.SMTPException, match="unencrypted"):
        deliver(config, build_message(config.sender, ["a@acme.example"], subject, "body"))
    assert arrived(plain_server, subject) == []


def test_connection_refused_and_tls_against_a_plain_server_are_explained(settings, plain_server):
    closed = SmtpConfig("127.0.0.1", free_port(), "c@acme.example", "", "none")
    with pytest.raises(ConnectionRefusedError) as caught:
        deliver(closed, build_message(closed.sender, ["a@acme.example"], "x", "body"))
    assert describe_failure(caught.value, closed) == (
        f"Connection refused by 127.0.0.1:{closed.port}: no mail server listens there"
    )
    wrong_mode = SmtpConfig("127.0.0.1", plain_server.port, "c@acme.example", "", "ssl", timeout=5)
    with pytest.raises(ssl.SSLError) as caught:
        deliver(wrong_mode, build_message(wrong_mode.sender, ["a@acme.example"], "x", "body"))
    assert describe_failure(caught.value, wrong_mode).startswith(
        f"TLS with 127.0.0.1:{plain_server.port} failed"
    )


# -- one organization's settings are its own ---------------------------------------------------------------
def test_org_b_never_uses_org_as_settings(trusting, world, starttls_server, plain_server):
    """acme has its own server; globex has none: its mail goes the platform's way (here: the plain server)."""
    trusting.smtp_host, trusting.smtp_port = "127.0.0.1", plain_server.port
    trusting.mail_from = "carnet@platform.example"
    put_org_smtp(trusting, world["acme"], org_settings_body(starttls_server))
    assert config_of(trusting, world["globex"]) == platform_smtp(trusting)
    run_id = queue_run(trusting, add_job(trusting, world))
    subject = unique("globex mail")
    with session_scope(trusting.db_url) as session:
        # A run's mail is sent with the settings of the org its outbox rows belong to.
        queue_mail(session, run_id, world["globex"], [PlannedMail(["g@globex.example"], subject, "Body")])
    assert deliver_run_mail(trusting, run_id) == 1
    assert arrived(starttls_server, subject) == []
    [received] = arrived(plain_server, subject)
    assert received.mail_from == "carnet@platform.example" and received.login is None

    # acme's stored settings copied into globex's row do not give globex acme's password: the ciphertext is
    # bound to acme.
    with session_scope(trusting.db_url) as session:
        acme_smtp = session.get(Organization, world["acme"]).settings["smtp"]
        globex = session.get(Organization, world["globex"])
        globex.settings = {**(globex.settings or {}), "smtp": acme_smtp}
    with pytest.raises(DecryptionError):
        config_of(trusting, world["globex"])


def test_removing_the_orgs_settings_falls_back_to_the_platform(settings, world, plain_server):
    put_org_smtp(settings, world["acme"], org_settings_body(plain_server))
    assert config_of(settings, world["acme"]).host == "127.0.0.1"
    with session_scope(settings.db_url) as session:
        assert remove_org_smtp(session.get(Organization, world["acme"])) is True
    assert config_of(settings, world["acme"]) == platform_smtp(settings)


# -- storage: encrypted at rest, never shown ---------------------------------------------------------------
def raw_org_settings(settings, org_id: int) -> str:
    """The organizations.settings column as the database holds it."""
    with session_scope(settings.db_url) as session:
        return session.execute(
            text("SELECT settings FROM organizations WHERE id = :id"), {"id": org_id}
        ).scalar()


def test_the_password_is_encrypted_at_rest_and_never_shown(settings, world, starttls_server):
    changed = put_org_smtp(settings, world["acme"], org_settings_body(starttls_server))
    raw = raw_org_settings(settings, world["acme"])
    assert PASSWORD not in raw and "correct horse" not in raw
    stored = json.loads(raw)["smtp"]
    assert stored["password"].startswith("carnet:v1:") and stored["username"] == USER
    assert changed["password"] == "changed" and PASSWORD not in json.dumps(changed)
    with session_scope(settings.db_url) as session:
        shown = public_json(session.get(Organization, world["acme"]))
    assert shown == {
        "configured": True,
        "host": "127.0.0.1",
        "port": starttls_server.port,
        "security": "starttls",
        "username": USER,
        "from_address": "reports@acme.example",
        "password_set": True,
    }
    # An update without a password keeps it (still decrypts to the same), a null removes it with the login.
    put_org_smtp(
        settings,
        world["acme"],
        {k: v for k, v in org_settings_body(starttls_server).items() if k != "password"},
    )
    assert config_of(settings, world["acme"]).password == PASSWORD
    assert json.loads(raw_org_settings(settings, world["acme"]))["smtp"]["password"] != PASSWORD
    changed = put_org_smtp(
        settings, world["acme"], org_settings_body(starttls_server, username=None, password=None)
    )
    assert changed == {"username": {"from": USER, "to": ""}, "password": "removed"}
    assert "password" not in json.loads(raw_org_settings(settings, world["acme"]))["smtp"]


BAD_BODIES = [
    ({"host": None}, "host"),
    ({"host": ""}, "host"),
    ({"host": "smtp://mail.example.com"}, "host"),
    ({"host": "mail.example.com:25"}, "host"),
    ({"host": "mail example.com"}, "host"),
    ({"host": "-bad.example.com"}, "host"),
    ({"host": "a" * 64 + ".example.com"}, "host"),
    ({"host": 42}, "host"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"port": "25"}, "port"),
    ({"port": True}, "port"),
    ({"security": "tls"}, "security"),
    ({"security": None}, "security"),
    ({"from_address": "not an address"}, "from_address"),
    ({"from_address": "a@acme.example\r\nBcc: all@example.com"}, "from_address"),
    ({"username": "a b", "security": "starttls"}, "username"),
    ({"username": ["x"], "security": "starttls"}, "username"),
    ({"username": "x\u202e", "security": "starttls"}, "username"),
    ({"password": "line\r\nbreak", "username": "x", "security": "starttls"}, "password"),
    ({"password": 12345, "username": "x", "security": "starttls"}, "password"),
    ({"password": "p" * 1025, "username": "x", "security": "starttls"}, "password"),
    ({"password": "alone", "security": "starttls"}, "username"),
    ({"username": "x", "password": "y"}, "security"),  # a login over plain SMTP
    ({"sender": "a@acme.example"}, "sender"),
]


@pytest.mark.parametrize("change,field", BAD_BODIES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_BODIES)])
def test_bad_settings_name_the_field(change, field):
    base = {"host": "mail.example.com", "port": 25, "security": "none", "from_address": "a@acme.example"}
    with pytest.raises(ValidationError) as caught:
        validate_org_smtp({**base, **change})
    assert caught.value.fields["field"] == field and caught.value.status == 400


def test_good_settings_are_normalised():
    checked, password = validate_org_smtp(
        {"host": " Mail.Example.COM. ", "security": "ssl", "from_address": " Reports@Acme.example "}
    )
    assert checked == {
        "host": "mail.example.com",
        "port": 465,  # the security's usual port
        "security": "ssl",
        "username": "",
        "from_address": "reports@acme.example",
    }
    assert password == ""
    checked, password = validate_org_smtp(
        {"host": "::1", "port": 2525, "security": "starttls", "username": "u", "from_address": "a@b.example"}
    )
    assert checked["host"] == "::1" and checked["port"] == 2525 and password is None  # None: keep stored


# -- the REST API (real stack: run under the machine lock) ------------------------------------------------
@pytest.fixture
def acme_mail_reset(carnet_stack, admin):
    """acme ends the test without SMTP settings of its own (other tests' mail goes the platform's way)."""
    yield
    assert requests.delete(api_url(carnet_stack, "org/mail"), headers=admin, timeout=30).status_code == 204


def get_mail(stack, headers) -> requests.Response:
    response = requests.get(api_url(stack, "org/mail"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def mail_audit(stack, since_id: int) -> list[AuditEvent]:
    with session_scope(stack.settings.db_url) as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.id > since_id, AuditEvent.action.like("org.mail.%"))
                .order_by(AuditEvent.id)
            )
        )


def last_audit_id(stack) -> int:
    with session_scope(stack.settings.db_url) as session:
        return session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0


def test_api_validates_hides_the_password_and_audits(carnet_stack, admin, acme_mail_reset, starttls_server):
    stack = carnet_stack
    since = last_audit_id(stack)
    good = org_settings_body(starttls_server, from_address="reports@acme.example")
    put = requests.put(api_url(stack, "org/mail"), json=good, headers=admin, timeout=30)
    assert put.status_code == 200, put.text
    assert PASSWORD not in put.text and put.json()["password_set"] is True and "password" not in put.json()
    shown = get_mail(stack, admin)
    assert shown.json() == put.json() and PASSWORD not in shown.text
    assert shown.json()["from_address"] == "reports@acme.example"

    for change, field in [
        ({"port": 70000}, "port"),
        ({"host": "smtp://x"}, "host"),
        ({"security": "tls"}, "security"),
        ({"from_address": "nobody"}, "from_address"),
        ({"extra": 1}, "extra"),
        ({"security": "none"}, "security"),  # with a login
    ]:
        bad = requests.put(api_url(stack, "org/mail"), json={**good, **change}, headers=admin, timeout=30)
        assert assert_json_error(bad, 400)["field"] == field, (change, bad.text)
        assert get_mail(stack, admin).json() == shown.json()  # nothing stored
    not_json = requests.put(api_url(stack, "org/mail"), data="{", headers=admin, timeout=30)
    assert_json_error(not_json, 400)

    # Without a password the stored one is kept.
    kept = requests.put(
        api_url(stack, "org/mail"),
        json={k: v for k, v in good.items() if k != "password"} | {"from_address": "mail@acme.example"},
        headers=admin,
        timeout=30,
    )
    assert kept.status_code == 200 and kept.json()["password_set"] is True
    with session_scope(stack.settings.db_url) as session:
        raw = session.execute(text("SELECT settings FROM organizations WHERE slug = 'acme'")).scalar()
    assert PASSWORD not in str(raw)

    events = mail_audit(stack, since)
    assert [e.action for e in events] == ["org.mail.change", "org.mail.change"]
    assert events[0].details["password"] == "changed" and events[0].details["host"]["to"] == "127.0.0.1"
    assert events[1].details["from_address"] == {"from": "reports@acme.example", "to": "mail@acme.example"}
    assert "password" not in events[1].details
    assert all(PASSWORD not in json.dumps(e.details) for e in events)


def test_api_test_mail(carnet_stack, admin, acme_mail_reset, smtp_server, starttls_server):
    stack = carnet_stack
    since = last_audit_id(stack)
    to = f"{unique('test-mail')}@acme.example"

    # acme's own server: the suite's plain catcher, with acme's From.
    plain = {
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "security": "none",
        "from_address": "it@acme.example",
    }
    assert requests.put(api_url(stack, "org/mail"), json=plain, headers=admin, timeout=30).status_code == 200
    sent = requests.post(api_url(stack, "org/mail/test"), json={"to": to}, headers=admin, timeout=60)
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"delivered": True, "to": to, "settings": "organization", "from": "it@acme.example"}
    [message] = [m for m in smtp_server.messages if m["X-Envelope-To"] == to]
    assert message["From"] == "it@acme.example" and message["Subject"] == "[Carnet] Test mail for Acme"

    # The stack does not trust the test CA: the certificate is refused, said plainly, and nothing is sent.
    good = org_settings_body(starttls_server)
    assert requests.put(api_url(stack, "org/mail"), json=good, headers=admin, timeout=30).status_code == 200
    refused = requests.post(api_url(stack, "org/mail/test"), json={"to": to}, headers=admin, timeout=60)
    body = assert_json_error(refused, 502)
    assert "could not be verified" in body["message"] and body["settings"] == "organization"
    assert PASSWORD not in refused.text

    # Nobody listening.
    closed = {**plain, "port": free_port()}
    assert requests.put(api_url(stack, "org/mail"), json=closed, headers=admin, timeout=30).status_code == 200
    refused = requests.post(api_url(stack, "org/mail/test"), json={"to": to}, headers=admin, timeout=60)
    assert assert_json_error(refused, 502)["message"] == (
        f"Connection refused by 127.0.0.1:{closed['port']}: no mail server listens there"
    )

    for bad, field in [({"to": "nobody"}, "to"), ({}, "to"), ({"to": to, "cc": to}, "cc")]:
        response = requests.post(api_url(stack, "org/mail/test"), json=bad, headers=admin, timeout=30)
        assert assert_json_error(response, 400)["field"] == field
    assert len([m for m in smtp_server.messages if m["X-Envelope-To"] == to]) == 1

    tests = [e for e in mail_audit(stack, since) if e.action == "org.mail.test"]
    assert [e.details["delivered"] for e in tests] == [True, False, False]
    assert "could not be verified" in tests[1].details["error"]
    assert all(PASSWORD not in json.dumps(e.details) for e in mail_audit(stack, since))
