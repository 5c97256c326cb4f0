"""Sharing an app beyond the organization, on the real stack: public links and signed embed URLs.

Checked: who may make, see and revoke a public link (studio and admin of the app's org; another org's admin
gets the body of an unknown app; only where the org allows public apps); an anonymous visitor sees the app's
values and nothing more (the kernel's token lists and reads only the app's sources, a ruled source shows no
rows, nothing else of the API answers it); revoking, rotating or unpublishing ends the URL and its kernels'
tokens; the audit log marks each as public; embed URLs read with the signed attributes and variables, are
framable, and tampered or expired ones are refused; nobody but the visitor's own browser reaches their kernel.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid

import nbformat
import pytest
import requests
from sqlalchemy import delete, select
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from carnet.app_links import detect_sources, sign_embed
from carnet.db import session_scope
from carnet.db.models import App, AuditEvent, Connection, DataSource, Membership, Role, Token, User
from carnet.passwords import hash_password
from tests.api_support import UNKNOWN_ID, api_url, assert_json_error, auth, unique
from tests.helpers import hub_login, make_hub_token
from tests.sql_servers import scratch_pg_database
from tests.test_row_security import load, rows

ARROW_STREAM = "application/vnd.apache.arrow.stream"
VIEWER, ANALYST, STUDIO = "viewer@acme.example", "analyst@acme.example", "studio@acme.example"
GLOBEX_ADMIN = "public-links-admin@globex.example"
GLOBEX_PASSWORD = "globex admin password for public links"  # noqa: S105 - a test account's password
VIEWER_PREFIX = "/services/carnet-viewer/"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def people(carnet_stack, hub_token, admin):
    """Headers of acme's people; acme allows public apps for this module (restored after)."""
    before = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()
    allowed = before.get("settings", before).get("allow_public_apps", False)
    on = requests.patch(
        api_url(carnet_stack, "org"), json={"allow_public_apps": True}, headers=admin, timeout=30
    )
    assert on.status_code == 200, on.text
    yield {
        "viewer": auth(hub_token(VIEWER)),
        "analyst": auth(hub_token(ANALYST)),
        "studio": auth(hub_token(STUDIO)),
        "admin": admin,
    }
    requests.patch(
        api_url(carnet_stack, "org"), json={"allow_public_apps": allowed}, headers=admin, timeout=30
    )


@pytest.fixture(scope="module")
def globex_admin(carnet_stack, created):
    globex_id = created.org_id("globex")
    with session_scope(carnet_stack.settings.db_url) as session:
        user = User(
            email=GLOBEX_ADMIN, display_name="Globex admin", password_hash=hash_password(GLOBEX_PASSWORD)
        )
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=globex_id, role=Role.admin))
        user_id = user.id
    try:
        signed_in = hub_login(carnet_stack.url, GLOBEX_ADMIN, GLOBEX_PASSWORD)
        yield auth(make_hub_token(carnet_stack.url, signed_in, GLOBEX_ADMIN))
    finally:
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(User).where(User.id == user_id))


