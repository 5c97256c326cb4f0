"""The ``notebook`` job kind, ``carnet.params``, ``carnet.state`` and ``carnet.alert``, in process: real
papermill runs of a published notebook (kernels as this test's own processes: CARNET_ISOLATION=off), the
real Carnet service on a loopback port (the kernels' carnet.state calls, the job-state API, run details) and
a real SMTP server (aiosmtpd) receiving the runs' mail."""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest
import requests
from sqlalchemy import select
from tornado import web
from tornado.ioloop import IOLoop

from carnet.api_keys import mint_api_key
from carnet.db import session_scope, upgrade
from carnet.db.models import (
    Job,
    JobRun,
    JobState,
    Membership,
    Organization,
    Role,
    RunStatus,
    TokenKind,
    User,
    utcnow,
)
from carnet.hub_auth import make_hub_auth
from carnet.publishing import publish
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.kinds.alerting import record_alert, should_alert
from carnet.service.app import all_handlers
from carnet.settings import CarnetSettings
from carnet.tokens import mint_token
from tests.helpers import free_port

PREFIX = "/services/carnet/"
SCHEDULED = datetime(2026, 1, 2, 6, 0, tzinfo=UTC)

# The notebook under test: a parameters cell, then one that reports what it saw (as JSON on stdout), counts
# its runs in carnet.state, alerts above a threshold and fails on request.
PARAMETERS_CELL = 'threshold = 0\nlabel = "default"'
REPORT_CELL = """\
import json
import carnet

seen = carnet.state.get("counter", 0)
carnet.state.set("counter", seen + 1)
print(json.dumps({
    "scheduled_time": scheduled_time,
    "label": label,
    "threshold": threshold,
    "params": dict(carnet.params),
    "seen": seen,
}))
if threshold > 10:
    carnet.alert("Threshold exceeded", value=threshold)
"""


def make_notebook(*cells) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=list(cells))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def parameters_cell(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})


class InProcessService:
    """The Carnet service's routes on a loopback port, in a thread: what job kernels call."""

    def __init__(self, settings: CarnetSettings, port: int):
        self.settings, self.port = settings, port
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        asyncio.set_event_loop(asyncio.new_event_loop())
        app = web.Application(
            all_handlers(PREFIX),
            carnet_settings=self.settings,
            hub_auth=make_hub_auth(60),
            service_prefix=PREFIX,
            hub_base_url="/",
            cookie_secret=b"test-cookie-secret-of-the-notebook-kind-tests",
            xsrf_cookies=False,
            log=logging.getLogger("carnet.test.service"),
        )
        self._server = app.listen(self.port, address="127.0.0.1")
        self._loop = IOLoop.current()
        self._ready.set()
        self._loop.start()

    def start(self):
        self._thread.start()
        assert self._ready.wait(30)

    def stop(self):
        def shutdown():
            self._server.stop()
            self._loop.stop()

        self._loop.add_callback(shutdown)
        self._thread.join(30)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}api/v1/{path}"


@pytest.fixture
def platform(settings_env, smtp_server, monkeypatch):
    monkeypatch.setenv("CARNET_ISOLATION", "off")  # the kernels are this test's own processes
    port = free_port()
    settings = CarnetSettings(
        api_url=f"http://127.0.0.1:{port}{PREFIX}", smtp_host="127.0.0.1", smtp_port=smtp_server.port
    )
    upgrade(settings.db_url)
    service = InProcessService(settings, port)
    service.start()
    yield settings, service
    service.stop()


