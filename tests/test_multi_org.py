"""A person who belongs to several organizations: the gallery asks which one, the API wants ?org=<slug>
(400 listing their organizations), and the Viewer opens an app in the app's own organization."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import App, Membership, Organization, Role, User
from carnet.passwords import hash_password
from tests.api_support import api_url
from tests.helpers import hub_login

EMAIL = "two-orgs@acme.example"
PASSWORD = "two organizations, one person"  # noqa: S105 - a test account's password


@pytest.fixture(scope="module")
def browser(carnet_stack):
    with session_scope(carnet_stack.settings.db_url) as session:
        orgs = dict(session.execute(select(Organization.slug, Organization.id)).all())
        user = User(email=EMAIL, display_name="Two orgs", password_hash=hash_password(PASSWORD))
        session.add(user)
        session.flush()
        session.add_all(
            [
                Membership(user_id=user.id, org_id=orgs["acme"], role=Role.viewer),
                Membership(user_id=user.id, org_id=orgs["globex"], role=Role.viewer),
            ]
        )
        user_id = user.id
    try:
        yield hub_login(carnet_stack.url, EMAIL, PASSWORD)
    finally:
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(User).where(User.id == user_id))


def test_the_gallery_asks_which_organization_then_lists_its_apps(carnet_stack, browser):
    gallery = f"{carnet_stack.url}/services/carnet/viewer/"
    chooser = browser.get(gallery, timeout=60)
    assert chooser.status_code == 200, chooser.text
    assert re.findall(r'class="org" href="\?org=(\w+)"', chooser.text) == ["acme", "globex"]
    assert "/services/carnet-viewer/apps/" not in chooser.text

    acme = browser.get(gallery, params={"org": "acme"}, timeout=60)
    assert acme.status_code == 200
    assert f"/services/carnet-viewer/apps/{carnet_stack.app_id}" in acme.text
    globex = browser.get(gallery, params={"org": "globex"}, timeout=60)
    assert globex.status_code == 200 and "/services/carnet-viewer/apps/" not in globex.text
    # Not one of theirs: the same answer as an organization that does not exist.
    assert browser.get(gallery, params={"org": "initech"}, timeout=60).status_code == 404


def test_the_api_names_the_organizations_to_choose_from(carnet_stack, browser):
    unqualified = browser.get(api_url(carnet_stack, "apps"), timeout=60)
    assert unqualified.status_code == 400
    assert unqualified.json()["orgs"] == ["acme", "globex"] and "?org=" in unqualified.json()["message"]
    chosen = browser.get(api_url(carnet_stack, "apps"), params={"org": "acme"}, timeout=60)
    assert chosen.status_code == 200
    listed = {app["id"] for app in chosen.json()["apps"]}
    # The demo's apps, and only apps of acme (other test modules may have published more on this stack).
    assert {carnet_stack.app_id, carnet_stack.dash_app_id} <= listed
    with session_scope(carnet_stack.settings.db_url) as session:
        orgs = session.execute(
            select(Organization.slug).join(App, App.org_id == Organization.id).where(App.id.in_(listed))
        ).scalars()
        assert set(orgs) == {"acme"}


def test_the_viewer_opens_an_app_in_its_own_organization(carnet_stack, browser):
    page = browser.get(f"{carnet_stack.url}/services/carnet-viewer/apps/{carnet_stack.app_id}", timeout=120)
    assert page.status_code == 200, page.text[:500]
    assert "World development" in page.text