def make_source(stack, headers, created, table: str, columns: dict, rules=None) -> str:
    load(stack, headers, table, columns)
    name = unique("pl-src")
    made = requests.post(
        api_url(stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    if rules:
        ruled = requests.put(
            api_url(stack, f"sources/{name}/row-rules"), json={"rules": rules}, headers=headers, timeout=30
        )
        assert ruled.status_code == 200, ruled.text
    return name


@pytest.fixture(scope="module")
def data(carnet_stack, people, created):
    """Three acme sources: cities (plain), sales (rows by region), and a secret one no app names."""
    studio = people["studio"]

    def table(prefix):
        return unique(prefix).replace("-", "_")

    cities = make_source(carnet_stack, studio, created, table("pl_cities"), {"city": ["Lyon", "Oslo"]})
    sales = make_source(
        carnet_stack,
        studio,
        created,
        table("pl_sales"),
        {"region": ["EU", "EU", "US", "APAC"], "amount": [10, 20, 30, 40]},
        rules=[{"column": "region", "attribute": "region"}],
    )
    secret = make_source(carnet_stack, studio, created, table("pl_secret"), {"code": ["top-secret-value"]})
    return {"cities": cities, "sales": sales, "secret": secret}


def publish(stack, headers, created, data) -> int:
    cell = (
        "import json, os\nimport carnet\n"
        f"print('@@CITIES ' + json.dumps(sorted(carnet.sources[{data['cities']!r}].df()['city'].tolist())))\n"
        f"sales = carnet.sources[{data['sales']!r}].df()\n"
        "print('@@SALES ' + json.dumps(sorted(sales['amount'].tolist())))\n"
        # The test reads the kernel's token to try every other door with it.
        "print('@@TOKEN ' + json.dumps(os.environ['CARNET_TOKEN']))"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    made = requests.post(
        api_url(stack, "apps"),
        json={"slug": unique("pl-app"), "title": "Cities and sales", "notebook": notebook},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.apps.add(made.json()["id"])
    return made.json()["id"]


@pytest.fixture(scope="module")
def app_id(carnet_stack, people, created, data):
    return publish(carnet_stack, people["analyst"], created, data)


def printed(page_html: str, marker: str):
    found = re.findall(re.escape(marker) + r"(.*)", html.unescape(page_html))
    assert len(found) == 1, f"{marker!r} printed {len(found)} times in {page_html[-2000:]}"
    return json.loads(found[0])


def link_path(url: str) -> str:
    path = url.split("://", 1)[1].split("/", 1)[1]
    return "/" + path


def visit(stack, url: str, client=None, keep: bool = False):
    """Open a visitor's URL in a browser of its own (``client``); unless ``keep``, its kernel is shut down
    at once, as the page would when closed (visitors' kernels count toward the org's kernel cap)."""
    client = client or requests.Session()
    page = client.get(stack.url + link_path(url), timeout=180)
    if page.status_code == 200 and not keep:
        xsrf = client.cookies.get("_xsrf")
        done = client.post(
            f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel_id_of(page.text)}",
            headers={"X-XSRFToken": xsrf} if xsrf else {},
            timeout=60,
        )
        assert done.status_code == 204, done.text[:300]
    return page


def member_view(stack, headers: dict, app: int) -> str:
    """A signed-in member's Viewer page of the app (its kernel shut down once read)."""
    page = requests.get(f"{stack.url}{VIEWER_PREFIX}apps/{app}", headers=headers, timeout=180)
    assert page.status_code == 200, page.text[:300]
    shutdown = f"{stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel_id_of(page.text)}"
    assert requests.post(shutdown, headers=headers, timeout=60).status_code == 204
    return page.text


def kernel_id_of(page_html: str) -> str:
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page_html, re.S
    )
    assert match, "the rendered app has no jupyter-config-data"
    return json.loads(match.group(1))["kernelId"]


def audit_actions(stack, app: int) -> list[tuple[str, dict]]:
    with session_scope(stack.settings.db_url) as session:
        return [
            (action, details)
            for action, details in session.execute(
                select(AuditEvent.action, AuditEvent.details)
                .where(AuditEvent.target == f"app/{app}", AuditEvent.action.like("app.%"))
                .order_by(AuditEvent.id)
            ).all()
        ]


# -- unit: what the snapshot names -------------------------------------------------------------------------
def test_detect_sources_finds_literal_names():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("df = carnet.sources[\"sales eu\"].df()\nx = sources.get('b')"),
            nbformat.v4.new_code_cell('carnet.sources.sql("SELECT * FROM {c} JOIN {d} USING (id)")'),
            nbformat.v4.new_markdown_cell('sources["not code"]'),
            # carnet.dash names its sources as keyword arguments and queries.
            nbformat.v4.new_code_cell('dash.KPI("n", {"x": "sum"}, source="e")\ndash.Query.of( "f")'),
        ]
    )
    assert detect_sources(nbformat.writes(notebook)) == ["sales eu", "b", "c", "d", "e", "f"]