@pytest.fixture
def world(platform):
    """acme with ana (analyst, owns the jobs), vic (viewer); the app 'report' publishing the notebook above;
    an analyst API key of ana's (what a program reads runs with)."""
    settings, _ = platform
    with session_scope(settings.db_url) as session:
        acme = Organization(slug="acme", name="Acme")
        ana, vic = User(email="ana@acme.example"), User(email="vic@acme.example")
        session.add_all([acme, ana, vic])
        session.flush()
        session.add_all(
            [
                Membership(user_id=ana.id, org_id=acme.id, role=Role.analyst),
                Membership(user_id=vic.id, org_id=acme.id, role=Role.viewer),
            ]
        )
        session.flush()
        app = publish(
            session,
            settings,
            org_id=acme.id,
            user_id=ana.id,
            slug="report",
            title="Report",
            notebook=make_notebook(parameters_cell(PARAMETERS_CELL), nbformat.v4.new_code_cell(REPORT_CELL)),
        )
        _, key = mint_api_key(
            session, org_id=acme.id, creator_id=ana.id, name="runs reader", role=Role.analyst
        )
        return {"acme": acme.id, "ana": ana.id, "vic": vic.id, "app": app.id, "key": key}


def add_notebook_job(settings, world, *, parameters=None, recipients=(), config=None, app_id=None) -> int:
    with session_scope(settings.db_url) as session:
        job = Job(
            org_id=world["acme"],
            name=f"notebook {uuid.uuid4().hex[:8]}",
            kind="notebook",
            app_id=app_id or world["app"],
            parameters=parameters or {},
            config={"attach": "none", "cooldown_seconds": 3600, **(config or {})},
            cron=None,
            recipients=list(recipients),
            owner_id=world["ana"],
        )
        session.add(job)
        session.flush()
        return job.id


def run_job(settings, job_id, payload=None, scheduled_for=SCHEDULED) -> tuple[RunStatus, JobRun]:
    with session_scope(settings.db_url) as session:
        run = JobRun(
            job_id=job_id,
            status=RunStatus.running,
            trigger="webhook" if payload else "schedule",
            payload=payload,
            scheduled_for=scheduled_for,
        )
        session.add(run)
        session.flush()
        run_id = run.id
    status = JobExecutor(settings, run_id, cell_timeout=120, run_timeout=180).run()
    with session_scope(settings.db_url) as session:
        return status, session.get(JobRun, run_id)


def reported(run: JobRun) -> dict:
    """What the notebook printed in its report cell (read from the executed notebook kept in the run)."""
    notebook = nbformat.read(Path(run.output_dir) / "executed.ipynb", as_version=4)
    texts = [
        output["text"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output["text"].startswith("{")
    ]
    assert len(texts) == 1, texts
    return json.loads(texts[0])


def mails_to(smtp_server, subject_part: str) -> list:
    return [m for m in smtp_server.messages if subject_part in str(m["Subject"])]


def job_state(settings, job_id) -> dict:
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(JobState).where(JobState.job_id == job_id)).all()
        return {row.key: row.value for row in rows}


# -- parameters, scheduled_time, carnet.params, carnet.state ------------------------------------------------
def test_a_run_gets_the_scheduled_time_its_parameters_and_keeps_state_for_its_job_only(
    platform, world, smtp_server
):
    settings, _ = platform
    job = add_notebook_job(
        settings,
        world,
        parameters={"threshold": 1, "label": "job"},
        recipients=["reader@acme.example"],
        config={"attach": "notebook"},
    )
    status, first = run_job(settings, job, payload={"label": "hook"})
    assert status == RunStatus.succeeded, first.error
    seen = reported(first)
    # scheduled_time is the run's scheduled_for, ISO 8601; the payload overrides the job's label.
    assert seen["scheduled_time"] == SCHEDULED.isoformat() == "2026-01-02T06:00:00+00:00"
    assert (seen["label"], seen["threshold"], seen["seen"]) == ("hook", 1, 0)
    assert seen["params"] == {"threshold": 1, "label": "hook", "scheduled_time": "2026-01-02T06:00:00+00:00"}
    # papermill's rule: injected right after the cell tagged "parameters".
    executed = nbformat.read(Path(first.output_dir) / "executed.ipynb", as_version=4)
    assert "parameters" in executed.cells[0].metadata.tags
    assert "injected-parameters" in executed.cells[1].metadata.tags
    assert "scheduled_time = " in executed.cells[1].source

    later = SCHEDULED + timedelta(days=1)
    status, second = run_job(settings, job, scheduled_for=later)
    assert status == RunStatus.succeeded, second.error
    seen = reported(second)
    assert (seen["label"], seen["seen"], seen["scheduled_time"]) == ("job", 1, later.isoformat())
    assert job_state(settings, job) == {"counter": 2}

    # Another job on the same notebook starts from its own, empty state.
    other = add_notebook_job(settings, world)
    status, elsewhere = run_job(settings, other)
    assert status == RunStatus.succeeded, elsewhere.error
    assert reported(elsewhere)["seen"] == 0
    assert job_state(settings, other) == {"counter": 1}
    assert job_state(settings, job) == {"counter": 2}

    # attach "notebook": each run mailed the recipients its executed notebook.
    with session_scope(settings.db_url) as session:
        name = session.get(Job, job).name
    mails = mails_to(smtp_server, name)
    assert len(mails) == 2 and all(m["X-Envelope-To"] == "reader@acme.example" for m in mails)
    parsed = email.message_from_bytes(mails[0].as_bytes(), policy=email.policy.default)
    [attachment] = [part for part in parsed.iter_attachments()]
    assert attachment.get_filename() == "executed.ipynb"
    assert attachment.get_content() == (Path(first.output_dir) / "executed.ipynb").read_bytes()


