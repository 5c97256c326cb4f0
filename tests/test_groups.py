"""Viewer groups through the REST API, on the real stack: names (empty, long, duplicates, look-alikes from
Unicode's confusables data, bidi overrides — refused in people's display names too), members must be people
of the organization, another org's group is unknown, deleting a person removes them from groups, and every
change is audited."""

from __future__ import annotations

import uuid

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Organization, ViewerGroup
from carnet.groups import name_key
from tests.api_support import UNKNOWN_ID, api_url, assert_json_error, auth

ADMIN = "admin@acme.example"
VIEWER = "viewer@acme.example"
ANALYST = "analyst@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"


def tag() -> str:
    return uuid.uuid4().hex[:6]


def create(stack, admin, name) -> requests.Response:
    return requests.post(api_url(stack, "groups"), json={"name": name}, headers=admin, timeout=30)


def group_names(stack, admin) -> list[str]:
    return [
        g["name"] for g in requests.get(api_url(stack, "groups"), headers=admin, timeout=30).json()["groups"]
    ]


def audit(stack, admin, action) -> list[dict]:
    url = api_url(stack, f"audit?action={action}")
    return requests.get(url, headers=admin, timeout=30).json()["events"]


def test_name_key_folds_look_alikes():
    assert name_key("Sales") == name_key("Ѕаlеѕ") == name_key("SALES") == name_key("Ｓａｌｅｓ")
    assert name_key("Sales") == name_key("sa\u200bles") == name_key("  sales  ")
    assert name_key("ΡΟΡ") == name_key("pop")  # Greek capitals Rho, Omicron
    assert name_key("Sales") != name_key("Sale")
    assert name_key("Ventas España") != name_key("Ventas Espana")


def test_name_key_uses_the_unicode_confusables_data():
    # None of these was in the former hand-written table: Armenian "օ", Cherokee "Ꭺ", Latin small capital
    # "ᴅ"... The data maps them; plain ASCII is left as typed (so case-folding alone decides "I" vs "l").
    assert name_key("B\u0585b") == name_key("Bob")  # Armenian small oh
    assert name_key("\u13aaudit") == name_key("Audit")  # Cherokee letter go
    assert name_key("𝐒𝐚𝐥𝐞𝐬") == name_key("𝔖𝔞𝔩𝔢𝔰") == name_key("Sales")  # math bold, math fraktur
    assert name_key("\u0395URO") == name_key("EURO") == name_key("\u0435uro")  # Greek Epsilon, Cyrillic ie
    assert name_key("Москва") == name_key("МОСКВА")  # case still does not matter outside Latin
    assert name_key("営業部") != name_key("経理部")
    assert name_key("Team l") != name_key("Team 1")


def test_create_rename_members_delete_are_audited(carnet_stack, admin):
    stack, name = carnet_stack, f"Finance {tag()}"
    response = create(stack, admin, name)
    assert response.status_code == 201, response.text
    group = response.json()
    assert group["name"] == name and group["members"] == []
    url = api_url(stack, f"groups/{group['id']}")
    assert requests.get(url, headers=admin, timeout=30).json() == group

    renamed = requests.patch(url, json={"name": name + " team"}, headers=admin, timeout=30)
    assert renamed.status_code == 200 and renamed.json()["name"] == name + " team"

    members = requests.put(
        url + "/members", json={"users": [VIEWER, ANALYST.upper()]}, headers=admin, timeout=30
    )
    assert members.status_code == 200, members.text
    assert members.json()["members"] == [ANALYST, VIEWER]
    fewer = requests.put(url + "/members", json={"users": [VIEWER]}, headers=admin, timeout=30)
    assert fewer.json()["members"] == [VIEWER]

    assert requests.delete(url, headers=admin, timeout=30).status_code == 204
    assert_json_error(requests.get(url, headers=admin, timeout=30), 404)

    target = f"group/{group['id']}"
    actions = [e["action"] for e in audit(stack, admin, "group.") if e["target"] == target]
    assert actions == ["group.delete", "group.members", "group.members", "group.update", "group.create"]
    member_events = [e for e in audit(stack, admin, "group.members") if e["target"] == target]
    assert member_events[0]["details"]["removed"] == [ANALYST]
    assert member_events[1]["details"]["added"] == [VIEWER, ANALYST]


@pytest.mark.parametrize(
    "name,status",
    [
        ("", 400),
        ("   ", 400),
        ("x" * 101, 400),
        (None, 400),
        (42, 400),
        ("tab\tinside\u0007", 400),
        ("zero\u200bwidth", 400),
    ],
    ids=["empty", "blank", "too long", "null", "number", "control", "invisible"],
)
def test_bad_names_are_refused(carnet_stack, admin, name, status):
    before = group_names(carnet_stack, admin)
    body = assert_json_error(create(carnet_stack, admin, name), status)
    assert body["field"] == "name"
    assert group_names(carnet_stack, admin) == before


