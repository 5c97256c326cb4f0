"""Organization branding on the real stack: the checks of colour, custom CSS and logo (PATCH /api/v1/org,
PUT /api/v1/org/logo), and the Viewer's app pages and the gallery showing each organization's own branding
only (read from the platform, never from the notebook)."""

from __future__ import annotations

import base64
import re

import nbformat
import pytest
import requests
from sqlalchemy import select

from carnet.branding import MAX_CSS_BYTES, MAX_LOGO_BYTES, logo_path
from carnet.db import session_scope
from carnet.db.models import AuditEvent, Organization
from carnet.publishing import publish
from tests.api_support import api_url, assert_json_error, auth, tiny_png
from tests.helpers import hub_login
from tests.test_admin_page import open_page, page_url, xsrf_of

ADMIN = "admin@acme.example"
ACME_VIEWER = "viewer@acme.example"
GLOBEX_VIEWER = "viewer@globex.example"
ACME_COLOR = "#7b2cbf"
ACME_CSS = ".carnet-app-header { border-bottom: 4px solid #ffd166 } /* acme-branding-marker */"
DATA_IMAGE_CSS = "header { background-image: url('data:image/png;base64,iVBORw0KGgo=') }"
SVG_LOGO = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture(scope="module", autouse=True)
def restore_orgs(carnet_stack):
    """Both orgs' settings as seeded afterwards, and no logo: later modules rely on Carnet's own look."""
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        saved = {o.id: dict(o.settings or {}) for o in session.scalars(select(Organization))}
    yield
    with session_scope(url) as session:
        for org_id, settings in saved.items():
            session.get(Organization, org_id).settings = settings
    for org_id in saved:
        logo_path(carnet_stack.settings.data_dir, org_id).unlink(missing_ok=True)


def patch_org(stack, headers, body) -> requests.Response:
    return requests.patch(api_url(stack, "org"), json=body, headers=headers, timeout=30)


def put_logo(stack, headers, data: bytes) -> requests.Response:
    return requests.put(
        api_url(stack, "org/logo"), data=data, headers={**headers, "Content-Type": "image/png"}, timeout=30
    )


@pytest.mark.parametrize(
    "css",
    [
        "@import url('https://evil.example/x.css');",
        '@IMPORT "https://evil.example/x.css";',
        "@im/**/port 'x.css';",
        "body { background: url(https://evil.example/track.png) }",
        "body { background: url( '//evil.example/track.png' ) }",
        'body { background: URL("/services/carnet/api/v1/me") }',
        "body { background: url(data:image/svg+xml;base64,PHN2Zz4=) }",
        "body { background: image-set('https://evil.example/a.png' 1x) }",
        "body { width: expression(alert(1)) }",
        "body { width: EXPRESSION (alert(1)) }",
        "</style><script>alert(1)</script>",
        "body { color: red } </STYLE >",
        "a { background: url(javascript:alert(1)) }",
        "a { cursor: url('JavaScript:alert(1)') }",
        "@\\69mport 'x.css';",
        "a { background: u\\72l(https://evil.example/) }",
        "a { color: red }" + " " * MAX_CSS_BYTES,
        "a { color: red }\x00",
    ],
    ids=[
        "import-url",
        "import-upper",
        "import-comment",
        "url-https",
        "url-protocol-relative",
        "url-same-origin",
        "url-data-svg",
        "image-set",
        "expression",
        "expression-upper-space",
        "close-style",
        "close-style-upper",
        "javascript-url",
        "javascript-cursor",
        "escaped-import",
        "escaped-url",
        "too-long",
        "nul",
    ],
)
def test_hostile_custom_css_is_refused_naming_the_field(carnet_stack, admin, css):
    before = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()["settings"]
    body = assert_json_error(patch_org(carnet_stack, admin, {"custom_css": css}), 400)
    assert body["field"] == "custom_css"
    after = requests.get(api_url(carnet_stack, "org"), headers=admin, timeout=30).json()["settings"]
    assert after["custom_css"] == before["custom_css"]


@pytest.mark.parametrize("color", ["red", "#fff", "#12345g", "#1234567", "rgb(1,2,3)", "#12 345", 123, True])
def test_bad_colours_are_refused(carnet_stack, admin, color):
    body = assert_json_error(patch_org(carnet_stack, admin, {"primary_color": color}), 400)
    assert body["field"] == "primary_color"


def test_good_colour_and_css_are_stored_and_audited(carnet_stack, admin):
    response = patch_org(carnet_stack, admin, {"primary_color": "#1F6FEB", "custom_css": DATA_IMAGE_CSS})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["primary_color"] == "#1f6feb"
    assert response.json()["settings"]["custom_css"] == DATA_IMAGE_CSS
    reset = patch_org(carnet_stack, admin, {"primary_color": "", "custom_css": ""})
    assert reset.json()["settings"]["primary_color"] == "" and reset.json()["settings"]["custom_css"] == ""


def test_branding_is_for_admins(carnet_stack, hub_token):
    viewer = auth(hub_token(ACME_VIEWER))
    assert_json_error(patch_org(carnet_stack, viewer, {"primary_color": "#000000"}), 403)
    assert_json_error(put_logo(carnet_stack, viewer, tiny_png()), 403)


