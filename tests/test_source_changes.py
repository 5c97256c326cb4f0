"""Changing and deleting data sources (studio and admin): what changes, what is refused and left intact,
what the audit log says, and who sees connection settings. The real stack."""

from __future__ import annotations

import pytest
import requests

from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from tests.api_support import api_url, assert_json_error, auth, unique


@pytest.fixture(scope="module")
def studio(hub_token):
    return auth(hub_token("studio@acme.example"))


@pytest.fixture
def source(carnet_stack, studio, admin):
    name = unique("changes-src")
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    yield made.json()
    # Whatever the test renamed it to, remove it by id through its current name.
    for listed in requests.get(api_url(carnet_stack, "sources"), headers=admin, timeout=30).json()["sources"]:
        if listed["id"] == made.json()["id"]:
            requests.delete(api_url(carnet_stack, f"sources/{listed['name']}"), headers=admin, timeout=30)


def get_source(stack, headers, name) -> requests.Response:
    return requests.get(api_url(stack, f"sources/{name}"), headers=headers, timeout=30)


def audit(stack, admin, action) -> list[dict]:
    response = requests.get(api_url(stack, "audit"), params={"action": action}, headers=admin, timeout=30)
    return response.json()["events"]


def test_studio_renames_and_describes_a_source_and_the_audit_names_fields_not_values(
    carnet_stack, studio, admin, source
):
    new_name = unique("renamed-src")
    changed = requests.patch(
        api_url(carnet_stack, f"sources/{source['name']}"),
        json={"name": new_name, "description": "Sales by country", "options": {"table": DEMO_TABLE}},
        headers=studio,
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["description"]) == (new_name, "Sales by country")
    assert get_source(carnet_stack, studio, source["name"]).status_code == 404
    assert get_source(carnet_stack, studio, new_name).json()["description"] == "Sales by country"
    event = next(
        e for e in audit(carnet_stack, admin, "source.update") if e["target"] == f"source/{new_name}"
    )
    assert event["actor"] == "studio@acme.example"
    assert event["details"]["fields"] == ["name", "description", "options"]
    assert DEMO_TABLE not in str(event["details"])  # option values never reach the audit log


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"kind": "warehouse_table"}, "kind", id="kind-is-fixed"),
        pytest.param({"org_id": 2}, "org_id", id="mass-assignment-org"),
        pytest.param({"created_by": 1}, "created_by", id="mass-assignment-creator"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "x" * 201}, "name", id="long-name"),
        pytest.param({"name": "a/b"}, "name", id="slash-in-name"),
        pytest.param({"name": "evil\u202eexe"}, "name", id="bidi-override"),
        pytest.param({"description": 5}, "description", id="description-not-text"),
        pytest.param({"options": []}, "options", id="options-not-object"),
        pytest.param({"options": {"table": "x; drop table y"}}, "options.table", id="hostile-table"),
        pytest.param({"options": {}}, "options.table", id="table-missing"),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(carnet_stack, studio, source, body, field):
    response = requests.patch(
        api_url(carnet_stack, f"sources/{source['name']}"),
        json={"description": "must not be applied", **body},
        headers=studio,
        timeout=30,
    )
    assert_json_error(response, 400)
    assert response.json().get("field") == field, response.text
    after = get_source(carnet_stack, studio, source["name"]).json()
    assert after["description"] == "" and after["options"] == {"table": DEMO_TABLE}


def test_a_name_already_taken_is_a_conflict(carnet_stack, studio, source):
    response = requests.patch(
        api_url(carnet_stack, f"sources/{source['name']}"),
        json={"name": DEMO_SOURCE},
        headers=studio,
        timeout=30,
    )
    assert_json_error(response, 409)
    assert get_source(carnet_stack, studio, source["name"]).status_code == 200


def test_deleting_a_source_is_audited_and_its_name_is_free_again(carnet_stack, studio, admin, source):
    deleted = requests.delete(api_url(carnet_stack, f"sources/{source['name']}"), headers=studio, timeout=30)
    assert deleted.status_code == 204 and deleted.content == b""
    assert get_source(carnet_stack, studio, source["name"]).status_code == 404
    again = requests.delete(api_url(carnet_stack, f"sources/{source['name']}"), headers=studio, timeout=30)
    assert_json_error(again, 404)
    targets = [e["target"] for e in audit(carnet_stack, admin, "source.delete")]
    assert targets.count(f"source/{source['name']}") == 1


def test_testing_a_source_reports_its_columns_or_a_clear_error(carnet_stack, studio, source):
    ok = requests.post(api_url(carnet_stack, f"sources/{source['name']}/test"), headers=studio, timeout=30)
    assert ok.status_code == 200 and ok.json()["ok"] is True
    assert {"country", "year"} <= {c["name"] for c in ok.json()["columns"]}
    # Point it at a table that does not exist: the test says so (404 JSON), nothing crashes.
    requests.patch(
        api_url(carnet_stack, f"sources/{source['name']}"),
        json={"options": {"table": "no_such_table"}},
        headers=studio,
        timeout=30,
    ).raise_for_status()
    missing = requests.post(
        api_url(carnet_stack, f"sources/{source['name']}/test"), headers=studio, timeout=30
    )
    assert_json_error(missing, 404)
    assert "no_such_table" in missing.json()["message"]


def test_analysts_see_names_kinds_and_columns_but_no_connection_settings(carnet_stack, hub_token, source):
    analyst = auth(hub_token("analyst@acme.example"))
    listed = requests.get(api_url(carnet_stack, "sources"), headers=analyst, timeout=30).json()["sources"]
    assert listed and all("options" not in s for s in listed)
    one = get_source(carnet_stack, analyst, source["name"]).json()
    assert "options" not in one and one["kind"] == "warehouse_table" and one["columns"]