@pytest.mark.parametrize("fails", [False, True], ids=["succeeded", "failed"])
def test_a_runs_job_token_stops_working_when_the_run_ends(platform, world, fails):
    settings, service = platform
    # The notebook uses its token (carnet.state), keeps a copy of it in its run folder, then ends or fails.
    cells = [
        "import os, pathlib, carnet\n"
        "carnet.state.set('alive', True)\n"
        "pathlib.Path(os.environ['CARNET_RUN_DIR'], 'token.txt').write_text(os.environ['CARNET_TOKEN'])",
        "1 / 0" if fails else "print('done')",
    ]
    with session_scope(settings.db_url) as session:
        app = publish(
            session,
            settings,
            org_id=world["acme"],
            user_id=world["ana"],
            slug=f"token-{uuid.uuid4().hex[:6]}",
            title="Token",
            notebook=make_notebook(*(nbformat.v4.new_code_cell(c) for c in cells)),
        )
        app_id = app.id
    job = add_notebook_job(settings, world, app_id=app_id)
    status, run = run_job(settings, job)
    assert status == (RunStatus.failed if fails else RunStatus.succeeded), run.error
    assert job_state(settings, job) == {"alive": True}  # the token worked while the run ran
    token = (Path(run.output_dir) / "token.txt").read_text()
    url = service.url("job-state/alive")
    assert_error(requests.get(url, headers=bearer(token), timeout=30), 401)
    assert_error(requests.put(url, json={"value": 2}, headers=bearer(token), timeout=30), 401)
    assert job_state(settings, job) == {"alive": True}


def test_a_failed_cell_fails_the_run_once_and_keeps_the_notebook_with_the_error(platform, world):
    settings, service = platform
    # No cell tagged "parameters": papermill injects them at the top.
    failing = make_notebook(
        nbformat.v4.new_code_cell("print('scheduled for', scheduled_time)"),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell("print('never reached')"),
    )
    with session_scope(settings.db_url) as session:
        app = publish(
            session,
            settings,
            org_id=world["acme"],
            user_id=world["ana"],
            slug="fails",
            title="Fails",
            notebook=failing,
        )
        app_id = app.id
    job = add_notebook_job(settings, world, app_id=app_id)
    status, run = run_job(settings, job)
    assert status == RunStatus.failed
    assert run.status == RunStatus.failed and run.attempt == 1 and run.not_before is None
    assert "ZeroDivisionError" in run.error and run.finished_at is not None
    folder = Path(run.output_dir)
    executed = nbformat.read(folder / "executed.ipynb", as_version=4)
    # papermill's banner on top, then the code: parameters injected first, the error in the failing cell.
    assert "papermill-error-cell-tag" in executed.cells[0].metadata.tags
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert "injected-parameters" in code[0].metadata.tags
    assert code[1].outputs[0]["text"] == f"scheduled for {SCHEDULED.isoformat()}\n"
    assert code[2].outputs[0]["ename"] == "ZeroDivisionError"
    assert code[3].get("outputs", []) == []
    assert not [path.name for path in folder.iterdir() if path.name.endswith(".part")]
    # The run's details list the kept notebook, and it downloads.
    headers = {"X-Api-Key": world["key"]}
    detail = requests.get(service.url(f"jobs/{job}/runs/{run.id}"), headers=headers, timeout=30)
    assert detail.status_code == 200, detail.text
    assert detail.json()["status"] == "failed"
    assert "executed.ipynb" in {entry["name"] for entry in detail.json()["outputs"]}
    download = requests.get(
        service.url(f"jobs/{job}/runs/{run.id}/outputs/executed.ipynb"), headers=headers, timeout=30
    )
    assert download.status_code == 200 and "ZeroDivisionError" in download.text
    # Not retried: no second try queued.
    with session_scope(settings.db_url) as session:
        assert session.scalars(select(JobRun).where(JobRun.job_id == job)).all()[0].status == RunStatus.failed


