"""Organization settings through /api/v1/org on the real stack: every member reads them, admins change them
(audited with from/to), invalid changes are refused whole, other organizations stay out of reach, new jobs
take the org's time zone and API key creation honours api_key_max_days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Membership, Organization, Role, User
from carnet.passwords import hash_password
from tests.api_support import NEVER_CRON, api_url, assert_json_error, auth, unique
from tests.helpers import hub_login, make_hub_token

ADMIN = "admin@acme.example"
MEMBERS = ("viewer@acme.example", "analyst@acme.example", "studio@acme.example", ADMIN)
GLOBEX_VIEWER = "viewer@globex.example"
DEFAULTS = {
    "timezone": "UTC",
    "allow_public_apps": False,
    "embed_origins": "",
    "api_key_max_days": 0,
    "invitation_days": 7,
    "job_output_retention_days": 90,
    "primary_color": "",
    "custom_css": "",
}


@pytest.fixture(scope="module", autouse=True)
def restore_orgs(carnet_stack):
    """Put both orgs' names and settings back as seeded: later modules rely on the defaults."""
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        saved = {o.id: (o.name, dict(o.settings or {})) for o in session.scalars(select(Organization))}
    yield
    with session_scope(url) as session:
        for org_id, (name, settings) in saved.items():
            org = session.get(Organization, org_id)
            org.name, org.settings = name, settings


def org(stack, headers) -> requests.Response:
    return requests.get(api_url(stack, "org"), headers=headers, timeout=30)


def patch(stack, headers, body) -> requests.Response:
    return requests.patch(api_url(stack, "org"), json=body, headers=headers, timeout=30)


def audit_events(stack, slug: str) -> list[AuditEvent]:
    with session_scope(stack.settings.db_url) as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "org.settings.change", AuditEvent.target == f"org/{slug}")
            .order_by(AuditEvent.id)
        ).all()
        session.expunge_all()
        return list(events)


def test_every_member_reads_their_org(carnet_stack, hub_token):
    for email in MEMBERS:
        response = org(carnet_stack, auth(hub_token(email)))
        assert response.status_code == 200, (email, response.text)
        body = response.json()
        assert body["slug"] == "acme" and body["name"] and isinstance(body["id"], int)
        assert body["settings"] == DEFAULTS
    theirs = org(carnet_stack, auth(hub_token(GLOBEX_VIEWER))).json()
    assert theirs["slug"] == "globex" and theirs["settings"] == DEFAULTS
    assert_json_error(requests.get(api_url(carnet_stack, "org"), timeout=30), 401)


def test_admin_changes_settings_audited_with_from_and_to(carnet_stack, admin, hub_token, created):
    before = org(carnet_stack, admin).json()
    changes = {
        "name": "Acme Renamed",
        "timezone": "Europe/Paris",
        "allow_public_apps": True,
        "invitation_days": 14,
    }
    response = patch(carnet_stack, admin, changes)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["name"] == "Acme Renamed" and after["id"] == before["id"] and after["slug"] == "acme"
    assert after["settings"] == {
        **DEFAULTS,
        "timezone": "Europe/Paris",
        "allow_public_apps": True,
        "invitation_days": 14,
    }
    # Members see the change; app sharing reads the stored JSON key itself.
    assert org(carnet_stack, auth(hub_token("viewer@acme.example"))).json() == after
    with session_scope(carnet_stack.settings.db_url) as session:
        stored = session.scalar(select(Organization).where(Organization.slug == "acme"))
        assert stored.name == "Acme Renamed" and stored.settings.get("allow_public_apps", False) is True

    event = audit_events(carnet_stack, "acme")[-1]
    assert event.actor == ADMIN
    assert event.details == {
        "name": {"from": before["name"], "to": "Acme Renamed"},
        "timezone": {"from": "UTC", "to": "Europe/Paris"},
        "allow_public_apps": {"from": False, "to": True},
        "invitation_days": {"from": 7, "to": 14},
        "via": "hub",
    }
    # The same values again change nothing, so nothing more is recorded.
    count = len(audit_events(carnet_stack, "acme"))
    assert patch(carnet_stack, admin, changes).json() == after
    assert len(audit_events(carnet_stack, "acme")) == count

    # A new job without a time zone takes the org's; one naming its own keeps it.
    jobs = []
    for extra in ({}, {"timezone": "America/New_York"}):
        job = requests.post(
            api_url(carnet_stack, "jobs"),
            json={
                "name": unique("tz job"),
                "app_id": carnet_stack.app_id,
                "cron": NEVER_CRON,
                "recipients": ["tz@acme.example"],
                **extra,
            },
            headers=admin,
            timeout=30,
        )
        assert job.status_code == 201, job.text
        created.jobs.add(job.json()["id"])
        jobs.append(job.json()["timezone"])
    assert jobs == ["Europe/Paris", "America/New_York"]

    restored = patch(carnet_stack, admin, {"name": before["name"], **DEFAULTS})
    assert restored.json() == before


