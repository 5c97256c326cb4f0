"""The audit log against the real stack: mutating API calls and sign-ins are recorded (actor, target,
address), repeated sign-in failures lock the account for a while, and admins read their own organization's
log through /audit and its CSV / JSON-lines export.

Sign-in tests use people made for this module straight in the database, so the demo accounts are never
locked for the rest of the suite (the stack runs with CARNET_LOCKOUT_SECONDS=3, threshold 5).
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Membership, Organization, Role, User
from carnet.demo import DEMO_TABLE
from carnet.passwords import hash_password
from tests.api_support import NEVER_CRON, api_url, assert_json_error, auth, tiny_notebook, unique
from tests.helpers import hub_login, wait_until

ADMIN = "admin@acme.example"
STUDIO = "studio@acme.example"
ANALYST = "analyst@acme.example"
VIEWER = "viewer@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"
LOCKOUT_THRESHOLD = 5  # the authenticator's default; the stack does not change it
LOGIN_FAILED = "Invalid username or password"


# -- fixtures and helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def people(carnet_stack):
    """``people(role)`` -> (email, password) of a fresh acme member made in the database for this module."""
    url = carnet_stack.settings.db_url
    made: list[str] = []

    def make(role: Role = Role.viewer) -> tuple[str, str]:
        email, password = f"{unique('audit')}@acme.example", unique("pw")
        with session_scope(url) as session:
            org_id = session.scalar(select(Organization.id).where(Organization.slug == "acme"))
            user = User(email=email, display_name="Audit test", password_hash=hash_password(password))
            session.add(user)
            session.flush()
            session.add(Membership(user_id=user.id, org_id=org_id, role=role))
        made.append(email)
        return email, password

    yield make
    with session_scope(url) as session:
        for user in session.scalars(select(User).where(User.email.in_(made))).all():
            session.delete(user)


def attempt_login(stack, email: str, password: str) -> requests.Response:
    """One sign-in through the Hub's form; 302 on success, the form again (403) on failure."""
    session = requests.Session()
    session.get(f"{stack.url}/hub/login", timeout=10)
    return session.post(
        f"{stack.url}/hub/login",
        data={"username": email, "password": password, "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
        timeout=30,
        allow_redirects=False,
    )


def refused(response: requests.Response) -> bool:
    return response.status_code != 302 and LOGIN_FAILED in response.text


def audit_events(stack, token: str, **filters) -> list[dict]:
    response = requests.get(api_url(stack, "audit"), params=filters, headers=auth(token), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def user_row(stack, email: str) -> User:
    with session_scope(stack.settings.db_url) as session:
        return session.scalar(select(User).where(User.email == email))


def only(events: list[dict], **match) -> dict:
    found = [e for e in events if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, events)
    return found[0]


# -- mutating API calls ------------------------------------------------------------------------------------
def test_creating_a_source_is_recorded(carnet_stack, hub_token, created):
    name = unique("audit-src")
    response = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}},
        headers=auth(hub_token(STUDIO)),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.sources.add(response.json()["id"])
    events = audit_events(carnet_stack, hub_token(ADMIN), action="source.create", actor=STUDIO)
    event = only(events, target=f"source/{name}")
    assert event["action"] == "source.create" and event["actor"] == STUDIO
    assert event["actor_id"] == created.user_id(STUDIO)
    assert event["org_id"] == created.org_id("acme")
    assert event["remote_addr"].strip()
    assert event["details"] == {"source_id": response.json()["id"], "kind": "warehouse_table", "via": "hub"}
    assert "options" not in event["details"]


