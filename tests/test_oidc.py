"""Single sign-on (issue 3): a real OpenID Connect provider (npm oidc-provider, tests/oidc/provider.mjs, PKCE
required) in front of a second Carnet stack configured with CARNET_OIDC_*; browser-style sign-ins with
requests."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urljoin, urlparse

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import (
    AppShare,
    AuditEvent,
    Membership,
    Organization,
    User,
    ViewerGroup,
    ViewerGroupMember,
)
from carnet.groups import name_key
from carnet.hub_config.oidc import UNCLAIMED, CarnetOIDCAuthenticator
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
    "otto": {"email": "otto@else.example", "email_verified": True, "org": "acme", "carnet_role": "analyst"},
    "vic": {"email": "vic@else.example", "email_verified": True, "org": "acme", "carnet_role": "analyst"},
    "leo": {"email": "leo@else.example", "email_verified": True, "org": "globex", "carnet_role": "viewer"},
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

    def discovery(self) -> dict:
        return requests.get(f"{self.url}/.well-known/openid-configuration", timeout=10).json()

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


def follow(session: requests.Session, url: str, stop_at: str = "") -> requests.Response | str:
    """GET ``url`` following redirects by hand; returns the first page, or the first URL starting with
    ``stop_at`` (not fetched)."""
    response = session.get(url, timeout=30, allow_redirects=False)
    while response.is_redirect:
        url = urljoin(response.url, response.headers["Location"])
        if stop_at and url.startswith(stop_at):
            return url
        response = session.get(url, timeout=30, allow_redirects=False)
    return response


def memberships(stack, email: str) -> list[tuple[str, str]]:
    with session_scope(stack.settings.db_url) as db:
        user = db.scalar(select(User).where(User.email == email))
        return sorted((m.org.slug, m.role.value) for m in user.memberships)


def test_claims_are_authoritative_for_memberships(sso):
    stack, provider = sso
    email = ACCOUNTS["otto"]["email"]
    session, _ = oidc_login(stack, "otto")
    assert me(stack, session)["org"] == "acme"
    # Otto gets a place in an Acme viewer group and a direct share of Acme's app.
    with session_scope(stack.settings.db_url) as db:
        otto = db.scalar(select(User).where(User.email == email))
        acme = db.scalar(select(Organization).where(Organization.slug == "acme"))
        group = ViewerGroup(org_id=acme.id, name="Otto's team", name_key=name_key("Otto's team"))
        db.add(group)
        db.flush()
        db.add_all(
            [
                ViewerGroupMember(group_id=group.id, user_id=otto.id),
                AppShare(app_id=stack.app_id, user_id=otto.id),
            ]
        )
        otto_id, acme_id = otto.id, acme.id
    # The provider now puts Otto in Globex: the Acme membership goes at the next sign-in.
    provider.accounts["otto"].update(org="globex", carnet_role="viewer")
    provider.save()
    session, _ = oidc_login(stack, "otto")
    assert me(stack, session)["org"] == "globex"
    assert memberships(stack, email) == [("globex", "viewer")]
    removals = audit_events(stack, email, "membership.remove")
    assert [(org_id, d["reason"], d["role"]) for _, org_id, d in removals] == [
        (acme_id, UNCLAIMED, "analyst")
    ]
    with session_scope(stack.settings.db_url) as db:
        assert db.get(User, otto_id).credentials_valid_after is not None
        assert not db.scalars(select(ViewerGroupMember).where(ViewerGroupMember.user_id == otto_id)).all()
        assert not db.scalars(select(AppShare).where(AppShare.user_id == otto_id)).all()


def test_keep_unclaimed_memberships_keeps_them(sso, monkeypatch):
    # The trait only changes the database work of a sign-in: run that step in-process against the stack's
    # database (the default, pruning, is exercised through the Hub above).
    stack, _ = sso
    monkeypatch.setenv("CARNET_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("CARNET_DB_URL", stack.settings.db_url)
    email, claims = "kim@else.example", {"email_verified": True, "org": "acme", "carnet_role": "analyst"}
    keeping = CarnetOIDCAuthenticator(keep_unclaimed_memberships=True)
    assert not keeping.sign_in(email, claims).refused
    assert not keeping.sign_in(email, {**claims, "org": "globex", "carnet_role": "viewer"}).refused
    assert memberships(stack, email) == [("acme", "analyst"), ("globex", "viewer")]
    assert not audit_events(stack, email, "membership.remove")
    pruning = CarnetOIDCAuthenticator()
    assert pruning.keep_unclaimed_memberships is False
    assert not pruning.sign_in(email, {**claims, "org": "globex", "carnet_role": "viewer"}).refused
    assert memberships(stack, email) == [("globex", "viewer")]


def studio_processes(stack, email: str) -> list[str]:
    """Pids of the person's Studio server processes of this stack (by their Hub environment)."""
    user, api = f"JUPYTERHUB_USER={email}".encode(), f":{stack.ports['HUB_API']}/".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if user in environ and any(e.startswith(b"JUPYTERHUB_API_URL=") and api in e for e in environ):
            pids.append(proc.name)
    return pids


