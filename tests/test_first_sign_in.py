"""First sign-in on the real stack: a one-time password must be replaced (Hub change page) before the API, the
Viewer or a Studio server answer; invitation links work once, expire, die when re-issued, and sign the person
in. Plus the token rules of carnet.first_sign_in against the stack's database."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import User, utcnow
from carnet.errors import Gone, NotFound, PasswordChangeRequired
from carnet.first_sign_in import find_invitation, invitation_hash, issue_invitation, require_own_password
from carnet.settings import CarnetSettings
from tests.api_support import api_url, assert_json_error, auth
from tests.helpers import make_hub_token, start_server, wait_until

ADMIN = "admin@acme.example"
CHANGE_PATH = "/hub/carnet/change-password"


def new_person(stack, admin, role="analyst", **extra) -> dict:
    email = f"first-{uuid.uuid4().hex[:8]}@acme.example"
    response = requests.post(
        api_url(stack, "users"), json={"email": email, "role": role, **extra}, headers=admin, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()


def xsrf_of(html: str) -> str:
    match = re.search(r'name="_xsrf" value="([^"]+)"', html)
    assert match, "no xsrf field in the page"
    return unescape(match.group(1))


def sign_in(stack, email, password) -> tuple[requests.Session, str]:
    """The Hub's login form; returns the session and where the Hub sends the person next."""
    session = requests.Session()
    session.get(f"{stack.url}/hub/login", timeout=30)
    response = session.post(
        f"{stack.url}/hub/login",
        data={"username": email, "password": password, "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
        timeout=30,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.status_code
    return session, response.headers["Location"]


def post_change(stack, session, location, current, new, confirm=None) -> requests.Response:
    page = session.get(stack.url + location, timeout=30)
    assert page.status_code == 200, page.text[:300]
    return session.post(
        stack.url + location,
        data={
            "_xsrf": xsrf_of(page.text),
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
        },
        timeout=30,
        allow_redirects=False,
    )


def audit_targets(stack, admin, action) -> list[str]:
    events = requests.get(api_url(stack, "audit"), params={"action": action}, headers=admin, timeout=30)
    return [e["target"] for e in events.json()["events"] if e["action"] == action]


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_one_time_password_must_be_replaced_before_anything_else(carnet_stack, admin):
    stack = carnet_stack
    person = new_person(stack, admin, role="analyst")
    email, one_time = person["email"], person["initial_password"]

    session, location = sign_in(stack, email, one_time)
    assert location.startswith(CHANGE_PATH + "?next=")
    page = session.get(stack.url + location, timeout=30)
    assert page.status_code == 200 and 'id="forced"' in page.text

    # Refused everywhere but /me and /me/password, with the address of the change page.
    headers = auth(make_hub_token(stack.url, session, email))
    error = assert_json_error(requests.get(api_url(stack, "sources"), headers=headers, timeout=30), 403)
    assert "choose your own password first" in error["message"]
    assert error["change_password_url"] == f"{stack.url}{CHANGE_PATH}"
    assert error["change_password_url"] in error["message"]
    assert_json_error(requests.get(api_url(stack, "apps"), headers=headers, timeout=30), 403)
    me = requests.get(api_url(stack, "me"), headers=headers, timeout=30)
    assert me.status_code == 200 and me.json()["email"] == email
    spawn = start_server(stack.url, session, email)
    assert spawn.status_code == 403 and "choose your own password first" in spawn.text
    viewer = session.get(f"{stack.url}/services/carnet-viewer/apps/{stack.app_id}", timeout=60)
    assert viewer.status_code == 403 and "choose your own password first" in viewer.text

    # The change form refuses a wrong current password, a short one, a mismatch and the one-time one.
    new = "my very own passphrase " + uuid.uuid4().hex[:6]
    for current, chosen, confirm, expected in (
        ("not the password", new, None, "The current password is wrong"),
        (one_time, "short", None, "at least 12 characters"),
        (one_time, new, new + "x", "The two new passwords differ"),
        (one_time, one_time, None, "different from the current one"),
    ):
        refused = post_change(stack, session, location, current, chosen, confirm)
        assert refused.status_code == 400 and expected in unescape(refused.text), refused.text[:300]
    assert_json_error(requests.get(api_url(stack, "sources"), headers=headers, timeout=30), 403)

    changed = post_change(stack, session, location, one_time, new)
    assert changed.status_code == 302
    assert changed.headers["Location"] == parse_qs(urlparse(location).query)["next"][0]
    assert requests.get(api_url(stack, "sources"), headers=headers, timeout=30).status_code == 200
    assert f"user/{email}" in audit_targets(stack, admin, "password.change")

    # Next time the Hub lets them straight through; the one-time password is dead.
    _, location = sign_in(stack, email, new)
    assert not location.startswith(CHANGE_PATH)
    with pytest.raises(AssertionError):
        sign_in(stack, email, one_time)


def test_an_invitation_link_works_once_and_signs_the_person_in(carnet_stack, admin, smtp_server):
    stack = carnet_stack
    person = new_person(stack, admin, role="viewer", invite=True)
    email, url = person["email"], person["invitation_url"]
    assert "initial_password" not in person and person["must_change_password"] is False
    assert url.startswith(f"{stack.url}/hub/carnet/invite/")
    expires = person["invitation_expires_at"]
    assert expires.startswith((utcnow() + timedelta(days=7)).date().isoformat())
    # Mailed through the stack's SMTP server; only the link's hash is stored.
    assert person["invitation_sent"] is True
    mail = wait_until(
        lambda: [m for m in smtp_server.messages if m["X-Envelope-To"] == email], 10, what="the mail"
    )[0]
    assert url in mail.get_payload(decode=True).decode()
    with session_scope(stack.settings.db_url) as db:
        row = db.scalar(select(User).where(User.email == email))
        assert row.invitation_hash == hashlib.sha256(token_of(url).encode()).hexdigest()
        assert row.password_hash is None

    browser = requests.Session()
    form = browser.get(url, timeout=30)
    assert form.status_code == 200 and email in form.text
    chosen = "an invited passphrase " + uuid.uuid4().hex[:6]
    mismatch = browser.post(
        url,
        data={"_xsrf": xsrf_of(form.text), "new_password": chosen, "confirm_password": chosen + "!"},
        timeout=30,
        allow_redirects=False,
    )
    assert mismatch.status_code == 400 and "The two new passwords differ" in mismatch.text
    accepted = browser.post(
        url,
        data={"_xsrf": xsrf_of(mismatch.text), "new_password": chosen, "confirm_password": chosen},
        timeout=30,
        allow_redirects=False,
    )
    assert accepted.status_code == 302 and accepted.headers["Location"] == "/hub/"
    # Signed in: the Hub cookie is theirs, and the service (OAuth through that cookie) knows them.
    hub_user = browser.get(f"{stack.url}/hub/api/user", timeout=30)
    assert hub_user.status_code == 200 and hub_user.json()["name"] == email
    gallery = browser.get(f"{stack.url}/services/carnet/viewer/", timeout=60)  # OAuth with the Hub cookie
    assert gallery.status_code == 200 and email in gallery.text
    me = browser.get(api_url(stack, "me"), timeout=60)
    assert me.status_code == 200 and me.json()["email"] == email
    assert f"user/{email}" in audit_targets(stack, admin, "invitation.accept")

    # Used: the same page as an unknown link, 404, for GET and POST.
    again = requests.get(url, timeout=30)
    unknown = requests.get(f"{stack.url}/hub/carnet/invite/{'x' * 43}", timeout=30)
    assert again.status_code == unknown.status_code == 404
    assert "unknown or was already used" in again.text and again.text == unknown.text
    stranger = requests.Session()
    stranger.get(f"{stack.url}/hub/login", timeout=30)  # an anonymous xsrf cookie, so the POST gets judged
    reuse = stranger.post(
        url,
        data={
            "_xsrf": stranger.cookies.get("_xsrf", path="/hub/"),
            "new_password": chosen + "!",
            "confirm_password": chosen + "!",
        },
        timeout=30,
        allow_redirects=False,
    )
    assert reuse.status_code == 404 and "unknown or was already used" in reuse.text
    _, location = sign_in(stack, email, chosen)
    assert not location.startswith(CHANGE_PATH)


def test_a_new_invitation_kills_the_old_link_and_expired_links_are_gone(carnet_stack, admin):
    stack = carnet_stack
    person = new_person(stack, admin, role="analyst", invite=True)
    old = person["invitation_url"]
    reissued = requests.post(api_url(stack, f"users/{person['id']}/invitation"), headers=admin, timeout=30)
    assert reissued.status_code == 200, reissued.text
    new = reissued.json()["invitation_url"]
    assert new != old and reissued.json()["invitation_sent"] is True
    assert requests.get(old, timeout=30).status_code == 404
    assert requests.get(new, timeout=30).status_code == 200
    assert audit_targets(stack, admin, "user.invite").count(f"user/{person['email']}") == 2

    with session_scope(stack.settings.db_url) as db:
        db.get(User, person["id"]).invitation_expires_at = utcnow() - timedelta(seconds=1)
    expired = requests.get(new, timeout=30)
    assert expired.status_code == 410 and "expired" in expired.text

    # A disabled person cannot accept, even with a fresh link.
    fresh = requests.post(api_url(stack, f"users/{person['id']}/invitation"), headers=admin, timeout=30)
    requests.patch(
        api_url(stack, f"users/{person['id']}"), json={"is_active": False}, headers=admin, timeout=30
    ).raise_for_status()
    assert requests.get(fresh.json()["invitation_url"], timeout=30).status_code == 403
    disabled = requests.post(api_url(stack, f"users/{person['id']}/invitation"), headers=admin, timeout=30)
    assert_json_error(disabled, 409)


@pytest.mark.parametrize("invite", ["yes", 1, None, []])
def test_invite_must_be_a_boolean_and_nothing_is_created(carnet_stack, admin, invite):
    email = f"first-bad-{uuid.uuid4().hex[:8]}@acme.example"
    response = requests.post(
        api_url(carnet_stack, "users"),
        json={"email": email, "role": "viewer", "invite": invite},
        headers=admin,
        timeout=30,
    )
    assert assert_json_error(response, 400)["field"] == "invite"
    listed = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    assert email not in [u["email"] for u in listed]


def test_the_admin_page_creates_a_person_with_an_invitation_link(carnet_stack):
    stack = carnet_stack
    session, _ = sign_in(stack, ADMIN, stack.passwords[ADMIN])
    page = session.get(f"{stack.url}/services/carnet/admin/", timeout=60)
    assert page.status_code == 200 and 'value="invitation"' in page.text
    email = f"first-form-{uuid.uuid4().hex[:8]}@acme.example"
    created = session.post(
        f"{stack.url}/services/carnet/admin/people",
        data={"_xsrf": xsrf_of(page.text), "email": email, "role": "viewer", "credential": "invitation"},
        timeout=60,
    )
    assert created.status_code == 201, created.text[:500]
    url = unescape(re.search(r'id="invitation-url">([^<]+)<', created.text).group(1))
    assert 'id="initial-password"' not in created.text
    assert requests.get(url, timeout=30).status_code == 200
    assert url not in session.get(f"{stack.url}/services/carnet/admin/", timeout=60).text  # shown once


# -- the rules, against the stack's database ---------------------------------------------------------------
def test_invitation_tokens_are_stored_hashed_and_expire(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="viewer")
    settings = CarnetSettings(
        db_url=carnet_stack.settings.db_url, public_url="https://bi.example/", invitation_days=2
    )
    now = utcnow()
    with session_scope(settings.db_url) as db:
        user = db.get(User, person["id"])
        invitation = issue_invitation(user, settings, now=now)
        token = token_of(invitation["invitation_url"])
        assert invitation["invitation_url"] == f"https://bi.example/hub/carnet/invite/{token}"
        assert len(token) >= 40 and user.invitation_hash == invitation_hash(token) != token
        assert user.invitation_expires_at == now + timedelta(days=2)
    with session_scope(settings.db_url) as db:
        assert (
            find_invitation(db, token, now=now + timedelta(days=2) - timedelta(seconds=1)).email
            == (person["email"])
        )
        with pytest.raises(Gone):
            find_invitation(db, token, now=now + timedelta(days=2))
        with pytest.raises(NotFound):
            find_invitation(db, token[:-1] + ("A" if token[-1] != "A" else "B"), now=now)
        # The one-time password of this person is still theirs to replace: the single check says so.
        with pytest.raises(PasswordChangeRequired) as refused:
            require_own_password(db.get(User, person["id"]), settings)
        assert refused.value.fields["change_password_url"] == "https://bi.example/hub/carnet/change-password"


def test_the_org_invitation_lifetime_applies_once_an_admin_sets_it(carnet_stack, admin):
    stack = carnet_stack
    platform_default = new_person(stack, admin, invite=True)
    lifetime = _lifetime(platform_default)
    assert timedelta(days=7) - timedelta(minutes=5) < lifetime <= timedelta(days=7)
    patched = requests.patch(api_url(stack, "org"), json={"invitation_days": 2}, headers=admin, timeout=30)
    assert patched.status_code == 200, patched.text
    try:
        short = _lifetime(new_person(stack, admin, invite=True))
        assert timedelta(days=2) - timedelta(minutes=5) < short <= timedelta(days=2)
    finally:
        requests.patch(
            api_url(stack, "org"), json={"invitation_days": 7}, headers=admin, timeout=30
        ).raise_for_status()


def _lifetime(person: dict) -> timedelta:
    from datetime import datetime

    return datetime.fromisoformat(person["invitation_expires_at"]) - utcnow()