# -- the public link's API ---------------------------------------------------------------------------------
def test_who_may_make_see_and_revoke_a_public_link(carnet_stack, people, globex_admin, created, data, admin):
    app = publish(carnet_stack, people["studio"], created, data)
    path = api_url(carnet_stack, f"apps/{app}/public-link")
    for role in ("viewer", "analyst"):
        for method in ("GET", "POST", "DELETE"):
            answer = requests.request(method, path, headers=people[role], timeout=30)
            assert_json_error(answer, 403)
    # Another org's admin: exactly the answer for an unknown app.
    for method in ("GET", "POST", "DELETE"):
        theirs = requests.request(method, path, headers=globex_admin, timeout=30)
        unknown = requests.request(
            method, api_url(carnet_stack, f"apps/{UNKNOWN_ID}/public-link"), headers=globex_admin, timeout=30
        )
        assert_json_error(theirs, 404)
        assert theirs.json() == unknown.json() == {"status": 404, "message": "No such app"}
    assert requests.get(path, headers=people["studio"], timeout=30).json() == {"app_id": app, "public": False}
    made = requests.post(path, headers=people["studio"], timeout=30)
    assert made.status_code == 201, made.text
    link = made.json()
    assert link["public"] is True and link["created_by"] == STUDIO and link["created_at"]
    assert link["url"].startswith(carnet_stack.url + VIEWER_PREFIX + "public/")
    assert sorted(link["sources"]) == sorted([data["cities"], data["sales"]])
    # Shown again without its secret; the app says it is public (API and list).
    shown = requests.get(path, headers=people["admin"], timeout=30).json()
    assert "url" not in shown and shown["public"] is True and shown["created_by"] == STUDIO
    assert requests.get(api_url(carnet_stack, f"apps/{app}"), headers=people["viewer"], timeout=30).json()[
        "public"
    ]
    listed = requests.get(api_url(carnet_stack, "apps"), headers=people["viewer"], timeout=30).json()["apps"]
    assert {a["id"]: a["public"] for a in listed}[app] is True
    assert {a["id"]: a["public"] for a in listed}[carnet_stack.app_id] is False
    # A member's Viewer page of the app says so too.
    member_page = member_view(carnet_stack, people["viewer"], app)
    assert 'class="carnet-public-badge"' in member_page
    # An admin rotates it: the first URL dies at once.
    rotated = requests.post(path, headers=people["admin"], timeout=30)
    assert rotated.status_code == 201 and rotated.json()["url"] != link["url"]
    assert visit(carnet_stack, link["url"]).status_code == 404
    assert requests.delete(path, headers=people["studio"], timeout=30).status_code == 204
    assert_json_error(requests.delete(path, headers=people["studio"], timeout=30), 404)
    assert visit(carnet_stack, rotated.json()["url"]).status_code == 404
    member_page = member_view(carnet_stack, people["viewer"], app)
    assert "carnet-public-badge" not in member_page
    assert (
        requests.get(api_url(carnet_stack, f"apps/{app}"), headers=admin, timeout=30).json()["public"]
        is False
    )
    # On the record, marked as public.
    actions = audit_actions(carnet_stack, app)
    kinds = [a for a, _ in actions if a.startswith("app.public_link")]
    assert kinds == ["app.public_link.create", "app.public_link.create", "app.public_link.revoke"]
    created_details = [d for a, d in actions if a == "app.public_link.create"]
    assert created_details[0]["public"] is True and created_details[1]["rotated"] is True
    # Where the org does not allow public apps: refused (403), whoever asks; existing links are suspended.
    live = requests.post(path, headers=people["studio"], timeout=30).json()["url"]
    off = requests.patch(
        api_url(carnet_stack, "org"), json={"allow_public_apps": False}, headers=admin, timeout=30
    )
    assert off.status_code == 200
    try:
        assert_json_error(requests.post(path, headers=people["admin"], timeout=30), 403)
        assert visit(carnet_stack, live).status_code == 404
        # Still shown, and revocable, while suspended.
        assert requests.get(path, headers=people["admin"], timeout=30).json()["public"] is True
        assert_json_error(
            requests.post(api_url(carnet_stack, f"apps/{app}/embed"), json={}, headers=admin, timeout=30), 403
        )
    finally:
        requests.patch(
            api_url(carnet_stack, "org"), json={"allow_public_apps": True}, headers=admin, timeout=30
        )


