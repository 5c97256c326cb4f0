"""End to end on a real JupyterHub + Carnet service + Viewer + scheduler (the demo's embedded defaults)."""

from __future__ import annotations

import io
import json
import re
import time
from urllib.parse import quote

import pytest
import requests
from pypdf import PdfReader
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Role, User
from carnet.demo import DEMO_SOURCE, DEMO_TABLE, DEMO_USERS
from carnet.isolation import accounts_enabled
from carnet.warehouse import connect_waiting
from tests.helpers import execute_in_kernel, start_server, user_path, wait_until

ACME_VIEWER = "viewer@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"
AUTHORS = [email for _, email, role in DEMO_USERS if role != Role.viewer]


def warehouse_frame(stack, sql: str):
    path = stack.settings.warehouse_path(1)
    with connect_waiting(path, read_only=True) as con:
        return con.sql(sql).df()


@pytest.mark.parametrize("email", AUTHORS)
def test_authors_reach_their_jupyterlab(carnet_stack, login, email):
    session = login(email)
    answer = start_server(carnet_stack.url, session, email)
    assert answer.status_code in (201, 202)
    page = session.get(f"{carnet_stack.url}{user_path(email)}lab", timeout=60)
    assert page.status_code == 200
    assert "JupyterLab" in page.text


def test_viewer_is_refused_a_server_and_lands_in_the_viewer(carnet_stack, login):
    session = login(ACME_VIEWER)
    answer = start_server(carnet_stack.url, session, ACME_VIEWER)
    assert answer.status_code == 403
    user = session.get(f"{carnet_stack.url}/hub/api/users/{quote(ACME_VIEWER)}", timeout=10).json()
    assert not user.get("servers")
    home = session.get(f"{carnet_stack.url}/hub/", timeout=30)
    assert home.url.endswith("/services/carnet/viewer/")
    assert "World development" in home.text


def test_viewer_opens_the_published_app_with_warehouse_values(carnet_stack, login):
    session = login(ACME_VIEWER)
    gallery = session.get(f"{carnet_stack.url}/services/carnet/viewer/", timeout=30)
    links = re.findall(r'href="(/services/carnet-viewer/apps/\d+)"', gallery.text)
    demo = {carnet_stack.app_id, carnet_stack.dash_app_id}
    assert sorted(links) == sorted(f"/services/carnet-viewer/apps/{app}" for app in demo)
    assert "World dashboard" in gallery.text

    page = session.get(f"{carnet_stack.url}/services/carnet-viewer/apps/{carnet_stack.app_id}", timeout=120)
    assert page.status_code == 200
    richest = warehouse_frame(
        carnet_stack,
        f"SELECT country FROM {DEMO_TABLE} WHERE continent = 'Europe' AND year = "
        f"(SELECT max(year) FROM {DEMO_TABLE}) ORDER BY gdpPercap DESC LIMIT 5",
    )["country"].tolist()
    for country in richest:
        assert country in page.text
    population = warehouse_frame(
        carnet_stack,
        f"SELECT sum(pop) AS p FROM {DEMO_TABLE} WHERE continent = 'Africa' AND year = "
        f"(SELECT max(year) FROM {DEMO_TABLE})",
    )["p"][0]
    assert str(int(population)) in page.text
    # No code is shown: the notebook's source never reaches the page.
    assert "carnet.sources[" not in page.text
    assert "groupby(" not in page.text


def test_other_organizations_app_is_a_404_like_an_unknown_app(carnet_stack, login):
    session = login(GLOBEX_VIEWER)
    gallery = session.get(f"{carnet_stack.url}/services/carnet/viewer/", timeout=30)
    assert gallery.status_code == 200
    assert "World development" not in gallery.text
    assert "/apps/" not in gallery.text

    acme_app = session.get(
        f"{carnet_stack.url}/services/carnet-viewer/apps/{carnet_stack.app_id}", timeout=60
    )
    unknown = session.get(f"{carnet_stack.url}/services/carnet-viewer/apps/987654", timeout=60)
    assert acme_app.status_code == unknown.status_code == 404
    assert acme_app.text == unknown.text

    api_app = session.get(f"{carnet_stack.url}/services/carnet/api/v1/apps/{carnet_stack.app_id}", timeout=30)
    api_unknown = session.get(f"{carnet_stack.url}/services/carnet/api/v1/apps/987654", timeout=30)
    assert api_app.status_code == api_unknown.status_code == 404
    assert api_app.json() == api_unknown.json() == {"status": 404, "message": "No such app"}


