"""The Viewer's render pool (carnet/extension/render_pool.py) on a real stack of its own (pool on, at most 2
kernels per app), plus in-process checks of its keys, caps and expiry.

The app reads a sales source whose rows are filtered by the viewer's ``region`` attribute and prints the
regions it saw; its dropdown re-reads the source (as the kernel's token) and draws a chart. A page is
pre-rendered after each visit; the next visit with the same key gets it: the same HTML, the kernel behind
it (its id is in the page), carrying the new visitor's token.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import requests
from sqlalchemy import select

from bench.viewer_support import RenderFailed, filter_changes, kernel_id_of
from carnet.db import session_scope
from carnet.db.models import Token, TokenKind, User, utcnow
from carnet.errors import ValidationError
from carnet.extension.render_pool import Busy, Entry, PoolKey, RenderPool, pool_key
from carnet.service.api.internal import token_ttl
from tests.api_support import api_url, auth
from tests.helpers import CarnetStack, hub_login, make_hub_token, wait_until
from tests.test_row_security import load, set_attributes

VIEWER, STUDIO, ADMIN = "viewer@acme.example", "studio@acme.example", "admin@acme.example"
VIEWER_PREFIX = "/services/carnet-viewer/"
CAP = 2
PRERENDERED = re.compile(r"Pre-rendered app (\d+) v\d+ in kernel ([\w-]+)")
SALES = {"id": [1, 2, 3, 4, 5], "region": ["EU", "EU", "US", "US", "US"], "amount": [10, 20, 30, 40, 50]}


# -- in-process: keys, caps, expiry ---------------------------------------------------------------------


def session_answer(**changes) -> dict:
    answer = {
        "token": "ck_a_b",
        "notebook_path": "1/2/v1.ipynb",
        "app": {"id": 2, "title": "Sales", "version": 1, "org_id": 1},
        "row_context": "ctx-eu",
        "data_version": "d1",
        "user": {"id": 7, "email": "v@x", "role": "viewer"},
        "preview_by": None,
        "branding": {},
    }
    for name, value in changes.items():
        if name in answer["app"]:
            answer["app"] = {**answer["app"], name: value}
        else:
            answer[name] = value
    return answer


def test_pool_keys_separate_what_could_differ():
    base = pool_key(session_answer(), "region=EU&year=2026")
    # Query pairs in another order are the same filters.
    assert pool_key(session_answer(), "year=2026&region=EU") == base
    # Another person with the same row context still gets a page of their own: an app may show who it was
    # rendered for (a Viewer kernel may read /me), and with OS accounts a kernel is one person's process.
    other = session_answer(user={"id": 8, "email": "w@x", "role": "viewer"}, token="ck_c_d")
    assert pool_key(other, "region=EU&year=2026") != base
    different = [
        pool_key(session_answer(row_context="ctx-us"), "region=EU&year=2026"),
        pool_key(session_answer(data_version="d2"), "region=EU&year=2026"),
        pool_key(session_answer(version=2), "region=EU&year=2026"),
        pool_key(session_answer(title="Renamed"), "region=EU&year=2026"),
        pool_key(session_answer(), "region=US&year=2026"),
    ]
    assert all(key != base for key in different)
    # An admin's preview as someone else, or a session without the fingerprints: never pooled.
    assert pool_key(session_answer(preview_by="admin@x"), "") is None
    assert pool_key(session_answer(row_context=None), "") is None


def test_the_viewer_may_only_shorten_a_kernel_token():
    assert token_ttl({}, 43200) == 43200
    assert token_ttl({"ttl_seconds": 1200}, 43200) == 1200  # a pre-render's token
    assert token_ttl({"ttl_seconds": 10**9}, 43200) == 43200
    for bad in (59, "600", True, 1.5, -5):
        with pytest.raises(ValidationError):
            token_ttl({"ttl_seconds": bad}, 43200)


class FakeKernels:
    def __init__(self):
        self.kernel_apps, self.kernel_owners, self.stopped = {}, {}, []

    def __contains__(self, kernel_id):
        return kernel_id in self.kernel_apps

    async def shutdown_kernel(self, kernel_id, now=False):
        self.stopped.append(kernel_id)
        self.kernel_apps.pop(kernel_id)


def make_pool(**settings) -> tuple[RenderPool, FakeKernels]:
    values = dict(
        viewer_pool_size=1,
        viewer_pool_ttl=600,
        viewer_max_kernels_per_app=2,
        viewer_max_kernels_per_org=3,
        viewer_prerender_concurrency=2,
    )
    values.update(settings)
    kernels = FakeKernels()
    return RenderPool(kernels, SimpleNamespace(**values)), kernels


def pooled(pool: RenderPool, kernels: FakeKernels, kernel_id: str, key: PoolKey, made: float = 0.0) -> None:
    kernels.kernel_apps[kernel_id] = (key.app_id, key.org_id)
    entry = Entry(key, kernel_id, "<html/>")
    if made:
        entry.made = made
    pool.entries.setdefault(key, []).append(entry)


def test_caps_count_open_pooled_and_starting_kernels_and_evict_pooled_pages_first():
    pool, kernels = make_pool()
    key = pool_key(session_answer(), "")

    async def scenario():
        kernels.kernel_apps["open"] = (2, 1)  # a page someone has open
        pooled(pool, kernels, "pooled", key)
        # The app is at its cap (2): the pooled page is shut down to make room for a person.
        slot = await pool.reserve(2, 1)
        assert kernels.stopped == ["pooled"] and pool.pooled(key) == 0
        # The slot counts before its kernel exists: a second visitor now finds the app full.
        with pytest.raises(Busy):
            await pool.reserve(2, 1)
        slot.free()
        # Refills never evict (evict=False): the last places stay for people.
        pooled(pool, kernels, "pooled-2", key)
        with pytest.raises(Busy):
            await pool.reserve(2, 1, evict=False)
        # The org's cap (3) counts its other apps too.
        kernels.kernel_apps.update({"other-app": (5, 1), "other-app-2": (5, 1)})
        kernels.kernel_apps.pop("pooled-2")
        pool.entries.clear()
        with pytest.raises(Busy, match="org"):
            await pool.reserve(6, 1)
        assert (await pool.reserve(6, 2)).app == (6, 2)  # another org is not affected

    asyncio.run(scenario())


def test_expired_and_stale_pooled_pages_are_shut_down():
    pool, kernels = make_pool(viewer_pool_ttl=60)
    old_key = pool_key(session_answer(), "")
    new_key = pool_key(session_answer(data_version="d2"), "")
    other_key = pool_key(session_answer(row_context="ctx-us"), "")
    current_key = pool_key(session_answer(row_context="ctx-us", data_version="d2"), "")

    async def scenario():
        pooled(pool, kernels, "expired", other_key, made=1.0)  # made long ago
        await pool.reap()
        assert kernels.stopped == ["expired"] and not pool.entries
        pooled(pool, kernels, "old-data", old_key)
        pooled(pool, kernels, "current", current_key)
        # A visit with newer data: pages made over the older data are dropped, current ones stay.
        assert await pool.hand_over(new_key, "v@x", "ck_x_y") is None
        assert kernels.stopped == ["expired", "old-data"]
        assert pool.pooled(current_key) == 1

    try:
        asyncio.run(scenario())
    finally:
        if pool._reaper is not None:
            pool._reaper.cancel()


# -- the real stack ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_stack(smtp_server):
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-pool-stack-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - kernels' accounts traverse it
    env = {"CARNET_VIEWER_POOL_SIZE": "1", "CARNET_VIEWER_MAX_KERNELS_PER_APP": str(CAP)}
    stack = CarnetStack(data_dir, smtp=smtp_server, env=env)
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def app_notebook(source: str) -> dict:
    code = nbformat.v4.new_code_cell
    cells = [
        code(
            "import carnet\nimport ipywidgets as widgets\nimport plotly.express as px\n"
            "from IPython.display import display\n"
            f"src = carnet.sources[{source!r}]\ndf = src.df()\n"
            "print('REGIONS-SEEN:' + '+'.join(sorted(df.region.unique())))"
        ),
        code(
            "picker = widgets.Dropdown(options=['EU', 'US'], description='Region')\n"
            "chart = widgets.Output()\n\n"
            "def render(change=None):\n"
            "    with chart:\n"
            "        chart.clear_output(wait=True)\n"
            "        rows = src.df(where={'region': picker.value})  # read with the kernel's token\n"
            "        title = f'Sales by product in {picker.value}'\n"
            "        px.bar(x=['rows'], y=[len(rows)], title=title).show()\n\n"
            "picker.observe(render, names='value')\nrender()\ndisplay(widgets.VBox([picker, chart]))"
        ),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def pool_app(pool_stack):
    """A ruled sales source and an app over it; the viewer starts in region US."""
    stack = pool_stack
    studio = auth(make_hub_token(stack.url, hub_login(stack.url, STUDIO, stack.passwords[STUDIO]), STUDIO))
    admin = auth(make_hub_token(stack.url, hub_login(stack.url, ADMIN, stack.passwords[ADMIN]), ADMIN))
    table, name = f"pool_sales_{uuid.uuid4().hex[:8]}", f"pool-sales-{uuid.uuid4().hex[:6]}"
    load(stack, studio, table, SALES)
    made = requests.post(
        api_url(stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    ruled = requests.put(
        api_url(stack, f"sources/{name}/row-rules"),
        json={"rules": [{"column": "region", "attribute": "region"}]},
        headers=studio,
        timeout=30,
    )
    assert ruled.status_code == 200, ruled.text
    app = {"slug": f"pool-{uuid.uuid4().hex[:6]}", "title": "Pooled sales", "notebook": app_notebook(name)}
    published = requests.post(api_url(stack, "apps"), json=app, headers=studio, timeout=60)
    assert published.status_code == 201, published.text
    with session_scope(stack.settings.db_url) as session:
        viewer_id = session.scalar(select(User.id).where(User.email == VIEWER))
    assert set_attributes(stack, admin, viewer_id, {"region": ["US"]}).status_code == 200
    browser = hub_login(stack.url, VIEWER, stack.passwords[VIEWER])
    token = make_hub_token(stack.url, browser, VIEWER)
    return SimpleNamespace(
        id=published.json()["id"],
        url=f"{stack.url}{VIEWER_PREFIX}apps/{published.json()['id']}",
        session=browser,
        headers=auth(token),
        token=token,
        admin=admin,
        viewer_id=viewer_id,
        opened=[],
    )


def prerendered(stack, app_id: int) -> list[str]:
    """Kernel ids of the pages pre-rendered for ``app_id`` so far, from the Viewer's log."""
    text = stack.log_path.read_text(errors="replace")
    return [kernel for app, kernel in PRERENDERED.findall(text) if int(app) == app_id]


