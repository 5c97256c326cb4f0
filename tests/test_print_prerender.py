"""Pre-rendered print pages of report jobs (scheduler/kinds/report.py ``prerender_report_pages``,
extension/viewer_print_warm.py, render_pool.py ``print_pool_key``).

In process (no stack): the scheduler's step asks a loopback stand-in of the Viewer to pre-render exactly the
report jobs on the Viewer path whose fire is near, once each, with the print token and filter query their run
will use; a refused or unreachable Viewer is only logged; a scheduled run's ``prepare`` takes the kept token
only for its own fire time, owner and filters (manual runs, changed filters: a new token, a cold render).

On a real stack (slow; run under the machine lock): the Viewer pre-renders a print page only for a valid
token; its ``print/<token>?<query>`` is handed the pooled kernel, while another token or another query never
is; a page pre-rendered before a data load is not used after it (cold render, new data); two scheduled
report jobs firing together are printed, one from the page the scheduler's browser opened ahead and held
(CARNET_REPORT_PAGES_HELD=1), the other from the Viewer's pre-rendered page, each PDF with its own text; and
a held page is not printed after a load (its run prints cold, over the new data).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import App, Job, JobRun, RunStatus, User, utcnow
from carnet.print_pages import print_payload, sign_print
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.kinds.report import (
    PRERENDERED,
    PrerenderedPrint,
    PrerenderedPrints,
    prerender_report_pages,
)
from carnet.scheduler.viewer_pdf import ViewerPdfSettings, ViewerPrinter
from tests.test_units import do_publish, notebook, settings, world  # noqa: F401 - fixtures

VIEWER_PREFIX = "/services/carnet-viewer/"


# -- in process: the scheduler's side ---------------------------------------------------------------------
@pytest.fixture
def viewer_stand_in():
    """A loopback server answering the warm-print route as the Viewer does (202 "scheduled"); it records
    the paths it was asked."""

    class WarmPrint(http.server.BaseHTTPRequestHandler):
        asked: list[str] = []

        def do_POST(self):  # noqa: N802 - http.server's name
            WarmPrint.asked.append(self.path)
            body = json.dumps({"status": 202, "message": "scheduled", "state": "scheduled"}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    WarmPrint.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WarmPrint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}{VIEWER_PREFIX}", WarmPrint.asked
    server.shutdown()


@pytest.fixture(autouse=True)
def nothing_kept():
    PRERENDERED.clear()
    yield
    PRERENDERED.clear()


def add_report(settings, world, app_id, *, in_seconds, **fields) -> int:  # noqa: F811 - the fixture's name
    with session_scope(settings.db_url) as session:
        job = Job(
            org_id=world["acme"],
            name=f"report {uuid.uuid4().hex[:6]}",
            kind="report",
            app_id=app_id,
            cron="0 6 * * *",
            recipients=["x@acme.example"],
            owner_id=world["ana"],
            next_run_at=utcnow() + timedelta(seconds=in_seconds),
            **fields,
        )
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def published(settings, world):  # noqa: F811 - the fixtures' names
    app_id, _ = do_publish(
        settings, world["acme"], notebook("Quarterly"), slug="quarterly", title="Quarterly"
    )
    return app_id


def test_the_scheduler_asks_for_the_pages_of_near_report_fires_once(
    settings,  # noqa: F811
    world,  # noqa: F811
    published,
    viewer_stand_in,
):
    viewer_url, asked = viewer_stand_in
    near = add_report(
        settings, world, published, in_seconds=30, config={"filters": {"region": ["South", "East"]}}
    )
    add_report(settings, world, published, in_seconds=600)  # beyond the lead
    add_report(settings, world, published, in_seconds=30, parameters={"x": 1})  # papermill path: no page
    add_report(settings, world, published, in_seconds=30, enabled=False)
    with session_scope(settings.db_url) as session:
        session.add(
            Job(
                org_id=world["acme"],
                name="a notebook job",
                kind="notebook",
                app_id=published,
                cron="0 6 * * *",
                owner_id=world["ana"],
                next_run_at=utcnow() + timedelta(seconds=30),
            )
        )
    states = prerender_report_pages(settings, viewer_url, 90, 300)
    assert states == [(near, "scheduled")]
    [path] = asked
    match = re.fullmatch(rf"{VIEWER_PREFIX}carnet/warm-print/([^/?]+)\?region=South%2CEast", path)
    assert match, path
    # The token the run will use: a print token of the app, read as the job's owner, living past the fire
    # time + the PDF's time budget.
    payload = print_payload(settings, match.group(1))
    assert (payload["app"], payload["user"]) == (published, world["ana"])
    assert payload["exp"] - time.time() >= 90 + 300
    with session_scope(settings.db_url) as session:
        fire = session.get(Job, near).next_run_at
    assert (near, fire) in PRERENDERED and len(PRERENDERED) == 1
    # Prepared once: the next ticks do not ask again.
    assert prerender_report_pages(settings, viewer_url, 90, 300) == []
    assert len(asked) == 1


def test_the_schedulers_tick_asks_only_when_turned_on(settings, world, published, viewer_stand_in):  # noqa: F811
    from carnet.scheduler.app import SchedulerService

    viewer_url, asked = viewer_stand_in
    job = add_report(settings, world, published, in_seconds=30)
    printer = ViewerPrinter("", ViewerPdfSettings(viewer_url=viewer_url, time_budget=300))  # never launched
    assert SchedulerService().report_prerender_seconds == 90  # on by default
    off = SchedulerService(report_prerender_seconds=0)
    off.printer = printer
    assert off.tick(settings) is False and asked == []  # turned off: nothing asked
    on = SchedulerService(report_prerender_seconds=90)
    on.printer = printer
    assert on.tick(settings) is False  # the fire is 30 s away: no run yet, its page asked for
    assert len(asked) == 1 and "/carnet/warm-print/" in asked[0]
    with session_scope(settings.db_url) as session:
        assert (job, session.get(Job, job).next_run_at) in PRERENDERED


def test_an_unreachable_viewer_is_only_logged(settings, world, published, caplog):  # noqa: F811
    job = add_report(settings, world, published, in_seconds=20)
    closed = f"http://127.0.0.1:{free_port()}{VIEWER_PREFIX}"
    with caplog.at_level(logging.INFO, logger="carnet.scheduler"):
        [(job_id, state)] = prerender_report_pages(settings, closed, 90, 300)
    assert job_id == job and state.startswith("unreachable")
    assert f"Pre-render of report job {job}'s print page asked for: unreachable" in caplog.text
    assert "warm-print" not in caplog.text  # the URL holds the token: never logged


def test_two_print_tokens_signed_at_once_for_the_same_reader_differ(settings, world, published):  # noqa: F811
    with session_scope(settings.db_url) as session:
        app = session.get(App, published)
        first, second = (sign_print(session, settings, app, as_user=world["ana"]) for _ in range(2))
    assert first != second  # a page pre-rendered for one is never the other's
    assert print_payload(settings, first)["exp"] == print_payload(settings, second)["exp"]


def test_the_kept_tokens_are_bounded_and_expire():
    kept = PrerenderedPrints(limit=3)
    fire = utcnow()
    for job_id in range(5):
        kept.keep(job_id, fire, PrerenderedPrint(f"t{job_id}", "", 1, 1, time.time() + 60))
    assert len(kept) == 3 and (0, fire) not in kept and (4, fire) in kept
    kept.keep(9, fire, PrerenderedPrint("old", "", 1, 1, time.time() - 1))
    kept.keep(10, fire, PrerenderedPrint("new", "", 1, 1, time.time() + 60))
    assert (9, fire) not in kept  # expired: dropped by the next keep
    assert kept.take(10, fire.replace(tzinfo=None)).token == "new"  # naive or aware: the same fire
    assert kept.take(10, fire) is None  # taken once


def test_held_pages_are_closed_when_their_entry_is_dropped_expired_or_cleared():
    class Holder:  # records what a ViewerPrinter would close (PrerenderedPrint.release -> discard)
        def __init__(self):
            self.closed = []

        def discard(self, page):
            self.closed.append(page)

    holder, kept, fire = Holder(), PrerenderedPrints(limit=2), utcnow()

    def entry(page, ttl=60):
        return PrerenderedPrint(page, "", 1, 1, time.time() + ttl, held=page, printer=holder)

    kept.keep(1, fire, entry("page-1"))
    kept.keep(2, fire, entry("page-2", ttl=-1))
    assert kept.held() == 2 and holder.closed == []
    kept.keep(3, fire, entry("page-3"))  # page-2 expired: closed; two kept (page-1, page-3)
    assert holder.closed == ["page-2"] and kept.held() == 2
    kept.keep(4, fire, entry("page-4"))  # over the limit: the oldest (page-1) closed
    assert holder.closed == ["page-2", "page-1"]
    assert kept.take(3, fire).held == "page-3"  # taken by its run: not closed here (the run prints it)
    kept.clear()
    assert holder.closed == ["page-2", "page-1", "page-4"] and kept.held() == 0


def run_of(settings, job_id, trigger="schedule") -> int:  # noqa: F811
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        run = JobRun(job_id=job_id, status=RunStatus.running, trigger=trigger, scheduled_for=job.next_run_at)
        session.add(run)
        session.flush()
        return run.id


def prepared_token(settings, run_id, viewer_url) -> tuple[str, bool]:  # noqa: F811
    printer = ViewerPrinter("", ViewerPdfSettings(viewer_url=viewer_url, time_budget=300))  # never launched
    context = JobExecutor(settings, run_id, printer=printer).before_start()
    return context.print_token, bool(context.extras.get("prerendered"))


def test_a_scheduled_run_prints_the_token_kept_for_its_fire_time_only(
    settings,  # noqa: F811
    world,  # noqa: F811
    published,
    viewer_stand_in,
):
    viewer_url, asked = viewer_stand_in
    job = add_report(settings, world, published, in_seconds=30, config={"filters": {"region": "South"}})
    prerender_report_pages(settings, viewer_url, 90, 300)
    kept = re.search(r"warm-print/([^/?]+)\?", asked[0]).group(1)
    # A manual run at the same time: a token of its own (the kept one stays for the scheduled run).
    manual, used = prepared_token(settings, run_of(settings, job, "manual"), viewer_url)
    assert manual != kept and not used
    token, used = prepared_token(settings, run_of(settings, job), viewer_url)
    assert token == kept and used
    # Used once: a retry of the fire signs anew.
    again, used = prepared_token(settings, run_of(settings, job), viewer_url)
    assert again != kept and not used
    assert len(PRERENDERED) == 0


def test_a_token_kept_for_other_filters_is_not_used(settings, world, published, viewer_stand_in):  # noqa: F811
    viewer_url, asked = viewer_stand_in
    job = add_report(settings, world, published, in_seconds=30, config={"filters": {"region": "South"}})
    prerender_report_pages(settings, viewer_url, 90, 300)
    kept = re.search(r"warm-print/([^/?]+)\?", asked[0]).group(1)
    with session_scope(settings.db_url) as session:
        session.get(Job, job).config = {"filters": {"region": "North"}}  # changed after the pre-render
    token, used = prepared_token(settings, run_of(settings, job), viewer_url)
    assert token != kept and not used
    assert print_payload(settings, token)["user"] == world["ana"]


def test_a_print_pages_key_is_its_tokens_and_querys_only():
    from carnet.extension.render_pool import pool_key, print_pool_key

    answer = {
        "token": "ck_kernel_1",
        "kind": "job",
        "notebook_path": "1/2/v1.ipynb",
        "app": {"id": 2, "title": "Sales", "version": 1, "org_id": 1},
        "user": {"id": 7, "email": "owner@x", "role": "studio"},
        "preview_by": None,
        "branding": {},
        "frame_ancestors": None,
        "data_version": "d1",
    }
    base = print_pool_key(answer, "region=South&year=2026", "token-a")
    # The kernel token the service minted for this request is not part of it (each request gets its own).
    assert print_pool_key({**answer, "token": "ck_kernel_2"}, "year=2026&region=South", "token-a") == base
    different = [
        print_pool_key(answer, "region=South&year=2026", "token-b"),
        print_pool_key(answer, "region=North&year=2026", "token-a"),
        print_pool_key({**answer, "data_version": "d2"}, "region=South&year=2026", "token-a"),
        print_pool_key(
            {**answer, "app": {**answer["app"], "version": 2}}, "region=South&year=2026", "token-a"
        ),
    ]
    assert all(key != base for key in different)
    # Not what a person's visit computes, whatever their row context: no visit is handed a print page.
    person = pool_key({**answer, "row_context": base.row_context[6:]}, "region=South&year=2026")
    assert person != base and not person.row_context.startswith("print:")
    # A service that does not say its data version: never pooled.
    assert print_pool_key({k: v for k, v in answer.items() if k != "data_version"}, "", "token-a") is None


def print_answer(**changes) -> dict:
    answer = {
        "token": "ck_kernel_1",
        "kind": "job",
        "notebook_path": "1/2/v1.ipynb",
        "app": {"id": 2, "title": "Sales", "version": 1, "org_id": 1},
        "user": {"id": 7, "email": "owner@x", "role": "studio"},
        "preview_by": None,
        "branding": {},
        "frame_ancestors": None,
        "data_version": "d1",
    }
    answer.update(changes)
    return answer


def test_the_pool_renders_a_print_page_once_into_free_places_and_hands_it_to_its_key_only(monkeypatch):
    from carnet.extension import render_pool
    from carnet.extension.prerender import RenderContext
    from carnet.extension.render_pool import print_pool_key
    from tests.test_viewer_pool import make_pool, pooled, session_answer

    renders, snapshots = [], []

    async def fake_prerender(context, session, slot, km):  # Voila's render: a kernel and its HTML
        await asyncio.sleep(0.05)
        kernel_id = f"k{len(renders) + 1}"
        renders.append(session["token"])
        km.kernel_apps[kernel_id] = slot.app
        return kernel_id, f"<html>{kernel_id}</html>"

    async def no_swap(self, kernel_id, token):  # the kernel's token swap needs a real kernel
        return None

    async def fake_snapshot(*args):
        snapshots.append(args)

    monkeypatch.setattr(render_pool, "prerender", fake_prerender)
    monkeypatch.setattr(render_pool, "record_snapshot", fake_snapshot)
    monkeypatch.setattr(render_pool.RenderPool, "_use_token", no_swap)
    context = RenderContext(None, "1/2/v1.ipynb", {}, {"QUERY_STRING": "region=South"})
    key = print_pool_key(print_answer(), "region=South", "token-a")

    async def session():
        return print_answer(token=f"ck_kernel_{len(renders) + 1}")

    async def scenario():
        off, _ = make_pool(viewer_pool_size=0)
        assert off.prerender_print(key, context, session, "token-a") == "off"
        pool, kernels = make_pool(viewer_max_kernels_per_app=2)
        # At the app's cap (an open page + a person's pooled page): busy, and the person's page stays.
        kernels.kernel_apps["open"] = (2, 1)
        person = render_pool.pool_key(session_answer(), "")
        pooled(pool, kernels, "persons-page", person)
        assert pool.prerender_print(key, context, session, "token-a") == "busy"
        assert pool.pooled(person) == 1 and kernels.stopped == []
        kernels.kernel_apps.pop("open")
        assert pool.prerender_print(key, context, session, "token-a") == "scheduled"
        assert pool.prerender_print(key, context, session, "token-a") == "rendering"
        # Another token or another query: not this page (nothing waits for them).
        for other in (
            print_pool_key(print_answer(), "region=South", "token-b"),
            print_pool_key(print_answer(), "region=North", "token-a"),
        ):
            assert await pool.take_print(other, "visitor:x", "ck_new", wait=5) is None
        # The token's own request waits for the render under way and is handed its page.
        entry = await pool.take_print(key, "visitor:y", "ck_new", wait=5)
        assert entry is not None and entry.html == "<html>k1</html>"
        assert kernels.kernel_owners["k1"] == "visitor:y"
        await asyncio.sleep(0.2)
        assert renders == ["ck_kernel_1"] and snapshots == []  # rendered once, never refilled nor shared
        assert await pool.take_print(key, "visitor:z", "ck_new", wait=0) is None
        kernels.kernel_apps.pop("k1")  # the printed page's kernel is shut down
        # A page pre-rendered over older data: dropped when a print with newer data comes.
        assert pool.prerender_print(key, context, session, "token-a") == "scheduled"
        await asyncio.sleep(0.2)
        newer = print_pool_key(print_answer(data_version="d2"), "region=South", "token-a")
        assert await pool.take_print(newer, "visitor:y", "ck_new", wait=0) is None
        # (the person's page of the older data goes too, as on any visit with newer data)
        assert sorted(kernels.stopped) == ["k2", "persons-page"] and pool.pooled(key) == 0
        if pool._reaper is not None:
            pool._reaper.cancel()

    asyncio.run(scenario())


def test_the_viewers_request_log_hides_the_token_of_a_warm_print():
    from carnet.extension.viewer_logs import without_link_secret

    uri = f"{VIEWER_PREFIX}carnet/warm-print/eyJhcHAiOjF9.c2lnbmF0dXJl?region=South"
    assert without_link_secret(uri) == f"{VIEWER_PREFIX}carnet/warm-print/[secret]?region=South"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- on a real stack: the Viewer's side, and a scheduled report end to end -----------------------------------
STUDIO = "studio@acme.example"
PRERENDERED_LOG = re.compile(r"Pre-rendered app (\d+) v\d+ in kernel ([\w-]+)")
SALES = {"region": ["North", "South", "South", "East"], "amount": [1, 20, 22, 300]}


@pytest.fixture(scope="module")
def print_stack(smtp_server):
    """A stack of its own with the Viewer's render pool on (one page per key); report pages prepared 90 s
    ahead of their fire time, one of them held in the scheduler's browser."""
    from tests.helpers import CarnetStack

    data_dir = Path(tempfile.mkdtemp(prefix="carnet-print-stack-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - kernels' accounts traverse it
    # One page held by the scheduler's browser: a second report due at the same time is pre-rendered by the
    # Viewer (both paths on one stack).
    env = {
        "CARNET_VIEWER_POOL_SIZE": "1",
        "CARNET_REPORT_PRERENDER_SECONDS": "90",
        "CARNET_REPORT_PAGES_HELD": "1",
    }
    stack = CarnetStack(data_dir, smtp=smtp_server, env=env)
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def region_notebook(source: str) -> dict:
    code = nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(
        cells=[
            code(
                "import carnet\nimport ipywidgets as widgets\n"
                "region = carnet.filters.bind(\n"
                "    widgets.Dropdown(options=['North', 'South', 'East'], description='Region'), 'region'\n"
                ")\nregion"
            ),
            code(
                f"df = carnet.sources[{source!r}].df()\n"
                "print(f'TOTAL {region.value} {df[df.region == region.value].amount.sum()} ROWS {len(df)}')"
            ),
        ]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def print_app(print_stack):
    """A sales table, a source over it and an app printing a region's total (the URL's ``region``)."""
    from tests.api_support import api_url, auth
    from tests.helpers import hub_login, make_hub_token
    from tests.test_row_security import load

    stack = print_stack
    headers = auth(make_hub_token(stack.url, hub_login(stack.url, STUDIO, stack.passwords[STUDIO]), STUDIO))
    table, name = f"print_sales_{uuid.uuid4().hex[:8]}", f"print-sales-{uuid.uuid4().hex[:6]}"
    load(stack, headers, table, SALES)
    made = requests.post(
        api_url(stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    app = {
        "slug": f"print-{uuid.uuid4().hex[:6]}",
        "title": "Printed sales",
        "notebook": region_notebook(name),
    }
    published = requests.post(api_url(stack, "apps"), json=app, headers=headers, timeout=60)
    assert published.status_code == 201, published.text
    with session_scope(stack.settings.db_url) as session:
        studio_id = session.scalar(select(User.id).where(User.email == STUDIO))
    return SimpleNamespace(id=published.json()["id"], table=table, headers=headers, studio_id=studio_id)


def log_text(stack) -> str:
    return stack.log_path.read_text(errors="replace")


def prerendered(stack, app_id: int) -> list[str]:
    return [kernel for app, kernel in PRERENDERED_LOG.findall(log_text(stack)) if int(app) == app_id]


def sign(stack, app, **options) -> str:
    with session_scope(stack.settings.db_url) as session:
        return sign_print(session, stack.settings, session.get(App, app.id), as_user=app.studio_id, **options)


def warm_print(stack, token: str, query: str = "") -> requests.Response:
    return requests.post(
        f"{stack.url}{VIEWER_PREFIX}carnet/warm-print/{token}" + (f"?{query}" if query else ""), timeout=60
    )


def pre_render(stack, app, token: str, query: str) -> str:
    """Asks the Viewer to pre-render ``token``'s print page and waits for it: its kernel id."""
    from tests.helpers import wait_until

    known = len(prerendered(stack, app.id))
    asked = warm_print(stack, token, query)
    assert asked.status_code == 202 and asked.json()["state"] == "scheduled", asked.text
    wait_until(lambda: len(prerendered(stack, app.id)) > known, 120, what="the pre-rendered print page")
    return prerendered(stack, app.id)[-1]


@contextlib.contextmanager
def print_page(stack, token: str, query: str):
    """GETs the print page (as the scheduler's browser would, with a cookie jar of its own): (kernel id,
    HTML); shuts the page's kernel down after, as the printer does."""
    from bench.viewer_support import kernel_id_of

    browser = requests.Session()
    page = browser.get(f"{stack.url}{VIEWER_PREFIX}print/{token}?{query}", timeout=180)
    assert page.status_code == 200, page.text[:300]
    kernel = kernel_id_of(page.text)
    try:
        yield kernel, page.text
    finally:
        xsrf = browser.cookies.get("_xsrf") or ""
        browser.post(
            f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel}", data={"_xsrf": xsrf}, timeout=60
        )


@pytest.mark.slow
def test_a_pre_rendered_print_page_goes_only_to_its_own_token_and_query(print_stack, print_app):
    stack, app = print_stack, print_app
    token, other_token = sign(stack, app), sign(stack, app)
    kernel = pre_render(stack, app, token, "region=South")
    again = warm_print(stack, token, "region=South")  # already waiting: not rendered twice
    assert again.status_code == 200 and again.json()["state"] == "pooled", again.text
    cold_before = log_text(stack).count(f"Print page of app {app.id} rendered cold")
    # Another token for the same app, owner and query, or the same token with another query: cold renders.
    with print_page(stack, other_token, "region=South") as (other, html):
        assert other != kernel and "TOTAL South 42" in html
    with print_page(stack, token, "region=North") as (other, html):
        assert other != kernel and "TOTAL North 1" in html
    assert log_text(stack).count(f"Print page of app {app.id} rendered cold") == cold_before + 2
    # The token's own page with its query (pairs in any order): the pooled kernel, its output in the page.
    with print_page(stack, token, "region=South") as (taken, html):
        assert taken == kernel and "TOTAL South 42 ROWS 4" in html
    assert f"Print page of app {app.id} from its pre-rendered kernel {kernel}" in log_text(stack)
    assert f"Handed pre-rendered kernel {kernel} of app {app.id} over" in log_text(stack)
    assert "warm-print/" + token not in log_text(stack)  # the token (a credential) is never logged


@pytest.mark.slow
def test_the_warm_print_route_refuses_as_the_print_page_does(print_stack, print_app):
    stack, app = print_stack, print_app
    good, expired = sign(stack, app), sign(stack, app, expires_in=1)
    body, _, signature = good.partition(".")
    tampered = f"{body}.{signature[:-2]}AA"
    time.sleep(2.1)  # the short token expires
    for token, status in ((tampered, 404), ("e30.AAAA", 404), (expired, 403)):
        answer = warm_print(stack, token, "region=South")
        assert answer.status_code == status, (token, answer.text[:300])
        assert answer.json()["status"] == status and answer.json()["message"], answer.text
        page = requests.get(f"{stack.url}{VIEWER_PREFIX}print/{token}?region=South", timeout=60)
        assert page.status_code == status
    # An embed or warm-up token is no print token.
    from carnet.scheduler.kinds.warmup import sign_warm

    warm = sign_warm(stack.settings, app.id, 1, STUDIO, 300)
    assert warm_print(stack, warm).status_code == 404
    assert requests.get(f"{stack.url}{VIEWER_PREFIX}carnet/warm-print/{good}", timeout=30).status_code == 405


@pytest.mark.slow
def test_a_page_pre_rendered_before_a_load_is_not_printed_after_it(print_stack, print_app):
    from tests.test_row_security import load

    stack, app = print_stack, print_app
    token = sign(stack, app)
    kernel = pre_render(stack, app, token, "region=East")
    load(stack, app.headers, app.table, {"region": ["East", "East"], "amount": [5, 6]})  # a new data version
    try:
        with print_page(stack, token, "region=East") as (taken, html):
            assert taken != kernel
            assert "TOTAL East 11 ROWS 2" in html and "TOTAL East 300" not in html
        assert f"Print page of app {app.id} rendered cold" in log_text(stack)
    finally:
        load(stack, app.headers, app.table, SALES)


def make_report(stack, app, recipient: str, fire: datetime, region: str) -> dict:
    from tests.api_support import api_url

    made = requests.post(
        api_url(stack, "jobs"),
        json={
            "name": f"pre-rendered {recipient}",
            "app_id": app.id,
            "cron": f"{fire.minute} {fire.hour} * * * {fire.second}",  # seconds last (croniter)
            "recipients": [recipient],
            "config": {"filters": {"region": region}},
        },
        headers=app.headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return made.json()


def mailed_pdf_text(stack, smtp_server, recipient: str, job_id: int) -> str:
    """Waits for the report mail to ``recipient``; the text of its PDF (the job's one run succeeded)."""
    from pypdf import PdfReader

    from tests.helpers import wait_until

    message = wait_until(
        lambda: next((m for m in smtp_server.messages if recipient in m["To"]), None),
        timeout=180,
        what="the report mail",
    )

    def ended() -> tuple | None:  # the mail goes out before the run is marked succeeded
        with session_scope(stack.settings.db_url) as session:
            [run] = session.scalars(select(JobRun).where(JobRun.job_id == job_id)).all()
            return None if run.status == RunStatus.running else (run.trigger, run.status, run.error)

    trigger, status, error = wait_until(ended, timeout=60, what="the report run's end")
    assert trigger == "schedule" and status == RunStatus.succeeded, error
    [pdf] = [part for part in message.walk() if part.get_content_type() == "application/pdf"]
    reader = PdfReader(io.BytesIO(pdf.get_payload(decode=True)))
    return "\n".join(page.extract_text() for page in reader.pages)


def run_ids(stack, job_id: int) -> list[int]:
    with session_scope(stack.settings.db_url) as session:
        return list(session.scalars(select(JobRun.id).where(JobRun.job_id == job_id)))


@pytest.mark.slow
def test_scheduled_reports_are_printed_from_the_page_held_or_pre_rendered_for_them(
    print_stack, print_app, smtp_server
):
    """Two reports firing together on a stack holding one page (CARNET_REPORT_PAGES_HELD=1): the first
    job's page is opened ahead in the scheduler's browser and only printed at the fire; the second's the
    Viewer pre-renders. Each PDF shows its own region."""
    from tests.api_support import api_url
    from tests.helpers import wait_until

    stack, app = print_stack, print_app
    fire = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    tag = uuid.uuid4().hex[:8]
    recipients = (f"held-{tag}@acme.example", f"prerendered-{tag}@acme.example")
    known = len(prerendered(stack, app.id))
    held = make_report(stack, app, recipients[0], fire, "South")
    pooled = make_report(stack, app, recipients[1], fire, "North")
    try:
        # Before their fire time: one page open in the scheduler's browser, the other in the Viewer's pool.
        opened = f"Report job {held['id']}'s print page in the scheduler's browser: opened ahead"
        wait_until(lambda: opened in log_text(stack), 28, what="the page opened ahead")
        wait_until(lambda: len(prerendered(stack, app.id)) > known, 28, what="the pre-rendered page")
        kernel = prerendered(stack, app.id)[-1]
        assert datetime.now(UTC) < fire, "both pages were prepared ahead of the fire time"
        held_text = mailed_pdf_text(stack, smtp_server, recipients[0], held["id"])
        pooled_text = mailed_pdf_text(stack, smtp_server, recipients[1], pooled["id"])
        [held_run], [pooled_run] = run_ids(stack, held["id"]), run_ids(stack, pooled["id"])
    finally:
        for job in (held, pooled):
            requests.delete(api_url(stack, f"jobs/{job['id']}"), headers=app.headers, timeout=30)
    log = log_text(stack)
    assert f"Run {held_run} prints the page opened ahead for its fire time" in log
    assert f"Run {pooled_run} prints the page pre-rendered for its fire time" in log
    assert f"Print page of app {app.id} from its pre-rendered kernel {kernel}" in log
    assert "TOTAL South 42 ROWS 4" in held_text and "North" not in held_text
    assert "TOTAL North 1 ROWS 4" in pooled_text and "South" not in pooled_text


@pytest.mark.slow
def test_a_page_held_for_a_report_is_not_printed_after_a_load(print_stack, print_app, smtp_server):
    from tests.helpers import wait_until
    from tests.test_row_security import load

    stack, app = print_stack, print_app
    fire = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=25)
    recipient = f"held-load-{uuid.uuid4().hex[:8]}@acme.example"
    job = make_report(stack, app, recipient, fire, "East")
    try:
        opened = f"Report job {job['id']}'s print page in the scheduler's browser: opened ahead"
        wait_until(lambda: opened in log_text(stack), 23, what="the page opened ahead")
        load(stack, app.headers, app.table, {"region": ["East", "East"], "amount": [5, 6]})  # new data
        assert datetime.now(UTC) < fire, "the load came before the fire time"
        text = mailed_pdf_text(stack, smtp_server, recipient, job["id"])
        [run] = run_ids(stack, job["id"])
    finally:
        load(stack, app.headers, app.table, SALES)
        from tests.api_support import api_url

        requests.delete(api_url(stack, f"jobs/{job['id']}"), headers=app.headers, timeout=30)
    assert f"Run {run}: the page opened ahead is not used" in log_text(stack)
    assert "TOTAL East 11 ROWS 2" in text and "TOTAL East 300" not in text
