"""Single sign-on (issue 3): a real OpenID Connect provider (npm oidc-provider, tests/oidc/provider.mjs) in
front of a second Carnet stack configured with CARNET_OIDC_*; browser-style sign-ins with requests."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Membership, User
from tests.helpers import CarnetStack, free_port, start_server, user_path, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / ".venv" / "node"
CLIENT_ID, CLIENT_SECRET = "carnet-test", "carnet-test-secret-0123456789"

# Emails deliberately outside the organizations' domains: org and role come from claims only.
ACCOUNTS = {
    "ana": {"email": "ana@partner.example", "email_verified": True, "org": "acme", "carnet_role": "studio"},
    "gus": {"email": "gus@acme.example", "email_verified": True, "org": "globex", "carnet_role": "viewer"},
    "mal": {"email": "mal@acme.example", "email_verified": True, "org": "initech", "carnet_role": "admin"},
    "rob": {"email": "rob@role.example", "email_verified": True, "org": "acme", "carnet_role": "bogus"},
    "rita": {"email": "rita@else.example", "email_verified": True, "org": "acme", "carnet_role": "viewer"},
    "dee": {"email": "analyst@acme.example", "email_verified": True, "org": "acme", "carnet_role": "admin"},
    "una": {"email": "una@else.example", "email_verified": False, "org": "acme", "carnet_role": "admin"},
}


class OIDCProvider:
    def __init__(self, work: Path, redirect_uri: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accounts_file = work / "accounts.json"
        self.accounts = json.loads(json.dumps(ACCOUNTS))
        self.save()
        self.log = open(work / "oidc.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                "node",
                str(REPO / "tests" / "oidc" / "provider.mjs"),
                str(self.port),
                str(self.accounts_file),
                CLIENT_ID,
                CLIENT_SECRET,
                redirect_uri,
            ],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "CARNET_NODE_DIR": str(NODE_DIR)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: requests.get(f"{self.url}/.well-known/openid-configuration", timeout=2).ok,
            20,
            what="oidc-provider",
        )

    def save(self):
        self.accounts_file.write_text(json.dumps(self.accounts))

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def sso():
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir() or not shutil.which("node"):
        pytest.fail("npm oidc-provider is not installed in .venv/node: run scripts/setup")
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-oidc-"))
    data_dir.chmod(0o711)
    stack = CarnetStack(data_dir / "stack")
    stack.data_dir.mkdir()
    stack.data_dir.chmod(0o711)
    provider = OIDCProvider(data_dir, f"{stack.url}/hub/oauth_callback")
    stack.env.update(
        CARNET_OIDC_ISSUER=provider.url,
        CARNET_OIDC_CLIENT_ID=CLIENT_ID,
        CARNET_OIDC_CLIENT_SECRET=CLIENT_SECRET,
        CARNET_OIDC_SCOPES="openid email profile carnet",
    )
    try:
        stack.start()
        yield stack, provider
    finally:
        stack.stop()
        provider.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _form(page: str) -> tuple[str, dict]:
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', page).group(1))
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    return action, hidden


def to_callback(stack: CarnetStack, login: str, session: requests.Session | None = None):
    """Start a sign-in at the Hub and pass the provider's login and consent forms; stops at the Hub's
    callback URL (with code and state) without following it. Returns (session, callback_url)."""
    session = session or requests.Session()
    response = session.get(f"{stack.url}/hub/oauth_login", timeout=10, allow_redirects=False)
    for _ in range(20):
        if response.is_redirect:
            url = urljoin(response.url, response.headers["Location"])
            if url.startswith(f"{stack.url}/hub/oauth_callback"):
                return session, url
            response = session.get(url, timeout=10, allow_redirects=False)
            continue
        assert response.status_code == 200, (response.status_code, response.text[:500])
        action, fields = _form(response.text)
        if fields.get("prompt") == "login":
            fields.update(login=login, password="any")  # noqa: S105 - dev interactions accept any
        response = session.post(urljoin(response.url, action), data=fields, timeout=10, allow_redirects=False)
    raise AssertionError("too many steps at the provider")


def oidc_login(stack: CarnetStack, login: str) -> tuple[requests.Session, requests.Response]:
    session, callback = to_callback(stack, login)
    return session, session.get(callback, timeout=30)


def me(stack, session):
    # The API answers 401 rather than redirecting: a browser gets the service's cookie through a page.
    assert session.get(f"{stack.url}/services/carnet/viewer/", timeout=30).status_code == 200
    response = session.get(f"{stack.url}/services/carnet/api/v1/me", timeout=30)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def audit_events(stack, email: str, action: str, with_addr: bool = False) -> list[tuple]:
    with session_scope(stack.settings.db_url) as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.actor == email, AuditEvent.action == action))
        return [
            (e.action, e.org_id, dict(e.details), *([e.remote_addr] if with_addr else [])) for e in events
        ]


def test_studio_account_gets_a_server_and_its_org_and_role(sso):
    stack, _ = sso
    session, response = oidc_login(stack, "ana")
    # Authors land on their (not yet started) server's page: the Hub answers 424 "start your server".
    assert response.url.endswith(user_path("ana@partner.example")), response.url
    assert session.get(f"{stack.url}/hub/api/user", timeout=10).json()["name"] == "ana@partner.example"
    assert me(stack, session) == {
        "email": "ana@partner.example",
        "org": "acme",
        "role": "studio",
        "via": "hub",
    }
    with session_scope(stack.settings.db_url) as db:
        user = db.scalar(select(User).where(User.email == "ana@partner.example"))
        assert user.password_hash is None
        assert [(m.org.slug, m.role.value) for m in user.memberships] == [("acme", "studio")]
    assert start_server(stack.url, session, "ana@partner.example").status_code in (201, 202)
    assert audit_events(stack, "ana@partner.example", "login.success")


def test_viewer_account_is_a_viewer_in_its_org_and_cannot_spawn(sso):
    stack, _ = sso
    session, response = oidc_login(stack, "gus")
    assert response.status_code == 200  # viewers land on the gallery
    assert response.url.endswith("/services/carnet/viewer/"), response.url
    # Email domain acme.example, but the claim says globex: the claim wins.
    assert me(stack, session)["org"] == "globex"
    assert me(stack, session)["role"] == "viewer"
    assert start_server(stack.url, session, "gus@acme.example").status_code == 403


@pytest.mark.parametrize(
    ("login", "reason"),
    [("mal", "unknown organization"), ("rob", "unknown role"), ("una", "email not verified")],
)
def test_refused_claims_are_403_and_audited(sso, login, reason):
    stack, _ = sso
    email = ACCOUNTS[login]["email"]
    session, response = oidc_login(stack, login)
    assert response.status_code == 403
    assert "jupyterhub-hub-login" not in session.cookies
    assert session.get(f"{stack.url}/hub/api/user", timeout=10).status_code in (401, 403)
    failures = audit_events(stack, email, "login.failure")
    assert failures and all(details["reason"] == reason for _, _, details in failures)
    assert all(addr for _, _, _, addr in audit_events(stack, email, "login.failure", with_addr=True))
    with session_scope(stack.settings.db_url) as db:
        assert db.scalar(select(User).where(User.email == email)) is None


def test_disabled_account_is_refused_whatever_the_provider_says(sso):
    stack, _ = sso
    with session_scope(stack.settings.db_url) as db:
        db.scalar(select(User).where(User.email == "analyst@acme.example")).is_active = False
    session, response = oidc_login(stack, "dee")
    assert response.status_code == 403
    failures = audit_events(stack, "analyst@acme.example", "login.failure")
    assert [details["reason"] for _, _, details in failures] == ["inactive"]
    with session_scope(stack.settings.db_url) as db:
        user = db.scalar(select(User).where(User.email == "analyst@acme.example"))
        assert [(m.org.slug, m.role.value) for m in user.memberships] == [("acme", "analyst")]


def test_role_change_at_the_provider_applies_at_next_login(sso):
    stack, provider = sso
    session, _ = oidc_login(stack, "rita")
    assert me(stack, session)["role"] == "viewer"
    provider.accounts["rita"]["carnet_role"] = "analyst"
    provider.save()
    session, _ = oidc_login(stack, "rita")
    assert me(stack, session)["role"] == "analyst"
    groups = session.get(f"{stack.url}/hub/api/user", timeout=10).json()["groups"]
    assert "carnet-authors" in groups
    with session_scope(stack.settings.db_url) as db:
        roles = db.scalars(select(Membership.role).join(User).where(User.email == "rita@else.example")).all()
        assert [r.value for r in roles] == ["analyst"]
    # Lowered at the provider: applied at the next sign-in, and the person's Carnet tokens are cut off.
    provider.accounts["rita"]["carnet_role"] = "viewer"
    provider.save()
    session, _ = oidc_login(stack, "rita")
    assert me(stack, session)["role"] == "viewer"
    assert "carnet-authors" not in session.get(f"{stack.url}/hub/api/user", timeout=10).json()["groups"]
    with session_scope(stack.settings.db_url) as db:
        user = db.scalar(select(User).where(User.email == "rita@else.example"))
        assert user.credentials_valid_after is not None


def test_state_from_another_browser_session_fails(sso):
    stack, _ = sso
    victim, callback = to_callback(stack, "ana")
    attacker = requests.Session()
    attacker.get(f"{stack.url}/hub/oauth_login", timeout=10, allow_redirects=False)  # its own state cookie
    response = attacker.get(callback, timeout=30)
    assert response.status_code == 400
    assert "state mismatch" in response.text.lower()
    assert attacker.get(f"{stack.url}/hub/api/user", timeout=10).status_code in (401, 403)
    # No state cookie at all fails too; the rightful session can still complete its own sign-in.
    assert requests.get(callback, timeout=30).status_code == 400
    assert user_path("ana@partner.example") in victim.get(callback, timeout=30).url
    assert me(stack, victim)["email"] == "ana@partner.example"


def test_client_secret_stays_in_the_hub(sso):
    stack, _ = sso
    services = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"carnet.service" in cmdline and f"CARNET_DATA_DIR={stack.data_dir}".encode() in environ:
            services.append(environ)
    assert services, "the Carnet service process was not found"
    for environ in services:
        assert not any(item.startswith(b"CARNET_OIDC_CLIENT_SECRET=") for item in environ)
        assert any(item.startswith(b"CARNET_OIDC_ISSUER=") for item in environ)