def test_studio_kernel_reads_a_source_without_any_credential(carnet_stack, login, hub_token):
    email = "studio@acme.example"
    session = login(email)
    start_server(carnet_stack.url, session, email)
    token = hub_token(email)
    headers = {"Authorization": f"token {token}"}
    base = f"{carnet_stack.url}{user_path(email)}"
    kernel = requests.post(f"{base}/api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
    assert kernel.status_code == 201, kernel.text
    ws_url = f"ws://127.0.0.1:{carnet_stack.ports['HUB']}{user_path(email)}api/kernels/{kernel.json()['id']}/channels"
    code = (
        "import carnet, json, os\n"
        f"df = carnet.sources['{DEMO_SOURCE}'].df()\n"
        "print(json.dumps({'names': carnet.sources.list(), 'rows': len(df), 'columns': list(df.columns),\n"
        "                  'first': df.iloc[0].to_dict(), 'env': dict(os.environ)}, default=str))"
    )
    result = execute_in_kernel(ws_url, token, code, timeout=90)
    assert result["error"] is None, result
    out = json.loads(result["stdout"])
    expected = warehouse_frame(carnet_stack, f"SELECT count(*) AS n FROM {DEMO_TABLE}")["n"][0]
    assert out["names"] == [DEMO_SOURCE]
    assert out["rows"] == expected
    assert out["columns"][:3] == ["country", "continent", "year"]
    assert out["first"]["country"] == "Afghanistan"

    env = out["env"]
    assert env["CARNET_TOKEN"].startswith("ck_")
    # carnet.dash draws as in the Viewer: the map outlines the Viewer serves (same origin), the org's colour.
    assert env["CARNET_TOPOJSON_URL"] == "/services/carnet-viewer/carnet/topojson/"
    outlines = requests.get(f"{carnet_stack.url}{env['CARNET_TOPOJSON_URL']}world_110m.json", timeout=30)
    assert outlines.status_code == 200 and outlines.json()["type"] == "Topology"
    # The colour is the one the org had when this server started (tests/test_units.py checks which).
    assert re.fullmatch(r"(#[0-9a-f]{6})?", env.get("CARNET_BRAND_COLOR", ""))
    for forbidden in ("CARNET_DB_URL", "CARNET_DATA_DIR", "CARNET_SMTP_HOST", "CARNET_OUTBOX_DIR"):
        assert forbidden not in env
    secrets = [
        (carnet_stack.data_dir / "secrets" / name).read_text().strip()
        for name in ("hub_cookie_secret", "proxy_auth_token")
    ]
    values = "\n".join(env.values())
    for secret in secrets:
        assert secret not in values
    assert "carnet.sqlite" not in values and "warehouse.duckdb" not in values


def test_scheduled_job_mails_a_pdf_with_the_data(carnet_stack, hub_token, smtp_server):
    token = hub_token("analyst@acme.example")
    api = f"{carnet_stack.url}/services/carnet/api/v1"
    headers = {"Authorization": f"token {token}"}
    recipient = f"board-{int(time.time())}@acme.example"
    created = requests.post(
        f"{api}/jobs",
        json={
            "name": f"Every 3 seconds {recipient}",
            "app_id": carnet_stack.app_id,
            "cron": "* * * * * */3",
            "parameters": {"continent": "Asia"},
            "recipients": [recipient],
        },
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    job = created.json()
    try:
        message = wait_until(
            lambda: next((m for m in smtp_server.messages if recipient in m["To"]), None),
            timeout=180,
            what="the report mail",
        )
    except TimeoutError:
        runs = requests.get(f"{api}/jobs/{job['id']}/runs", headers=headers, timeout=30).json()
        # Where the run is stuck: the scheduler logs each step of a run (carnet/scheduler/executor.py).
        steps = [line for line in carnet_stack.log_tail(400).splitlines() if "scheduler" in line.lower()]
        raise AssertionError(f"no mail; the job's runs: {runs}\n" + "\n".join(steps[-30:])) from None
    finally:
        assert requests.delete(f"{api}/jobs/{job['id']}", headers=headers, timeout=30).status_code == 204
    runs = [p for p in message.walk() if p.get_content_type() == "application/pdf"]
    assert len(runs) == 1
    text = "\n".join(
        page.extract_text() for page in PdfReader(io.BytesIO(runs[0].get_payload(decode=True))).pages
    )
    richest_asia = warehouse_frame(
        carnet_stack,
        f"SELECT country FROM {DEMO_TABLE} WHERE continent = 'Asia' AND year = "
        f"(SELECT max(year) FROM {DEMO_TABLE}) ORDER BY gdpPercap DESC LIMIT 3",
    )["country"].tolist()
    for country in richest_asia:
        assert country in text
    assert "Life expectancy in Asia" in text or "Asia" in text


def test_api_rejects_anonymous_calls(carnet_stack):
    for path in ("sources", "apps", "jobs", "me"):
        response = requests.get(f"{carnet_stack.url}/services/carnet/api/v1/{path}", timeout=30)
        assert response.status_code == 401
        assert response.json()["status"] == 401
        assert response.json()["message"]


@pytest.mark.parametrize(
    "path,message",
    [
        ("apps/424242", "No such app"),
        ("jobs/424242", "No such job"),
        ("sources/nope", "No source named 'nope'"),
        ("no/such/route", "No such API endpoint"),
    ],
)
def test_api_unknown_ids_are_json_404(carnet_stack, hub_token, path, message):
    token = hub_token("admin@acme.example")
    response = requests.get(
        f"{carnet_stack.url}/services/carnet/api/v1/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"status": 404, "message": message}


@pytest.mark.skipif(not accounts_enabled(), reason="Carnet is not running as root: no per-person OS accounts")
def test_studio_kernel_runs_as_its_own_account_and_cannot_read_carnet_files(carnet_stack, login, hub_token):
    # Another person's home exists once they have had a server: give the studio user one first.
    start_server(carnet_stack.url, login("studio@acme.example"), "studio@acme.example")
    email = "analyst@acme.example"
    session = login(email)
    start_server(carnet_stack.url, session, email)
    token = hub_token(email)
    kernel = requests.post(
        f"{carnet_stack.url}{user_path(email)}api/kernels",
        json={"name": "python3"},
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    assert kernel.status_code == 201, kernel.text
    ws_url = f"ws://127.0.0.1:{carnet_stack.ports['HUB']}{user_path(email)}api/kernels/{kernel.json()['id']}/channels"
    data = carnet_stack.data_dir
    with session_scope(carnet_stack.settings.db_url) as db:
        ids = {u.email: u.id for u in db.scalars(select(User)).all()}
    targets = {
        "database": data / "carnet.sqlite",
        "hub_database": data / "jupyterhub.sqlite",
        "secret": data / "secrets" / "hub_cookie_secret",
        "warehouse": carnet_stack.settings.warehouse_path(1),
        "snapshot": next(carnet_stack.settings.published_dir.rglob("*.ipynb")),
        "studio_users_home": data / "homes" / f"u{ids['studio@acme.example']}",
    }
    code = (
        "import json, os\n"
        "def readable(path):\n"
        "    try:\n"
        "        if os.path.isdir(path):\n"
        "            os.listdir(path)\n"
        "        else:\n"
        "            open(path, 'rb').read(1)\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        f"targets = {json.dumps({k: str(v) for k, v in targets.items()})}\n"
        "result = {name: readable(path) for name, path in targets.items()}\n"
        "print(json.dumps({'reach': result, 'uid': os.getuid(), 'home': os.environ['HOME'],\n"
        "                  'own_home': readable(os.environ['HOME'])}))"
    )
    result = execute_in_kernel(ws_url, token, code, timeout=90)
    assert result["error"] is None, result
    out = json.loads(result["stdout"])
    assert out["uid"] != 0
    assert out["home"] == str(data / "homes" / f"u{ids[email]}") and out["own_home"]
    # Everything but the person's own home is out of reach: data comes only through the API.
    assert not any(out["reach"].values()), out["reach"]
