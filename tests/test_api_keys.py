"""Org API keys against the real stack: creation, use (Bearer, X-Api-Key, carnet.Client), the role ceiling,
rotation, revocation, expiry, organizations, validation, and secrets never shown twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from secrets import token_urlsafe

import pandas as pd
import pytest
import requests
from sqlalchemy import delete, select

import carnet
from carnet.api_keys import API_KEY_PREFIX, mint_api_key, resolve_api_key
from carnet.client import CarnetApiError
from carnet.db import session_scope
from carnet.db.models import ApiKey, AuditEvent, Membership, Role, User
from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from carnet.errors import PermissionDenied
from carnet.warehouse import connect_waiting
from tests.api_support import UNKNOWN_ID, api_url, assert_json_error, auth, unique
from tests.helpers import wait_until

ADMIN = "admin@acme.example"
NON_ADMINS = ("viewer@acme.example", "analyst@acme.example", "studio@acme.example")
GLOBEX_VIEWER = "viewer@globex.example"


@pytest.fixture(scope="module")
def new_key(carnet_stack, admin, created):
    """``new_key(role, **body)`` -> the creation answer (with ``key``), made by the acme admin."""
    secrets_seen = []

    def _new_key(role: str = "analyst", **body) -> dict:
        body = {"name": unique("key"), "role": role, **body}
        response = requests.post(api_url(carnet_stack, "keys"), json=body, headers=admin, timeout=30)
        assert response.status_code == 201, response.text
        data = response.json()
        created.keys.add(data["id"])
        secrets_seen.append(data["key"])
        return data

    _new_key.secrets = secrets_seen
    return _new_key


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def x_api_key(key: str) -> dict:
    return {"X-Api-Key": key}


def call(stack, headers, path, method="GET", **kwargs):
    return requests.request(method, api_url(stack, path), headers=headers, timeout=30, **kwargs)


def listed(stack, admin) -> dict[int, dict]:
    response = call(stack, admin, "keys")
    assert response.status_code == 200, response.text
    return {k["id"]: k for k in response.json()["keys"]}


def warehouse_rows(stack) -> int:
    with connect_waiting(stack.settings.warehouse_path(1), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {DEMO_TABLE}").fetchone()[0]  # noqa: S608


# -- use -----------------------------------------------------------------------------------------------------
def test_a_key_works_as_bearer_and_as_x_api_key(carnet_stack, new_key):
    data = new_key("analyst")
    key = data["key"]
    assert key.startswith(API_KEY_PREFIX) and not key.startswith("ck_")
    assert data["role"] == "analyst" and data["status"] == "active" and data["created_by"] == ADMIN
    expected = {"email": ADMIN, "org": "acme", "role": "analyst", "via": "api_key"}
    for headers in (bearer(key), x_api_key(key), {"Authorization": f"token {key}"}):
        response = call(carnet_stack, headers, "me")
        assert response.status_code == 200, response.text
        assert response.json() == expected
    data_response = call(carnet_stack, x_api_key(key), f"sources/{DEMO_SOURCE}/data?limit=3")
    assert data_response.status_code == 200
    assert data_response.headers["Content-Type"] == "application/vnd.apache.arrow.stream"


def test_carnet_client_reads_source_data(carnet_stack, new_key):
    key = new_key("analyst")["key"]
    client = carnet.Client(carnet_stack.url, key)
    assert client.me()["via"] == "api_key" and client.me()["role"] == "analyst"
    assert DEMO_SOURCE in client.sources()
    source = client.get_source(DEMO_SOURCE)
    assert source.columns[:3] == ["country", "continent", "year"]
    frame = source.get_data(limit=5)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 5
    assert list(frame.columns)[:3] == ["country", "continent", "year"]
    assert len(source.get_data()) == warehouse_rows(carnet_stack)
    # The API's URL works too, and a missing source or a bad key raise with the server's status.
    assert carnet.Client(f"{carnet_stack.url}/services/carnet/api/v1", key).me()["email"] == ADMIN
    with pytest.raises(CarnetApiError) as missing:
        client.get_source("no-such-source")
    assert missing.value.status == 404
    with pytest.raises(CarnetApiError) as refused:
        carnet.Client(carnet_stack.url, key + "x").sources()
    assert refused.value.status == 401


def test_a_viewer_ceiling_key_acts_as_a_viewer(carnet_stack, new_key):
    key = new_key("viewer")["key"]
    assert call(carnet_stack, bearer(key), "me").json()["role"] == "viewer"
    assert_json_error(call(carnet_stack, bearer(key), "sources"), 403)
    assert_json_error(call(carnet_stack, x_api_key(key), f"sources/{DEMO_SOURCE}/data"), 403)
    apps = call(carnet_stack, bearer(key), "apps")
    assert apps.status_code == 200 and carnet_stack.app_id in [a["id"] for a in apps.json()["apps"]]
    with pytest.raises(CarnetApiError) as refused:
        carnet.Client(carnet_stack.url, key).sources()
    assert refused.value.status == 403


def test_x_api_key_skips_cookies_and_xsrf(carnet_stack, login, new_key, created):
    """With X-Api-Key the request is the key's, even from a browser session, and needs no xsrf token."""
    data = new_key("studio")
    key = data["key"]
    session = login("viewer@acme.example")
    name = unique("key-src")
    response = session.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}},
        headers=x_api_key(key),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.sources.add(response.json()["id"])

    def audited():  # the handler answers before its transaction commits: wait for the record
        with session_scope(carnet_stack.settings.db_url) as session:
            query = select(AuditEvent).where(AuditEvent.target == f"source/{name}")
            event = session.scalar(query.where(AuditEvent.action == "source.create"))
            return event and (event.actor, event.details["via"])

    assert wait_until(audited, 10, what="the audit record") == (f"api key {data['name']}", "api_key")
    assert (
        session.get(api_url(carnet_stack, "me"), headers=x_api_key(key), timeout=30).json()["via"]
        == "api_key"
    )
    assert_json_error(session.get(api_url(carnet_stack, "me"), headers=x_api_key("nope"), timeout=30), 401)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api-Key": "garbage"},
        {"X-Api-Key": ""},
        {"X-Api-Key": "cak_000000000000_not-a-real-secret"},
        {"Authorization": "Bearer cak_000000000000_not-a-real-secret"},
        {"Authorization": "Bearer cak_garbage"},
    ],
    ids=["x-api-key garbage", "x-api-key empty", "x-api-key unknown", "bearer unknown", "bearer malformed"],
)
def test_bad_keys_are_a_json_401(carnet_stack, headers):
    body = assert_json_error(call(carnet_stack, headers, "me"), 401)
    assert "secret" not in body["message"]


