"""The server-rendered admin page, driven like a browser: Hub sign-in, OAuth to the service, forms with the
Hub xsrf token. Admins only; its forms create and disable people (whose sign-in then fails); HTML in names
is escaped."""

from __future__ import annotations

import re
import uuid
from html import unescape

import pytest
import requests

from tests.api_support import api_url, auth
from tests.helpers import hub_login

ADMIN = "admin@acme.example"


def page_url(stack, path: str = "") -> str:
    return f"{stack.url}/services/carnet/admin/{path}"


def open_page(session: requests.Session, stack) -> requests.Response:
    return session.get(page_url(stack), timeout=60)


def xsrf_of(html: str) -> str:
    match = re.search(r'name="_xsrf" value="([^"]+)"', html)
    assert match, "no xsrf field in the page"
    return unescape(match.group(1))


@pytest.fixture(scope="module")
def admin_session(carnet_stack):
    # A session of its own: the shared login() sessions are also used by other modules.
    session = hub_login(carnet_stack.url, ADMIN, carnet_stack.passwords[ADMIN])
    response = open_page(session, carnet_stack)
    assert response.status_code == 200, response.text[:500]
    return session


def user_id_of(html: str, email: str) -> str:
    match = re.search(r'<tr data-user-id="(\d+)">\s*<td>' + re.escape(email) + "</td>", html)
    assert match, f"{email} not listed"
    return match.group(1)


def create_through_form(session, stack, email, display_name="", role="viewer") -> requests.Response:
    token = xsrf_of(open_page(session, stack).text)
    return session.post(
        page_url(stack, "people"),
        data={"_xsrf": token, "email": email, "role": role, "display_name": display_name},
        timeout=60,
    )


def test_admin_sees_people_groups_and_audit(carnet_stack, admin_session):
    response = open_page(admin_session, carnet_stack)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    html = response.text
    for email in (ADMIN, "viewer@acme.example", "analyst@acme.example"):
        assert f"<td>{email}</td>" in html
    assert "viewer@globex.example" not in html
    assert 'id="groups"' in html and 'id="audit"' in html
    assert 'href="/services/carnet/api/v1/audit/export?format=csv"' in html
    filtered = admin_session.get(page_url(carnet_stack, "?action=login."), timeout=60).text
    actions = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>", filtered)
    assert actions and all(a.startswith("login.") for a in actions)
    assert "audit/export?format=csv&amp;action=login." in filtered
    export = admin_session.get(
        f"{carnet_stack.url}/services/carnet/api/v1/audit/export?format=csv&action=login.", timeout=60
    )
    assert export.status_code == 200 and export.text.startswith("id,created_at,action")


def test_admin_creates_then_disables_a_person_through_the_forms(carnet_stack, admin_session):
    email = f"form-{uuid.uuid4().hex[:8]}@acme.example"
    created = create_through_form(admin_session, carnet_stack, email, "Form person", "analyst")
    assert created.status_code == 201, created.text[:500]
    password = re.search(r'id="initial-password">([^<]+)<', created.text).group(1)
    assert len(password) >= 16
    assert password not in open_page(admin_session, carnet_stack).text  # shown once
    hub_login(carnet_stack.url, email, unescape(password))  # the person can sign in

    user_id = user_id_of(created.text, email)
    token = xsrf_of(created.text)
    disabled = admin_session.post(
        page_url(carnet_stack, f"people/{user_id}"), data={"_xsrf": token, "action": "disable"}, timeout=60
    )
    assert disabled.status_code == 200, disabled.text[:500]
    assert f"Updated {email}" in disabled.text
    with pytest.raises(AssertionError):
        hub_login(carnet_stack.url, email, unescape(password))

    # Change role, then delete, through the same forms; every action is in the audit log.
    role = admin_session.post(
        page_url(carnet_stack, f"people/{user_id}"),
        data={"_xsrf": token, "action": "role", "role": "viewer"},
        timeout=60,
    )
    assert role.status_code == 200
    deleted = admin_session.post(
        page_url(carnet_stack, f"people/{user_id}"), data={"_xsrf": token, "action": "delete"}, timeout=60
    )
    assert deleted.status_code == 200 and f'data-user-id="{user_id}"' not in deleted.text
    audit_page = admin_session.get(page_url(carnet_stack, "?action=user."), timeout=60).text
    for action in ("user.create", "user.update", "user.delete"):
        assert f"<td>{action}</td><td>{ADMIN}</td><td>user/{email}</td>" in audit_page


def test_form_errors_are_shown_not_applied(carnet_stack, admin_session):
    response = create_through_form(admin_session, carnet_stack, "not-an-email")
    assert response.status_code == 400 and 'id="error"' in response.text
    token = xsrf_of(response.text)
    admin_id = user_id_of(response.text, ADMIN)
    self_delete = admin_session.post(
        page_url(carnet_stack, f"people/{admin_id}"), data={"_xsrf": token, "action": "delete"}, timeout=60
    )
    assert self_delete.status_code == 409 and f'data-user-id="{admin_id}"' in self_delete.text


def test_an_analyst_gets_a_403_page(carnet_stack, login):
    response = open_page(login("analyst@acme.example"), carnet_stack)
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<td>" not in response.text and "_xsrf" not in response.text


def test_anonymous_is_sent_to_sign_in(carnet_stack):
    response = requests.get(page_url(carnet_stack), timeout=30, allow_redirects=False)
    assert response.status_code in (302, 303)


def test_a_post_without_the_xsrf_token_is_refused(carnet_stack, admin_session, hub_token):
    email = f"csrf-{uuid.uuid4().hex[:8]}@acme.example"
    for data in ({"email": email, "role": "admin"}, {"email": email, "role": "admin", "_xsrf": "forged"}):
        response = admin_session.post(
            page_url(carnet_stack, "people"), data=data, timeout=60, allow_redirects=False
        )
        assert response.status_code == 403, response.status_code
    users = requests.get(api_url(carnet_stack, "users"), headers=auth(hub_token(ADMIN)), timeout=30).json()
    assert email not in [u["email"] for u in users["users"]]


def test_html_in_a_display_name_is_escaped(carnet_stack, admin_session, hub_token):
    email = f"xss-{uuid.uuid4().hex[:8]}@acme.example"
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    response = create_through_form(admin_session, carnet_stack, email, evil)
    assert response.status_code == 201
    html = open_page(admin_session, carnet_stack).text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    requests.delete(
        api_url(carnet_stack, f"users/{user_id_of(html, email)}"), headers=auth(hub_token(ADMIN)), timeout=30
    )