def test_explicit_sources_must_be_the_orgs(carnet_stack, people, app_id, data):
    path = api_url(carnet_stack, f"apps/{app_id}/public-link")
    bad = requests.post(path, json={"sources": ["no such source"]}, headers=people["studio"], timeout=30)
    assert_json_error(bad, 400)
    assert bad.json()["field"] == "sources"
    assert_json_error(requests.post(path, json={"org_id": 2}, headers=people["studio"], timeout=30), 400)


# -- an anonymous visitor ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def visited(carnet_stack, people, app_id):
    """The app's public link opened by an anonymous browser: the page, its session, the kernel's token."""
    link = requests.post(
        api_url(carnet_stack, f"apps/{app_id}/public-link"), headers=people["studio"], timeout=30
    )
    assert link.status_code == 201, link.text
    browser = requests.Session()
    page = visit(carnet_stack, link.json()["url"], browser, keep=True)
    assert page.status_code == 200, page.text[:1000]
    return {
        "url": link.json()["url"],
        "page": page,
        "browser": browser,
        "token": printed(page.text, "@@TOKEN "),
    }


def test_an_anonymous_visitor_sees_the_apps_values_as_nobody(carnet_stack, visited):
    page = visited["page"].text
    assert printed(page, "@@CITIES ") == ["Lyon", "Oslo"]
    # The sales source has row rules: a visitor has no attributes, so no rows (never all rows).
    assert printed(page, "@@SALES ") == []
    assert visited["browser"].cookies.get("carnet-visitor"), "the visitor's browser got no cookie"
    assert 'class="carnet-public-badge"' in page  # marked as public
    assert visited["page"].headers["Referrer-Policy"] == "no-referrer"  # the URL is the credential
    # Not a member's session: the Viewer did not send the browser to the Hub's login.
    assert visited["page"].url.startswith(carnet_stack.url + VIEWER_PREFIX + "public/")


def test_the_visitors_token_reads_only_the_apps_sources(carnet_stack, visited, data):
    token = auth(visited["token"])
    listed = requests.get(api_url(carnet_stack, "sources"), headers=token, timeout=30)
    assert listed.status_code == 200
    assert sorted(s["name"] for s in listed.json()["sources"]) == sorted([data["cities"], data["sales"]])
    cities = requests.post(
        api_url(carnet_stack, f"sources/{data['cities']}/query"), json={}, headers=token, timeout=60
    )
    assert [r["city"] for r in rows(cities)] == ["Lyon", "Oslo"]
    assert (
        rows(requests.get(api_url(carnet_stack, f"sources/{data['sales']}/data"), headers=token, timeout=60))
        == []
    )
    # Another source of the same org reads exactly like a missing one, through every door.
    secret, missing = data["secret"], "no-such-source-at-all"
    for template in ("sources/{}", "sources/{}/data"):
        theirs = requests.get(api_url(carnet_stack, template.format(secret)), headers=token, timeout=30)
        none = requests.get(api_url(carnet_stack, template.format(missing)), headers=token, timeout=30)
        assert_json_error(theirs, 404)
        assert theirs.json()["message"] == f"No source named {secret!r}"
        assert none.json()["message"] == f"No source named {missing!r}"
    query = requests.post(
        api_url(carnet_stack, f"sources/{secret}/query"), json={}, headers=token, timeout=30
    )
    assert_json_error(query, 404)
    joined = requests.post(
        api_url(carnet_stack, "query"),
        json={"sql": f"SELECT * FROM {{{data['cities']}}}, {{{secret}}}"},
        headers=token,
        timeout=30,
    )
    assert_json_error(joined, 404)
    assert "top-secret-value" not in joined.text
    # Nothing else of the API: not even who it is, no apps, no warehouse.
    for method, path in (("GET", "me"), ("GET", "apps"), ("GET", "warehouse/tables"), ("GET", "org")):
        assert_json_error(
            requests.request(method, api_url(carnet_stack, path), headers=token, timeout=30), 403
        )