def test_publishing_and_jobs_are_recorded(carnet_stack, hub_token, created):
    token, admin = hub_token(ANALYST), hub_token(ADMIN)
    slug = unique("audit-app")
    app = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": slug, "title": "Audit app", "notebook": tiny_notebook()},
        headers=auth(token),
        timeout=30,
    )
    assert app.status_code == 201, app.text
    app_id = app.json()["id"]
    created.apps.add(app_id)

    def new_job() -> dict:
        body = {
            "name": unique("audit job"),
            "app_id": app_id,
            "cron": NEVER_CRON,
            "recipients": ["a@x.example"],
        }
        response = requests.post(api_url(carnet_stack, "jobs"), json=body, headers=auth(token), timeout=30)
        assert response.status_code == 201, response.text
        created.jobs.add(response.json()["id"])
        return response.json()

    ran, deleted = new_job(), new_job()
    run = requests.post(api_url(carnet_stack, f"jobs/{ran['id']}/runs"), headers=auth(token), timeout=30)
    assert run.status_code == 202, run.text
    gone = requests.delete(api_url(carnet_stack, f"jobs/{deleted['id']}"), headers=auth(token), timeout=30)
    assert gone.status_code == 204

    events = audit_events(carnet_stack, admin, actor=ANALYST, limit=50)
    publish = only(events, action="app.publish", target=f"app/{app_id}")
    assert publish["details"] == {"slug": slug, "version": 1, "tags": [], "via": "hub"}
    for job in (ran, deleted):
        created_event = only(events, action="job.create", target=f"job/{job['id']}")
        assert created_event["details"]["name"] == job["name"]
        assert created_event["details"]["app_id"] == app_id
    run_event = only(events, action="job.run", target=f"job/{ran['id']}")
    assert run_event["details"]["run_id"] == run.json()["id"]
    delete_event = only(events, action="job.delete", target=f"job/{deleted['id']}")
    assert delete_event["details"]["name"] == deleted["name"]
    for event in events[:5]:
        assert event["actor"] == ANALYST and event["remote_addr"].strip()
        assert event["org_id"] == created.org_id("acme")
    # Newest first.
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    assert events[0]["action"] == "job.delete"


def test_refused_calls_are_not_recorded(carnet_stack, hub_token):
    admin = hub_token(ADMIN)
    before = audit_events(carnet_stack, admin, action="source.create", limit=1)
    name = unique("refused-src")
    response = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}},
        headers=auth(hub_token(ANALYST)),
        timeout=30,
    )
    assert_json_error(response, 403)
    assert audit_events(carnet_stack, admin, action="source.create", limit=1) == before


# -- sign-in -----------------------------------------------------------------------------------------------
def test_failed_and_successful_sign_ins_are_recorded(carnet_stack, hub_token, people, created):
    email, password = people()
    assert refused(attempt_login(carnet_stack, email, password + "-wrong"))
    assert user_row(carnet_stack, email).failed_logins == 1
    hub_login(carnet_stack.url, email, password)
    assert user_row(carnet_stack, email).failed_logins == 0

    events = audit_events(carnet_stack, hub_token(ADMIN), action="login.", actor=email)
    assert [e["action"] for e in events] == ["login.success", "login.failure"]
    success, failure = events
    assert failure["details"]["reason"] == "wrong password"
    for event in events:
        assert event["actor"] == email and event["actor_id"] == created.user_id(email)
        assert event["org_id"] == created.org_id("acme")
        assert event["remote_addr"].strip()
        assert password not in json.dumps(event)


def test_unknown_emails_are_refused_like_known_ones(carnet_stack, people):
    email, password = people()
    unknown = f"{unique('nobody')}@acme.example"

    def timed(login_email: str) -> tuple[float, requests.Response]:
        start = time.perf_counter()
        response = attempt_login(carnet_stack, login_email, "not the password")
        return time.perf_counter() - start, response

    # Interleaved, and compared by their fastest run: load on the machine only ever adds time.
    runs = [(timed(email), timed(unknown)) for _ in range(4)]
    known_runs, unknown_runs = [k for k, _ in runs], [u for _, u in runs]
    for _, response in known_runs + unknown_runs:
        assert refused(response)
    assert {r.status_code for _, r in known_runs} == {r.status_code for _, r in unknown_runs}
    # The same bcrypt work is done for unknown emails: not markedly faster (loose, to stay stable).
    assert min(t for t, _ in unknown_runs) > 0.5 * min(t for t, _ in known_runs)
    with session_scope(carnet_stack.settings.db_url) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.actor == unknown)).all()
        assert [(e.action, e.org_id, e.actor_id) for e in events] == [("login.failure", None, None)] * 4
        assert all(e.remote_addr for e in events)


