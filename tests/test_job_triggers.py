"""What starts a job's run besides its schedule, and changing a job, against the real stack.

- A webhook URL (carnet/service/api/job_webhooks.py): shown once, stored as a hash; calling it with a JSON
  payload queues a run that really runs with that payload; rotating or removing it makes the old URL a 404
  exactly like a URL that never existed; bad payloads are JSON 400/413 that queue nothing; a disabled job
  answers 409; a webhook run still queued takes further calls; another org's job is unknown.
- After another job: B set to start after A gets a run (trigger "after", naming A's run) when A succeeds,
  none when A fails.
- PATCH /jobs/<id>: each field changes what it should; a bad value is a 400 naming the field and changes
  nothing; enabling again sets the next fire from now (no backlog); a loop of after_job_id is refused.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from secrets import token_urlsafe

import nbformat
import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, Job, JobRun, RunStatus, utcnow
from carnet.demo import DEMO_SOURCE
from carnet.scheduler.cron import next_fire_time
from tests.api_support import (
    NEVER_CRON,
    UNKNOWN_ID,
    api_url,
    assert_json_error,
    auth,
    publish_notebook,
    tiny_notebook,
    unique,
)
from tests.helpers import wait_until

ANALYST = "analyst@acme.example"
STUDIO = "studio@acme.example"
FINISHED = ("succeeded", "failed", "skipped", "missed")
HOOK_PATH = "/services/carnet/api/v1/hooks/jobs/"
# The shape of a webhook secret (43 URL-safe characters), random per run: no other test's string matches it.
NEVER_SECRET = token_urlsafe(32)


# -- helpers -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyst(hub_token):
    return auth(hub_token(ANALYST))


def publish(stack, headers, notebook) -> int:
    return publish_notebook(stack, headers, notebook, title="Triggers", slug="triggers")


@pytest.fixture(scope="module")
def tiny_app(carnet_stack, hub_token, created):
    app_id = publish(carnet_stack, auth(hub_token(STUDIO)), tiny_notebook("triggered"))
    created.apps.add(app_id)
    return app_id


@pytest.fixture(scope="module")
def failing_app(carnet_stack, hub_token, created):
    """An app whose notebook raises: a job with parameters runs it with papermill, and the run fails."""
    notebook = tiny_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("raise ValueError('this app always fails')"))
    app_id = publish(carnet_stack, auth(hub_token(STUDIO)), notebook)
    created.apps.add(app_id)
    return app_id


def make_job(stack, headers, created, app_id: int, **fields) -> dict:
    body = {
        "name": unique("trigger job"),
        "app_id": app_id,
        "cron": NEVER_CRON,
        "timezone": "Europe/Paris",
        "recipients": [f"{unique('trigger')}@acme.example"],
        **fields,
    }
    response = requests.post(api_url(stack, "jobs"), json=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    created.jobs.add(response.json()["id"])
    return response.json()


def get_job(stack, headers, job_id: int) -> dict:
    response = requests.get(api_url(stack, f"jobs/{job_id}"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def patch(stack, headers, job_id, body) -> requests.Response:
    return requests.patch(api_url(stack, f"jobs/{job_id}"), json=body, headers=headers, timeout=30)


def make_webhook(stack, headers, job_id: int) -> requests.Response:
    return requests.post(api_url(stack, f"jobs/{job_id}/webhook"), headers=headers, timeout=30)


def webhook_url(stack, headers, job_id: int) -> str:
    """A new webhook URL of the job, as the test reaches the stack (the answer names its public URL)."""
    made = make_webhook(stack, headers, job_id)
    assert made.status_code == 201, made.text
    return f"{stack.url}{HOOK_PATH}{made.json()['url'].rsplit('/', 1)[-1]}"


def call_hook(url: str, **kwargs) -> requests.Response:
    return requests.post(url, timeout=30, **kwargs)


def runs_of(stack, headers, job_id: int) -> list[dict]:
    response = requests.get(api_url(stack, f"jobs/{job_id}/runs"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["runs"]


def finished_run(stack, headers, job_id: int, run_id: int, timeout: float = 240) -> dict:
    url = api_url(stack, f"jobs/{job_id}/runs/{run_id}")

    def finished():
        run = requests.get(url, headers=headers, timeout=30).json()
        return run if run["status"] in FINISHED else None

    return wait_until(finished, timeout=timeout, interval=0.5, what=f"run {run_id} of job {job_id} to end")


def run_row(stack, run_id: int) -> JobRun:
    with session_scope(stack.settings.db_url) as session:
        run = session.get(JobRun, run_id)
        session.expunge(run)
        return run


def audit_events(stack, action: str, target: str) -> list[AuditEvent]:
    with session_scope(stack.settings.db_url) as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.target == target)
            .order_by(AuditEvent.id)
        ).all()
        session.expunge_all()
        return list(events)


def never_existing_hook(stack) -> str:
    return f"{stack.url}{HOOK_PATH}{NEVER_SECRET}"


# -- webhooks ------------------------------------------------------------------------------------------------
def test_a_webhook_url_is_shown_once_and_starts_a_run_with_its_payload(
    carnet_stack, analyst, created, tiny_app, smtp_server
):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    assert job["webhook"] is False
    made = make_webhook(carnet_stack, analyst, job["id"])
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    assert made.json()["rotated"] is False
    secret = url.rsplit("/", 1)[-1]
    # The public URL (links in mails) with the secret: 32 random bytes, URL-safe base64.
    assert re.fullmatch(r"https?://[^/]+" + HOOK_PATH + r"[A-Za-z0-9_-]{43}", url), url
    url = f"{carnet_stack.url}{HOOK_PATH}{secret}"
    # Shown once: the job says it has a webhook, never what it is (nor its hash).
    stored = get_job(carnet_stack, analyst, job["id"])
    assert stored["webhook"] is True
    listed = requests.get(api_url(carnet_stack, "jobs"), headers=analyst, timeout=30)
    with session_scope(carnet_stack.settings.db_url) as session:
        stored_hash = session.get(Job, job["id"]).webhook_hash
    for text in (json.dumps(stored), listed.text):
        assert secret not in text and stored_hash not in text
    assert len(stored_hash) == 64 and secret not in stored_hash

    # No credential but the URL; the answer tells nothing about the job.
    called = call_hook(url, json={"continent": "Europe", "years": [2002, 2007]})
    assert called.status_code == 202, called.text
    assert called.json() == {"run_id": called.json()["run_id"], "coalesced": False}
    run_id = called.json()["run_id"]
    run = finished_run(carnet_stack, analyst, job["id"], run_id)
    assert run["status"] == "succeeded", run
    assert (run["trigger"], run["triggered_by"]) == ("webhook", "webhook")
    assert run["payload"] == {"continent": "Europe", "years": [2002, 2007]}
    # It really ran: the report went to the job's recipient.
    recipient = job["recipients"][0]
    assert [m for m in smtp_server.messages if recipient in m["To"]], "no report mail for the webhook run"
    # Audited, with where the call came from (never the payload's values).
    [event] = audit_events(carnet_stack, "job.webhook_call", f"job/{job['id']}")
    assert event.actor == "webhook" and event.remote_addr
    assert event.details == {"run_id": run_id, "coalesced": False, "parameters": ["continent", "years"]}
    assert "Europe" not in json.dumps(event.details)
    assert len(audit_events(carnet_stack, "job.webhook_create", f"job/{job['id']}")) == 1


def test_rotating_or_removing_a_webhook_makes_its_url_unknown(carnet_stack, analyst, created, tiny_app):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    first = webhook_url(carnet_stack, analyst, job["id"])
    never = call_hook(never_existing_hook(carnet_stack))
    malformed = call_hook(f"{carnet_stack.url}{HOOK_PATH}not-a-secret")
    assert_json_error(never, 404)
    assert malformed.json() == never.json() == {"status": 404, "message": "No such webhook"}

    rotated = make_webhook(carnet_stack, analyst, job["id"])
    assert rotated.status_code == 201 and rotated.json()["rotated"] is True
    second = f"{carnet_stack.url}{HOOK_PATH}{rotated.json()['url'].rsplit('/', 1)[-1]}"
    assert second != first
    old = call_hook(first, json={"x": 1})
    assert old.status_code == 404 and old.json() == never.json()
    assert runs_of(carnet_stack, analyst, job["id"]) == []  # the old URL queued nothing
    assert len(audit_events(carnet_stack, "job.webhook_rotate", f"job/{job['id']}")) == 1

    removed = requests.delete(api_url(carnet_stack, f"jobs/{job['id']}/webhook"), headers=analyst, timeout=30)
    assert removed.status_code == 204 and removed.text == ""
    assert get_job(carnet_stack, analyst, job["id"])["webhook"] is False
    for url in (first, second):
        gone = call_hook(url)
        assert gone.status_code == 404 and gone.json() == never.json()
    again = requests.delete(api_url(carnet_stack, f"jobs/{job['id']}/webhook"), headers=analyst, timeout=30)
    assert_json_error(again, 404)
    assert runs_of(carnet_stack, analyst, job["id"]) == []
    # A webhook's secret is a credential: the service's request log of these calls never holds one.
    log = carnet_stack.log_path.read_text(errors="replace")
    for url in (first, second, never_existing_hook(carnet_stack)):
        assert url.rsplit("/", 1)[1] not in log
    assert "POST /services/carnet/api/v1/hooks/jobs/[secret]" in log


@pytest.mark.parametrize(
    "data, status, field",
    [
        (b'{"half": ', 400, "body"),
        (b"\xff\xfe", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'"text"', 400, "body"),
        (b'{"nested": {"a": 1}}', 400, "nested"),
        (b'{"rows": [{"a": 1}]}', 400, "rows"),
        (json.dumps({"big": "x" * 17000}).encode(), 413, None),
    ],
    ids=[
        "truncated",
        "not utf-8",
        "a list",
        "a string",
        "an object value",
        "a list of objects",
        "over 16 KB",
    ],
)
def test_a_bad_webhook_payload_is_a_json_error_that_queues_nothing(
    carnet_stack, analyst, created, tiny_app, data, status, field
):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    url = webhook_url(carnet_stack, analyst, job["id"])
    response = call_hook(url, data=data, headers={"Content-Type": "application/json"})
    body = assert_json_error(response, status)
    assert body.get("field") == field
    assert runs_of(carnet_stack, analyst, job["id"]) == []
    # The refusal is logged (with its path), the URL's secret is not.
    assert url.rsplit("/", 1)[1] not in carnet_stack.log_path.read_text(errors="replace")


def test_a_body_refused_before_it_arrives_does_not_break_the_proxys_next_calls(
    carnet_stack, analyst, created, tiny_app
):
    """A 413 on the declared length is answered before the body is read, so the service then closes that
    connection. The Hub's proxy keeps its connections to the service alive: unless the answer says
    ``Connection: close``, the proxy may send its next request down the closing socket and answer it with
    its own 503 (a CI run saw exactly that on the call after this 413)."""
    job = make_job(carnet_stack, analyst, created, tiny_app)
    url = webhook_url(carnet_stack, analyst, job["id"])
    big = json.dumps({"big": "x" * 17000}).encode()
    runs_url = api_url(carnet_stack, f"jobs/{job['id']}/runs")

    refusing = threading.Event()

    def calls_meanwhile() -> list[int]:
        # Other callers' requests keep arriving while the bodies are refused, as on a busy server.
        statuses = []
        while refusing.is_set() or not statuses:
            statuses.append(requests.get(runs_url, headers=analyst, timeout=30).status_code)
        return statuses

    refusing.set()
    with ThreadPoolExecutor(4) as pool:
        callers = [pool.submit(calls_meanwhile) for _ in range(4)]
        try:
            for _ in range(60):
                refused = call_hook(url, data=big, headers={"Content-Type": "application/json"})
                assert refused.status_code == 413, refused.text[:200]
        finally:
            refusing.clear()
        statuses = [status for caller in callers for status in caller.result()]
    assert set(statuses) == {200}, {status: statuses.count(status) for status in set(statuses)}


def test_an_oversized_webhook_body_without_a_length_is_cut_off(carnet_stack, analyst, created, tiny_app):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    url = webhook_url(carnet_stack, analyst, job["id"])

    def chunks():  # a generator: requests sends it chunked, with no Content-Length to refuse up front
        yield b'{"big": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    response = call_hook(url, data=chunks(), headers={"Content-Type": "application/json"})
    assert assert_json_error(response, 413)["limit"] == 16 * 1024
    # An unknown URL is a 404 whatever its body's size.
    unknown = call_hook(never_existing_hook(carnet_stack), data=b"x" * 20000)
    assert unknown.status_code == 404 and unknown.json()["message"] == "No such webhook"
    assert runs_of(carnet_stack, analyst, job["id"]) == []


def test_a_disabled_job_refuses_its_webhook_and_a_queued_webhook_run_takes_new_calls(
    carnet_stack, analyst, created, tiny_app
):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    url = webhook_url(carnet_stack, analyst, job["id"])
    assert patch(carnet_stack, analyst, job["id"], {"enabled": False}).status_code == 200
    refused = call_hook(url, json={"x": 1})
    assert assert_json_error(refused, 409)["message"] == "This job is disabled: the call started no run"
    assert runs_of(carnet_stack, analyst, job["id"]) == []
    assert patch(carnet_stack, analyst, job["id"], {"enabled": True}).status_code == 200

    # A webhook run waiting (here: for a retry an hour away, so that no scheduler takes it meanwhile).
    with session_scope(carnet_stack.settings.db_url) as session:
        waiting = JobRun(
            job_id=job["id"],
            status=RunStatus.queued,
            trigger="webhook",
            triggered_by="webhook",
            payload={"first": True},
            scheduled_for=utcnow(),
            not_before=utcnow() + timedelta(hours=1),
        )
        session.add(waiting)
        session.flush()
        waiting_id = waiting.id
    for _ in range(3):
        again = call_hook(url, json={"later": True})
        assert again.status_code == 202 and again.json() == {"run_id": waiting_id, "coalesced": True}
    assert [run["id"] for run in runs_of(carnet_stack, analyst, job["id"])] == [waiting_id]
    assert run_row(carnet_stack, waiting_id).payload == {"first": True}
    # A run of another trigger does not take webhook calls: it stays as it is, and the call queues its own.
    with session_scope(carnet_stack.settings.db_url) as session:
        session.get(JobRun, waiting_id).trigger = "manual"
    own = call_hook(url, json={"later": True})
    assert own.status_code == 202 and own.json()["coalesced"] is False and own.json()["run_id"] != waiting_id
    with session_scope(carnet_stack.settings.db_url) as session:
        session.get(JobRun, waiting_id).status = RunStatus.failed  # not left for the scheduler


def test_another_orgs_job_webhook_cannot_be_managed(carnet_stack, analyst, created):
    globex_app = created.publish_app("globex", title="Globex triggers")
    globex_job = created.add_job("globex", globex_app, "viewer@globex.example")
    for method in ("POST", "DELETE"):
        theirs = requests.request(
            method, api_url(carnet_stack, f"jobs/{globex_job}/webhook"), headers=analyst, timeout=30
        )
        unknown = requests.request(
            method, api_url(carnet_stack, f"jobs/{UNKNOWN_ID}/webhook"), headers=analyst, timeout=30
        )
        assert_json_error(theirs, 404)
        assert theirs.json() == unknown.json() == {"status": 404, "message": "No such job"}
    theirs = patch(carnet_stack, analyst, globex_job, {"name": "taken over"})
    assert theirs.json() == patch(carnet_stack, analyst, UNKNOWN_ID, {"name": "taken over"}).json()
    with session_scope(carnet_stack.settings.db_url) as session:
        job = session.get(Job, globex_job)
        assert job.webhook_hash is None and job.name != "taken over"


# -- after another job ---------------------------------------------------------------------------------------
def test_a_job_after_another_runs_when_it_succeeds_and_not_when_it_fails(
    carnet_stack, analyst, created, tiny_app, failing_app
):
    leader = make_job(carnet_stack, analyst, created, tiny_app)
    follower = make_job(carnet_stack, analyst, created, tiny_app, after_job_id=leader["id"])
    failing = make_job(carnet_stack, analyst, created, failing_app, parameters={"region": "EU"})
    not_started = make_job(carnet_stack, analyst, created, tiny_app, after_job_id=failing["id"])

    started = requests.post(api_url(carnet_stack, f"jobs/{leader['id']}/runs"), headers=analyst, timeout=30)
    doomed = requests.post(api_url(carnet_stack, f"jobs/{failing['id']}/runs"), headers=analyst, timeout=30)
    assert started.status_code == doomed.status_code == 202
    leader_run = finished_run(carnet_stack, analyst, leader["id"], started.json()["id"])
    assert leader_run["status"] == "succeeded", leader_run
    failed = finished_run(carnet_stack, analyst, failing["id"], doomed.json()["id"])
    assert failed["status"] == "failed" and "always fails" in failed["error"], failed

    follows = wait_until(
        lambda: runs_of(carnet_stack, analyst, follower["id"]), timeout=30, what="the follower's run"
    )
    assert len(follows) == 1
    assert follows[0]["trigger"] == "after"
    assert follows[0]["triggered_by"] == f"run {leader_run['id']} of job {leader['name']!r}"
    assert finished_run(carnet_stack, analyst, follower["id"], follows[0]["id"])["status"] == "succeeded"
    # Followers are queued in the same transaction that records a success: a failed leader queued none.
    assert runs_of(carnet_stack, analyst, not_started["id"]) == []


# -- PATCH ---------------------------------------------------------------------------------------------------
def test_patch_changes_each_field(carnet_stack, analyst, created, tiny_app):
    job = make_job(carnet_stack, analyst, created, tiny_app)
    other_job = make_job(carnet_stack, analyst, created, tiny_app)
    other_app = publish(carnet_stack, analyst, tiny_notebook("other"))
    created.apps.add(other_app)
    changes = [
        ({"name": "  Renamed trigger job  "}, {"name": "Renamed trigger job"}),
        ({"recipients": ["New.Person@ACME.example"]}, {"recipients": ["new.person@acme.example"]}),
        ({"parameters": {"continent": "Asia"}}, {"parameters": {"continent": "Asia"}}),
        ({"misfire_grace_seconds": 60}, {"misfire_grace_seconds": 60}),
        ({"timeout_seconds": 120}, {"timeout_seconds": 120}),
        ({"timeout_seconds": None}, {"timeout_seconds": None}),
        ({"max_retries": 0}, {"max_retries": 0}),
        ({"retry_backoff_seconds": 5}, {"retry_backoff_seconds": 5}),
        ({"after_job_id": other_job["id"]}, {"after_job_id": other_job["id"]}),
        ({"after_job_id": None}, {"after_job_id": None}),
        ({"app_id": other_app}, {"app_id": other_app}),
        ({"config": {}}, {"config": {}}),
    ]
    for body, expected in changes:
        before = get_job(carnet_stack, analyst, job["id"])
        response = patch(carnet_stack, analyst, job["id"], body)
        assert response.status_code == 200, (body, response.text)
        after = get_job(carnet_stack, analyst, job["id"])
        assert response.json() == after
        # What was sent changed; nothing else did (next_run_at neither: the schedule stayed).
        assert after == {**before, **expected}, body

    # A new schedule (raw or a preset) or time zone: the next fire is recomputed from now.
    for body, cron, timezone in [
        ({"cron": "  30 5 * * * "}, "30 5 * * *", "Europe/Paris"),
        ({"schedule": {"preset": "nightly", "at": "02:30"}}, "30 2 * * *", "Europe/Paris"),
        ({"timezone": "America/New_York"}, "30 2 * * *", "America/New_York"),
    ]:
        asked = utcnow()
        after = patch(carnet_stack, analyst, job["id"], body).json()
        answered = utcnow()
        assert (after["cron"], after["timezone"]) == (cron, timezone)
        fires = {next_fire_time(cron, timezone, moment).isoformat() for moment in (asked, answered)}
        assert after["next_run_at"] in fires
    unscheduled = patch(carnet_stack, analyst, job["id"], {"cron": None}).json()
    assert unscheduled["cron"] is None and unscheduled["next_run_at"] is None

    # Audited with the fields that changed.
    [*_, last] = audit_events(carnet_stack, "job.update", f"job/{job['id']}")
    assert last.details["changed"] == ["cron"]


@pytest.fixture(scope="module")
def patched_job(carnet_stack, analyst, created, tiny_app):
    return make_job(carnet_stack, analyst, created, tiny_app)


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"name": ""}, 400, "name"),
        ({"name": "x" * 201}, 400, "name"),
        ({"cron": "61 * * * *"}, 400, "cron"),
        ({"cron": "0 0 31 2 *"}, 400, "cron"),
        ({"cron": "5 4 * * *", "schedule": {"preset": "hourly"}}, 400, "cron"),
        ({"schedule": {"preset": "fortnightly"}}, 400, "schedule.preset"),
        ({"timezone": "Mars/Olympus_Mons"}, 400, "timezone"),
        ({"timezone": None}, 400, "timezone"),
        ({"recipients": []}, 400, "recipients"),
        ({"recipients": ["not-an-email"]}, 400, "recipients"),
        ({"parameters": ["continent"]}, 400, "parameters"),
        ({"misfire_grace_seconds": -1}, 400, "misfire_grace_seconds"),
        ({"timeout_seconds": 0}, 400, "timeout_seconds"),
        ({"max_retries": 11}, 400, "max_retries"),
        ({"retry_backoff_seconds": True}, 400, "retry_backoff_seconds"),
        ({"enabled": "yes"}, 400, "enabled"),
        ({"kind": "report"}, 400, "kind"),
        ({"owner_id": 1}, 400, "owner_id"),
        ({"colour": "red", "name": "fine"}, 400, "colour"),
        ({"app_id": UNKNOWN_ID}, 404, None),
        ({"app_id": None}, 404, None),
        ({"after_job_id": UNKNOWN_ID}, 404, None),
        ({"name": "A fine new name", "max_retries": 3, "cron": "not cron"}, 400, "cron"),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else str(value),
)
def test_patch_with_a_bad_value_changes_nothing(carnet_stack, analyst, patched_job, body, status, field):
    before = get_job(carnet_stack, analyst, patched_job["id"])
    response = patch(carnet_stack, analyst, patched_job["id"], body)
    answer = assert_json_error(response, status)
    assert answer.get("field") == field
    assert get_job(carnet_stack, analyst, patched_job["id"]) == before


def test_patch_to_a_name_taken_is_a_409(carnet_stack, analyst, created, tiny_app, patched_job):
    other = make_job(carnet_stack, analyst, created, tiny_app)
    before = get_job(carnet_stack, analyst, other["id"])
    response = patch(carnet_stack, analyst, other["id"], {"name": patched_job["name"]})
    assert patched_job["name"] in assert_json_error(response, 409)["message"]
    assert get_job(carnet_stack, analyst, other["id"]) == before


def test_enabling_again_sets_the_next_fire_from_now_without_a_backlog(
    carnet_stack, analyst, created, tiny_app
):
    job = make_job(carnet_stack, analyst, created, tiny_app, cron="0 6 * * *")
    scheduled = job["next_run_at"]
    disabled = patch(carnet_stack, analyst, job["id"], {"enabled": False}).json()
    # Disabling keeps the next fire (a disabled job is simply never due).
    assert disabled["enabled"] is False and disabled["next_run_at"] == scheduled
    # While disabled, its fires pass: say its next fire was two days ago.
    with session_scope(carnet_stack.settings.db_url) as session:
        session.get(Job, job["id"]).next_run_at = utcnow() - timedelta(days=2)
    time.sleep(1.5)  # three scheduler polls: a disabled job is not due
    assert runs_of(carnet_stack, analyst, job["id"]) == []

    asked = utcnow()
    enabled = patch(carnet_stack, analyst, job["id"], {"enabled": True}).json()
    answered = utcnow()
    fires = {next_fire_time("0 6 * * *", "Europe/Paris", moment).isoformat() for moment in (asked, answered)}
    assert enabled["enabled"] is True and enabled["next_run_at"] in fires
    time.sleep(1.5)
    assert runs_of(carnet_stack, analyst, job["id"]) == []  # no missed or late run for the passed fires
    [*_, last] = audit_events(carnet_stack, "job.update", f"job/{job['id']}")
    assert last.details["changed"] == ["enabled"]


def test_a_loop_of_after_job_is_refused(carnet_stack, analyst, created, tiny_app):
    first = make_job(carnet_stack, analyst, created, tiny_app)
    second = make_job(carnet_stack, analyst, created, tiny_app, after_job_id=first["id"])
    third = make_job(carnet_stack, analyst, created, tiny_app, after_job_id=second["id"])
    for job, leader in ((first, third), (first, second), (first, first)):
        before = get_job(carnet_stack, analyst, job["id"])
        response = patch(carnet_stack, analyst, job["id"], {"after_job_id": leader["id"]})
        assert assert_json_error(response, 400)["field"] == "after_job_id"
        assert get_job(carnet_stack, analyst, job["id"]) == before
    # Not a loop: the third after the first directly.
    moved = patch(carnet_stack, analyst, third["id"], {"after_job_id": first["id"]})
    assert moved.status_code == 200 and moved.json()["after_job_id"] == first["id"]


def test_a_chain_changed_to_run_itself_is_refused(carnet_stack, analyst, created, tiny_app):
    step = make_job(carnet_stack, analyst, created, tiny_app)
    inner = make_job(
        carnet_stack, analyst, created, None, kind="chain", config={"steps": [step["id"]]}, recipients=[]
    )
    outer = make_job(
        carnet_stack, analyst, created, None, kind="chain", config={"steps": [inner["id"]]}, recipients=[]
    )
    for chain, steps in ((inner, [outer["id"]]), (outer, [outer["id"]]), (inner, [step["id"], inner["id"]])):
        before = get_job(carnet_stack, analyst, chain["id"])
        response = patch(carnet_stack, analyst, chain["id"], {"config": {"steps": steps}})
        body = assert_json_error(response, 400)
        assert body["field"].startswith("config") and "loop" in body["message"]
        assert get_job(carnet_stack, analyst, chain["id"]) == before
    changed = patch(carnet_stack, analyst, outer["id"], {"config": {"steps": [step["id"], inner["id"]]}})
    assert changed.status_code == 200 and changed.json()["config"] == {"steps": [step["id"], inner["id"]]}


def test_a_load_jobs_webhook_and_changes_need_the_kinds_role(carnet_stack, hub_token, analyst, created):
    """A load job changes the warehouse: studio's, like making it; its kind checks a new config again."""
    studio = auth(hub_token(STUDIO))
    config = {"source": DEMO_SOURCE, "table": unique("trigger_load").replace("-", "_"), "mode": "replace"}
    made = requests.post(
        api_url(carnet_stack, "jobs"),
        json={"name": unique("trigger load"), "kind": "load", "cron": None, "config": config},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    job = made.json()
    created.jobs.add(job["id"])
    for method, path, body in (
        ("POST", f"jobs/{job['id']}/webhook", None),
        ("DELETE", f"jobs/{job['id']}/webhook", None),
        ("PATCH", f"jobs/{job['id']}", {"name": "renamed by an analyst"}),
    ):
        response = requests.request(
            method, api_url(carnet_stack, path), json=body, headers=analyst, timeout=30
        )
        assert assert_json_error(response, 403)["message"] == "A load job needs the studio role or above"
    assert get_job(carnet_stack, studio, job["id"]) == job

    # Studio may; a config the kind refuses (or an app for a kind that works on none) changes nothing.
    for body, field in (
        ({"config": {**config, "mode": "merge"}}, "config.mode"),
        ({"config": {**config, "colour": "red"}}, "config.colour"),
        ({"app_id": carnet_stack.app_id}, "app_id"),
    ):
        assert assert_json_error(patch(carnet_stack, studio, job["id"], body), 400)["field"] == field
        assert get_job(carnet_stack, studio, job["id"]) == job
    appended = patch(carnet_stack, studio, job["id"], {"config": {**config, "mode": "append"}})
    assert appended.status_code == 200, appended.text
    stored = appended.json()["config"]
    assert (stored["source"], stored["table"], stored["mode"]) == (DEMO_SOURCE, config["table"], "append")
    hook = make_webhook(carnet_stack, studio, job["id"])
    assert hook.status_code == 201 and get_job(carnet_stack, studio, job["id"])["webhook"] is True