def test_a_name_of_100_characters_is_fine(carnet_stack, admin):
    name = tag() + "n" * 94
    response = create(carnet_stack, admin, name)
    assert response.status_code == 201 and response.json()["name"] == name
    requests.delete(api_url(carnet_stack, f"groups/{response.json()['id']}"), headers=admin, timeout=30)


def test_duplicates_and_look_alikes_conflict(carnet_stack, admin):
    suffix = tag()
    original = create(carnet_stack, admin, f"Sales {suffix}")
    assert original.status_code == 201
    cyrillic = f"S\u0430les {suffix}"  # Cyrillic small a
    greek = f"Sales {suffix}".upper().replace("A", "\u0391")  # Greek capital Alpha
    for name in (
        f"Sales {suffix}",
        f"sales {suffix}",
        cyrillic,
        greek,
        f"Ｓａｌｅｓ {suffix}",
        f" Sales   {suffix} ",
    ):
        body = assert_json_error(create(carnet_stack, admin, name), 409)
        assert f"Sales {suffix}" in body["message"]
    other = create(carnet_stack, admin, f"Other {suffix}")
    rename = requests.patch(
        api_url(carnet_stack, f"groups/{other.json()['id']}"),
        json={"name": cyrillic},
        headers=admin,
        timeout=30,
    )
    assert_json_error(rename, 409)
    names = group_names(carnet_stack, admin)
    assert f"Sales {suffix}" in names and cyrillic not in names and f"Other {suffix}" in names
    for response in (original, other):
        requests.delete(api_url(carnet_stack, f"groups/{response.json()['id']}"), headers=admin, timeout=30)


@pytest.mark.parametrize(
    "look_alike",
    [
        "R\u0435v\u0435nu\u0435",  # Cyrillic ie
        "R\u0395VENU\u0395",  # Greek capital Epsilon
        "Ｒｅｖｅｎｕｅ",  # fullwidth
        "𝐑𝐞𝐯𝐞𝐧𝐮𝐞",  # mathematical bold
        "𝓡𝓮𝓿𝓮𝓷𝓾𝓮",  # mathematical bold script
        "\u0280evenue",  # Latin letter small capital R
    ],
    ids=["cyrillic", "greek", "fullwidth", "math bold", "math script", "small capital"],
)
def test_look_alikes_from_the_confusables_data_conflict(carnet_stack, admin, look_alike):
    suffix = tag()
    original = create(carnet_stack, admin, f"Revenue {suffix}")
    assert original.status_code == 201, original.text
    try:
        body = assert_json_error(create(carnet_stack, admin, f"{look_alike} {suffix}"), 409)
        assert body["field"] == "name" and f"Revenue {suffix}" in body["message"]
        assert f"{look_alike} {suffix}" not in group_names(carnet_stack, admin)
    finally:
        requests.delete(api_url(carnet_stack, f"groups/{original.json()['id']}"), headers=admin, timeout=30)


def test_different_non_latin_names_do_not_collide(carnet_stack, admin):
    suffix, ids = tag(), []
    try:
        for name in ("営業部", "経理部", "Отдел продаж", "Τμήμα πωλήσεων"):
            response = create(carnet_stack, admin, f"{name} {suffix}")
            assert response.status_code == 201, (name, response.text)
            ids.append(response.json()["id"])
        names = group_names(carnet_stack, admin)
        assert {f"営業部 {suffix}", f"経理部 {suffix}"} <= set(names)
        # ...while the same Cyrillic name in capitals is the same name.
        assert_json_error(create(carnet_stack, admin, f"ОТДЕЛ ПРОДАЖ {suffix}"), 409)
    finally:
        for group_id in ids:
            requests.delete(api_url(carnet_stack, f"groups/{group_id}"), headers=admin, timeout=30)


@pytest.mark.parametrize(
    "char", ["\u202e", "\u202d", "\u2066", "\u200f", "\x1b"], ids=["RLO", "LRO", "LRI", "RLM", "ESC"]
)
def test_bidi_overrides_and_controls_are_refused_in_names(carnet_stack, admin, char):
    spoof = f"invoice{char}fdp.exe {tag()}"
    before = group_names(carnet_stack, admin)
    assert assert_json_error(create(carnet_stack, admin, spoof), 400)["field"] == "name"
    assert group_names(carnet_stack, admin) == before

    email = f"bidi-{tag()}@acme.example"
    person = requests.post(
        api_url(carnet_stack, "users"),
        json={"email": email, "role": "viewer", "display_name": spoof},
        headers=admin,
        timeout=30,
    )
    assert assert_json_error(person, 400)["field"] == "display_name"
    users = requests.get(api_url(carnet_stack, "users"), headers=admin, timeout=30).json()["users"]
    assert email not in [u["email"] for u in users]
    renamed = requests.patch(
        api_url(carnet_stack, f"users/{users[0]['id']}"),
        json={"display_name": spoof},
        headers=admin,
        timeout=30,
    )
    assert assert_json_error(renamed, 400)["field"] == "display_name"


