"""People administration through the REST API, on the real stack: one-time passwords, roles, disabling and
deleting end sessions and tokens at once, mass assignment is refused, the last admin stays."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
import requests

from tests.api_support import api_url, assert_json_error, auth
from tests.helpers import hub_login, make_hub_token, start_server, wait_until

ADMIN = "admin@acme.example"


def new_person(stack, admin, role="studio") -> dict:
    email = f"person-{uuid.uuid4().hex[:8]}@acme.example"
    response = requests.post(
        api_url(stack, "users"), json={"email": email, "role": role}, headers=admin, timeout=30
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == email and body["role"] == role and body["must_change_password"] is True
    assert len(body["initial_password"]) >= 16
    return body


def sign_in(stack, person, choose_password=True) -> tuple[requests.Session, dict]:
    """Signed in with the one-time password; then, by default, choosing their own (kept in
    person["password"]), without which nothing but /me answers (tests/test_first_sign_in.py)."""
    session = hub_login(stack.url, person["email"], person["initial_password"])
    headers = auth(make_hub_token(stack.url, session, person["email"]))
    person["password"] = person["initial_password"]
    if choose_password:
        person["password"] = "their own passphrase " + uuid.uuid4().hex[:6]
        chosen = {"current_password": person["initial_password"], "new_password": person["password"]}
        response = requests.post(api_url(stack, "me/password"), json=chosen, headers=headers, timeout=30)
        assert response.status_code == 204, response.text
    return session, headers


def test_admin_creates_a_person_who_signs_in_with_the_one_time_password(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="analyst")
    listed = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    assert person["email"] in [u["email"] for u in listed]
    assert not {"password", "password_hash", "initial_password"} & {key for u in listed for key in u}
    session, headers = sign_in(carnet_stack, person)
    me = requests.get(api_url(carnet_stack, "me"), headers=headers, timeout=30).json()
    assert me == {"email": person["email"], "org": "acme", "role": "analyst", "via": "hub"}


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"email": "not-an-email", "role": "viewer"}, 400, "email"),
        ({"email": "x@acme.example", "role": "superuser"}, 400, "role"),
        ({"email": ADMIN, "role": "viewer"}, 409, None),
        ({"email": "y@acme.example", "role": "viewer", "org_id": 2}, 400, "org_id"),
        ({"email": "z@acme.example", "role": "viewer", "is_admin": True}, 400, "is_admin"),
        ({"email": "w@acme.example", "role": "viewer", "display_name": "x" * 201}, 400, "display_name"),
    ],
    ids=["bad email", "unknown role", "duplicate", "org_id", "is_admin", "long name"],
)
def test_bad_people_are_refused_and_nothing_is_created(carnet_stack, admin, body, status, field):
    before = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    response = requests.post(api_url(carnet_stack, "users"), json=body, headers=admin, timeout=30)
    error = assert_json_error(response, status)
    if field:
        assert error["field"] == field
    after = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    assert after == before


def test_mass_assignment_in_an_update_is_refused(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="viewer")
    url = api_url(carnet_stack, f"users/{person['id']}")
    for body in (
        {"org_id": 2},
        {"is_admin": True},
        {"email": "other@acme.example"},
        {"role": "admin", "id": 1},
    ):
        assert_json_error(requests.patch(url, json=body, headers=admin, timeout=30), 400)
    unchanged = requests.get(url, headers=admin, timeout=30).json()
    assert unchanged["role"] == "viewer" and unchanged["email"] == person["email"]


def test_disabling_ends_sessions_and_tokens_at_once(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="studio")
    session, headers = sign_in(carnet_stack, person)
    assert start_server(carnet_stack.url, session, person["email"]).status_code in (201, 202)
    assert requests.get(api_url(carnet_stack, "sources"), headers=headers, timeout=30).status_code == 200

    response = requests.patch(
        api_url(carnet_stack, f"users/{person['id']}"), json={"is_active": False}, headers=admin, timeout=30
    )
    assert response.status_code == 200 and response.json()["is_active"] is False
    # The next request fails: through the Carnet API, through the Hub, and the server is gone.
    assert requests.get(api_url(carnet_stack, "sources"), headers=headers, timeout=30).status_code in (
        401,
        403,
    )
    assert session.get(f"{carnet_stack.url}/hub/api/user", timeout=30).status_code in (401, 403)
    assert (
        requests.get(
            f"{carnet_stack.url}/user/{quote(person['email'], safe='@')}/api/status",
            headers=headers,
            timeout=30,
            allow_redirects=False,
        ).status_code
        != 200
    )
    with pytest.raises(AssertionError):
        hub_login(carnet_stack.url, person["email"], person["password"])


def test_lowering_a_role_takes_effect_at_once(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="studio")
    session, headers = sign_in(carnet_stack, person)
    assert start_server(carnet_stack.url, session, person["email"]).status_code in (201, 202)
    url = api_url(carnet_stack, f"users/{person['id']}")
    assert requests.patch(url, json={"role": "viewer"}, headers=admin, timeout=30).json()["role"] == "viewer"
    assert_json_error(requests.get(api_url(carnet_stack, "sources"), headers=headers, timeout=30), 403)
    # Their Studio server was stopped and they may not start one again.
    session = hub_login(carnet_stack.url, person["email"], person["password"])
    user = session.get(f"{carnet_stack.url}/hub/api/user", timeout=30).json()
    assert not user.get("servers") and "carnet-authors" not in user.get("groups", [])
    assert start_server(carnet_stack.url, session, person["email"]).status_code == 403


def test_people_change_their_own_password(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="viewer")
    _, headers = sign_in(carnet_stack, person, choose_password=False)
    url = api_url(carnet_stack, "me/password")
    new = "a much better passphrase " + uuid.uuid4().hex[:6]
    error = assert_json_error(
        requests.post(
            url, json={"current_password": "wrong", "new_password": new}, headers=headers, timeout=30
        ),
        400,
    )
    assert error["field"] == "current_password"
    short = {"current_password": person["initial_password"], "new_password": "short"}
    assert_json_error(requests.post(url, json=short, headers=headers, timeout=30), 400)
    ok = requests.post(
        url,
        json={"current_password": person["initial_password"], "new_password": new},
        headers=headers,
        timeout=30,
    )
    assert ok.status_code == 204
    hub_login(carnet_stack.url, person["email"], new)
    with pytest.raises(AssertionError):
        hub_login(carnet_stack.url, person["email"], person["initial_password"])
    listed = requests.get(api_url(carnet_stack, f"users/{person['id']}"), headers=admin, timeout=30).json()
    assert listed["must_change_password"] is False


def test_the_last_admin_cannot_be_removed(carnet_stack, admin):
    users = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    me = next(u for u in users if u["email"] == ADMIN)
    url = api_url(carnet_stack, f"users/{me['id']}")
    assert_json_error(requests.patch(url, json={"role": "studio"}, headers=admin, timeout=30), 409)
    assert_json_error(requests.patch(url, json={"is_active": False}, headers=admin, timeout=30), 409)
    assert_json_error(requests.delete(url, headers=admin, timeout=30), 409)
    assert requests.get(url, headers=admin, timeout=30).json()["role"] == "admin"


def test_another_organizations_person_is_a_404_like_an_unknown_one(carnet_stack, admin):
    users_of_acme = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    acme_ids = {u["id"] for u in users_of_acme}
    globex_id = next(i for i in range(1, 200) if i not in acme_ids)  # the Globex viewer's id is not in Acme
    other = requests.get(api_url(carnet_stack, f"users/{globex_id}"), headers=admin, timeout=30)
    unknown = requests.get(api_url(carnet_stack, "users/987654"), headers=admin, timeout=30)
    assert other.status_code == unknown.status_code == 404
    assert other.json() == unknown.json()


def test_deleting_a_person_ends_everything(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="analyst")
    session, headers = sign_in(carnet_stack, person)
    url = api_url(carnet_stack, f"users/{person['id']}")
    assert requests.delete(url, headers=admin, timeout=30).status_code == 204
    assert_json_error(requests.get(url, headers=admin, timeout=30), 404)
    assert requests.get(api_url(carnet_stack, "me"), headers=headers, timeout=30).status_code in (401, 403)
    with pytest.raises(AssertionError):
        hub_login(carnet_stack.url, person["email"], person["password"])
    wait_until(
        lambda: session.get(f"{carnet_stack.url}/hub/api/user", timeout=30).status_code in (401, 403), 10
    )


def test_people_administration_is_audited(carnet_stack, admin):
    person = new_person(carnet_stack, admin, role="viewer")
    url = api_url(carnet_stack, f"users/{person['id']}")
    requests.patch(url, json={"role": "analyst"}, headers=admin, timeout=30).raise_for_status()
    assert requests.delete(url, headers=admin, timeout=30).status_code == 204
    events = requests.get(
        api_url(carnet_stack, "audit"), params={"action": "user."}, headers=admin, timeout=30
    )
    mine = [e for e in events.json()["events"] if e["target"] == f"user/{person['email']}"]
    assert [e["action"] for e in mine] == ["user.delete", "user.update", "user.create"]
    assert all(e["actor"] == ADMIN and e["remote_addr"] for e in mine)
    assert mine[1]["details"]["role"] == {"from": "viewer", "to": "analyst"}
    assert "initial_password" not in str(mine) and person["initial_password"] not in str(mine)
