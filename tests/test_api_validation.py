"""Bad input gets an exact 4xx with a JSON body {status, message}, and loses nothing: after every refused call
the organization's sources, apps and jobs are exactly what they were. Against the real stack."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest
import requests

from carnet.db.models import utcnow
from carnet.demo import DEMO_APP, DEMO_SOURCE, DEMO_TABLE
from carnet.scheduler.cron import next_fire_time
from carnet.warehouse import connect_waiting
from tests.api_support import (
    NEVER_CRON,
    UNKNOWN_ID,
    Created,
    api_url,
    assert_json_error,
    auth,
    tiny_notebook,
    unique,
)

ROLES = {"admin": "admin@acme.example", "studio": "studio@acme.example", "analyst": "analyst@acme.example"}
ARROW_STREAM = "application/vnd.apache.arrow.stream"


_CREATED: list[Created] = []


@pytest.fixture(scope="module", autouse=True)
def created(carnet_stack):
    """Whatever a call here creates, even one wrongly accepted, is removed when the module ends."""
    objects = Created(carnet_stack)
    _CREATED[:] = [objects]
    yield objects
    _CREATED.clear()
    objects.cleanup()


@pytest.fixture(scope="module")
def globex_app(created):
    # globex has only a viewer, who cannot publish: its app is made in the database.
    return created.publish_app("globex", title="Globex app")


@pytest.fixture(scope="module")
def headers(hub_token):
    return {role: auth(hub_token(email)) for role, email in ROLES.items()}


def state(stack, headers) -> dict:
    """Everything the org has, as its admin sees it through the API."""
    result = {}
    for resource in ("sources", "apps", "jobs"):
        response = requests.get(api_url(stack, resource), headers=headers["admin"], timeout=30)
        assert response.status_code == 200
        result[resource] = response.json()[resource]
    return result


def published_files(stack) -> set:
    return {p for p in stack.settings.published_dir.rglob("*") if p.is_file()}


def post(stack, headers, path, **kwargs):
    response = requests.post(api_url(stack, path), headers=headers, timeout=30, **kwargs)
    if response.status_code == 201 and path in ("apps", "sources", "jobs"):
        getattr(_CREATED[0], path).add(response.json()["id"])
    return response


def get(stack, headers, path):
    return requests.get(api_url(stack, path), headers=headers, timeout=30)


def delete(stack, headers, path):
    return requests.delete(api_url(stack, path), headers=headers, timeout=30)


def valid_job(stack, **overrides) -> dict:
    return {
        "name": unique("validation job"),
        "app_id": stack.app_id,
        "cron": NEVER_CRON,
        "timezone": "Europe/Paris",
        "recipients": ["someone@acme.example"],
        **overrides,
    }


def warehouse_rows(stack) -> int:
    with connect_waiting(stack.settings.warehouse_path(1), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {DEMO_TABLE}").fetchone()[0]  # noqa: S608


def refused(stack, headers, response, status: int, field: str | None = None, before=None) -> dict:
    body = assert_json_error(response, status)
    if field is not None:
        assert body.get("field") == field, body
    if before is not None:
        assert state(stack, headers) == before
    return body


# -- bodies that are not a JSON object ---------------------------------------------------------------------
@pytest.mark.parametrize("resource", ["sources", "apps", "jobs"])
@pytest.mark.parametrize(
    "raw,message",
    [
        (b'{"name": "half', "Request body is not valid JSON"),
        (b"\xff\xfe\x00", "Request body is not valid JSON"),
        (b'[{"name": "a list"}]', "Request body must be a JSON object"),
        (b'"a string"', "Request body must be a JSON object"),
        (b"null", "Request body must be a JSON object"),
    ],
    ids=["truncated", "not utf-8", "list", "string", "null"],
)
def test_body_must_be_a_json_object(carnet_stack, headers, resource, raw, message):
    before = state(carnet_stack, headers)
    response = post(
        carnet_stack,
        {**headers["admin"], "Content-Type": "application/json"},
        resource,
        data=raw,
    )
    body = refused(carnet_stack, headers, response, 400, before=before)
    assert body["message"].startswith(message)


# -- jobs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cron",
    ["61 * * * *", "hello", "* * *", "", "   ", "* * * * * * *", "*/0 * * * *", "0 6 * * 8", 600],
)
def test_job_with_a_bad_cron_is_refused(carnet_stack, headers, cron):
    before = state(carnet_stack, headers)
    response = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, cron=cron))
    refused(carnet_stack, headers, response, 400, field="cron", before=before)


def test_job_with_a_cron_that_never_fires_is_refused(carnet_stack, headers):
    # February 31st parses but has no next fire time: it must be a 400, not a 500 from the scheduler code.
    before = state(carnet_stack, headers)
    response = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, cron="0 0 31 2 *"))
    refused(carnet_stack, headers, response, 400, field="cron", before=before)


def preset_job(stack, schedule, **overrides) -> dict:
    job = valid_job(stack, schedule=schedule, **overrides)
    del job["cron"]
    return job


@pytest.mark.parametrize(
    "schedule, field",
    [
        ({"preset": "fortnightly"}, "schedule.preset"),
        ({"at": "02:30"}, "schedule.preset"),
        ({"preset": "nightly", "at": "2:30"}, "schedule.at"),
        ({"preset": "nightly", "at": "24:00"}, "schedule.at"),
        ({"preset": "nightly", "at": 230}, "schedule.at"),
        ({"preset": "nightly", "minute": 5}, "schedule.minute"),
        ({"preset": "hourly", "minute": 60}, "schedule.minute"),
        ({"preset": "hourly", "minute": True}, "schedule.minute"),
        ({"preset": "weekly", "at": "08:00", "weekday": "someday"}, "schedule.weekday"),
        ({"preset": "monthly", "at": "06:00", "day": 31}, "schedule.day"),
        ("nightly", None),
    ],
    ids=[
        "unknown preset",
        "no preset",
        "one-digit hour",
        "hour 24",
        "time as a number",
        "field of another preset",
        "minute 60",
        "minute true",
        "unknown weekday",
        "day 31 skips months",
        "not an object",
    ],
)
def test_job_with_a_bad_schedule_preset_is_refused(carnet_stack, headers, schedule, field):
    before = state(carnet_stack, headers)
    response = post(carnet_stack, headers["analyst"], "jobs", json=preset_job(carnet_stack, schedule))
    refused(carnet_stack, headers, response, 400, field=field, before=before)


def test_job_with_both_cron_and_schedule_or_neither_is_refused(carnet_stack, headers):
    before = state(carnet_stack, headers)
    both = valid_job(carnet_stack, schedule={"preset": "hourly"})
    refused(
        carnet_stack, headers, post(carnet_stack, headers["analyst"], "jobs", json=both), 400, "cron", before
    )
    neither = valid_job(carnet_stack)
    del neither["cron"]
    response = post(carnet_stack, headers["analyst"], "jobs", json=neither)
    refused(carnet_stack, headers, response, 400, "cron", before)


def test_a_jobs_runs_are_listed_newest_first_up_to_the_limit(carnet_stack, headers):
    made = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack))
    assert made.status_code == 201, made.text
    job = made.json()["id"]
    runs = [post(carnet_stack, headers["analyst"], f"jobs/{job}/runs").json()["id"] for _ in range(3)]
    listed = get(carnet_stack, headers["analyst"], f"jobs/{job}/runs?limit=2")
    assert listed.status_code == 200, listed.text
    assert [run["id"] for run in listed.json()["runs"]] == runs[::-1][:2]
    every = get(carnet_stack, headers["analyst"], f"jobs/{job}/runs").json()["runs"]
    assert [run["id"] for run in every] == runs[::-1]
    for limit in ("0", "1001", "-1", "two", "1.5", ""):
        response = get(carnet_stack, headers["analyst"], f"jobs/{job}/runs?limit={limit}")
        refused(carnet_stack, headers, response, 400, field="limit")


@pytest.mark.parametrize("grace", [-1, 7 * 24 * 3600 + 1, "3600", 1.5, True, None])
def test_job_with_a_bad_misfire_grace_is_refused(carnet_stack, headers, grace):
    before = state(carnet_stack, headers)
    job = valid_job(carnet_stack, misfire_grace_seconds=grace)
    response = post(carnet_stack, headers["analyst"], "jobs", json=job)
    refused(carnet_stack, headers, response, 400, field="misfire_grace_seconds", before=before)


@pytest.mark.parametrize(
    "schedule, cron",
    [
        ({"preset": "hourly"}, "0 * * * *"),
        ({"preset": "hourly", "minute": 15}, "15 * * * *"),
        ({"preset": "nightly", "at": "02:30"}, "30 2 * * *"),
        ({"preset": "weekly", "at": "08:05", "weekday": "Friday"}, "5 8 * * 5"),
        ({"preset": "monthly", "at": "06:00", "day": 28}, "0 6 28 * *"),
    ],
    ids=["hourly", "hourly at :15", "nightly", "weekly", "monthly"],
)
def test_a_job_from_a_preset_gets_its_cron_and_next_fire(carnet_stack, headers, schedule, cron):
    job = preset_job(carnet_stack, schedule, misfire_grace_seconds=600)
    asked = utcnow()
    response = post(carnet_stack, headers["analyst"], "jobs", json=job)
    answered = utcnow()
    assert response.status_code == 201, response.text
    made = response.json()
    try:
        assert made["cron"] == cron and made["misfire_grace_seconds"] == 600
        fires = {next_fire_time(cron, "Europe/Paris", moment).isoformat() for moment in (asked, answered)}
        assert made["next_run_at"] in fires
    finally:
        assert delete(carnet_stack, headers["admin"], f"jobs/{made['id']}").status_code == 204


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/Paris ", None, 1])
def test_job_with_an_unknown_timezone_is_refused(carnet_stack, headers, timezone):
    before = state(carnet_stack, headers)
    response = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, timezone=timezone))
    refused(carnet_stack, headers, response, 400, field="timezone", before=before)


@pytest.mark.parametrize(
    "recipients",
    [[], None, "someone@acme.example", ["not-an-email"], ["ok@acme.example", "bad@"], [42], [""], {}],
    ids=["empty", "null", "a string", "no at", "one bad", "a number", "empty string", "object"],
)
def test_job_with_bad_recipients_is_refused(carnet_stack, headers, recipients):
    before = state(carnet_stack, headers)
    response = post(
        carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, recipients=recipients)
    )
    refused(carnet_stack, headers, response, 400, field="recipients", before=before)


def test_job_without_recipients_is_refused(carnet_stack, headers):
    before = state(carnet_stack, headers)
    job = valid_job(carnet_stack)
    del job["recipients"]
    response = post(carnet_stack, headers["analyst"], "jobs", json=job)
    refused(carnet_stack, headers, response, 400, field="recipients", before=before)


@pytest.mark.parametrize(
    "name", [None, "", "   ", "x" * 201, 42], ids=["missing", "empty", "blank", "too long", "number"]
)
def test_job_with_a_bad_name_is_refused(carnet_stack, headers, name):
    before = state(carnet_stack, headers)
    response = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, name=name))
    refused(carnet_stack, headers, response, 400, field="name", before=before)


@pytest.mark.parametrize("parameters", [["continent"], "Europe", 3])
def test_job_with_parameters_not_an_object_is_refused(carnet_stack, headers, parameters):
    before = state(carnet_stack, headers)
    response = post(
        carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack, parameters=parameters)
    )
    refused(carnet_stack, headers, response, 400, field="parameters", before=before)


@pytest.mark.parametrize("app_id", ["globex", UNKNOWN_ID, "abc", None, -1, 0])
def test_job_for_an_app_not_in_the_org_is_a_404(carnet_stack, headers, globex_app, app_id):
    before = state(carnet_stack, headers)
    job = valid_job(carnet_stack, app_id=globex_app if app_id == "globex" else app_id)
    body = refused(carnet_stack, headers, post(carnet_stack, headers["analyst"], "jobs", json=job), 404)
    assert body == {"status": 404, "message": "No such app"}
    assert state(carnet_stack, headers) == before


def test_job_for_an_out_of_range_app_id_is_a_404(carnet_stack, headers):
    before = state(carnet_stack, headers)
    job = valid_job(carnet_stack, app_id=10**30)
    body = refused(carnet_stack, headers, post(carnet_stack, headers["analyst"], "jobs", json=job), 404)
    assert body == {"status": 404, "message": "No such app"}
    assert state(carnet_stack, headers) == before


@pytest.mark.parametrize("resource", ["apps", "jobs"])
def test_out_of_range_ids_in_the_path_are_a_404(carnet_stack, headers, resource):
    response = get(carnet_stack, headers["admin"], f"{resource}/{10**30}")
    unknown = get(carnet_stack, headers["admin"], f"{resource}/{UNKNOWN_ID}")
    assert_json_error(response, 404)
    assert response.json() == unknown.json()


def test_duplicate_job_name_is_a_409(carnet_stack, headers):
    job = valid_job(carnet_stack)
    first = post(carnet_stack, headers["analyst"], "jobs", json=job)
    assert first.status_code == 201, first.text
    try:
        before = state(carnet_stack, headers)
        for name in (job["name"], f"  {job['name']}  "):
            again = {**job, "name": name, "cron": "5 4 * * *"}
            again = post(carnet_stack, headers["admin"], "jobs", json=again)
            body = refused(carnet_stack, headers, again, 409, before=before)
            assert job["name"] in body["message"]
        mine = [j for j in state(carnet_stack, headers)["jobs"] if j["name"] == job["name"]]
        assert [(j["id"], j["cron"]) for j in mine] == [(first.json()["id"], NEVER_CRON)]
    finally:
        assert delete(carnet_stack, headers["admin"], f"jobs/{first.json()['id']}").status_code == 204


def test_a_valid_job_is_stored_as_sent(carnet_stack, headers):
    # The positive control of the refusals above: the same body, valid, is accepted and normalised.
    job = valid_job(carnet_stack, cron="  0   6 * *  1-5 ", recipients=["Someone@ACME.example"])
    created = post(carnet_stack, headers["analyst"], "jobs", json=job)
    assert created.status_code == 201, created.text
    try:
        stored = get(carnet_stack, headers["analyst"], f"jobs/{created.json()['id']}").json()
        assert stored["cron"] == "0 6 * * 1-5"
        assert stored["timezone"] == "Europe/Paris"
        assert stored["recipients"] == ["someone@acme.example"]
        assert stored["parameters"] == {}
        assert stored["next_run_at"] is not None
    finally:
        delete(carnet_stack, headers["admin"], f"jobs/{created.json()['id']}")


def test_timestamps_keep_their_time_zone_when_read_back(carnet_stack, headers):
    # A time without an offset is read as local time by clients: what POST answered, GET must answer.
    created = post(carnet_stack, headers["analyst"], "jobs", json=valid_job(carnet_stack))
    assert created.status_code == 201, created.text
    try:
        answered = created.json()["next_run_at"]
        assert datetime.fromisoformat(answered).utcoffset() is not None
        stored = get(carnet_stack, headers["analyst"], f"jobs/{created.json()['id']}").json()
        assert stored["next_run_at"] == answered
        listed = get(carnet_stack, headers["analyst"], f"apps/{carnet_stack.app_id}").json()
        assert datetime.fromisoformat(listed["updated_at"]).utcoffset() is not None
    finally:
        delete(carnet_stack, headers["admin"], f"jobs/{created.json()['id']}")


# -- apps ------------------------------------------------------------------------------------------------
def valid_app(**overrides) -> dict:
    return {"slug": unique("validation"), "title": "Validation", "notebook": tiny_notebook(), **overrides}


NOT_NOTEBOOKS = {
    "a string": "print(1)",
    "a list": [{"cell_type": "code"}],
    "empty object": {},
    "cells not a list": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": "nope"},
    "unknown cell type": {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "bogus", "metadata": {}, "source": ""}],
    },
    "nbformat 99": {"nbformat": 99, "nbformat_minor": 0, "metadata": {}, "cells": []},
    "missing": None,
}


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"slug": "Bad Slug"}, "slug"),
        ({"slug": "-leading-dash"}, "slug"),
        ({"slug": "UPPER"}, "slug"),
        ({"slug": "a" * 101}, "slug"),
        ({"slug": ""}, "slug"),
        ({"slug": None}, "slug"),
        ({"slug": 7}, "slug"),
        ({"slug": "../etc"}, "slug"),
        ({"slug": "trailing-newline\n"}, "slug"),
        ({"title": None}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "t" * 201}, "title"),
        *[({"notebook": nb}, "notebook") for nb in NOT_NOTEBOOKS.values()],
    ],
    ids=[
        *[
            f"slug {s}"
            for s in ("spaces", "dash", "upper", "long", "empty", "missing", "number", "dots", "newline")
        ],
        *[f"title {s}" for s in ("missing", "empty", "blank", "long")],
        *[f"notebook {s}" for s in NOT_NOTEBOOKS],
    ],
)
def test_publish_with_bad_input_is_refused(carnet_stack, headers, overrides, field):
    before, files = state(carnet_stack, headers), published_files(carnet_stack)
    body = {k: v for k, v in valid_app(**overrides).items() if v is not None}
    response = post(carnet_stack, headers["analyst"], "apps", json=body)
    refused(carnet_stack, headers, response, 400, field=field, before=before)
    assert published_files(carnet_stack) == files


def test_republishing_an_app_with_a_bad_notebook_keeps_its_version(carnet_stack, headers):
    before, files = state(carnet_stack, headers), published_files(carnet_stack)
    demo = get(carnet_stack, headers["admin"], f"apps/{carnet_stack.app_id}")
    body = {"slug": DEMO_APP, "title": "Hijacked", "notebook": NOT_NOTEBOOKS["unknown cell type"]}
    response = post(carnet_stack, headers["analyst"], "apps", json=body)
    refused(carnet_stack, headers, response, 400, field="notebook", before=before)
    after = get(carnet_stack, headers["admin"], f"apps/{carnet_stack.app_id}")
    assert after.json() == demo.json()
    assert published_files(carnet_stack) == files


# -- sources ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"kind": "postgres_magic"}, "kind"),
        ({"kind": None}, "kind"),
        ({"kind": ["warehouse_table"]}, "kind"),
        ({"options": None}, "options.table"),
        ({"options": {}}, "options.table"),
        ({"options": {"table": ""}}, "options.table"),
        ({"options": {"schema": "main"}}, "options.table"),
        ({"name": None}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "n" * 201}, "name"),
    ],
    ids=[
        "unknown kind",
        "missing kind",
        "kind a list",
        "missing options",
        "empty options",
        "empty table",
        "no table",
        "missing name",
        "blank name",
        "long name",
    ],
)
def test_source_with_bad_input_is_refused(carnet_stack, headers, overrides, field):
    before = state(carnet_stack, headers)
    body = {"name": unique("validation-src"), "kind": "warehouse_table", "options": {"table": DEMO_TABLE}}
    body = {k: v for k, v in {**body, **overrides}.items() if v is not None}
    response = post(carnet_stack, headers["studio"], "sources", json=body)
    refused(carnet_stack, headers, response, 400, field=field, before=before)


@pytest.mark.parametrize(
    "options",
    [["gapminder"], "gapminder", 5],
    ids=["a list", "a string", "a number"],
)
def test_source_options_must_be_an_object(carnet_stack, headers, options):
    before = state(carnet_stack, headers)
    body = {"name": unique("validation-src"), "kind": "warehouse_table", "options": options}
    response = post(carnet_stack, headers["studio"], "sources", json=body)
    refused(carnet_stack, headers, response, 400, before=before)


HOSTILE_TABLES = [
    f"x; DROP TABLE {DEMO_TABLE}",
    f'{DEMO_TABLE}"; DROP TABLE {DEMO_TABLE}; --',
    f"{DEMO_TABLE} --",
    "main.gapminder",
    "../../carnet.sqlite",
    "1gapminder",
    "gap minder",
    "g" * 64,
    f"{DEMO_TABLE}\n",
    ["gapminder"],
    {"name": "gapminder"},
]


@pytest.mark.parametrize("table", HOSTILE_TABLES)
def test_source_with_a_hostile_table_name_is_refused_and_harms_nothing(carnet_stack, headers, table):
    rows, before = warehouse_rows(carnet_stack), state(carnet_stack, headers)
    body = {"name": unique("evil"), "kind": "warehouse_table", "options": {"table": table}}
    response = post(carnet_stack, headers["studio"], "sources", json=body)
    message = refused(carnet_stack, headers, response, 400, before=before)["message"]
    assert message.startswith("Invalid table name")
    # The demo source still reads in full.
    data = requests.get(
        api_url(carnet_stack, f"sources/{DEMO_SOURCE}/data"), headers=headers["analyst"], timeout=60
    )
    assert data.status_code == 200
    assert data.headers["Content-Type"] == ARROW_STREAM
    assert pa.ipc.open_stream(data.content).read_all().num_rows == rows == warehouse_rows(carnet_stack)


def test_duplicate_source_name_is_a_409(carnet_stack, headers):
    before = state(carnet_stack, headers)
    body = {"name": DEMO_SOURCE, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}}
    response = post(carnet_stack, headers["studio"], "sources", json=body)
    refused(carnet_stack, headers, response, 409, before=before)


# -- reading data ----------------------------------------------------------------------------------------
def read(stack, headers, query: str) -> requests.Response:
    return requests.get(api_url(stack, f"sources/{DEMO_SOURCE}/data{query}"), headers=headers, timeout=60)


@pytest.mark.parametrize("limit", ["abc", "-1", "1.5", "", "0x10", "5;DROP"])
def test_data_with_a_bad_limit_is_refused(carnet_stack, headers, limit):
    response = read(carnet_stack, headers["analyst"], f"?limit={limit}")
    refused(carnet_stack, headers, response, 400, field="limit")


def test_data_with_an_out_of_range_limit_is_not_a_server_error(carnet_stack, headers):
    response = read(carnet_stack, headers["analyst"], f"?limit={10**20}")
    refused(carnet_stack, headers, response, 400, field="limit")


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_data_limit_returns_exactly_that_many_rows(carnet_stack, headers, limit):
    full = pa.ipc.open_stream(read(carnet_stack, headers["analyst"], "").content).read_all()
    response = read(carnet_stack, headers["analyst"], f"?limit={limit}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == ARROW_STREAM
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.num_rows == limit
    assert table.schema == full.schema
    assert full.num_rows == warehouse_rows(carnet_stack) > limit