# -- carnet.alert and the cool-down -------------------------------------------------------------------------
def test_an_alert_mails_when_it_becomes_true_and_again_only_after_it_cleared_and_cooled_down(
    platform, world, smtp_server
):
    settings, _ = platform
    job = add_notebook_job(settings, world, parameters={"threshold": 20}, config={"cooldown_seconds": 3600})
    with session_scope(settings.db_url) as session:
        name = session.get(Job, job).name

    def alerts():
        return mails_to(smtp_server, f"Alert: {name}")

    def alert_state():
        with session_scope(settings.db_url) as session:
            row = session.get(Job, job)
            return row.alert_active, row.alert_sent_at

    status, first = run_job(settings, job)
    assert status == RunStatus.succeeded, first.error
    [mail] = alerts()
    assert mail["X-Envelope-To"] == "ana@acme.example"  # no recipients: the owner
    body = email.message_from_bytes(mail.as_bytes(), policy=email.policy.default).get_body().get_content()
    assert "Threshold exceeded" in body and "value: 20" in body
    assert json.loads((Path(first.output_dir) / "alert.json").read_text())["alerts"][0]["details"] == {
        "value": 20
    }
    active, sent_at = alert_state()
    assert active and sent_at is not None

    status, second = run_job(settings, job)  # still true: no new mail
    assert status == RunStatus.succeeded, second.error
    assert len(alerts()) == 1
    assert alert_state() == (True, sent_at)

    status, third = run_job(settings, job, payload={"threshold": 0})  # cleared
    assert status == RunStatus.succeeded, third.error
    assert len(alerts()) == 1
    assert alert_state() == (False, sent_at)
    assert not (Path(third.output_dir) / "alert.json").exists()

    # True again, but the last alert went within the cool-down: no mail (and it counts as active).
    status, _ = run_job(settings, job)
    assert len(alerts()) == 1 and alert_state() == (True, sent_at)
    run_job(settings, job, payload={"threshold": 0})
    assert alert_state()[0] is False

    with session_scope(settings.db_url) as session:  # the cool-down passes
        session.get(Job, job).alert_sent_at = utcnow() - timedelta(seconds=3601)
    status, again = run_job(settings, job)
    assert status == RunStatus.succeeded, again.error
    assert len(alerts()) == 2
    assert alert_state()[0] is True


class FakeJob:
    def __init__(self, active=False, sent_at=None):
        self.alert_active, self.alert_sent_at = active, sent_at


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "active,sent_at,condition,cooldown,expected",
    [
        (False, None, True, 3600, True),  # first time true
        (False, None, False, 3600, False),  # never true
        (True, NOW - timedelta(days=9), True, 3600, False),  # still true: no repeat, however long ago
        (False, NOW - timedelta(seconds=3599), True, 3600, False),  # true again inside the cool-down
        (False, NOW - timedelta(seconds=3600), True, 3600, True),  # true again as the cool-down ends
        (False, NOW - timedelta(seconds=1), True, 0, True),  # no cool-down
        (False, (NOW - timedelta(hours=2)).replace(tzinfo=None), True, 3600, True),  # naive = UTC (SQLite)
    ],
)
def test_the_alert_rule(active, sent_at, condition, cooldown, expected):
    job = FakeJob(active, sent_at)
    assert should_alert(job, NOW, condition, cooldown) is expected
    record_alert(job, NOW, condition, expected)
    assert job.alert_active is condition
    assert job.alert_sent_at == (NOW if expected else sent_at)