def test_only_the_visitors_browser_reaches_its_kernel(carnet_stack, visited, hub_token):
    kernel_id = kernel_id_of(visited["page"].text)
    url = f"ws://127.0.0.1:{carnet_stack.ports['HUB']}{VIEWER_PREFIX}api/kernels/{kernel_id}/channels"
    own = f"carnet-visitor={visited['browser'].cookies.get('carnet-visitor')}"
    # Another anonymous browser that opened the same link has a cookie of its own.
    other = requests.Session()
    assert visit(carnet_stack, visited["url"], other).status_code == 200
    others = f"carnet-visitor={other.cookies.get('carnet-visitor')}"
    forged = f"carnet-visitor={uuid.uuid4().hex}"

    async def status(headers):
        try:
            connection = await websocket_connect(HTTPRequest(url, headers=headers))
        except HTTPClientError as exc:
            return exc.code
        connection.close()
        return 101

    def ws(headers):
        return asyncio.run(status(headers))

    assert ws({"Cookie": own}) == 101
    assert ws({"Cookie": others}) == 403
    assert ws({"Cookie": forged}) == 403
    assert ws({}) == 403
    assert ws(auth(hub_token(VIEWER))) == 403
    assert ws({**auth(hub_token(VIEWER)), "Cookie": others}) == 403
    # Nor shut it down.
    shutdown = f"{carnet_stack.url}{VIEWER_PREFIX}voila/api/shutdown/{kernel_id}"
    other_xsrf = other.cookies.get("_xsrf")
    refused = other.post(shutdown, headers={"X-XSRFToken": other_xsrf} if other_xsrf else {}, timeout=30)
    assert refused.status_code in (403, 404)
    assert ws({"Cookie": own}) == 101
    # The visitor's own page shuts it down when it closes (Voila's beforeunload).
    xsrf = visited["browser"].cookies.get("_xsrf")
    done = visited["browser"].post(shutdown, headers={"X-XSRFToken": xsrf} if xsrf else {}, timeout=30)
    assert done.status_code == 204, (done.status_code, done.text[:300], xsrf)
    assert ws({"Cookie": own}) == 403


def test_revoking_ends_the_url_and_the_kernels_token(carnet_stack, people, created, data):
    app = publish(carnet_stack, people["studio"], created, data)
    path = api_url(carnet_stack, f"apps/{app}/public-link")
    url = requests.post(path, headers=people["studio"], timeout=30).json()["url"]
    page = visit(carnet_stack, url)
    assert page.status_code == 200
    token = auth(printed(page.text, "@@TOKEN "))
    assert requests.get(api_url(carnet_stack, "sources"), headers=token, timeout=30).status_code == 200
    assert requests.delete(path, headers=people["admin"], timeout=30).status_code == 204
    gone = visit(carnet_stack, url)
    assert gone.status_code == 404
    assert "Lyon" not in gone.text
    assert_json_error(requests.get(api_url(carnet_stack, "sources"), headers=token, timeout=30), 401)
    # Guessing: a made-up link of the right shape is the same 404.
    assert visit(carnet_stack, url.rsplit("/", 1)[0] + "/" + "0" * 12 + "_" + "x" * 43).status_code == 404