def test_members_must_be_people_of_the_org(carnet_stack, admin):
    group = create(carnet_stack, admin, f"Members {tag()}").json()
    url = api_url(carnet_stack, f"groups/{group['id']}/members")
    requests.put(url, json={"users": [VIEWER]}, headers=admin, timeout=30)
    response = requests.put(
        url, json={"users": [ANALYST, GLOBEX_VIEWER, "nobody@nowhere.example"]}, headers=admin, timeout=30
    )
    body = assert_json_error(response, 400)
    assert body["field"] == "users" and body["users"] == [GLOBEX_VIEWER, "nobody@nowhere.example"]
    assert GLOBEX_VIEWER in body["message"] and "nobody@nowhere.example" in body["message"]
    for bad in (
        {"users": "viewer@acme.example"},
        {"users": ["not an email"]},
        {},
        {"users": [], "org_id": 2},
    ):
        assert_json_error(requests.put(url, json=bad, headers=admin, timeout=30), 400)
    current = requests.get(api_url(carnet_stack, f"groups/{group['id']}"), headers=admin, timeout=30).json()
    assert current["members"] == [VIEWER]
    emptied = requests.put(url, json={"users": []}, headers=admin, timeout=30)
    assert emptied.status_code == 200 and emptied.json()["members"] == []
    requests.delete(api_url(carnet_stack, f"groups/{group['id']}"), headers=admin, timeout=30)


def test_unknown_fields_are_refused(carnet_stack, admin):
    response = requests.post(
        api_url(carnet_stack, "groups"), json={"name": f"X {tag()}", "org_id": 2}, headers=admin, timeout=30
    )
    assert assert_json_error(response, 400)["field"] == "org_id"
    group = create(carnet_stack, admin, f"Fields {tag()}").json()
    url = api_url(carnet_stack, f"groups/{group['id']}")
    for body in ({"org_id": 2}, {"id": 1}, {"name": "ok", "members": []}):
        assert_json_error(requests.patch(url, json=body, headers=admin, timeout=30), 400)
    assert requests.get(url, headers=admin, timeout=30).json() == group
    requests.delete(url, headers=admin, timeout=30)


def test_another_orgs_group_is_unknown(carnet_stack, admin):
    with session_scope(carnet_stack.settings.db_url) as session:
        globex = session.scalar(select(Organization.id).where(Organization.slug == "globex"))
        theirs = ViewerGroup(org_id=globex, name=f"Globex {tag()}", name_key=f"globex {tag()}")
        session.add(theirs)
        session.flush()
        their_id = theirs.id
    try:
        for method, suffix, body in (
            ("GET", "", None),
            ("PATCH", "", {"name": "stolen"}),
            ("DELETE", "", None),
            ("PUT", "/members", {"users": [VIEWER]}),
        ):
            mine = requests.request(
                method,
                api_url(carnet_stack, f"groups/{their_id}{suffix}"),
                json=body,
                headers=admin,
                timeout=30,
            )
            unknown = requests.request(
                method,
                api_url(carnet_stack, f"groups/{UNKNOWN_ID}{suffix}"),
                json=body,
                headers=admin,
                timeout=30,
            )
            assert_json_error(mine, 404)
            assert mine.json() == unknown.json() == {"status": 404, "message": "No such group"}
        for bad_id in ("abc", "0", "-1", str(2**70)):
            assert_json_error(
                requests.get(api_url(carnet_stack, f"groups/{bad_id}"), headers=admin, timeout=30), 404
            )
        with session_scope(carnet_stack.settings.db_url) as session:
            assert session.get(ViewerGroup, their_id).name.startswith("Globex")
    finally:
        with session_scope(carnet_stack.settings.db_url) as session:
            session.delete(session.get(ViewerGroup, their_id))


def test_deleting_a_person_removes_them_from_groups(carnet_stack, admin):
    email = f"grouped-{tag()}@acme.example"
    person = requests.post(
        api_url(carnet_stack, "users"), json={"email": email, "role": "viewer"}, headers=admin, timeout=30
    ).json()
    group = create(carnet_stack, admin, f"Leavers {tag()}").json()
    url = api_url(carnet_stack, f"groups/{group['id']}")
    put = requests.put(url + "/members", json={"users": [email, VIEWER]}, headers=admin, timeout=30)
    assert put.json()["members"] == sorted([email, VIEWER])
    assert (
        requests.delete(api_url(carnet_stack, f"users/{person['id']}"), headers=admin, timeout=30).status_code
        == 204
    )
    assert requests.get(url, headers=admin, timeout=30).json()["members"] == [VIEWER]
    with session_scope(carnet_stack.settings.db_url) as session:
        assert session.scalar(select(ViewerGroup.id).where(ViewerGroup.id == group["id"])) == group["id"]
    requests.delete(url, headers=admin, timeout=30)


def test_only_admins_manage_groups(carnet_stack, hub_token):
    for email in (VIEWER, ANALYST, "studio@acme.example"):
        assert_json_error(
            requests.get(api_url(carnet_stack, "groups"), headers=auth(hub_token(email)), timeout=30), 403
        )