def test_last_used_at_is_updated_at_most_once_a_minute(carnet_stack, admin, new_key):
    data = new_key("viewer")
    assert data["last_used_at"] is None
    call(carnet_stack, bearer(data["key"]), "me")
    first = listed(carnet_stack, admin)[data["id"]]["last_used_at"]
    assert first is not None
    time.sleep(1.1)
    call(carnet_stack, bearer(data["key"]), "me")
    assert listed(carnet_stack, admin)[data["id"]]["last_used_at"] == first


# -- who manages keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("email", NON_ADMINS)
def test_non_admins_get_403_on_key_routes(carnet_stack, hub_token, new_key, admin, email):
    data = new_key("viewer")
    headers = auth(hub_token(email))
    for method, path, body in (
        ("GET", "keys", None),
        ("POST", "keys", {"name": unique("nope"), "role": "viewer"}),
        ("POST", f"keys/{data['id']}/rotate", None),
        ("DELETE", f"keys/{data['id']}", None),
    ):
        response = call(carnet_stack, headers, path, method, json=body)
        assert_json_error(response, 403)
        assert API_KEY_PREFIX not in response.text
    assert call(carnet_stack, bearer(data["key"]), "me").status_code == 200
    assert listed(carnet_stack, admin)[data["id"]]["status"] == "active"


@pytest.mark.parametrize("how", ["bearer", "x-api-key"])
def test_even_an_admin_key_cannot_manage_keys(carnet_stack, admin, new_key, how):
    data = new_key("admin")
    headers = bearer(data["key"]) if how == "bearer" else x_api_key(data["key"])
    assert call(carnet_stack, headers, "me").json()["role"] == "admin"
    before = listed(carnet_stack, admin)
    name = unique("by-a-key")
    for method, path, body in (
        ("GET", "keys", None),
        ("POST", "keys", {"name": name, "role": "viewer"}),
        ("POST", f"keys/{data['id']}/rotate", None),
        ("DELETE", f"keys/{data['id']}", None),
    ):
        response = call(carnet_stack, headers, path, method, json=body)
        assert_json_error(response, 403)
        assert API_KEY_PREFIX not in response.text
    assert listed(carnet_stack, admin) == before
    assert call(carnet_stack, headers, "me").status_code == 200