def test_unpublishing_ends_the_public_link(carnet_stack, people, created, data):
    app = publish(carnet_stack, people["studio"], created, data)
    url = requests.post(
        api_url(carnet_stack, f"apps/{app}/public-link"), headers=people["studio"], timeout=30
    ).json()["url"]
    embed = requests.post(
        api_url(carnet_stack, f"apps/{app}/embed"), json={}, headers=people["studio"], timeout=30
    ).json()["url"]
    assert (
        requests.delete(
            api_url(carnet_stack, f"apps/{app}"), headers=people["studio"], timeout=30
        ).status_code
        == 204
    )
    assert visit(carnet_stack, url).status_code == 404
    assert visit(carnet_stack, embed).status_code == 404


# -- signed embed URLs ---------------------------------------------------------------------------------------
def embed(stack, headers, app: int, **body) -> requests.Response:
    return requests.post(api_url(stack, f"apps/{app}/embed"), json=body, headers=headers, timeout=30)


def test_who_may_make_an_embed_url(carnet_stack, people, globex_admin, app_id):
    for role in ("viewer", "analyst"):
        assert_json_error(embed(carnet_stack, people[role], app_id), 403)
    theirs, unknown = embed(carnet_stack, globex_admin, app_id), embed(carnet_stack, globex_admin, UNKNOWN_ID)
    assert_json_error(theirs, 404)
    assert theirs.json() == unknown.json()
    for bad in ({"expires_in": 10**9}, {"expires_in": 0}, {"attributes": {"region": [5]}}, {"org_id": 1}):
        assert_json_error(embed(carnet_stack, people["studio"], app_id, **bad), 400)
    made = embed(carnet_stack, people["admin"], app_id, expires_in=3600)
    assert made.status_code == 201, made.text
    assert made.json()["url"].startswith(carnet_stack.url + VIEWER_PREFIX + "embed/")
    assert made.json()["expires_at"]


def test_an_embed_url_reads_with_its_signed_attributes(carnet_stack, people, app_id):
    made = embed(carnet_stack, people["studio"], app_id, attributes={"region": ["EU"]}, expires_in=600)
    assert made.status_code == 201, made.text
    page = visit(carnet_stack, made.json()["url"])
    assert page.status_code == 200, page.text[:500]
    assert printed(page.text, "@@SALES ") == [10, 20]
    assert printed(page.text, "@@CITIES ") == ["Lyon", "Oslo"]
    # The portal may frame it (no embed_origins set: any site); a public link's page keeps 'self'.
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors *" in policy
    assert policy.count("frame-ancestors") == 1
    events = [d for a, d in audit_actions(carnet_stack, app_id) if a == "app.embed.create"]
    assert events and events[-1]["public"] is True and events[-1]["attributes"] == {"region": ["EU"]}
    # The visitor's token is no person's: not even /me answers it.
    token = auth(printed(page.text, "@@TOKEN "))
    assert_json_error(requests.get(api_url(carnet_stack, "me"), headers=token, timeout=30), 403)
    # It ends with the embed URL (600 s), not after the kernels' usual 12 hours.
    prefix = printed(page.text, "@@TOKEN ").split("_")[1]
    with session_scope(carnet_stack.settings.db_url) as session:
        row = session.scalar(select(Token).where(Token.prefix == prefix))
        lifetime = (row.expires_at - row.created_at).total_seconds()
    assert 500 < lifetime <= 600


def test_public_pages_are_not_framable_by_other_sites(carnet_stack, visited):
    policy = visited["page"].headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'self'" in policy or "frame-ancestors 'none'" in policy