def wait_for_prerender(stack, app_id: int, known: int) -> str:
    wait_until(lambda: len(prerendered(stack, app_id)) > known, 90, what="a pre-rendered page")
    return prerendered(stack, app_id)[-1]


def open_page(app) -> tuple[str, str]:
    response = app.session.get(app.url, timeout=120)
    assert response.status_code == 200, response.text[:500]
    kernel = kernel_id_of(response.text)
    app.opened.append(kernel)
    return response.text, kernel


def close_pages(stack, app) -> None:
    """What each page's beforeunload does: shut its kernel down."""
    for kernel in app.opened:
        xsrf = uuid.uuid4().hex
        answer = requests.post(
            f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel}",
            headers={**app.headers, "X-XSRFToken": xsrf},
            cookies={"_xsrf": xsrf},
            timeout=60,
        )
        assert answer.status_code in (204, 404), answer.text
    app.opened.clear()


def ws_url(stack, kernel: str) -> str:
    return f"ws://127.0.0.1:{stack.ports['HUB']}{VIEWER_PREFIX}api/kernels/{kernel}/channels"


def test_a_repeat_visit_gets_the_pooled_page_whose_kernel_reads_as_the_new_session(pool_stack, pool_app):
    stack, app = pool_stack, pool_app
    known = len(prerendered(stack, app.id))
    first, first_kernel = open_page(app)
    assert "REGIONS-SEEN:US" in first
    ready = wait_for_prerender(stack, app.id, known)
    assert ready != first_kernel

    with session_scope(stack.settings.db_url) as session:
        before = session.scalar(select(Token.id).order_by(Token.id.desc()).limit(1))
    page, kernel = open_page(app)
    # The pre-rendered page, and the kernel behind it: widgets connect to the kernel that made its outputs.
    assert kernel == ready
    assert "REGIONS-SEEN:US" in page and "application/vnd.jupyter.widget-view+json" in page
    assert "import carnet" not in page  # sources stay stripped
    assert f"Handed pre-rendered kernel {ready}" in stack.log_path.read_text(errors="replace")

    # Every token of the viewer's earlier sessions, the one the page was pre-rendered with among them,
    # is revoked: a dropdown change still draws its chart, so its read was made with the new session's.
    with session_scope(stack.settings.db_url) as session:
        earlier = session.scalars(
            select(Token).where(
                Token.user_id == app.viewer_id, Token.kind == TokenKind.viewer_kernel, Token.id <= before
            )
        ).all()
        assert len(earlier) >= 2  # the first visit's and the pre-render's
        # The pre-render's token lives only as long as a pooled page may wait (+ 10 min for its render);
        # a page's own lives the usual 12 h.
        lifetimes = sorted((token.expires_at - token.created_at).total_seconds() for token in earlier)
        assert lifetimes[0] <= 600 + 600 + 5 and lifetimes[-1] >= 12 * 3600 - 5, lifetimes
        for token in earlier:
            token.revoked_at = utcnow()
    assert len(filter_changes(ws_url(stack, kernel), app.headers, 2, limit=90)) == 2
    # The first page's kernel still holds a revoked token: the same change fails there.
    with pytest.raises(RenderFailed):
        filter_changes(ws_url(stack, first_kernel), app.headers, 1, limit=15)
    close_pages(stack, app)