@pytest.mark.parametrize(
    "body,field",
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": 3}, "timezone"),
        ({"api_key_max_days": 3651}, "api_key_max_days"),
        ({"api_key_max_days": -1}, "api_key_max_days"),
        ({"api_key_max_days": "30"}, "api_key_max_days"),
        ({"api_key_max_days": 1.5}, "api_key_max_days"),
        ({"invitation_days": 0}, "invitation_days"),
        ({"invitation_days": 91}, "invitation_days"),
        ({"invitation_days": True}, "invitation_days"),
        ({"job_output_retention_days": 0}, "job_output_retention_days"),
        ({"job_output_retention_days": 3651}, "job_output_retention_days"),
        ({"allow_public_apps": "yes"}, "allow_public_apps"),
        ({"allow_public_apps": 1}, "allow_public_apps"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "Acme\u202egnp.exe"}, "name"),
        ({"name": None}, "name"),
        ({"colour": "red"}, "colour"),
        ({"id": 2}, "id"),
        ({"slug": "globex"}, "slug"),
        ({"org_id": 2}, "org_id"),
        # A valid change next to an invalid one: neither is applied.
        ({"timezone": "Europe/Paris", "allow_public_apps": True, "invitation_days": 0}, "invitation_days"),
        ({"name": "Half applied", "slug": "acme2"}, "slug"),
    ],
)
def test_invalid_changes_are_refused_whole(carnet_stack, admin, body, field):
    before = org(carnet_stack, admin).json()
    events = len(audit_events(carnet_stack, "acme"))
    error = assert_json_error(patch(carnet_stack, admin, body), 400)
    assert error["field"] == field and field in error["message"]
    assert org(carnet_stack, admin).json() == before
    assert len(audit_events(carnet_stack, "acme")) == events


def test_a_body_that_is_not_an_object_is_refused(carnet_stack, admin):
    for raw in ("[1]", "not json", '"UTC"'):
        response = requests.patch(
            api_url(carnet_stack, "org"),
            data=raw,
            headers={**admin, "Content-Type": "application/json"},
            timeout=30,
        )
        assert_json_error(response, 400)


def test_non_admins_cannot_change_settings(carnet_stack, hub_token):
    for email in MEMBERS[:3]:
        headers = auth(hub_token(email))
        assert_json_error(patch(carnet_stack, headers, {"allow_public_apps": True}), 403)
        assert org(carnet_stack, headers).json()["settings"]["allow_public_apps"] is False


@pytest.fixture
def globex_admin(carnet_stack, created):
    email, password = f"{unique('org-settings-admin')}@globex.example", "globex admin password, org tests"
    with session_scope(carnet_stack.settings.db_url) as session:
        user = User(email=email, display_name="Globex admin", password_hash=hash_password(password))
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=created.org_id("globex"), role=Role.admin))
        user_id = user.id
    try:
        yield auth(make_hub_token(carnet_stack.url, hub_login(carnet_stack.url, email, password), email))
    finally:
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(User).where(User.id == user_id))


def test_another_orgs_admin_changes_only_their_own(carnet_stack, admin, globex_admin):
    acme = org(carnet_stack, admin).json()
    response = patch(carnet_stack, globex_admin, {"timezone": "Asia/Tokyo", "name": "Globex Tokyo"})
    assert response.status_code == 200, response.text
    assert response.json()["slug"] == "globex" and response.json()["settings"]["timezone"] == "Asia/Tokyo"
    assert org(carnet_stack, admin).json() == acme
    # Naming acme does not reach it: they are not a member there.
    headers = {**globex_admin, "X-Carnet-Org": "acme"}
    assert_json_error(org(carnet_stack, headers), 404)
    assert_json_error(patch(carnet_stack, headers, {"name": "Owned"}), 404)
    assert org(carnet_stack, admin).json() == acme
    assert audit_events(carnet_stack, "globex")[-1].details["timezone"] == {"from": "UTC", "to": "Asia/Tokyo"}
    assert patch(carnet_stack, globex_admin, {"timezone": "UTC", "name": "Globex"}).status_code == 200


def new_key(stack, admin, **expiry) -> requests.Response:
    return requests.post(
        api_url(stack, "keys"),
        json={"name": unique("capped"), "role": "viewer", **expiry},
        headers=admin,
        timeout=30,
    )


def test_api_key_max_days_caps_new_keys(carnet_stack, admin, created):
    uncapped = new_key(carnet_stack, admin)  # made before the cap: it never expires
    assert uncapped.status_code == 201 and uncapped.json()["expires_at"] is None
    created.keys.add(uncapped.json()["id"])
    assert patch(carnet_stack, admin, {"api_key_max_days": 30}).status_code == 200
    keys_url = api_url(carnet_stack, "keys")
    count = len(requests.get(keys_url, headers=admin, timeout=30).json()["keys"])
    try:
        later = (datetime.now(UTC) + timedelta(days=45)).isoformat()
        for expiry, field in (
            ({}, "expires_at"),
            ({"expires_in_days": 31}, "expires_in_days"),
            ({"expires_at": later}, "expires_at"),
        ):
            error = assert_json_error(new_key(carnet_stack, admin, **expiry), 400)
            assert error["field"] == field and "30 days" in error["message"], error
        assert len(requests.get(keys_url, headers=admin, timeout=30).json()["keys"]) == count

        within = new_key(carnet_stack, admin, expires_in_days=30)
        assert within.status_code == 201, within.text
        created.keys.add(within.json()["id"])
        at = new_key(carnet_stack, admin, expires_at=(datetime.now(UTC) + timedelta(days=29)).isoformat())
        assert at.status_code == 201, at.text
        created.keys.add(at.json()["id"])

        # Rotating gives a new secret: it must honour the cap too, so the old never-expiring key needs one.
        rotate = api_url(carnet_stack, f"keys/{uncapped.json()['id']}/rotate")
        assert (
            assert_json_error(requests.post(rotate, headers=admin, timeout=30), 400)["field"] == "expires_at"
        )
        renewed = requests.post(rotate, json={"expires_in_days": 10}, headers=admin, timeout=30)
        assert renewed.status_code == 200 and renewed.json()["expires_at"] is not None
    finally:
        assert patch(carnet_stack, admin, {"api_key_max_days": 0}).status_code == 200
    free = new_key(carnet_stack, admin)
    assert free.status_code == 201 and free.json()["expires_at"] is None
    created.keys.add(free.json()["id"])