def test_demotion_at_the_provider_stops_the_studio_server(sso):
    stack, provider = sso
    email = ACCOUNTS["vic"]["email"]
    session, _ = oidc_login(stack, "vic")
    assert start_server(stack.url, session, email).status_code in (201, 202)
    assert studio_processes(stack, email)
    hub_user = f"{stack.url}/hub/api/users/{email}"
    assert session.get(hub_user, timeout=10).json()["server"]  # the running server's URL
    provider.accounts["vic"]["carnet_role"] = "viewer"
    provider.save()
    session, response = oidc_login(stack, "vic")
    assert response.url.endswith("/services/carnet/viewer/"), response.url
    # Stopped during the sign-in itself (no API call involved).
    model = session.get(hub_user, timeout=10).json()
    assert "server" in model and model["server"] is None, model
    wait_until(lambda: not studio_processes(stack, email), 15, what="the end of the Studio server process")
    assert start_server(stack.url, session, email).status_code == 403
    assert me(stack, session)["role"] == "viewer"


def test_pkce_code_is_worthless_without_the_verifier(sso):
    stack, provider = sso
    endpoints, callback_url = provider.discovery(), f"{stack.url}/hub/oauth_callback"
    # The provider really requires PKCE: an authorization request without a challenge is refused.
    probe = {
        "client_id": CLIENT_ID,
        "redirect_uri": callback_url,
        "response_type": "code",
        "scope": "openid",
        "state": "probe",
    }
    refused = requests.get(
        f"{endpoints['authorization_endpoint']}?{urlencode(probe)}", timeout=10, allow_redirects=False
    )
    location = unquote(refused.headers.get("Location", ""))
    assert location.startswith(callback_url) and "error=invalid_request" in location, location
    assert "PKCE" in location
    # The Hub's own request carries one; a code taken from the callback URL cannot be redeemed without the
    # verifier (held in the Hub's signed state cookie), even with the client secret.
    session, callback = to_callback(stack, "ana")
    code = parse_qs(urlparse(callback).query)["code"][0]
    redeem = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": callback_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    for extra in ({}, {"code_verifier": "x" * 43}):
        answer = requests.post(endpoints["token_endpoint"], data={**redeem, **extra}, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    response = session.get(callback, timeout=30)
    assert user_path("ana@partner.example") in response.url
    assert me(stack, session)["email"] == "ana@partner.example"


def test_logout_ends_the_session_at_the_provider(sso):
    stack, provider = sso
    callback = f"{stack.url}/hub/oauth_callback"
    session, response = oidc_login(stack, "leo")
    assert response.url.endswith("/services/carnet/viewer/")
    # While the provider's session lives, a new Hub sign-in goes through it without any form.
    silent = follow(session, f"{stack.url}/hub/oauth_login", stop_at=callback)
    assert isinstance(silent, str), silent.text[:300]
    assert session.get(silent, timeout=30).url.endswith("/services/carnet/viewer/")
    # Logging out of the Hub ends the Hub session and lands on the provider's end-session page...
    page = follow(session, f"{stack.url}/hub/logout")
    assert page.url.startswith(provider.discovery()["end_session_endpoint"]), page.url
    assert session.get(f"{stack.url}/hub/api/user", timeout=10).status_code in (401, 403)
    action, fields = _form(page.text)
    done = session.post(urljoin(page.url, action), data={**fields, "logout": "yes"}, timeout=30)
    assert done.status_code == 200 and done.url.startswith(f"{stack.url}/hub/login"), done.url
    # ...so the next sign-in asks for credentials at the provider again.
    again = follow(session, f"{stack.url}/hub/oauth_login", stop_at=callback)
    assert not isinstance(again, str), "signed in silently after logout"
    assert again.url.startswith(provider.url) and _form(again.text)[1].get("prompt") == "login"
