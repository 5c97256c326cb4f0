"""Sharing apps with people and viewer groups, public apps, and unpublishing, on the real stack.

What is checked: a restricted app is listed, shown in the gallery and opened in the Viewer only by the people
it is shared with (directly or through a viewer group), its publisher and admins; everyone else gets exactly
the answer of an unknown app, and cannot schedule it. Analysts share, only studio/admin make an app public
and only when the organization allows it. People and groups of another organization are refused like unknown
ones, and a refused change changes nothing. Unpublishing removes the app and its snapshot files, and is
refused while jobs use the app unless forced.
"""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import delete

from carnet.db import session_scope
from carnet.db.models import App, Membership, Organization, Role, User, ViewerGroup
from carnet.groups import name_key
from carnet.passwords import hash_password
from tests.api_support import (
    NEVER_CRON,
    UNKNOWN_ID,
    api_url,
    assert_json_error,
    auth,
    tiny_notebook,
    unique,
)
from tests.helpers import hub_login, make_hub_token

VIEWER = "viewer@acme.example"
ANALYST = "analyst@acme.example"
STUDIO = "studio@acme.example"
ADMIN = "admin@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"
OTHER_VIEWER = "sharing-other-viewer@acme.example"  # made by the ``other_viewer`` fixture
OTHER_PASSWORD = "another acme viewer's test password"  # noqa: S105 - a test account's password
NO_SUCH_APP = {"status": 404, "message": "No such app"}


# -- fixtures and helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_viewer(carnet_stack):
    """A second acme viewer (made in the database with a known password): signed-in session and Hub token."""
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        org_id = session.query(Organization.id).filter_by(slug="acme").scalar()
        user = User(email=OTHER_VIEWER, password_hash=hash_password(OTHER_PASSWORD))
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=org_id, role=Role.viewer))
        user_id = user.id
    try:
        browser = hub_login(carnet_stack.url, OTHER_VIEWER, OTHER_PASSWORD)
        yield {
            "id": user_id,
            "browser": browser,
            "token": make_hub_token(carnet_stack.url, browser, OTHER_VIEWER),
        }
    finally:
        with session_scope(url) as session:
            session.execute(delete(User).where(User.id == user_id))


@pytest.fixture(scope="module")
def people(hub_token):
    return {email: auth(hub_token(email)) for email in (VIEWER, ANALYST, STUDIO, ADMIN, GLOBEX_VIEWER)}