# -- the job-state API --------------------------------------------------------------------------------------
def run_token(settings, world, job_id) -> str:
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job_id, status=RunStatus.running, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        return mint_token(
            session,
            kind=TokenKind.job,
            user_id=world["ana"],
            org_id=world["acme"],
            ttl_seconds=600,
            job_run_id=run.id,
        )


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["status"] == status and body["message"]
    if field is not None:
        assert body.get("field") == field, body
    return body


def test_job_state_api_serves_a_job_runs_token_for_its_own_job_only(platform, world):
    settings, service = platform
    job, other = add_notebook_job(settings, world), add_notebook_job(settings, world)
    mine, theirs = run_token(settings, world, job), run_token(settings, world, other)
    url = service.url("job-state/last.seen-id_1")

    assert_error(requests.get(url, headers=bearer(mine), timeout=30), 404)
    put = requests.put(url, json={"value": {"ids": [1, 2], "note": "é"}}, headers=bearer(mine), timeout=30)
    assert put.status_code == 200, put.text
    got = requests.get(url, headers=bearer(mine), timeout=30)
    assert got.status_code == 200 and got.json()["value"] == {"ids": [1, 2], "note": "é"}
    # Another job's run sees nothing of it, and its own value under the same key is its own.
    assert_error(requests.get(url, headers=bearer(theirs), timeout=30), 404)
    assert requests.put(url, json={"value": 7}, headers=bearer(theirs), timeout=30).status_code == 200
    assert requests.get(url, headers=bearer(mine), timeout=30).json()["value"] == {"ids": [1, 2], "note": "é"}
    assert job_state(settings, job) == {"last.seen-id_1": {"ids": [1, 2], "note": "é"}}
    assert job_state(settings, other) == {"last.seen-id_1": 7}
    deleted = requests.delete(url, headers=bearer(mine), timeout=30)
    assert deleted.status_code == 204
    assert job_state(settings, job) == {} and job_state(settings, other) == {"last.seen-id_1": 7}


def test_job_state_api_refuses_everyone_but_a_job_run(platform, world):
    settings, service = platform
    job = add_notebook_job(settings, world)
    url = service.url("job-state/counter")
    with session_scope(settings.db_url) as session:
        viewer_kernel = mint_token(
            session, kind=TokenKind.viewer_kernel, user_id=world["vic"], org_id=world["acme"], ttl_seconds=600
        )
        studio_kernel = mint_token(
            session, kind=TokenKind.studio_kernel, user_id=world["ana"], org_id=world["acme"], ttl_seconds=600
        )
        runless_job = mint_token(
            session, kind=TokenKind.job, user_id=world["ana"], org_id=world["acme"], ttl_seconds=600
        )
    for headers in (
        {"X-Api-Key": world["key"]},
        bearer(viewer_kernel),
        bearer(studio_kernel),
        bearer(runless_job),
    ):
        for method in ("GET", "PUT", "DELETE"):
            response = requests.request(method, url, json={"value": 1}, headers=headers, timeout=30)
            assert_error(response, 403)
    assert_error(requests.get(url, timeout=30), 401)
    assert job_state(settings, job) == {}


