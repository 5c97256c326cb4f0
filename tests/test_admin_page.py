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


def post_form(session, stack, path: str, **data) -> requests.Response:
    token = xsrf_of(open_page(session, stack).text)
    return session.post(page_url(stack, path), data={"_xsrf": token, **data}, timeout=60)


def group_id_of(html: str, name: str) -> str:
    match = re.search(r'<tr data-group-id="(\d+)">\s*<td>' + re.escape(name) + "</td>", html)
    assert match, f"group {name} not listed"
    return match.group(1)


def api_group(stack, token, group_id) -> requests.Response:
    return requests.get(api_url(stack, f"groups/{group_id}"), headers=auth(token), timeout=30)


def test_group_forms_create_rename_members_delete(carnet_stack, admin_session, hub_token):
    admin_token, name = hub_token(ADMIN), f"Form group {uuid.uuid4().hex[:6]}"
    created = post_form(admin_session, carnet_stack, "groups", name=name)
    assert created.status_code == 201, created.text[:500]
    group_id = group_id_of(created.text, name)
    assert api_group(carnet_stack, admin_token, group_id).json()["members"] == []

    # The same name in Cyrillic letters is refused, as through the API.
    look_alike = post_form(admin_session, carnet_stack, "groups", name=name.replace("o", "\u043e"))
    assert look_alike.status_code == 409 and 'id="error"' in look_alike.text

    path = f"groups/{group_id}"
    for email in ("viewer@acme.example", "analyst@acme.example"):
        added = post_form(admin_session, carnet_stack, path, action="add_member", email=email)
        assert added.status_code == 200, added.text[:500]
    removed = post_form(
        admin_session, carnet_stack, path, action="remove_member", email="viewer@acme.example"
    )
    assert removed.status_code == 200
    assert api_group(carnet_stack, admin_token, group_id).json()["members"] == ["analyst@acme.example"]
    stranger = post_form(
        admin_session, carnet_stack, path, action="add_member", email="viewer@globex.example"
    )
    assert stranger.status_code == 400 and "viewer@globex.example" in stranger.text

    renamed = post_form(admin_session, carnet_stack, path, action="rename", name=name + " renamed")
    assert renamed.status_code == 200 and group_id_of(renamed.text, name + " renamed") == group_id
    assert api_group(carnet_stack, admin_token, group_id).json()["name"] == name + " renamed"

    deleted = post_form(admin_session, carnet_stack, path, action="delete")
    assert deleted.status_code == 200 and f'data-group-id="{group_id}"' not in deleted.text
    assert api_group(carnet_stack, admin_token, group_id).status_code == 404
    audit = requests.get(
        api_url(carnet_stack, "audit?action=group."), headers=auth(admin_token), timeout=30
    ).json()["events"]
    actions = [e["action"] for e in audit if e["target"] == f"group/{group_id}"]
    assert actions == [
        "group.delete",
        "group.update",
        "group.members",
        "group.members",
        "group.members",
        "group.create",
    ]
    assert all(e["actor"] == ADMIN for e in audit if e["target"] == f"group/{group_id}")


def test_password_reset_form_shows_a_new_one_time_password_once(carnet_stack, admin_session):
    email = f"reset-{uuid.uuid4().hex[:8]}@acme.example"
    created = create_through_form(admin_session, carnet_stack, email)
    first = unescape(re.search(r'id="initial-password">([^<]+)<', created.text).group(1))
    user_id = user_id_of(created.text, email)
    reset = post_form(admin_session, carnet_stack, f"people/{user_id}", action="reset_password")
    assert reset.status_code == 200, reset.text[:500]
    second = unescape(re.search(r'id="initial-password">([^<]+)<', reset.text).group(1))
    assert second != first and len(second) >= 16
    assert second not in open_page(admin_session, carnet_stack).text  # shown once
    with pytest.raises(AssertionError):
        hub_login(carnet_stack.url, email, first)
    hub_login(carnet_stack.url, email, second)
    audit_page = admin_session.get(page_url(carnet_stack, "?action=user.password_reset"), timeout=60).text
    assert f"<td>user.password_reset</td><td>{ADMIN}</td><td>user/{email}</td>" in audit_page
    post_form(admin_session, carnet_stack, f"people/{user_id}", action="delete")