# -- rotate, revoke, expire ----------------------------------------------------------------------------------
def test_rotation_kills_the_old_secret_at_once(carnet_stack, admin, new_key):
    data = new_key("analyst")
    old = data["key"]
    assert call(carnet_stack, bearer(old), "me").status_code == 200
    response = call(carnet_stack, admin, f"keys/{data['id']}/rotate", "POST")
    assert response.status_code == 200, response.text
    rotated = response.json()
    new_key.secrets.append(rotated["key"])
    assert rotated["id"] == data["id"] and rotated["key"] != old and rotated["rotated_at"]
    assert rotated["key"].startswith(API_KEY_PREFIX)
    assert_json_error(call(carnet_stack, bearer(old), "me"), 401)
    assert_json_error(call(carnet_stack, x_api_key(old), f"sources/{DEMO_SOURCE}/data"), 401)
    me = call(carnet_stack, x_api_key(rotated["key"]), "me")
    assert me.status_code == 200 and me.json()["role"] == "analyst"
    # Renewal: a rotation may set a new expiry.
    renewed = call(carnet_stack, admin, f"keys/{data['id']}/rotate", "POST", json={"expires_in_days": 30})
    assert renewed.status_code == 200, renewed.text
    new_key.secrets.append(renewed.json()["key"])
    expires = datetime.fromisoformat(renewed.json()["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert_json_error(call(carnet_stack, bearer(rotated["key"]), "me"), 401)
    assert call(carnet_stack, bearer(renewed.json()["key"]), "me").status_code == 200


def test_revocation_is_immediate(carnet_stack, admin, new_key):
    data = new_key("analyst")
    assert call(carnet_stack, bearer(data["key"]), "me").status_code == 200
    response = call(carnet_stack, admin, f"keys/{data['id']}", "DELETE")
    assert response.status_code == 204 and response.text == ""
    assert_json_error(call(carnet_stack, bearer(data["key"]), "me"), 401)
    assert_json_error(call(carnet_stack, x_api_key(data["key"]), "sources"), 401)
    row = listed(carnet_stack, admin)[data["id"]]
    assert row["status"] == "revoked" and row["revoked_at"]
    assert call(carnet_stack, admin, f"keys/{data['id']}", "DELETE").status_code == 204
    assert_json_error(call(carnet_stack, admin, f"keys/{data['id']}/rotate", "POST"), 409)


def test_an_expired_key_is_refused(carnet_stack, admin, new_key):
    expires_at = datetime.now(UTC) + timedelta(seconds=3)
    data = new_key("analyst", expires_at=expires_at.isoformat())
    assert abs(datetime.fromisoformat(data["expires_at"]) - expires_at) < timedelta(seconds=1)
    assert call(carnet_stack, bearer(data["key"]), "me").status_code == 200
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.5)
    assert_json_error(call(carnet_stack, bearer(data["key"]), "me"), 401)
    assert_json_error(call(carnet_stack, x_api_key(data["key"]), "sources"), 401)
    assert listed(carnet_stack, admin)[data["id"]]["status"] == "expired"


# -- the creator's role, state and existence -----------------------------------------------------------------
@pytest.fixture
def temporary_admin(carnet_stack, created):
    """An acme admin made in the database (never signs in), removed after the test."""
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        user = User(email=f"{unique('tmp-admin')}@acme.example", password_hash=None)
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=created.org_id("acme"), role=Role.admin))
        user_id = user.id
    yield user_id
    with session_scope(url) as session:
        session.execute(delete(ApiKey).where(ApiKey.created_by == user_id))
        session.execute(delete(Membership).where(Membership.user_id == user_id))
        session.execute(delete(User).where(User.id == user_id))


def _set_role(stack, user_id, role):
    with session_scope(stack.settings.db_url) as session:
        session.scalar(select(Membership).where(Membership.user_id == user_id)).role = role