def test_job_state_api_limits(platform, world):
    settings, service = platform
    job = add_notebook_job(settings, world)
    headers = bearer(run_token(settings, world, job))

    def put(key, body):
        return requests.put(service.url(f"job-state/{key}"), data=body, headers=headers, timeout=30)

    assert_error(put("bad%20key", json.dumps({"value": 1})), 400, "key")
    assert_error(put("x" * 201, json.dumps({"value": 1})), 400, "key")
    assert_error(put("k", json.dumps({"nothing": 1})), 400, "value")
    assert_error(put("k", "[1, 2]"), 400)
    assert_error(put("k", "{not json"), 400)
    assert_error(put("k", '{"value": NaN}'), 400, "value")
    big = "x" * (64 * 1024)
    assert_error(put("k", json.dumps({"value": big})), 413, "value")
    assert put("k", json.dumps({"value": big[:-2]})).status_code == 200  # 64 KB of JSON exactly
    assert put("x" * 200, json.dumps({"value": None})).status_code == 200
    for index in range(98):
        assert put(f"key{index}", json.dumps({"value": index})).status_code == 200
    assert_error(put("one-too-many", json.dumps({"value": 1})), 400, "key")
    assert put("key0", json.dumps({"value": "changed"})).status_code == 200  # an existing key still changes
    state = job_state(settings, job)
    assert len(state) == 100 and state["key0"] == "changed" and len(state["k"]) == 64 * 1024 - 2


# -- the job's configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config,recipients,field",
    [
        ({"attach": "xlsx"}, ["a@acme.example"], "attach"),
        ({"attach": "pdf"}, [], "recipients"),
        ({"cooldown_seconds": -1}, [], "cooldown_seconds"),
        ({"cooldown_seconds": 31 * 24 * 3600}, [], "cooldown_seconds"),
        ({"cooldown_seconds": "60"}, [], "cooldown_seconds"),
        ({"cooldown_seconds": True}, [], "cooldown_seconds"),
        ({"attachment": "pdf"}, [], "config"),
        ("pdf", [], "config"),
    ],
)
def test_bad_notebook_config_is_a_400_naming_the_field(platform, world, config, recipients, field):
    settings, service = platform
    body = {
        "name": "nb",
        "kind": "notebook",
        "app_id": world["app"],
        "config": config,
        "recipients": recipients,
        "cron": None,
    }
    response = requests.post(service.url("jobs"), json=body, headers={"X-Api-Key": world["key"]}, timeout=30)
    assert_error(response, 400, field)
    with session_scope(settings.db_url) as session:
        assert session.scalars(select(Job)).all() == []


def test_a_notebook_job_is_made_with_its_defaults(platform, world):
    settings, service = platform
    body = {"name": "nb", "kind": "notebook", "app_id": world["app"], "cron": None}
    response = requests.post(service.url("jobs"), json=body, headers={"X-Api-Key": world["key"]}, timeout=30)
    assert response.status_code == 201, response.text
    with session_scope(settings.db_url) as session:
        job = session.get(Job, response.json()["id"])
        assert (job.kind, job.config, job.recipients) == (
            "notebook",
            {"attach": "none", "cooldown_seconds": 3600},
            [],
        )


# -- the kernel helpers outside a job run -------------------------------------------------------------------
def test_params_and_alert_outside_a_job_run(monkeypatch, tmp_path, capsys):
    import carnet

    monkeypatch.delenv("CARNET_JOB_PARAMS", raising=False)
    monkeypatch.delenv("CARNET_RUN_DIR", raising=False)
    assert dict(carnet.params) == {} and "scheduled_time" not in carnet.params
    with pytest.raises(TypeError):
        carnet.params["x"] = 1  # read-only
    carnet.alert("Only a note here")
    assert "not in a job run" in capsys.readouterr().out
    with pytest.raises(ValueError):
        carnet.alert("  ")
    monkeypatch.setenv("CARNET_JOB_PARAMS", json.dumps({"scheduled_time": "2026-01-02T06:00:00+00:00"}))
    monkeypatch.setenv("CARNET_RUN_DIR", str(tmp_path))
    assert carnet.params["scheduled_time"] == "2026-01-02T06:00:00+00:00"
    carnet.alert("First", n=1)
    carnet.alert("Second", when=SCHEDULED)
    recorded = json.loads((tmp_path / "alert.json").read_text())["alerts"]
    assert recorded == [
        {"message": "First", "details": {"n": 1}},
        {"message": "Second", "details": {"when": str(SCHEDULED)}},
    ]
    assert [path.name for path in tmp_path.iterdir()] == ["alert.json"]