def test_tampered_and_expired_embed_urls_are_refused(carnet_stack, people, app_id):
    url = embed(carnet_stack, people["studio"], app_id, attributes={"region": ["US"]}).json()["url"]
    payload, signature = url.rsplit("/", 1)[1].split(".")
    decoded = json.loads(_unb64(payload))
    decoded["attr"] = {"region": ["EU", "US", "APAC"]}
    widened = _b64(json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode())
    base = url.rsplit("/", 1)[0]
    for bad in (f"{widened}.{signature}", f"{payload}.{signature[:-2]}AA", f"{payload}.", "garbage"):
        answer = visit(carnet_stack, f"{base}/{bad}")
        assert answer.status_code == 404, bad
        assert "top-secret" not in answer.text
    # Authentic but expired: refused, saying so.
    with session_scope(carnet_stack.settings.db_url) as session:
        app = session.get(App, app_id)
        expired, _ = sign_embed(carnet_stack.settings, app, {}, {}, -5)
    answer = visit(carnet_stack, f"{base}/{expired}")
    assert answer.status_code == 403
    assert "expired" in answer.text


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_kernel_tokens_of_visitors_expire_with_the_app(carnet_stack, people, created, data):
    """Unpublishing while a visitor's page is open: its kernel's token stops at once."""
    app = publish(carnet_stack, people["studio"], created, data)
    url = embed(carnet_stack, people["studio"], app).json()["url"]
    page = visit(carnet_stack, url)
    token = auth(printed(page.text, "@@TOKEN "))
    assert requests.get(api_url(carnet_stack, "sources"), headers=token, timeout=30).status_code == 200
    assert (
        requests.delete(
            api_url(carnet_stack, f"apps/{app}"), headers=people["studio"], timeout=30
        ).status_code
        == 204
    )
    time.sleep(0.1)
    assert_json_error(requests.get(api_url(carnet_stack, "sources"), headers=token, timeout=30), 401)


# -- an embed URL's variables --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_amounts(pg_url, carnet_stack, created):
    """A PostgreSQL table of amounts 1-5 and an acme query source over it taking a variable ``floor``."""
    statements = (
        "CREATE TABLE amounts (id int PRIMARY KEY, amount int)",
        "INSERT INTO amounts SELECT i, i FROM generate_series(1, 5) AS i",
    )
    with scratch_pg_database(pg_url, "carnet_pl", *statements) as (_url, settings):
        with session_scope(carnet_stack.settings.db_url) as session:
            org_id = created.org_id("acme")
            connection = Connection(org_id=org_id, name=unique("pl-pg"), kind="sql", settings=settings)
            session.add(connection)
            session.flush()
            source = DataSource(
                org_id=org_id,
                name=unique("pl-floor"),
                kind="sql_query",
                options={
                    "sql": "SELECT amount FROM amounts WHERE amount >= {{floor}} ORDER BY amount",
                    "variables": [{"name": "floor", "default": 1}],
                },
                connection_id=connection.id,
            )
            session.add(source)
            session.flush()
            name, connection_id = source.name, connection.id
        yield name
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(DataSource).where(DataSource.connection_id == connection_id))
            session.execute(delete(Connection).where(Connection.id == connection_id))