def test_the_key_follows_its_creator(carnet_stack, created, temporary_admin):
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        _, key = mint_api_key(
            session,
            org_id=created.org_id("acme"),
            creator_id=temporary_admin,
            name=unique("k"),
            role="studio",
        )
    assert call(carnet_stack, bearer(key), "me").json()["role"] == "studio"
    _set_role(carnet_stack, temporary_admin, Role.viewer)  # the creator's role drops: so does the key's
    assert call(carnet_stack, bearer(key), "me").json()["role"] == "viewer"
    assert_json_error(call(carnet_stack, bearer(key), "sources"), 403)
    _set_role(carnet_stack, temporary_admin, Role.admin)  # raised again: the ceiling still holds
    assert call(carnet_stack, bearer(key), "me").json()["role"] == "studio"
    with session_scope(url) as session:
        session.get(User, temporary_admin).is_active = False
    assert_json_error(call(carnet_stack, bearer(key), "me"), 401)
    with session_scope(url) as session:
        session.get(User, temporary_admin).is_active = True
    assert call(carnet_stack, bearer(key), "me").status_code == 200
    with session_scope(url) as session:
        session.execute(delete(Membership).where(Membership.user_id == temporary_admin))
    assert_json_error(call(carnet_stack, bearer(key), "me"), 401)
    with session_scope(url) as session:
        session.execute(delete(User).where(User.id == temporary_admin))
        assert resolve_api_key(session, key) is None
    assert_json_error(call(carnet_stack, x_api_key(key), "me"), 401)


def test_the_ceiling_may_not_exceed_the_creator(carnet_stack, created):
    with session_scope(carnet_stack.settings.db_url) as session, pytest.raises(PermissionDenied):
        mint_api_key(
            session,
            org_id=created.org_id("acme"),
            creator_id=created.user_id("studio@acme.example"),
            name=unique("too-high"),
            role="admin",
        )
    with session_scope(carnet_stack.settings.db_url) as session, pytest.raises(PermissionDenied):
        # Not a member of globex at all.
        mint_api_key(
            session,
            org_id=created.org_id("globex"),
            creator_id=created.user_id(ADMIN),
            name=unique("elsewhere"),
            role="viewer",
        )


# -- organizations -------------------------------------------------------------------------------------------
def test_an_acme_key_never_reads_globex(carnet_stack, created, new_key):
    key = new_key("admin")["key"]
    globex_app = created.publish_app("globex", title="Globex secret app")
    for headers in (bearer(key), x_api_key(key)):
        theirs = call(carnet_stack, headers, f"apps/{globex_app}")
        unknown = call(carnet_stack, headers, f"apps/{UNKNOWN_ID}")
        assert_json_error(theirs, 404)
        assert theirs.json() == unknown.json()
        assert globex_app not in [a["id"] for a in call(carnet_stack, headers, "apps").json()["apps"]]
        # Naming another org changes nothing: a key belongs to one org.
        elsewhere = {**headers, "X-Carnet-Org": "globex"}
        me = call(carnet_stack, elsewhere, "me")
        assert me.status_code == 200 and me.json()["org"] == "acme"
        assert_json_error(call(carnet_stack, elsewhere, f"apps/{globex_app}"), 404)
        assert_json_error(call(carnet_stack, headers, f"apps/{globex_app}?org=globex"), 404)