def test_an_alert_file_that_is_a_link_fails_the_run_instead_of_being_read(tmp_path):
    from carnet.scheduler.executor import JobRunError
    from carnet.scheduler.kinds.notebook import read_alerts

    secret = tmp_path / "secret.txt"
    secret.write_text('{"alerts": [{"message": "root-only content"}]}')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert read_alerts(run_dir) == []
    (run_dir / "alert.json").symlink_to(secret)
    with pytest.raises(JobRunError):
        read_alerts(run_dir)
    (run_dir / "alert.json").unlink()
    (run_dir / "alert.json").write_text("not json")
    with pytest.raises(JobRunError):
        read_alerts(run_dir)


# -- in the real stack: the kernel runs as the job owner's OS account ---------------------------------------
def test_a_notebook_job_in_the_stack_keeps_state_and_alerts_as_the_owners_account(
    carnet_stack, hub_token, created, smtp_server
):
    from tests.api_support import api_url, auth, publish_notebook, unique
    from tests.helpers import wait_until

    headers = auth(hub_token("analyst@acme.example"))
    notebook = make_notebook(parameters_cell(PARAMETERS_CELL), nbformat.v4.new_code_cell(REPORT_CELL))
    app_id = publish_notebook(carnet_stack, headers, notebook, created, "Notebook kind", slug="nb-kind")
    name = unique("notebook job")
    job = requests.post(
        api_url(carnet_stack, "jobs"),
        json={
            "name": name,
            "kind": "notebook",
            "app_id": app_id,
            "cron": None,
            "parameters": {"threshold": 20},
        },
        headers=headers,
        timeout=60,
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    created.jobs.add(job_id)

    def run_now() -> dict:
        queued = requests.post(api_url(carnet_stack, f"jobs/{job_id}/runs"), headers=headers, timeout=60)
        assert queued.status_code == 202, queued.text
        path = f"jobs/{job_id}/runs/{queued.json()['id']}"

        def finished():
            run = requests.get(api_url(carnet_stack, path), headers=headers, timeout=60).json()
            return run if run["status"] in ("succeeded", "failed") else None

        run = wait_until(finished, timeout=240, interval=1, what="the notebook run")
        assert run["status"] == "succeeded", run["error"]
        executed = requests.get(
            api_url(carnet_stack, path + "/outputs/executed.ipynb"), headers=headers, timeout=60
        )
        assert executed.status_code == 200
        notebook = nbformat.reads(executed.text, as_version=4)
        [text] = [
            output["text"]
            for cell in notebook.cells
            for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output["text"].startswith("{")
        ]
        return {**run, "seen": json.loads(text)}

    first = run_now()
    assert first["seen"]["seen"] == 0 and first["seen"]["threshold"] == 20
    assert first["seen"]["scheduled_time"] == first["seen"]["params"]["scheduled_time"]
    assert "alert.json" in {entry["name"] for entry in first["outputs"]}
    mail = wait_until(
        lambda: mails_to(smtp_server, f"Alert: {name}") or None, timeout=60, what="the alert mail"
    )
    assert len(mail) == 1 and mail[0]["X-Envelope-To"] == "analyst@acme.example"
    with session_scope(carnet_stack.settings.db_url) as session:
        folder = Path(session.get(JobRun, first["id"]).output_dir)
    # Written by the kernel, as the owner's account (not the scheduler's root) when accounts are on.
    from carnet.isolation import accounts_enabled

    if accounts_enabled():
        assert (folder / "alert.json").stat().st_uid != 0

    second = run_now()
    assert second["seen"]["seen"] == 1  # carnet.state kept the first run's counter
    assert len(mails_to(smtp_server, f"Alert: {name}")) == 1  # still true: no second alert
    assert job_state(carnet_stack.settings, job_id) == {"counter": 2}
