"""Browser sessions end everywhere at once: signing out of the Hub, or being disabled, stops the very next
request to the Carnet service and the Viewer with the cookies they had set (no cached Hub answer keeps them
alive: CarnetSettings.hub_auth_cache_seconds, default 0). The real stack, real browser-like sessions.
"""

from __future__ import annotations

import contextlib
import copy
import secrets

import requests
from sqlalchemy import delete, select

from carnet.db import session_scope
from carnet.db.models import Membership, Organization, Role, User
from carnet.hub_auth import NoCache, hub_auth_cache, make_hub_auth
from carnet.passwords import hash_password
from tests.api_support import api_url, auth, unique
from tests.helpers import hub_login
from tests.test_viewer_security import kernel_id_of, viewer_url

ADMIN = "admin@acme.example"


@contextlib.contextmanager
def temporary_person(stack, role: Role = Role.viewer):
    """An acme person made in the database with a password of their own (no first-sign-in step), removed
    afterwards: signing them out or disabling them touches nobody else's session."""
    email, password = f"{unique('session')}@acme.example", secrets.token_urlsafe(16)
    with session_scope(stack.settings.db_url) as session:
        org_id = session.scalar(select(Organization.id).where(Organization.slug == "acme"))
        user = User(email=email, display_name="Session test", password_hash=hash_password(password))
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=org_id, role=role))
        user_id = user.id
    try:
        yield {"id": user_id, "email": email, "password": password}
    finally:
        with session_scope(stack.settings.db_url) as session:
            session.execute(delete(User).where(User.id == user_id))


def browser(stack, person: dict) -> requests.Session:
    """A signed-in browser that has also been through the service's OAuth handshake (service cookie set)."""
    session = hub_login(stack.url, person["email"], person["password"])
    gallery = session.get(f"{stack.url}/services/carnet/viewer/", timeout=60)
    assert gallery.status_code == 200, (gallery.url, gallery.text[:800])
    assert session.cookies.get("service-carnet"), [c.name for c in session.cookies]
    return session


def me(stack, session: requests.Session) -> requests.Response:
    return session.get(api_url(stack, "me"), timeout=30, allow_redirects=False)


def test_no_cache_keeps_nothing_and_a_positive_setting_caches():
    # JupyterHub's own cache treats 0 as "forever": Carnet's 0 must be a cache that keeps nothing.
    nothing = hub_auth_cache(0)
    nothing["k"] = {"name": "x"}
    assert isinstance(nothing, NoCache) and "k" not in nothing and len(nothing) == 0
    kept = hub_auth_cache(60)
    kept["k"] = {"name": "x"}
    assert kept["k"] == {"name": "x"} and kept.max_age == 60
    assert isinstance(make_hub_auth(0, api_token="t", api_url="http://127.0.0.1:1/hub/api").cache, NoCache)


def test_hub_logout_ends_the_service_and_viewer_sessions_at_once(carnet_stack):
    with temporary_person(carnet_stack) as person:
        session = browser(carnet_stack, person)
        assert me(carnet_stack, session).status_code == 200
        assert me(carnet_stack, session).json()["email"] == person["email"]
        page = session.get(viewer_url(carnet_stack, f"apps/{carnet_stack.app_id}"), timeout=120)
        assert page.status_code == 200 and "jupyter-config-data" in page.text
        kernel_id = kernel_id_of(page.text)
        xsrf = session.cookies.get("_xsrf", path="/services/carnet-viewer/")
        shutdown = session.post(
            viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"),
            headers={"X-XSRFToken": xsrf} if xsrf else {},
            timeout=60,
        )
        assert shutdown.status_code == 204

        # Signing out of the Hub revokes the session's OAuth tokens, which the service cookies hold. The
        # browser also drops the Hub's session-id cookie, which alone would miss a cached answer: replay
        # the cookies exactly as they were (a copied or not-yet-updated cookie jar), so only asking the
        # Hub again can refuse them (with JupyterHub's 300 s cache they still answered 200 here).
        before = copy.deepcopy(session.cookies)
        logout = session.get(f"{carnet_stack.url}/hub/logout", timeout=30)
        assert logout.status_code == 200 and "/hub/login" in logout.url
        replay = requests.Session()
        replay.cookies = before
        assert replay.cookies.get("service-carnet") and replay.cookies.get("service-carnet-viewer")

        after = me(carnet_stack, replay)  # the same cookies no longer identify anyone
        assert after.status_code == 401, after.text[:300]
        assert after.json()["status"] == 401
        viewer = replay.get(
            viewer_url(carnet_stack, f"apps/{carnet_stack.app_id}"), timeout=60, allow_redirects=False
        )
        assert viewer.status_code == 302
        assert viewer.headers["Location"].startswith(
            "/hub/api/oauth2/authorize?client_id=service-carnet-viewer&"
        )
        # The Hub cookie itself, copied before the logout (another tab, another browser, a stolen copy), is
        # dead too: the logout gave the person a new cookie id. Following the Viewer's redirect with it
        # ends on the login form, and the Hub's own API does not know it.
        hub_api = replay.get(f"{carnet_stack.url}/hub/api/user", timeout=30)
        assert hub_api.status_code == 403, hub_api.text[:300]
        hub_home = replay.get(f"{carnet_stack.url}/hub/home", timeout=30)
        assert hub_home.url.split("?")[0].endswith("/hub/login")
        # The browser itself (its Hub cookie cleared by the logout) ends on the Hub's login form.
        followed = session.get(viewer_url(carnet_stack, f"apps/{carnet_stack.app_id}"), timeout=60)
        assert (
            followed.url.split("?")[0].endswith("/hub/login") and "jupyter-config-data" not in followed.text
        )


def test_disabling_a_person_ends_their_browser_session_on_the_service(carnet_stack, hub_token):
    """tests/test_users.py checks a disabled person's Hub token; this is their service *cookie*."""
    with temporary_person(carnet_stack) as person:
        session = browser(carnet_stack, person)
        assert me(carnet_stack, session).status_code == 200
        disabled = requests.patch(
            api_url(carnet_stack, f"users/{person['id']}"),
            json={"is_active": False},
            headers=auth(hub_token(ADMIN)),
            timeout=30,
        )
        assert disabled.status_code == 200 and disabled.json()["is_active"] is False
        after = me(carnet_stack, session)
        assert after.status_code in (401, 403), after.text[:300]
        assert after.json()["status"] == after.status_code
        gallery = session.get(
            f"{carnet_stack.url}/services/carnet/viewer/", timeout=60, allow_redirects=False
        )
        assert gallery.status_code != 200