def test_an_embed_urls_variables_win_over_the_kernels(carnet_stack, people, created, pg_amounts):
    cell = (
        "import json\nimport carnet\n"
        f"df = carnet.sources[{pg_amounts!r}].df(variables={{'floor': 2}})\n"
        "print('@@AMOUNTS ' + json.dumps([int(a) for a in df['amount']]))"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    made = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": unique("pl-vars"), "title": "Amounts", "notebook": notebook},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.apps.add(made.json()["id"])
    app = made.json()["id"]
    # A public link: the kernel's own value.
    path = api_url(carnet_stack, f"apps/{app}/public-link")
    link = requests.post(path, headers=people["studio"], timeout=30)
    assert printed(visit(carnet_stack, link.json()["url"]).text, "@@AMOUNTS ") == [2, 3, 4, 5]
    # An embed URL signed with floor=4: the signed value, whatever the notebook asks.
    url = embed(carnet_stack, people["studio"], app, variables={"floor": 4}).json()["url"]
    page = visit(carnet_stack, url)
    assert page.status_code == 200, page.text[:500]
    assert printed(page.text, "@@AMOUNTS ") == [4, 5]


def test_embed_origins_say_which_sites_may_frame_embed_urls(carnet_stack, people, app_id, admin):
    org = api_url(carnet_stack, "org")
    for bad in ("javascript:alert(1)", "https://a.example/path", "'self'", "https://a.example; script-src *"):
        assert_json_error(requests.patch(org, json={"embed_origins": bad}, headers=admin, timeout=30), 400)
    origins = "https://portal.example https://*.customer.example:8443"
    assert requests.patch(org, json={"embed_origins": origins}, headers=admin, timeout=30).status_code == 200
    try:
        page = visit(carnet_stack, embed(carnet_stack, people["studio"], app_id).json()["url"])
        assert page.status_code == 200
        policy = page.headers["Content-Security-Policy"]
        assert f"frame-ancestors {origins}" in policy and policy.count("frame-ancestors") == 1
    finally:
        requests.patch(org, json={"embed_origins": ""}, headers=admin, timeout=30)


def test_a_new_version_naming_other_sources_does_not_widen_earlier_links(carnet_stack, people, created, data):
    """The sources are fixed when a link or embed URL is made: republishing the app with code that reads
    another source (an analyst may publish, not share publicly) gives its visitors nothing more."""
    slug = unique("pl-widen")

    def publish_cells(*cells):
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        notebook.metadata["kernelspec"] = KERNELSPEC
        made = requests.post(
            api_url(carnet_stack, "apps"),
            json={"slug": slug, "title": "Widen", "notebook": notebook},
            headers=people["studio"],
            timeout=30,
        )
        assert made.status_code == 201, made.text
        created.apps.add(made.json()["id"])
        return made.json()["id"]

    app = publish_cells(f"import carnet\ncarnet.sources[{data['cities']!r}].df()")
    path = api_url(carnet_stack, f"apps/{app}/public-link")
    link = requests.post(path, headers=people["studio"], timeout=30)
    embedded = embed(carnet_stack, people["studio"], app)
    assert link.json()["sources"] == [data["cities"]]
    again = publish_cells(
        "import json\nimport carnet\n"
        "try:\n"
        f"    print('@@SECRET ' + json.dumps(carnet.sources[{data['secret']!r}].df()['code'].tolist()))\n"
        "except Exception as exc:\n"
        "    print('@@SECRET ' + json.dumps(getattr(exc, 'status', repr(exc))))"
    )
    assert again == app
    for url in (link.json()["url"], embedded.json()["url"]):
        page = visit(carnet_stack, url)
        assert page.status_code == 200, page.text[:300]
        assert printed(page.text, "@@SECRET ") == 404
        assert "top-secret-value" not in page.text
    # An embed URL may name its sources explicitly (of the org): then those.
    chosen = embed(carnet_stack, people["studio"], app, sources=[data["secret"]])
    assert printed(visit(carnet_stack, chosen.json()["url"]).text, "@@SECRET ") == ["top-secret-value"]
    assert_json_error(embed(carnet_stack, people["studio"], app, sources=["no such source"]), 400)


def test_link_secrets_never_reach_the_viewers_log(carnet_stack):
    """Refused visits are logged (warning level, with the URI): the secret of a public link or embed URL,
    which is the credential itself, is replaced in those lines."""
    secrets_tried = [f"pl{uuid.uuid4().hex}", f"em{uuid.uuid4().hex}.sig{uuid.uuid4().hex}"]
    for kind, secret in zip(("public", "embed"), secrets_tried, strict=True):
        answer = requests.get(f"{carnet_stack.url}{VIEWER_PREFIX}{kind}/{secret}?x=1", timeout=60)
        assert answer.status_code == 404
    deadline = time.monotonic() + 10
    while "[secret]" not in carnet_stack.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.2)
    logged = carnet_stack.log_path.read_text(errors="replace")
    assert f"{VIEWER_PREFIX}public/[secret]" in logged and f"{VIEWER_PREFIX}embed/[secret]" in logged
    for secret in secrets_tried:
        assert secret.split(".")[0] not in logged