def publish(stack, headers, created, slug: str | None = None) -> dict:
    response = requests.post(
        api_url(stack, "apps"),
        json={"slug": slug or unique("share"), "title": unique("Shared app"), "notebook": tiny_notebook()},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.apps.add(response.json()["id"])
    return response.json()


def share(stack, headers, app_id, body) -> requests.Response:
    return requests.put(api_url(stack, f"apps/{app_id}/sharing"), json=body, headers=headers, timeout=30)


def sharing(stack, headers, app_id) -> dict:
    response = requests.get(api_url(stack, f"apps/{app_id}/sharing"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def listed(stack, headers) -> list[int]:
    return [a["id"] for a in requests.get(api_url(stack, "apps"), headers=headers, timeout=30).json()["apps"]]


def open_in_viewer(stack, headers, app_id) -> requests.Response:
    return requests.get(f"{stack.url}/services/carnet-viewer/apps/{app_id}", headers=headers, timeout=120)


def gallery(stack, browser) -> str:
    page = browser.get(f"{stack.url}/services/carnet/viewer/", timeout=30)
    assert page.status_code == 200
    return page.text


def audit(stack, admin, action: str, app_id: int) -> list[dict]:
    events = requests.get(api_url(stack, f"audit?action={action}"), headers=admin, timeout=30).json()[
        "events"
    ]
    return [e for e in events if e["action"] == action and e["target"] == f"app/{app_id}"]


def make_group(stack, admin, members: list[str]) -> dict:
    group = requests.post(
        api_url(stack, "groups"), json={"name": unique("sharing")}, headers=admin, timeout=30
    )
    assert group.status_code == 201, group.text
    put = requests.put(
        api_url(stack, f"groups/{group.json()['id']}/members"),
        json={"users": members},
        headers=admin,
        timeout=30,
    )
    assert put.status_code == 200, put.text
    return group.json()


def create_job(stack, headers, app_id) -> requests.Response:
    return requests.post(
        api_url(stack, "jobs"),
        json={
            "name": unique("sharing job"),
            "app_id": app_id,
            "cron": NEVER_CRON,
            "recipients": ["x@acme.example"],
        },
        headers=headers,
        timeout=30,
    )


# -- who may open a restricted app ------------------------------------------------------------------------
def test_an_app_restricted_to_a_group_is_only_for_its_members(
    carnet_stack, people, other_viewer, login, created
):
    stack, admin = carnet_stack, people[ADMIN]
    app = publish(stack, people[ANALYST], created)
    group = make_group(stack, admin, [VIEWER])
    answer = share(stack, people[ANALYST], app["id"], {"visibility": "restricted", "groups": [group["id"]]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "app_id": app["id"],
        "visibility": "restricted",
        "users": [],
        "groups": [{"id": group["id"], "name": group["name"]}],
    }

    # The group's viewer: listed, in the gallery, readable, and rendered by the Viewer.
    assert app["id"] in listed(stack, people[VIEWER])
    assert f"/apps/{app['id']}" in gallery(stack, login(VIEWER))
    assert (
        requests.get(api_url(stack, f"apps/{app['id']}"), headers=people[VIEWER], timeout=30).json()[
            "visibility"
        ]
        == "restricted"
    )
    assert open_in_viewer(stack, people[VIEWER], app["id"]).status_code == 200

    # Another viewer of the same org: the app does not exist for them, exactly like an unknown id.
    other = auth(other_viewer["token"])
    assert app["id"] not in listed(stack, other)
    assert f"/apps/{app['id']}" not in gallery(stack, other_viewer["browser"])
    theirs = requests.get(api_url(stack, f"apps/{app['id']}"), headers=other, timeout=30)
    unknown = requests.get(api_url(stack, f"apps/{UNKNOWN_ID}"), headers=other, timeout=30)
    assert_json_error(theirs, 404)
    assert theirs.json() == unknown.json() == NO_SUCH_APP
    refused, missing = open_in_viewer(stack, other, app["id"]), open_in_viewer(stack, other, UNKNOWN_ID)
    assert refused.status_code == missing.status_code == 404
    assert refused.text == missing.text

    # Authors who are neither the publisher nor admins are not let in either, and cannot schedule it
    # nor take it over by publishing a new version under its slug; the publisher and admins always can.
    assert app["id"] not in listed(stack, people[STUDIO])
    assert create_job(stack, people[STUDIO], app["id"]).json() == NO_SUCH_APP
    takeover = requests.post(
        api_url(stack, "apps"),
        json={"slug": app["slug"], "title": "Mine now", "notebook": tiny_notebook("taken")},
        headers=people[STUDIO],
        timeout=30,
    )
    assert_json_error(takeover, 409)
    assert requests.get(api_url(stack, f"apps/{app['id']}"), headers=admin, timeout=30).json()["version"] == 1
    assert app["id"] in listed(stack, people[ANALYST]) and app["id"] in listed(stack, admin)
    job = create_job(stack, people[ANALYST], app["id"])
    assert job.status_code == 201, job.text
    created.jobs.add(job.json()["id"])

    # Audited with the lists.
    (event,) = audit(stack, admin, "app.share", app["id"])
    assert event["actor"] == ANALYST
    assert event["details"]["visibility"] == {"from": "org", "to": "restricted"}
    assert event["details"]["groups"] == [{"id": group["id"], "name": group["name"]}]
    requests.delete(api_url(stack, f"groups/{group['id']}"), headers=admin, timeout=30)


def test_an_analyst_shares_with_one_person_by_email_or_id(carnet_stack, people, other_viewer, created):
    stack = carnet_stack
    app = publish(stack, people[ANALYST], created)
    other = auth(other_viewer["token"])
    body = {"visibility": "restricted", "users": [OTHER_VIEWER, other_viewer["id"], OTHER_VIEWER.upper()]}
    answer = share(stack, people[ANALYST], app["id"], body)
    assert answer.status_code == 200, answer.text
    # The same person three ways is one share.
    assert answer.json()["users"] == [{"id": other_viewer["id"], "email": OTHER_VIEWER}]
    assert app["id"] in listed(stack, other)
    assert app["id"] not in listed(stack, people[VIEWER])
    (event,) = audit(stack, people[ADMIN], "app.share", app["id"])
    assert event["details"]["users"] == [OTHER_VIEWER]

    # Back to the whole organization: everyone sees it again.
    assert share(stack, people[ANALYST], app["id"], {"visibility": "org"}).status_code == 200
    assert app["id"] in listed(stack, people[VIEWER])
    assert sharing(stack, people[STUDIO], app["id"])["users"] == []


# -- public apps -------------------------------------------------------------------------------------------
@pytest.fixture
def acme_settings(carnet_stack):
    """Set acme's organization settings directly (their API belongs to another module); restored after."""
    url = carnet_stack.settings.db_url

    def set_settings(values: dict) -> None:
        with session_scope(url) as session:
            org = session.query(Organization).filter_by(slug="acme").one()
            org.settings = {**(org.settings or {}), **values}

    with session_scope(url) as session:
        saved = dict(session.query(Organization).filter_by(slug="acme").one().settings or {})
    yield set_settings
    with session_scope(url) as session:
        session.query(Organization).filter_by(slug="acme").one().settings = saved


def test_public_needs_studio_and_the_organization_setting(carnet_stack, people, created, acme_settings):
    stack, admin = carnet_stack, people[ADMIN]
    app = publish(stack, people[ANALYST], created)
    public = {"visibility": "public"}

    acme_settings({"allow_public_apps": True})
    by_analyst = assert_json_error(share(stack, people[ANALYST], app["id"], public), 403)
    assert "studio" in by_analyst["message"]

    acme_settings({"allow_public_apps": False})
    refused = assert_json_error(share(stack, people[STUDIO], app["id"], public), 403)
    assert "allow_public_apps" in refused["message"]
    assert sharing(stack, admin, app["id"])["visibility"] == "org"
    assert audit(stack, admin, "app.public", app["id"]) == []

    acme_settings({"allow_public_apps": True})
    answer = share(stack, people[STUDIO], app["id"], public)
    assert answer.status_code == 200, answer.text
    assert answer.json()["visibility"] == "public"
    # The choice is recorded; the public link is made separately (its secret is shown once, there).
    assert answer.json()["public_url"] is None and "public-link" in answer.json()["note"]
    (event,) = audit(stack, admin, "app.public", app["id"])
    assert event["actor"] == STUDIO
    # A public app stays open to every member of the organization.
    assert app["id"] in listed(stack, people[VIEWER])


# -- refused input changes nothing -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def globex_group(carnet_stack):
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        org_id = session.query(Organization.id).filter_by(slug="globex").scalar()
        name = unique("globex sharing")
        group = ViewerGroup(org_id=org_id, name=name, name_key=name_key(name))
        session.add(group)
        session.flush()
        group_id = group.id
        globex_viewer_id = session.query(User.id).filter_by(email=GLOBEX_VIEWER).scalar()
    yield {"group_id": group_id, "viewer_id": globex_viewer_id}
    with session_scope(url) as session:
        session.execute(delete(ViewerGroup).where(ViewerGroup.id == group_id))


def test_other_organizations_people_and_groups_are_refused_like_unknown_ones(
    carnet_stack, people, created, globex_group
):
    stack, analyst = carnet_stack, people[ANALYST]
    app = publish(stack, analyst, created)
    assert (
        share(stack, analyst, app["id"], {"visibility": "restricted", "users": [VIEWER]}).status_code == 200
    )
    before = sharing(stack, analyst, app["id"])

    def refused(field: str, value) -> dict:
        body = {"visibility": "org", "users": [VIEWER], "groups": [], field: [value]}
        return assert_json_error(share(stack, analyst, app["id"], body), 400)

    for field, theirs, unknown in (
        ("users", globex_group["viewer_id"], UNKNOWN_ID),
        ("users", GLOBEX_VIEWER, "nobody-here@acme.example"),
        ("groups", globex_group["group_id"], UNKNOWN_ID),
    ):
        answer, unknown_answer = refused(field, theirs), refused(field, unknown)
        assert str(theirs) in answer["message"] and answer[field] == [theirs]
        # Same words as for an unknown one: nothing tells that it exists elsewhere.
        assert answer["message"].replace(str(theirs), "?") == unknown_answer["message"].replace(
            str(unknown), "?"
        )
        assert sharing(stack, analyst, app["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        {"visibility": "org", "org_id": 2},
        {"visibility": "org", "published_by": 1},
        {"visibility": "org", "app_id": 1},
        {"visibility": "everyone"},
        {"users": []},
        {"visibility": "restricted", "users": "viewer@acme.example"},
        {"visibility": "restricted", "users": [None]},
        {"visibility": "restricted", "groups": ["sales"]},
        {"visibility": "restricted", "users": [VIEWER] * 1001},
    ],
    ids=["org_id", "published_by", "app_id", "bad visibility", "no visibility", "users not a list",
         "null user", "group by name", "too many"],
)  # fmt: skip
def test_bad_sharing_bodies_are_refused_and_change_nothing(carnet_stack, people, created, body):
    stack, analyst = carnet_stack, people[ANALYST]
    app = publish(stack, analyst, created)
    before = sharing(stack, people[ADMIN], app["id"])
    assert_json_error(share(stack, analyst, app["id"], body), 400)
    assert sharing(stack, people[ADMIN], app["id"]) == before
    with session_scope(stack.settings.db_url) as session:
        publisher = session.query(User.id).filter_by(email=ANALYST).scalar()
        row = session.get(App, app["id"])
        assert (row.org_id, row.published_by) == (created.org_id("acme"), publisher)


# -- unpublishing ------------------------------------------------------------------------------------------
def test_unpublish_removes_the_app_and_its_snapshots_and_respects_jobs(carnet_stack, people, created):
    stack, analyst, admin = carnet_stack, people[ANALYST], people[ADMIN]
    app = publish(stack, analyst, created)
    publish(stack, analyst, created, slug=app["slug"])  # a second version: two snapshot files
    folder = stack.settings.published_dir / str(created.org_id("acme")) / str(app["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["v1.ipynb", "v2.ipynb"]
    job = create_job(stack, analyst, app["id"])
    assert job.status_code == 201, job.text
    created.jobs.add(job.json()["id"])

    url = api_url(stack, f"apps/{app['id']}")
    blocked = assert_json_error(requests.delete(url, headers=analyst, timeout=30), 409)
    assert blocked["jobs"] == [{"id": job.json()["id"], "name": job.json()["name"]}]
    assert requests.get(url, headers=admin, timeout=30).status_code == 200 and folder.exists()
    assert_json_error(requests.delete(url + "?force=maybe", headers=analyst, timeout=30), 400)
    # A viewer may not unpublish at all.
    assert_json_error(requests.delete(url + "?force=true", headers=people[VIEWER], timeout=30), 403)

    gone = requests.delete(url + "?force=true", headers=analyst, timeout=30)
    assert gone.status_code == 204, gone.text
    assert requests.get(url, headers=admin, timeout=30).json() == NO_SUCH_APP
    assert not folder.exists()
    assert not created.job_exists(job.json()["id"])
    assert app["id"] not in listed(stack, people[VIEWER])
    assert open_in_viewer(stack, people[VIEWER], app["id"]).status_code == 404
    (event,) = audit(stack, admin, "app.unpublish", app["id"])
    assert event["details"]["slug"] == app["slug"] and event["details"]["versions"] == 2
    assert event["details"]["jobs_deleted"] == [{"id": job.json()["id"], "name": job.json()["name"]}]
    # The slug is free again: publishing it makes a new app, version 1.
    again = publish(stack, analyst, created, slug=app["slug"])
    assert again["id"] != app["id"] and again["version"] == 1


def test_a_restricted_app_cannot_be_unpublished_or_shared_by_someone_it_is_not_shared_with(
    carnet_stack, people, created
):
    stack = carnet_stack
    app = publish(stack, people[ANALYST], created)
    assert share(stack, people[ANALYST], app["id"], {"visibility": "restricted"}).status_code == 200
    url = api_url(stack, f"apps/{app['id']}")
    for method, path, body in (
        ("DELETE", "", None),
        ("GET", "/sharing", None),
        ("PUT", "/sharing", {"visibility": "org"}),
    ):
        answer = requests.request(method, url + path, json=body, headers=people[STUDIO], timeout=30)
        assert answer.json() == NO_SUCH_APP, (method, path)
    assert sharing(stack, people[ADMIN], app["id"])["visibility"] == "restricted"