def test_repeated_failures_lock_the_account_for_a_while(carnet_stack, hub_token, people):
    email, password = people()
    for _ in range(LOCKOUT_THRESHOLD):
        assert refused(attempt_login(carnet_stack, email, "wrong password"))
    row = user_row(carnet_stack, email)
    assert row.failed_logins == LOCKOUT_THRESHOLD
    assert row.locked_until is not None and row.locked_until > datetime.now(UTC)
    # Locked: even the right password is refused, exactly like a wrong one.
    locked = attempt_login(carnet_stack, email, password)
    assert refused(locked)
    events = audit_events(carnet_stack, hub_token(ADMIN), action="login.", actor=email)
    assert [e["action"] for e in events] == ["login.locked"] + ["login.failure"] * LOCKOUT_THRESHOLD
    assert events[1]["details"]["locked_seconds"] == 3
    assert "locked_seconds" not in events[2]["details"]

    # After the delay the right password works again, and the count starts over.
    wait_until(lambda: datetime.now(UTC) > row.locked_until + timedelta(seconds=0.2), 10, what="the lock")
    hub_login(carnet_stack.url, email, password)
    row = user_row(carnet_stack, email)
    assert row.failed_logins == 0 and row.locked_until is None
    assert audit_events(carnet_stack, hub_token(ADMIN), actor=email, limit=1)[0]["action"] == "login.success"


def test_the_lock_grows_with_further_failures(carnet_stack, people):
    email, password = people()
    for _ in range(LOCKOUT_THRESHOLD):
        attempt_login(carnet_stack, email, "wrong password")
    first = user_row(carnet_stack, email).locked_until
    wait_until(lambda: datetime.now(UTC) > first + timedelta(seconds=0.2), 10, what="the first lock")
    assert refused(attempt_login(carnet_stack, email, "wrong again"))
    row = user_row(carnet_stack, email)
    assert row.failed_logins == LOCKOUT_THRESHOLD + 1
    assert row.locked_until - datetime.now(UTC) > timedelta(seconds=4)  # 6 s: doubled
    assert refused(attempt_login(carnet_stack, email, password))


# -- reading the log ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("email", [VIEWER, ANALYST, STUDIO])
@pytest.mark.parametrize("path", ["audit", "audit/export", "audit/export?format=jsonl"])
def test_only_admins_read_the_log(carnet_stack, hub_token, email, path):
    response = requests.get(api_url(carnet_stack, path), headers=auth(hub_token(email)), timeout=30)
    assert_json_error(response, 403)


def test_anonymous_gets_401(carnet_stack):
    for path in ("audit", "audit/export"):
        assert_json_error(requests.get(api_url(carnet_stack, path), timeout=30), 401)


def test_an_acme_admin_never_sees_globex_events(carnet_stack, hub_token, login, created):
    hub_token(GLOBEX_VIEWER)  # signs the globex viewer in: a login.success in globex
    globex = created.org_id("globex")
    with session_scope(carnet_stack.settings.db_url) as session:
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.org_id == globex)) is not None
    admin = hub_token(ADMIN)
    assert audit_events(carnet_stack, admin, actor=GLOBEX_VIEWER) == []
    listed = audit_events(carnet_stack, admin, limit=1000)
    assert listed and {e["org_id"] for e in listed} == {created.org_id("acme")}
    export = requests.get(api_url(carnet_stack, "audit/export?format=jsonl"), headers=auth(admin), timeout=30)
    assert export.status_code == 200
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert rows and {r["org_id"] for r in rows} == {created.org_id("acme")}
    assert GLOBEX_VIEWER not in export.text