def test_another_orgs_key_id_is_unknown(carnet_stack, admin, created):
    with session_scope(carnet_stack.settings.db_url) as session:
        key_row, globex_key = mint_api_key(
            session,
            org_id=created.org_id("globex"),
            creator_id=created.user_id(GLOBEX_VIEWER),
            name=unique("globex"),
            role="viewer",
        )
        created.keys.add(key_row.id)
        globex_id = key_row.id
    assert call(carnet_stack, bearer(globex_key), "me").json() == {
        "email": GLOBEX_VIEWER,
        "org": "globex",
        "role": "viewer",
        "via": "api_key",
    }
    assert globex_id not in listed(carnet_stack, admin)
    for suffix, method in (("", "DELETE"), ("/rotate", "POST")):
        theirs = call(carnet_stack, admin, f"keys/{globex_id}{suffix}", method)
        unknown = call(carnet_stack, admin, f"keys/{UNKNOWN_ID}{suffix}", method)
        not_an_id = call(carnet_stack, admin, f"keys/abc{suffix}", method)
        assert_json_error(theirs, 404)
        assert (
            theirs.json()
            == unknown.json()
            == not_an_id.json()
            == {"status": 404, "message": "No such API key"}
        )
    assert call(carnet_stack, bearer(globex_key), "me").status_code == 200  # untouched


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"name": "", "role": "viewer"}, 400, "name"),
        ({"name": "   ", "role": "viewer"}, 400, "name"),
        ({"name": "x" * 201, "role": "viewer"}, 400, "name"),
        ({"role": "viewer"}, 400, "name"),
        ({"name": 12, "role": "viewer"}, 400, "name"),
        ({"name": "NAME", "role": "owner"}, 400, "role"),
        ({"name": "NAME"}, 400, "role"),
        ({"name": "NAME", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}, 400, "expires_at"),
        ({"name": "NAME", "role": "viewer", "expires_at": "tomorrow"}, 400, "expires_at"),
        ({"name": "NAME", "role": "viewer", "expires_in_days": 0}, 400, "expires_in_days"),
        ({"name": "NAME", "role": "viewer", "expires_in_days": "3"}, 400, "expires_in_days"),
        (
            {"name": "NAME", "role": "viewer", "expires_in_days": 1, "expires_at": "2999-01-01"},
            400,
            "expires_at",
        ),
    ],
    ids=[
        "empty name",
        "blank name",
        "name too long",
        "no name",
        "name not a string",
        "unknown role",
        "no role",
        "expiry in the past",
        "expiry not a date",
        "zero days",
        "days not an integer",
        "both expiries",
    ],
)
def test_invalid_key_requests(carnet_stack, admin, body, status, field):
    name = unique("invalid")
    body = {k: (name if v == "NAME" else v) for k, v in body.items()}
    before = listed(carnet_stack, admin)
    response = call(carnet_stack, admin, "keys", "POST", json=body)
    error = assert_json_error(response, status)
    assert error.get("field") == field, error
    assert "key" not in error
    assert listed(carnet_stack, admin) == before


def test_duplicate_names_conflict(carnet_stack, admin, new_key):
    data = new_key("viewer")
    for name in (data["name"], f"  {data['name']} "):
        response = call(carnet_stack, admin, "keys", "POST", json={"name": name, "role": "analyst"})
        body = assert_json_error(response, 409)
        assert "key" not in body
    assert [k["name"] for k in listed(carnet_stack, admin).values()].count(data["name"]) == 1


def test_expiry_in_days_and_without(carnet_stack, new_key):
    assert new_key("viewer")["expires_at"] is None
    data = new_key("viewer", expires_in_days=7)
    expires = datetime.fromisoformat(data["expires_at"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)


# -- secrets are shown once ----------------------------------------------------------------------------------
def test_secrets_never_appear_in_listings_logs_or_audit(carnet_stack, admin, new_key):
    data = new_key("analyst")
    # A request with the right prefix and a wrong secret, and a few refused management calls.
    prefix = data["key"].split("_")[1]
    wrong = f"{API_KEY_PREFIX}{prefix}_{token_urlsafe(32)}"  # random: no other test's string
    assert_json_error(call(carnet_stack, bearer(wrong), "me"), 401)
    assert_json_error(call(carnet_stack, bearer(data["key"]), "keys"), 403)
    assert_json_error(call(carnet_stack, x_api_key(data["key"]), "keys", "POST", json={"name": ""}), 403)
    assert_json_error(call(carnet_stack, admin, "keys", "POST", json={"name": "", "role": "viewer"}), 400)
    assert new_key.secrets, "the other tests made keys"
    secrets = [*new_key.secrets, wrong]
    listing = call(carnet_stack, admin, "keys").text
    with session_scope(carnet_stack.settings.db_url) as session:
        audit = " ".join(
            f"{e.actor} {e.action} {e.target} {e.details}" for e in session.scalars(select(AuditEvent)).all()
        )
        hashes = session.scalars(select(ApiKey.secret_hash)).all()
        assert "key.create" in audit
    log = carnet_stack.log_path.read_text(errors="replace")
    for text in secrets:
        secret = text.split("_", 2)[2]
        for where, content in (("listing", listing), ("audit", audit), ("log", log)):
            assert secret not in content, where
    for field in ("secret_hash", "hash", "key", "prefix"):
        assert f'"{field}"' not in listing
    assert not any(h in listing for h in hashes)