def test_a_page_pooled_for_one_row_context_is_never_served_to_another(pool_stack, pool_app):
    stack, app = pool_stack, pool_app
    known = len(prerendered(stack, app.id))
    page, _kernel = open_page(app)
    assert "REGIONS-SEEN:US" in page
    us_ready = wait_for_prerender(stack, app.id, known)
    close_pages(stack, app)
    # The same person, now in region EU: the page pooled for region US must not be served.
    assert set_attributes(stack, app.admin, app.viewer_id, {"region": ["EU"]}).status_code == 200
    try:
        page, kernel = open_page(app)
        assert "REGIONS-SEEN:EU" in page and "REGIONS-SEEN:US" not in page
        assert kernel != us_ready
    finally:
        close_pages(stack, app)
        assert set_attributes(stack, app.admin, app.viewer_id, {"region": ["US"]}).status_code == 200


@pytest.mark.slow
def test_a_pooled_page_in_a_browser_redraws_its_chart_on_a_dropdown_change(pool_stack, pool_app):
    from tests.test_viewer_browser import CHART_TITLES, CHARTS, CHROMIUM, CHROMIUM_ARGS
    from tests.test_viewer_browser import kernel_id_of as page_kernel

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    stack, app = pool_stack, pool_app
    known = len(prerendered(stack, app.id))
    open_page(app)  # whatever it got, a page is pre-rendered after it
    ready = wait_for_prerender(stack, app.id, known)
    close_pages(stack, app)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Under the Viewer's page policy (extension/viewer_csp.py): functions, not strings to evaluate.
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        try:
            page.goto(f"{stack.url}/hub/login")
            page.fill("#username_input", VIEWER)
            page.fill("#password_input", stack.passwords[VIEWER])
            page.click("#login_submit")
            page.wait_for_url(f"{stack.url}/services/carnet/viewer/", timeout=30_000)
            page.goto(app.url, wait_until="commit")
            page.wait_for_function(f"() => {CHART_TITLES}.includes('Sales by product in EU')", timeout=60_000)
            assert page_kernel(page) == ready  # the pooled page, its widgets on the pooled kernel
            page.locator(".widget-dropdown select").select_option("US")
            page.wait_for_function(
                f"() => {CHART_TITLES}.includes('Sales by product in US')", timeout=30_000, polling=100
            )
            assert page.locator(CHARTS).count() >= 1
        finally:
            page.close(run_before_unload=True)
            browser.close()
            app.opened.append(ready)  # in case its beforeunload did not reach the Viewer


def test_beyond_the_app_cap_the_page_says_busy(pool_stack, pool_app):
    stack, app = pool_stack, pool_app
    answers = []
    for _ in range(CAP + 1):
        # Filters nobody used before: no pooled page or snapshot (snapshots.py) to serve, a kernel each.
        response = app.session.get(f"{app.url}?visit={uuid.uuid4().hex}", timeout=120)
        answers.append(response)
        if response.status_code == 200:
            app.opened.append(kernel_id_of(response.text))
        else:
            break
    busy = answers[-1]
    assert [a.status_code for a in answers[:-1]].count(200) <= CAP
    assert busy.status_code == 503, [a.status_code for a in answers]
    assert busy.headers["Retry-After"] == "10"
    assert "This app is busy" in busy.text and "Try again in a moment" in busy.text
    close_pages(stack, app)
    # Places free again once pages close (a pre-render started meanwhile may hold one for a few seconds).
    wait_until(lambda: app.session.get(app.url, timeout=120).status_code == 200, 60, what="a free place")
    close_pages(stack, app)