def test_filters(carnet_stack, hub_token, people):
    admin = hub_token(ADMIN)
    email, password = people()
    hub_login(carnet_stack.url, email, password)
    logins = audit_events(carnet_stack, admin, action="login.", limit=1000)
    assert logins and all(e["action"].startswith("login.") for e in logins)
    # "_" and "%" are literal in the prefix, not wildcards.
    assert audit_events(carnet_stack, admin, action="login_") == []
    assert audit_events(carnet_stack, admin, action="%") == []
    mine = audit_events(carnet_stack, admin, actor=email.upper())
    assert [e["action"] for e in mine] == ["login.success"]
    at = datetime.fromisoformat(mine[0]["created_at"])
    window = {"actor": email}
    assert audit_events(carnet_stack, admin, **window, since=(at - timedelta(seconds=1)).isoformat()) == mine
    assert audit_events(carnet_stack, admin, **window, since=(at + timedelta(seconds=1)).isoformat()) == []
    assert audit_events(carnet_stack, admin, **window, until=(at + timedelta(seconds=1)).isoformat()) == mine
    assert audit_events(carnet_stack, admin, **window, until=(at - timedelta(seconds=1)).isoformat()) == []
    naive_utc = (at - timedelta(seconds=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert audit_events(carnet_stack, admin, **window, since=naive_utc) == mine
    assert audit_events(carnet_stack, admin, since=at.date().isoformat(), actor=email) == mine
    # Paging.
    page = audit_events(carnet_stack, admin, limit=3)
    assert len(page) == 3
    assert audit_events(carnet_stack, admin, limit=2, offset=1) == page[1:3]


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2024-13-45",
        "since=2024-01-01T25:00",
        "limit=abc",
        "limit=0",
        "limit=-1",
        "limit=100000",
        "offset=-1",
        "offset=x",
    ],
)
@pytest.mark.parametrize("path", ["audit", "audit/export"])
def test_bad_filters_are_a_400(carnet_stack, hub_token, path, query):
    response = requests.get(
        api_url(carnet_stack, f"{path}?{query}"), headers=auth(hub_token(ADMIN)), timeout=30
    )
    body = assert_json_error(response, 400)
    assert body.get("field") in ("since", "until", "limit", "offset")


def test_bad_export_format_is_a_400(carnet_stack, hub_token):
    response = requests.get(
        api_url(carnet_stack, "audit/export?format=xml"), headers=auth(hub_token(ADMIN)), timeout=30
    )
    assert assert_json_error(response, 400)["field"] == "format"


def test_exports_match_the_listing(carnet_stack, hub_token, people):
    admin = hub_token(ADMIN)
    email, password = people()
    since = datetime.now(UTC) - timedelta(seconds=5)
    hub_login(carnet_stack.url, email, password)
    # A fixed window, so that events written meanwhile (other sign-ins) change neither answer; it starts
    # just before this test (the whole suite writes more events than one listing page holds).
    filters = {"since": since.isoformat(), "until": datetime.now(UTC).isoformat()}
    listed = audit_events(carnet_stack, admin, limit=1000, **filters)
    assert len(listed) < 1000 and any(e["actor"] == email for e in listed)

    response = requests.get(
        api_url(carnet_stack, "audit/export"),
        params={"format": "csv", **filters},
        headers=auth(admin),
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0].keys()) == [
        "id",
        "created_at",
        "action",
        "actor",
        "actor_id",
        "target",
        "remote_addr",
        "details",
    ]
    as_csv = [
        {
            "id": str(e["id"]),
            "created_at": e["created_at"],
            "action": e["action"],
            "actor": e["actor"],
            "actor_id": "" if e["actor_id"] is None else str(e["actor_id"]),
            "target": e["target"],
            "remote_addr": e["remote_addr"],
            "details": json.dumps(e["details"], sort_keys=True),
        }
        for e in listed
    ]
    assert rows == as_csv

    jsonl = requests.get(
        api_url(carnet_stack, "audit/export"),
        params={"format": "jsonl", **filters},
        headers=auth(admin),
        timeout=30,
    )
    assert jsonl.status_code == 200
    assert [json.loads(line) for line in jsonl.text.splitlines()] == listed

    limited = requests.get(
        api_url(carnet_stack, "audit/export"),
        params={"format": "jsonl", "limit": 2, "offset": 1, **filters},
        headers=auth(admin),
        timeout=30,
    )
    assert [json.loads(line) for line in limited.text.splitlines()] == listed[1:3]


def test_csv_cells_that_look_like_formulas_are_neutralized():
    from carnet.service.api.audit import csv_cell

    assert csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert csv_cell("@SUM(1)") == "'@SUM(1)"
    assert csv_cell("alice@acme.example") == "alice@acme.example"
    assert csv_cell(None) == ""


def test_events_of_deleted_people_keep_their_actor(carnet_stack, hub_token, people):
    email, password = people()
    hub_login(carnet_stack.url, email, password)
    with session_scope(carnet_stack.settings.db_url) as session:
        session.execute(delete(User).where(User.email == email))
    events = audit_events(carnet_stack, hub_token(ADMIN), actor=email)
    assert [(e["action"], e["actor_id"]) for e in events] == [("login.success", None)]