def settings_fields(html: str) -> dict:
    """What the settings form would send as shown: text and number values, checked boxes as "on"."""
    form = html[html.index('id="org-settings"') :]
    form = form[: form.index("</form>")]
    fields = {m[0]: unescape(m[1]) for m in re.findall(r'name="(\w+)" value="([^"]*)"', form)}
    fields.update({m: "on" for m in re.findall(r'type="checkbox" id="[^"]+" name="(\w+)" checked', form)})
    fields.pop("_xsrf", None)
    return fields


def test_settings_form_changes_the_org_and_is_audited(carnet_stack, admin_session, hub_token):
    admin = auth(hub_token(ADMIN))
    before = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()
    shown = settings_fields(open_page(admin_session, carnet_stack).text)
    assert shown == {
        "name": before["name"],
        "timezone": "UTC",
        "embed_origins": "",
        "api_key_max_days": "0",
        "invitation_days": "7",
        "job_output_retention_days": "90",
        "primary_color": "",
    }  # allow_public_apps: unchecked, so not sent; custom_css is a textarea (sent as shown, not parsed here)

    saved = post_form(
        admin_session,
        carnet_stack,
        "settings",
        **{**shown, "timezone": "Europe/Berlin", "allow_public_apps": "on", "invitation_days": "3"},
    )
    assert saved.status_code == 200, saved.text[:500]
    assert settings_fields(saved.text)["allow_public_apps"] == "on"
    after = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()
    assert after["name"] == before["name"]
    assert after["settings"] == {
        **before["settings"],
        "timezone": "Europe/Berlin",
        "allow_public_apps": True,
        "invitation_days": 3,
    }
    event = requests.get(
        api_url(carnet_stack, "audit?action=org.settings.change"), headers=admin, timeout=30
    ).json()["events"][0]
    assert event["actor"] == ADMIN and event["target"] == "org/acme"
    assert event["details"]["timezone"] == {"from": "UTC", "to": "Europe/Berlin"}
    assert event["details"]["allow_public_apps"] == {"from": False, "to": True}

    # A bad value is shown as an error and nothing of the form is applied.
    bad = post_form(
        admin_session, carnet_stack, "settings", **{**shown, "timezone": "UTC", "invitation_days": "0"}
    )
    assert bad.status_code == 400 and "invitation_days" in bad.text and 'id="error"' in bad.text
    not_a_number = post_form(admin_session, carnet_stack, "settings", **{**shown, "api_key_max_days": "ten"})
    assert not_a_number.status_code == 400 and "api_key_max_days" in not_a_number.text
    assert requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json() == after

    # Unchecking the box (it is then absent from the form) turns the setting off again.
    restored = post_form(admin_session, carnet_stack, "settings", **shown)
    assert restored.status_code == 200
    assert requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json() == before


def test_non_admins_cannot_post_the_forms_even_with_a_valid_xsrf_token(carnet_stack, login, hub_token):
    session = login("studio@acme.example")
    assert open_page(session, carnet_stack).status_code == 403
    # The service set this person's xsrf cookie at sign-in: the refusal below is about the role, not xsrf.
    token = session.cookies.get("_xsrf", path="/services/carnet/")
    assert token
    groups_before = requests.get(
        api_url(carnet_stack, "groups"), headers=auth(hub_token(ADMIN)), timeout=30
    ).json()
    org_before = requests.get(api_url(carnet_stack, "org"), headers=auth(hub_token(ADMIN)), timeout=30).json()
    viewer_id = user_id_of(open_page(login(ADMIN), carnet_stack).text, "viewer@acme.example")
    for path, data in (
        ("groups", {"name": f"Studio group {uuid.uuid4().hex[:6]}"}),
        (
            "settings",
            {"name": "Taken over", "timezone": "UTC", "api_key_max_days": "0", "invitation_days": "7"},
        ),
        (f"people/{viewer_id}", {"action": "reset_password"}),
    ):
        response = session.post(page_url(carnet_stack, path), data={"_xsrf": token, **data}, timeout=60)
        assert response.status_code == 403, (path, response.status_code)
        assert "Your role (studio) does not allow" in response.text  # the role check, not the xsrf one
        assert "initial-password" not in response.text
    assert (
        requests.get(api_url(carnet_stack, "groups"), headers=auth(hub_token(ADMIN)), timeout=30).json()
        == groups_before
    )
    assert (
        requests.get(api_url(carnet_stack, "org"), headers=auth(hub_token(ADMIN)), timeout=30).json()
        == org_before
    )