def test_logo_checks(carnet_stack, admin):
    svg = assert_json_error(put_logo(carnet_stack, admin, SVG_LOGO), 400)
    assert svg["field"] == "logo" and "SVG" in svg["message"]
    # An SVG sent as "image/png" is still an SVG: the bytes decide.
    html = assert_json_error(put_logo(carnet_stack, admin, b"<html><script>alert(1)</script></html>"), 400)
    assert html["field"] == "logo"
    assert assert_json_error(put_logo(carnet_stack, admin, b""), 400)["field"] == "logo"
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_LOGO_BYTES
    assert assert_json_error(put_logo(carnet_stack, admin, big), 413)["field"] == "logo"
    assert requests.get(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30).status_code == 404

    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 64
    stored = put_logo(carnet_stack, admin, jpeg)
    assert stored.status_code == 200, stored.text
    assert stored.json()["logo"]["content_type"] == "image/jpeg"
    served = requests.get(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30)
    assert served.content == jpeg and served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.delete(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30).status_code == 204
    assert requests.get(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30).status_code == 404
    with session_scope(carnet_stack.settings.db_url) as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.in_(["org.logo.change", "org.logo.remove"]))
        ).all()
    assert {"org.logo.change", "org.logo.remove"} <= set(actions)


def viewer_page(stack, token: str, app_id: int) -> str:
    page = requests.get(f"{stack.url}/services/carnet-viewer/apps/{app_id}", headers=auth(token), timeout=120)
    assert page.status_code == 200, page.text[:500]
    kernel = re.search(r'"kernelId": "([0-9a-f-]{36})"', page.text)
    if kernel:  # the render's kernel is not needed any longer
        requests.post(
            f"{stack.url}/services/carnet-viewer/voila/api/shutdown/{kernel.group(1)}",
            headers=auth(token),
            timeout=60,
        )
    return page.text


def gallery_page(stack, token: str) -> str:
    page = requests.get(f"{stack.url}/services/carnet/viewer/", headers=auth(token), timeout=60)
    assert page.status_code == 200, page.text[:500]
    return page.text


def test_each_org_sees_only_its_own_branding(carnet_stack, admin, hub_token, created):
    png = tiny_png()
    assert patch_org(carnet_stack, admin, {"primary_color": ACME_COLOR, "custom_css": ACME_CSS}).ok
    assert put_logo(carnet_stack, admin, png).status_code == 200
    globex_app = created.publish_app("globex", title="Globex branding probe")
    try:
        acme_page = viewer_page(carnet_stack, hub_token(ACME_VIEWER), carnet_stack.app_id)
        globex_page = viewer_page(carnet_stack, hub_token(GLOBEX_VIEWER), globex_app)
        acme_gallery = gallery_page(carnet_stack, hub_token(ACME_VIEWER))
        globex_gallery = gallery_page(carnet_stack, hub_token(GLOBEX_VIEWER))
    finally:
        requests.delete(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30)
        patch_org(carnet_stack, admin, {"primary_color": "", "custom_css": ""})

    logo_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    for page in (acme_page, acme_gallery):
        assert "acme-branding-marker" in page and ACME_COLOR in page and logo_uri in page
    assert f"--carnet-primary: {ACME_COLOR}" in acme_page
    for page in (globex_page, globex_gallery):
        assert "acme-branding-marker" not in page and ACME_COLOR not in page and logo_uri not in page
        assert 'id="carnet-custom-css"' not in page and 'id="carnet-brand-color"' not in page
    # The globex page is Carnet's template all the same (its skeleton), just without acme's branding.
    assert 'class="carnet-skeleton"' in globex_page


def test_a_notebook_cannot_brand_its_page(carnet_stack, hub_token, created):
    """Metadata in the notebook named like the Viewer's branding changes nothing on the page."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["carnetBranding"] = {"custom_css": "body{display:none} /* notebook-css */"}
    with session_scope(carnet_stack.settings.db_url) as session:
        org_id = session.scalar(select(Organization.id).where(Organization.slug == "acme"))
        app = publish(
            session,
            carnet_stack.settings,
            org_id=org_id,
            user_id=None,
            slug="branding-probe-notebook",
            title="Notebook branding probe",
            notebook=notebook,
        )
        created.apps.add(app.id)
        app_id = app.id
    page = viewer_page(carnet_stack, hub_token(ACME_VIEWER), app_id)
    assert "notebook-css" not in page


def test_admin_page_logo_form(carnet_stack, admin):
    session = hub_login(carnet_stack.url, ADMIN, carnet_stack.passwords[ADMIN])
    page = open_page(session, carnet_stack)
    assert 'id="org-logo"' in page.text and 'id="setting-custom_css"' in page.text

    def post(files=None, **data):
        token = xsrf_of(open_page(session, carnet_stack).text)
        return session.post(
            page_url(carnet_stack, "settings/logo"), data={"_xsrf": token, **data}, files=files, timeout=60
        )

    refused = post(files={"logo": ("logo.svg", SVG_LOGO, "image/svg+xml")})
    assert refused.status_code == 400 and "SVG logos are refused" in refused.text
    png = tiny_png()
    saved = post(files={"logo": ("logo.png", png, "image/png")})
    assert saved.status_code == 200 and "Logo saved" in saved.text
    assert requests.get(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30).content == png
    removed = post(remove="1")
    assert removed.status_code == 200 and "Logo removed" in removed.text
    assert requests.get(api_url(carnet_stack, "org/logo"), headers=admin, timeout=30).status_code == 404
