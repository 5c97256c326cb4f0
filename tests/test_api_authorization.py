"""Who may call what: every route and method of the REST API, for every role, against the real stack.

The expected statuses below are written by hand from the product's rules (viewers only open apps; analysts
also read data, publish and schedule; studio and admin also create sources; app kernels read sources and
nothing else), never derived from ``carnet.permissions``: a change of that table must break this test.
"""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa
import pytest
import requests
from jupyterhub.services.auth import HubOAuthCallbackHandler
from sqlalchemy import delete, func, select
from tornado import web

from carnet.db import session_scope
from carnet.db.models import (
    App,
    AppFavourite,
    DataSource,
    JobRun,
    Membership,
    Organization,
    Role,
    Token,
    TokenKind,
    User,
)
from carnet.demo import DEMO_SOURCE, DEMO_TABLE
from carnet.passwords import hash_password
from carnet.permissions import ACTION_MIN_ROLE
from carnet.service.api.base import NotFoundHandler, authorized
from carnet.service.api.job_webhooks import PUBLIC_HANDLERS as JOB_HOOK_HANDLERS
from carnet.service.api.meta import PUBLIC_HANDLERS
from carnet.service.api.push import PUBLIC_HANDLERS as PUSH_HANDLERS
from carnet.service.app import all_handlers
from carnet.service.openapi import openapi_document
from carnet.tokens import mint_token
from carnet.warehouse import Warehouse, connect_waiting
from tests.api_support import (
    NEVER_CRON,
    UNKNOWN_ID,
    api_url,
    assert_json_error,
    auth,
    tiny_notebook,
    tiny_png,
    unique,
)
from tests.helpers import hub_login, make_hub_token

ARROW_STREAM = "application/vnd.apache.arrow.stream"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
EMAILS = {
    "viewer": "viewer@acme.example",
    "analyst": "analyst@acme.example",
    "studio": "studio@acme.example",
    "admin": "admin@acme.example",
}
GLOBEX_VIEWER = "viewer@globex.example"
GLOBEX_ADMIN = "authz-matrix-admin@globex.example"  # made by the ``globex_admin`` fixture, removed after
GLOBEX_ADMIN_PASSWORD = "globex admin password for the matrix"  # noqa: S105 - a test account's password
KEY_ROLES = {"key-viewer": "viewer", "key-analyst": "analyst", "key-studio": "studio", "key-admin": "admin"}
ROLES = ("anonymous", "viewer", "analyst", "studio", "admin", "viewer-kernel", "globex-admin", *KEY_ROLES)

WH = "/warehouse/tables/{table}"
RUN = "/jobs/{job_id}/runs/{run_id}"
RESTORE = "/apps/{app_id}/versions/{version}/restore"
THUMBNAIL = "/apps/{app_id}/thumbnail"
FAVOURITE = "/apps/{app_id}/favourite"
PUBLIC_LINK = "/apps/{app_id}/public-link"
EMBED = "/apps/{app_id}/embed"
# Columns: anonymous, the acme people (viewer, analyst, studio, admin), an acme viewer's app kernel, an admin
# of *another* org (globex: acme's objects are unknown to them, their own lists are empty of acme's), and
# acme API keys (made by acme's admin) of each ceiling: a key acts with its ceiling's role, except that keys
# never manage keys and never change a password (people only).
# method, route,                  anon, viewer, analyst, studio, admin, v-kernel, globex-admin,
#                                 key-viewer, key-analyst, key-studio, key-admin
MATRIX = [
    ("GET", "/", 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/openapi.json", 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/me", 401, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/sources", 401, 403, 200, 200, 200, 200, 200, 403, 200, 200, 200),
    ("POST", "/sources", 401, 403, 403, 201, 201, 403, 201, 403, 403, 201, 201),
    ("GET", "/sources/{name}", 401, 403, 200, 200, 200, 200, 404, 403, 200, 200, 200),
    ("GET", "/sources/{name}/data", 401, 403, 200, 200, 200, 200, 404, 403, 200, 200, 200),
    # The query service reads like /data: a structured query on one source, and SQL over {sources} (globex
    # has no source of that name: 404).
    ("POST", "/sources/{name}/query", 401, 403, 200, 200, 200, 200, 404, 403, 200, 200, 200),
    ("POST", "/query", 401, 403, 200, 200, 200, 200, 404, 403, 200, 200, 200),
    ("PATCH", "/sources/{name}", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("DELETE", "/sources/{name}", 401, 403, 403, 204, 204, 403, 404, 403, 403, 204, 204),
    ("POST", "/sources/{name}/test", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    # A file into the caller's own warehouse (globex's admin: globex's), as a source; preview stores nothing.
    ("POST", "/uploads", 401, 403, 403, 201, 201, 403, 201, 403, 403, 201, 201),
    ("POST", "/uploads/preview", 401, 403, 403, 200, 200, 403, 200, 403, 403, 200, 200),
    # The warehouse: analysts read its tables and their history; studio loads (into its own org: globex's
    # admin loads into a globex table of that name) and makes push URLs. A push URL is the credential
    # itself: whoever else calls with it, the rows land in the endpoint's (acme's) table.
    ("GET", "/warehouse/tables", 401, 403, 200, 200, 200, 403, 200, 403, 200, 200, 200),
    ("GET", WH, 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("GET", WH + "/preview", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("GET", WH + "/loads", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("POST", WH + "/load", 401, 403, 403, 200, 200, 403, 200, 403, 403, 200, 200),
    ("POST", WH + "/batch", 401, 403, 403, 200, 200, 403, 200, 403, 403, 200, 200),
    # A sync of acme's demo source into a fresh table: a load (studio's); acme's source is unknown to globex.
    ("POST", WH + "/sync", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("GET", WH + "/push-endpoints", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    # The table need not exist yet (the first push creates it): globex's admin makes one in globex.
    ("POST", WH + "/push-endpoints", 401, 403, 403, 201, 201, 403, 201, 403, 403, 201, 201),
    ("DELETE", WH + "/push-endpoints/{endpoint_id}", 401, 403, 403, 204, 204, 403, 404, 403, 403, 204, 204),
    ("POST", "/push/{token}", 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # The result cache of a source: its policy (on a fresh source) and dropping its entries are studio's.
    ("PUT", "/sources/{name}/cache", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("DELETE", "/sources/{name}/cache", 401, 403, 403, 204, 204, 403, 404, 403, 403, 204, 204),
    # Connections hold server settings and credentials: studio and admin only (each case on a fresh one).
    ("GET", "/connections", 401, 403, 403, 200, 200, 403, 200, 403, 403, 200, 200),
    ("POST", "/connections", 401, 403, 403, 201, 201, 403, 201, 403, 403, 201, 201),
    ("POST", "/connections/test", 401, 403, 403, 200, 200, 403, 200, 403, 403, 200, 200),
    ("GET", "/connections/{connection_id}", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("PATCH", "/connections/{connection_id}", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("DELETE", "/connections/{connection_id}", 401, 403, 403, 204, 204, 403, 404, 403, 403, 204, 204),
    ("POST", "/connections/{connection_id}/test", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("GET", "/apps", 401, 200, 200, 200, 200, 403, 200, 200, 200, 200, 200),
    ("POST", "/apps", 401, 403, 201, 201, 201, 403, 201, 403, 201, 201, 201),
    ("GET", "/apps/{app_id}", 401, 200, 200, 200, 200, 403, 404, 200, 200, 200, 200),
    # Unpublishing and sharing are for authors (analyst and up), each case on a fresh app of its own.
    ("DELETE", "/apps/{app_id}", 401, 403, 204, 204, 204, 403, 404, 403, 204, 204, 204),
    ("GET", "/apps/{app_id}/sharing", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("PUT", "/apps/{app_id}/sharing", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    # Sharing outside the org (public link, signed embed URL): studio and admin of the app's org, where the
    # org allows public apps (acme does during these cases), each case on a fresh app (a link for DELETE).
    ("GET", PUBLIC_LINK, 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("POST", PUBLIC_LINK, 401, 403, 403, 201, 201, 403, 404, 403, 403, 201, 201),
    ("DELETE", PUBLIC_LINK, 401, 403, 403, 204, 204, 403, 404, 403, 403, 204, 204),
    ("POST", EMBED, 401, 403, 403, 201, 201, 403, 404, 403, 403, 201, 201),
    # Publishing: metadata, versions, rollback and thumbnails are the authors' (analyst and up), each case
    # that changes something on a fresh app; whoever may open an app sees its thumbnail and marks it as one
    # of their own favourites (viewers and viewer keys too, never an app kernel).
    ("PATCH", "/apps/{app_id}", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("GET", "/apps/{app_id}/versions", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("POST", RESTORE, 401, 403, 201, 201, 201, 403, 404, 403, 201, 201, 201),
    ("GET", THUMBNAIL, 401, 200, 200, 200, 200, 403, 404, 200, 200, 200, 200),
    ("PUT", THUMBNAIL, 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("DELETE", THUMBNAIL, 401, 403, 204, 204, 204, 403, 404, 403, 204, 204, 204),
    ("PUT", FAVOURITE, 401, 200, 200, 200, 200, 403, 404, 200, 200, 200, 200),
    ("DELETE", FAVOURITE, 401, 200, 200, 200, 200, 403, 404, 200, 200, 200, 200),
    ("GET", "/jobs", 401, 403, 200, 200, 200, 403, 200, 403, 200, 200, 200),
    # The globex admin may create jobs, but not on acme's app: it is unknown to them.
    ("POST", "/jobs", 401, 403, 201, 201, 201, 403, 404, 403, 201, 201, 201),
    ("GET", "/jobs/{job_id}", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("DELETE", "/jobs/{job_id}", 401, 403, 204, 204, 204, 403, 404, 403, 204, 204, 204),
    ("GET", "/jobs/{job_id}/runs", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("POST", "/jobs/{job_id}/runs", 401, 403, 202, 202, 202, 403, 404, 403, 202, 202, 202),
    # Changing a job and making (or remaking) and removing its webhook URL are the schedulers' (analyst and
    # up), each case on a fresh job. The webhook URL is the credential itself: whoever calls it, acme's job
    # gets a run (one queued webhook run takes the calls that come while it waits).
    ("PATCH", "/jobs/{job_id}", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("POST", "/jobs/{job_id}/webhook", 401, 403, 201, 201, 201, 403, 404, 403, 201, 201, 201),
    ("DELETE", "/jobs/{job_id}/webhook", 401, 403, 204, 204, 204, 403, 404, 403, 204, 204, 204),
    ("POST", "/hooks/jobs/{secret}", 202, 202, 202, 202, 202, 202, 202, 202, 202, 202, 202),
    ("GET", RUN, 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    ("GET", RUN + "/outputs/{output}", 401, 403, 200, 200, 200, 403, 404, 403, 200, 200, 200),
    # carnet.state (/job-state): only a job run's own token, for its own job; no person, key or app kernel.
    ("GET", "/job-state/{key}", 401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("PUT", "/job-state/{key}", 401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("DELETE", "/job-state/{key}", 401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("GET", "/audit", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    ("GET", "/audit/export", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    ("GET", "/keys", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 403),
    ("POST", "/keys", 401, 403, 403, 403, 201, 403, 201, 403, 403, 403, 403),
    ("DELETE", "/keys/{key_id}", 401, 403, 403, 403, 204, 403, 404, 403, 403, 403, 403),
    ("POST", "/keys/{key_id}/rotate", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 403),
    ("GET", "/users", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    ("POST", "/users", 401, 403, 403, 403, 201, 403, 201, 403, 403, 403, 201),
    ("GET", "/users/{user_id}", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("PATCH", "/users/{user_id}", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("DELETE", "/users/{user_id}", 401, 403, 403, 403, 204, 403, 404, 403, 403, 403, 204),
    ("POST", "/users/{user_id}/password", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    # A new invitation link for the person (200: the person exists already; the link is the answer).
    ("POST", "/users/{user_id}/invitation", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    # Row-level security: members' attributes are the admins' (like the rest of people management); a
    # source's row rules are studio's (like the source). The reload reads a table of the caller's own org
    # (globex has no such table: 404).
    ("GET", "/users/{user_id}/attributes", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("PUT", "/users/{user_id}/attributes", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("POST", "/user-attributes/reload", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("GET", "/sources/{name}/row-rules", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("PUT", "/sources/{name}/row-rules", 401, 403, 403, 200, 200, 403, 404, 403, 403, 200, 200),
    ("GET", "/groups", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    ("POST", "/groups", 401, 403, 403, 403, 201, 403, 201, 403, 403, 403, 201),
    ("GET", "/groups/{group_id}", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("PATCH", "/groups/{group_id}", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    ("DELETE", "/groups/{group_id}", 401, 403, 403, 403, 204, 403, 404, 403, 403, 403, 204),
    ("PUT", "/groups/{group_id}/members", 401, 403, 403, 403, 200, 403, 404, 403, 403, 403, 200),
    # Every member reads their own org (not an app kernel); admins (and admin keys) change its settings,
    # here to the value they hold already (UTC in both orgs), so the matrix leaves them as seeded.
    ("GET", "/org", 401, 200, 200, 200, 200, 403, 200, 200, 200, 200, 200),
    ("PATCH", "/org", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    # The org's logo: every member reads it (acme's is set before each case; globex has none: 404); admins
    # set and remove their own org's (each case ends with both orgs without a logo, as seeded).
    ("GET", "/org/logo", 401, 200, 200, 200, 200, 403, 404, 200, 200, 200, 200),
    ("PUT", "/org/logo", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 200),
    ("DELETE", "/org/logo", 401, 403, 403, 403, 204, 403, 204, 403, 403, 403, 204),
    # The org's own SMTP server: admins only, and people only (a password, and a test mail to any host):
    # never a key, even an admin's. acme's settings are put before GET and DELETE; every case ends with
    # both orgs without settings of their own, as seeded. The test mail goes the platform's way (the
    # suite's SMTP catcher) since neither org has settings then.
    ("GET", "/org/mail", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 403),
    ("PUT", "/org/mail", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 403),
    ("DELETE", "/org/mail", 401, 403, 403, 403, 204, 403, 204, 403, 403, 403, 403),
    ("POST", "/org/mail/test", 401, 403, 403, 403, 200, 403, 200, 403, 403, 403, 403),
    # People may change their own password (here: a wrong current password, so nothing changes); kernels
    # and keys not.
    ("POST", "/me/password", 401, 400, 400, 400, 400, 403, 400, 403, 403, 403, 403),
    ("POST", "/internal/viewer-sessions", 401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("POST", "/internal/visitor-sessions", 401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
]

CASES = [
    pytest.param(method, route, role, expected, id=f"{method} {route} as {role}")
    for method, route, *statuses in MATRIX
    for role, expected in zip(ROLES, statuses, strict=True)
]


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def globex_admin(carnet_stack, created):
    """An admin of globex, made in the database with a known password, signed in through the Hub: returns
    a Hub token of theirs. Removed (with what they own) when the module ends."""
    globex_id = created.org_id("globex")
    with session_scope(carnet_stack.settings.db_url) as session:
        user = User(
            email=GLOBEX_ADMIN,
            display_name="Globex admin",
            password_hash=hash_password(GLOBEX_ADMIN_PASSWORD),
        )
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, org_id=globex_id, role=Role.admin))
        user_id = user.id
    try:
        signed_in = hub_login(carnet_stack.url, GLOBEX_ADMIN, GLOBEX_ADMIN_PASSWORD)
        yield make_hub_token(carnet_stack.url, signed_in, GLOBEX_ADMIN)
    finally:
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(User).where(User.id == user_id))


def create_key(stack, token, created, role: str = "viewer") -> dict:
    response = requests.post(
        api_url(stack, "keys"),
        json={"name": unique("authz key"), "role": role},
        headers=auth(token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.json()["role"] == role
    created.keys.add(response.json()["id"])
    return response.json()


@pytest.fixture(scope="module")
def acme_keys(carnet_stack, hub_token, created):
    """An acme API key of each ceiling, made by acme's admin through the API."""
    admin = hub_token(EMAILS["admin"])
    return {column: create_key(carnet_stack, admin, created, role) for column, role in KEY_ROLES.items()}


@pytest.fixture(scope="module")
def tokens(carnet_stack, hub_token, created, globex_admin, acme_keys):
    result = {"anonymous": None, **{role: hub_token(email) for role, email in EMAILS.items()}}
    result["globex-admin"] = globex_admin
    result.update({column: key["key"] for column, key in acme_keys.items()})
    with session_scope(carnet_stack.settings.db_url) as session:
        result["viewer-kernel"] = mint_token(
            session,
            kind=TokenKind.viewer_kernel,
            user_id=created.user_id(EMAILS["viewer"]),
            org_id=created.org_id("acme"),
            ttl_seconds=3600,
            note="authorization matrix",
        )
    return result


@pytest.fixture(scope="module")
def tiny_app(carnet_stack, tokens, created):
    """A tiny acme app (published through the API) that the matrix's jobs run: quick to execute."""
    response = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": unique("authz-tiny"), "title": "Authz tiny", "notebook": tiny_notebook()},
        headers=auth(tokens["studio"]),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.apps.add(response.json()["id"])
    return response.json()["id"]


def create_source(stack, token, created) -> str:
    """A fresh acme source (a case that changes or deletes one must not touch the demo's)."""
    name = unique("authz-own-src")
    response = requests.post(
        api_url(stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": DEMO_TABLE}},
        headers=auth(token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.sources.add(response.json()["id"])
    return name


def allow_public_apps(request, stack, org_id: int) -> None:
    """The org allows public apps until the end of the calling test (as it was seeded after)."""
    with session_scope(stack.settings.db_url) as session:
        org = session.get(Organization, org_id)
        before = dict(org.settings or {})
        org.settings = {**before, "allow_public_apps": True}

    def restore():
        with session_scope(stack.settings.db_url) as session:
            session.get(Organization, org_id).settings = before

    request.addfinalizer(restore)


def create_app(stack, token, created) -> int:
    response = requests.post(
        api_url(stack, "apps"),
        json={"slug": unique("authz-own"), "title": "Authz own app", "notebook": tiny_notebook()},
        headers=auth(token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    created.apps.add(response.json()["id"])
    return response.json()["id"]


def create_job(stack, token, app_id: int, name: str | None = None) -> dict:
    response = requests.post(
        api_url(stack, "jobs"),
        json={
            "name": name or unique("authz job"),
            "app_id": app_id,
            "cron": NEVER_CRON,
            "recipients": ["authz-matrix@acme.example"],
        },
        headers=auth(token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def shared_job(carnet_stack, tokens, tiny_app, created):
    job = create_job(carnet_stack, tokens["analyst"], tiny_app)
    created.jobs.add(job["id"])
    return job["id"]


@pytest.fixture(scope="module")
def hook_job(carnet_stack, tokens, tiny_app, created):
    """An acme job with a webhook URL: (its id, the secret part of its URL)."""
    job = create_job(carnet_stack, tokens["analyst"], tiny_app)
    created.jobs.add(job["id"])
    made = requests.post(
        api_url(carnet_stack, f"jobs/{job['id']}/webhook"), headers=auth(tokens["analyst"]), timeout=30
    )
    assert made.status_code == 201, made.text
    return job["id"], made.json()["url"].rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def shared_run(carnet_stack, tokens, shared_job):
    """A finished run of the shared job (its output files exist: the run's copy of the notebook)."""
    headers = auth(tokens["analyst"])
    queued = requests.post(api_url(carnet_stack, f"jobs/{shared_job}/runs"), headers=headers, timeout=30)
    assert queued.status_code == 202, queued.text
    url = api_url(carnet_stack, f"jobs/{shared_job}/runs/{queued.json()['id']}")
    deadline = time.monotonic() + 180
    while (run := requests.get(url, headers=headers, timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    assert "input.ipynb" in [output["name"] for output in run["outputs"]], run
    return run["id"]


def credentials(role: str, token: str | None) -> dict:
    """The headers of a column: API keys as ``Authorization: Bearer``, the rest as ``token``."""
    return {"Authorization": f"Bearer {token}"} if role in KEY_ROLES else auth(token)


def key_works(stack, key: str) -> bool:
    response = requests.get(api_url(stack, "me"), headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def create_person(stack, admin_token) -> dict:
    response = requests.post(
        api_url(stack, "users"),
        json={"email": f"{unique('authz-person')}@acme.example", "role": "viewer"},
        headers=auth(admin_token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def create_group(stack, admin_token) -> dict:
    response = requests.post(
        api_url(stack, "groups"), json={"name": unique("authz group")}, headers=auth(admin_token), timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()


CACHE = "/sources/{name}/cache"


def put_cache_probe(stack, org_id: int, source_name: str):
    """A result-cache entry of the source on disk (the stack's cache backend): its path."""
    from carnet.query.cache import cache_dir
    from carnet.query.cache_backends import DiskCache

    with session_scope(stack.settings.db_url) as session:
        source_id = session.scalar(
            select(DataSource.id).where(DataSource.org_id == org_id, DataSource.name == source_name)
        )
    cache = DiskCache(cache_dir(stack.settings), stack.settings.cache_max_bytes)
    cache.put(org_id, source_id, "matrix-probe", pa.table({"x": [1]}), None)
    path = cache.root / str(org_id) / str(source_id) / "matrix-probe.arrow"
    assert path.exists()
    return path


UPLOAD_CSV = b"city;amount\nLyon;1,5\nNantes;2\n"
LOAD_ROWS = pa.table({"id": [1, 2], "city": ["Lyon", "Nantes"]})
# Routes that write into the caller's own org (or, for a push, the URL's): no "unknown object" to compare.
OWN_ORG_WRITES = {("POST", WH + "/load"), ("POST", WH + "/batch"), ("POST", "/push/{token}")}
# A push endpoint may come before its table, so making one is also made in the caller's own org.
OWN_ORG_CREATES = OWN_ORG_WRITES | {("POST", WH + "/push-endpoints")}
# A job's webhook URL names the job itself: whoever calls it, the run is the job's (acme's).
OWN_ORG_CREATES |= {("POST", "/hooks/jobs/{secret}")}
# A job-state key is one of the calling job run's own job: no org's object, refused alike to every column.
OWN_ORG_CREATES |= {(method, "/job-state/{key}") for method in ("GET", "PUT", "DELETE")}
HOOK_PAYLOAD = {"region": "EU", "years": [2006, 2007]}
# Each on a fresh job of acme's analyst (the shared job stays as made).
FRESH_JOB_CASES = {
    ("DELETE", "/jobs/{job_id}"),
    ("PATCH", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/webhook"),
    ("DELETE", "/jobs/{job_id}/webhook"),
}


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def load_table(stack, token, table: str) -> None:
    """A fresh warehouse table of LOAD_ROWS in the token's org, through the load route."""
    response = requests.post(
        api_url(stack, f"warehouse/tables/{table}/load?format=arrow&mode=replace"),
        data=arrow_bytes(LOAD_ROWS),
        headers={**auth(token), "Content-Type": ARROW_STREAM},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def load_rows(stack, token, table: str, columns: dict) -> None:
    response = requests.post(
        api_url(stack, f"warehouse/tables/{table}/load?format=arrow&mode=replace"),
        data=arrow_bytes(pa.table(columns)),
        headers={**auth(token), "Content-Type": ARROW_STREAM},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def table_rows(stack, headers, table: str) -> list | None:
    """The table's rows (sorted by id) in the org of ``headers``, or None when it has no such table."""
    response = requests.get(
        api_url(stack, f"warehouse/tables/{table}/preview?limit=1000"), headers=headers, timeout=30
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return sorted(response.json()["rows"], key=lambda row: row["id"])


def create_push(stack, token, table: str) -> dict:
    response = requests.post(
        api_url(stack, f"warehouse/tables/{table}/push-endpoints"),
        json={"name": unique("authz push"), "mode": "append"},
        headers=auth(token),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def push_endpoints(stack, headers, table: str) -> list[dict]:
    response = requests.get(
        api_url(stack, f"warehouse/tables/{table}/push-endpoints"), headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["push_endpoints"]


def warehouse_tables(stack, org_id: int) -> list[str]:
    return Warehouse(stack.settings.warehouse_path(org_id)).tables()


MATRIX_DB_PASSWORD = "matrix connection password"  # noqa: S105 - the local server trusts; never echoed


def matrix_connection_settings(request) -> dict:
    """The local PostgreSQL (trust auth) as connection settings, without the password."""
    from carnet.connectors import settings_from_url

    settings = settings_from_url(request.getfixturevalue("pg_url"))
    return {k: v for k, v in settings.items() if k != "password" and v not in (None, "", {})}


def create_connection(stack, token, created, settings) -> dict:
    body = {"name": unique("authz conn"), "settings": settings, "password": MATRIX_DB_PASSWORD}
    response = requests.post(api_url(stack, "connections"), json=body, headers=auth(token), timeout=30)
    assert response.status_code == 201, response.text
    created.connections.add(response.json()["id"])
    return response.json()


# Two tiny valid PNG files (only their first bytes are checked; their digests differ).
MATRIX_LOGO = b"\x89PNG\r\n\x1a\n" + b"matrix logo"
MATRIX_LOGO_NEW = b"\x89PNG\r\n\x1a\n" + b"new matrix logo"


def put_logo(stack, headers, data: bytes) -> None:
    response = requests.put(
        api_url(stack, "org/logo"), data=data, headers={**headers, "Content-Type": "image/png"}, timeout=30
    )
    assert response.status_code == 200, response.text


def org_logo(stack, headers) -> bytes | None:
    response = requests.get(api_url(stack, "org/logo"), headers=headers, timeout=30)
    assert response.status_code in (200, 404), response.text
    return response.content if response.status_code == 200 else None


def check_logo_case(stack, method, response, ok, globex, home, admin) -> None:
    """What a logo case did: only the caller's own org's logo changed, and only when allowed. Both orgs
    end without a logo."""
    acme_logo, home_logo = org_logo(stack, admin), org_logo(stack, home)
    if method == "GET" and ok:
        assert response.content == MATRIX_LOGO and response.headers["Content-Type"] == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    elif method == "PUT":
        assert acme_logo == (MATRIX_LOGO_NEW if ok and not globex else MATRIX_LOGO)
        assert home_logo == (MATRIX_LOGO_NEW if ok else MATRIX_LOGO)
    elif method == "DELETE":
        assert acme_logo == (None if ok and not globex else MATRIX_LOGO)
    for headers in (admin, home):
        assert requests.delete(api_url(stack, "org/logo"), headers=headers, timeout=30).status_code == 204
    assert org_logo(stack, admin) is None and org_logo(stack, home) is None


MATRIX_SMTP_PASSWORD = "matrix smtp password"  # noqa: S105 - stored encrypted, never answered


def matrix_mail_settings(smtp_server, from_address: str = "matrix-mail@acme.example") -> dict:
    """SMTP settings with a login (nothing connects when they are stored)."""
    return {
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "security": "starttls",
        "username": "matrix",
        "password": MATRIX_SMTP_PASSWORD,
        "from_address": from_address,
    }


def org_mail(stack, headers) -> dict:
    response = requests.get(api_url(stack, "org/mail"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert MATRIX_SMTP_PASSWORD not in response.text and "password" not in response.json()
    return response.json()


def check_mail_case(stack, method, route, response, ok, globex, home, admin, smtp_server, body) -> None:
    """What an /org/mail case did: only the caller's own org's settings changed, and only when allowed; a
    test mail reached the server only when allowed. Both orgs end without settings of their own."""
    acme_mail, home_mail = org_mail(stack, admin), org_mail(stack, home)
    if route == "/org/mail/test":
        arrived = [m for m in smtp_server.messages if m["X-Envelope-To"] == body["to"]]
        assert len(arrived) == (1 if ok else 0)
        if ok:
            assert response.json() == {
                "delivered": True,
                "to": body["to"],
                "settings": "platform",
                "from": arrived[0]["From"],
            }
            assert arrived[0]["Subject"] == f"[Carnet] Test mail for {'Globex' if globex else 'Acme'}"
    elif method == "GET" and ok:
        assert MATRIX_SMTP_PASSWORD not in response.text and "password" not in response.json()
        assert response.json() == home_mail
        assert response.json()["configured"] is (not globex)  # acme's were put before; globex has none
        assert response.json()["password_set"] is (not globex)
    elif method == "PUT":
        assert home_mail["configured"] is ok
        assert acme_mail["configured"] is (ok and not globex)
        if ok:
            assert response.json() == home_mail and home_mail["from_address"] == body["from_address"]
            assert home_mail["password_set"] is True and MATRIX_SMTP_PASSWORD not in response.text
    elif method == "DELETE":
        assert acme_mail["configured"] is not (ok and not globex)  # acme's were put before the call
        assert home_mail["configured"] is (not ok and not globex)
    for headers in (admin, home):
        assert requests.delete(api_url(stack, "org/mail"), headers=headers, timeout=30).status_code == 204
    assert not org_mail(stack, admin)["configured"] and not org_mail(stack, home)["configured"]


def warehouse_rows(stack) -> int:
    with connect_waiting(stack.settings.warehouse_path(1), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {DEMO_TABLE}").fetchone()[0]  # noqa: S608


def viewer_kernel_tokens(stack) -> int:
    with session_scope(stack.settings.db_url) as session:
        return session.scalar(select(func.count(Token.id)).where(Token.kind == TokenKind.viewer_kernel))


# Publishing cases on a fresh app of their own (GET versions reads the demo app).
FRESH_APP_CASES = {
    ("PATCH", "/apps/{app_id}"),
    ("POST", RESTORE),
    ("GET", THUMBNAIL),
    ("PUT", THUMBNAIL),
    ("DELETE", THUMBNAIL),
    ("PUT", FAVOURITE),
    ("DELETE", FAVOURITE),
}
PUBLISHING_CASES = FRESH_APP_CASES | {("GET", "/apps/{app_id}/versions")}


def acting_user_id(created, role: str) -> int | None:
    """The person a column acts as: keys act as their creator (acme's admin), kernels as their viewer."""
    if role == "anonymous":
        return None
    email = {"globex-admin": GLOBEX_ADMIN, "viewer-kernel": EMAILS["viewer"]}.get(role)
    return created.user_id(email or EMAILS.get(role, EMAILS["admin"]))


def app_row(stack, app_id: int) -> App:
    with session_scope(stack.settings.db_url) as session:
        app = session.get(App, app_id)
        session.expunge(app)
        return app


def is_favourite(stack, user_id: int, app_id: int) -> bool:
    with session_scope(stack.settings.db_url) as session:
        found = select(AppFavourite.id).where(AppFavourite.app_id == app_id, AppFavourite.user_id == user_id)
        return session.scalar(found) is not None


def prepare_app_case(stack, tokens, created, method, route, user_id) -> int:
    app_id = create_app(stack, tokens["studio"], created)
    if route == THUMBNAIL and method != "PUT":
        put = requests.put(
            api_url(stack, f"apps/{app_id}/thumbnail"),
            data=tiny_png(),
            headers={**auth(tokens["studio"]), "Content-Type": "image/png"},
            timeout=30,
        )
        assert put.status_code == 200, put.text
    if (method, route) == ("DELETE", FAVOURITE) and user_id is not None:
        with session_scope(stack.settings.db_url) as session:
            session.add(AppFavourite(app_id=app_id, user_id=user_id))
    return app_id


def check_app_case(stack, method, route, response, ok, app_id, user_id) -> None:
    """What a publishing call of the matrix did (or, refused, did not do), seen in the database."""
    app = app_row(stack, app_id)
    if (method, route) == ("PATCH", "/apps/{app_id}"):
        assert (app.title == "Patched by the matrix") is ok
        assert app.current_version == 1
    elif route == "/apps/{app_id}/versions" and ok:
        versions = response.json()["versions"]
        assert versions[0]["version"] == app.current_version and versions[0]["current"] is True
    elif route == RESTORE:
        assert app.current_version == (2 if ok else 1)
    elif (method, route) == ("GET", THUMBNAIL) and ok:
        assert response.content == tiny_png() and response.headers["Content-Type"] == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    elif (method, route) == ("PUT", THUMBNAIL):
        assert (app.thumbnail_path is not None) is ok
    elif (method, route) == ("DELETE", THUMBNAIL):
        assert (app.thumbnail_path is None) is ok
    elif route == FAVOURITE and user_id is not None:
        # PUT marks, DELETE unmarks (it was marked before the call): refused, nothing changed.
        assert is_favourite(stack, user_id, app_id) is ((method == "PUT") is ok)
        if ok:
            assert response.json()["favourite"] is (method == "PUT")


# -- the matrix --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,route,role,expected", CASES)
def test_authorization_matrix(
    request,
    carnet_stack,
    tokens,
    acme_keys,
    tiny_app,
    shared_job,
    shared_run,
    hook_job,
    created,
    method,
    route,
    role,
    expected,
):
    stack, token = carnet_stack, tokens[role]
    admin = auth(tokens["admin"])
    # The admin of the caller's own org, to see what the call did there (acme's, but globex's for its admin).
    globex = role == "globex-admin"
    home = auth(tokens["globex-admin"]) if globex else admin
    job_id, key, app_id, source = shared_job, None, stack.app_id, DEMO_SOURCE
    fresh_source_cases = (("PATCH", "/sources/{name}"), ("DELETE", "/sources/{name}"), ("PUT", CACHE))
    if (method, route) in (*fresh_source_cases, ("PUT", "/sources/{name}/row-rules")):
        source = create_source(stack, tokens["studio"], created)
    if (method, route) in (("DELETE", "/apps/{app_id}"), ("PUT", "/apps/{app_id}/sharing")):
        app_id = create_app(stack, tokens["studio"], created)
    if route in (PUBLIC_LINK, EMBED):
        app_id = create_app(stack, tokens["studio"], created)
        allow_public_apps(request, stack, created.org_id("acme"))
        if method == "DELETE":
            made = requests.post(api_url(stack, f"apps/{app_id}/public-link"), headers=admin, timeout=30)
            assert made.status_code == 201, made.text
    user_id = acting_user_id(created, role) if (method, route) in PUBLISHING_CASES else None
    if (method, route) in FRESH_APP_CASES:
        app_id = prepare_app_case(stack, tokens, created, method, route, user_id)
    if (method, route) in FRESH_JOB_CASES:
        job_id = create_job(stack, tokens["analyst"], tiny_app)["id"]
        created.jobs.add(job_id)
        if (method, route) == ("DELETE", "/jobs/{job_id}/webhook"):
            made = requests.post(api_url(stack, f"jobs/{job_id}/webhook"), headers=admin, timeout=30)
            assert made.status_code == 201, made.text
    if "{key_id}" in route:
        key = create_key(stack, tokens["admin"], created)
    person = create_person(stack, tokens["admin"]) if "{user_id}" in route else None
    group = create_group(stack, tokens["admin"]) if "{group_id}" in route else None
    connection_settings = matrix_connection_settings(request) if route.startswith("/connections") else None
    table, endpoint = DEMO_TABLE, None
    if (method, route) in OWN_ORG_WRITES:
        # A fresh table each time (the demo's stays as seeded); batch and push change one that exists.
        table = unique("authz_wh").replace("-", "_")
        if route == WH + "/batch":
            load_table(stack, tokens["globex-admin" if globex else "studio"], table)
        elif route == "/push/{token}":
            load_table(stack, tokens["studio"], table)  # the endpoint's table is acme's, whoever calls
    if route == WH + "/sync":
        table = unique("authz_sync").replace("-", "_")
    if "{token}" in route or "{endpoint_id}" in route:
        endpoint = create_push(stack, tokens["studio"], table)
    connection = connection_settings and create_connection(
        stack, tokens["studio"], created, connection_settings
    )
    path = route.format(
        name=source,
        app_id=app_id,
        job_id=job_id,
        key_id=key and key["id"],
        user_id=person and person["id"],
        group_id=group and group["id"],
        connection_id=connection and connection["id"],
        table=table,
        endpoint_id=endpoint and endpoint["id"],
        token=endpoint and endpoint["url"].rsplit("/", 1)[-1],
        version=1,
        run_id=shared_run,
        output="input.ipynb",
        secret=hook_job[1],
        key="matrix-state",
    )
    body, before, data = None, None, None
    if (method, route) == ("POST", "/sources"):
        body = {"name": unique("authz-src"), "kind": "warehouse_table", "options": {"table": DEMO_TABLE}}
    elif (method, route) == ("PATCH", "/sources/{name}"):
        body = {"description": "Described by the matrix"}
    elif route == "/sources/{name}/query":
        body = {"group_by": ["continent"], "aggregates": {"*": "count"}, "order_by": ["continent"]}
    elif route == "/query":
        body = {"sql": f"SELECT count(*) AS n FROM {{{DEMO_SOURCE}}}"}
    elif (method, route) == ("PUT", CACHE):
        body = {"policy": "ttl", "ttl_seconds": 60}
    elif (method, route) == ("DELETE", CACHE):
        before = put_cache_probe(stack, created.org_id("acme"), source)
    elif (method, route) == ("POST", "/connections"):
        body = {"name": unique("authz conn"), "settings": connection_settings, "password": MATRIX_DB_PASSWORD}
    elif (method, route) == ("POST", "/connections/test"):
        body = {"settings": connection_settings, "password": MATRIX_DB_PASSWORD}
    elif (method, route) == ("PATCH", "/connections/{connection_id}"):
        body = {"name": unique("authz renamed conn")}
    elif (method, route) == ("POST", "/connections/{connection_id}/test"):
        body = {}
    elif (method, route) == ("PATCH", "/apps/{app_id}"):
        body = {"title": "Patched by the matrix"}
    elif (method, route) == ("POST", "/apps"):
        body = {"slug": unique("authz-app"), "title": "Authz app", "notebook": tiny_notebook()}
    elif (method, route) == ("POST", "/jobs"):
        body = {
            "name": unique("authz job"),
            "app_id": tiny_app,
            "cron": NEVER_CRON,
            "recipients": ["authz-matrix@acme.example"],
        }
    elif (method, route) == ("POST", "/jobs/{job_id}/runs"):
        before = created.run_count(job_id)
    elif (method, route) == ("PATCH", "/jobs/{job_id}"):
        body = {"name": unique("authz patched job")}
    elif route == "/hooks/jobs/{secret}":
        body = HOOK_PAYLOAD
    elif (method, route) == ("POST", "/keys"):
        body = {"name": unique("authz key"), "role": "viewer"}
    elif route == "/internal/viewer-sessions":
        body = {"user": EMAILS["viewer"], "app_id": stack.app_id}
        before = viewer_kernel_tokens(stack)
    elif route == "/internal/visitor-sessions":
        body = {"link": "0" * 12 + "_" + "x" * 43}
    elif (method, route) == ("POST", "/users"):
        body = {"email": f"{unique('authz-person')}@acme.example", "role": "viewer"}
    elif (method, route) == ("PATCH", "/users/{user_id}"):
        body = {"display_name": "Renamed by the matrix"}
    elif (method, route) == ("POST", "/groups"):
        body = {"name": unique("authz group")}
    elif (method, route) == ("PATCH", "/groups/{group_id}"):
        body = {"name": unique("renamed by the matrix")}
    elif route == "/groups/{group_id}/members":
        body = {"users": [EMAILS["viewer"]]}
    elif (method, route) == ("PATCH", "/org"):
        body = {"timezone": "UTC"}
    elif route == "/org/logo":
        put_logo(stack, admin, MATRIX_LOGO)
        if method == "PUT":
            data = MATRIX_LOGO_NEW
    elif route == "/org/mail":
        mail_settings = matrix_mail_settings(request.getfixturevalue("smtp_server"))
        if method in ("GET", "DELETE"):
            put = requests.put(api_url(stack, "org/mail"), json=mail_settings, headers=admin, timeout=30)
            assert put.status_code == 200, put.text
        elif method == "PUT":
            body = {**mail_settings, "from_address": f"{unique('matrix-mail')}@acme.example"}
    elif route == "/org/mail/test":
        body = {"to": f"{unique('matrix-test-mail')}@acme.example"}
    elif (method, route) == ("PUT", "/apps/{app_id}/sharing"):
        body = {"visibility": "restricted", "users": [EMAILS["viewer"]], "groups": []}
    elif route == "/me/password":
        body = {"current_password": "not the password", "new_password": "a long enough new password"}
    elif route == WH + "/batch":
        body = {
            "key": ["id"],
            "operations": [
                {"op": "insert", "rows": [{"id": 3, "city": "Lille"}]},
                {"op": "delete", "rows": [{"id": 1}]},
            ],
        }
    elif (method, route) == ("POST", WH + "/push-endpoints"):
        body = {"name": unique("authz push"), "mode": "append"}
    elif route == WH + "/sync":
        body = {"source": DEMO_SOURCE, "mode": "replace"}
    elif route == "/push/{token}":
        body = {"rows": [{"id": 9, "city": "Pushed"}]}
    elif (method, route) == ("PUT", "/users/{user_id}/attributes"):
        body = {"attributes": {"region": ["EU", "US"]}}
    elif route == "/user-attributes/reload":
        # A fresh acme table: the new person of this case in region EU (globex has no table of that name).
        attributes_person = create_person(stack, tokens["admin"])
        attributes_table = unique("authz_attrs").replace("-", "_")
        load_rows(
            stack,
            tokens["studio"],
            attributes_table,
            {"email": [attributes_person["email"]], "region": ["EU"]},
        )
        body = {"table": attributes_table}
    elif (method, route) == ("PUT", "/sources/{name}/row-rules"):
        body = {"rules": [{"column": "continent", "attribute": "region"}]}

    headers = credentials(role, token)
    if (method, route) == ("PUT", THUMBNAIL):
        data, headers = tiny_png(), {**headers, "Content-Type": "image/png"}
    if route.startswith("/uploads"):
        # The raw file as the body (not JSON); the table is new, so what the call made can be found.
        upload_table = unique("authz_upload").replace("-", "_")
        path += f"?format=csv&table={upload_table}"
        data, headers = UPLOAD_CSV, {**headers, "Content-Type": "application/octet-stream"}
        before = {org: warehouse_tables(stack, created.org_id(org)) for org in ("acme", "globex")}
    if route == WH + "/load":
        path += "?format=arrow&mode=replace"
        data, headers = arrow_bytes(LOAD_ROWS), {**headers, "Content-Type": ARROW_STREAM}
    response = requests.request(
        method, api_url(stack, path), json=body, data=data, headers=headers, timeout=60
    )

    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert_json_error(response, response.status_code)

    # What the call did (or, refused, did not do).
    ok = response.status_code < 400
    if globex and "{" in route and (method, route) not in OWN_ORG_CREATES:
        # Another org's object answers exactly as an unknown one (same status, same body).
        unknown_name = unique("no-such-source")
        unknown_table = unknown_name.replace("-", "_")
        unknown_path = route.format(
            name=unknown_name,
            app_id=UNKNOWN_ID,
            job_id=UNKNOWN_ID,
            key_id=UNKNOWN_ID,
            user_id=UNKNOWN_ID,
            group_id=UNKNOWN_ID,
            connection_id=UNKNOWN_ID,
            table=unknown_table,
            endpoint_id=UNKNOWN_ID,
            version=1,
            run_id=UNKNOWN_ID,
            output="input.ipynb",
        )
        unknown = requests.request(
            method, api_url(stack, unknown_path), json=body, headers=headers, timeout=60
        )
        assert unknown.status_code == response.status_code == 404
        assert response.json() == {
            **unknown.json(),
            "message": unknown.json()["message"].replace(unknown_name, source).replace(unknown_table, table),
        }
    if globex and (method, route) == ("POST", "/jobs"):
        assert response.json() == {"status": 404, "message": "No such app"}
    if (method, route) == ("GET", "/"):
        assert response.json()["name"] == "carnet" and response.json()["api"] == "v1"
    elif route == "/openapi.json":
        assert response.json()["openapi"].startswith("3.")
        assert response.json()["paths"].keys() == openapi_document("/services/carnet/")["paths"].keys()
    elif route == "/me" and ok:
        me = response.json()
        if role == "viewer-kernel":
            assert me == {"email": EMAILS["viewer"], "org": "acme", "role": "viewer", "via": "viewer_kernel"}
        elif globex:
            assert me == {"email": GLOBEX_ADMIN, "org": "globex", "role": "admin", "via": "hub"}
        elif role in KEY_ROLES:
            # A key acts as its creator (acme's admin), with its ceiling as role.
            assert me == {"email": EMAILS["admin"], "org": "acme", "role": KEY_ROLES[role], "via": "api_key"}
        else:
            assert me == {"email": EMAILS[role], "org": "acme", "role": role, "via": "hub"}
    elif (method, route) == ("GET", "/sources") and ok:
        assert (DEMO_SOURCE in [s["name"] for s in response.json()["sources"]]) is not globex
    elif (method, route) == ("POST", "/sources"):
        # (Listed rather than read: globex's warehouse has no such table, so reading it there fails.)
        listed = requests.get(api_url(stack, "sources"), headers=home, timeout=30).json()["sources"]
        if globex:  # made in globex, not in acme
            acme = requests.get(api_url(stack, f"sources/{body['name']}"), headers=admin, timeout=30)
            assert acme.status_code == 404
        if ok:
            created.sources.add(response.json()["id"])
            assert response.json()["name"] == body["name"]
            assert response.json()["options"] == {"table": DEMO_TABLE}
        assert (body["name"] in [s["name"] for s in listed]) is ok
        if not globex:
            check = requests.get(api_url(stack, f"sources/{body['name']}"), headers=admin, timeout=30)
            assert check.status_code == (200 if ok else 404)
        elif ok:  # no route deletes a source: drop it now, globex's list stays as seeded for later tests
            with session_scope(stack.settings.db_url) as session:
                session.execute(delete(DataSource).where(DataSource.id == response.json()["id"]))
    elif (method, route) == ("GET", "/sources/{name}") and ok:
        assert response.json()["name"] == DEMO_SOURCE
        assert [c["name"] for c in response.json()["columns"]][:3] == ["country", "continent", "year"]
        # Connection settings only for those who may change sources (analysts: name, kind, columns).
        may_manage = role in ("studio", "admin", "key-studio", "key-admin")
        assert ("options" in response.json()) is may_manage
    elif (method, route) == ("PATCH", "/sources/{name}"):
        after = requests.get(api_url(stack, f"sources/{source}"), headers=admin, timeout=30).json()
        assert (after["description"] == "Described by the matrix") is ok
    elif (method, route) == ("DELETE", "/sources/{name}"):
        after = requests.get(api_url(stack, f"sources/{source}"), headers=admin, timeout=30)
        assert after.status_code == (404 if ok else 200)
    elif (method, route) == ("PUT", CACHE):
        with session_scope(stack.settings.db_url) as session:
            acme = created.org_id("acme")
            row = session.scalar(
                select(DataSource).where(DataSource.org_id == acme, DataSource.name == source)
            )
            assert (row.cache_policy, row.cache_ttl_seconds) == (("ttl", 60) if ok else ("none", None))
    elif (method, route) == ("DELETE", CACHE):
        assert before.exists() is not ok  # the entry put there before the call
        before.unlink(missing_ok=True)
    elif route.startswith("/uploads"):
        after = {org: warehouse_tables(stack, created.org_id(org)) for org in ("acme", "globex")}
        made = ("globex" if globex else "acme") if ok and route == "/uploads" else None
        for org in ("acme", "globex"):  # a table appears in the caller's own warehouse only, and only if ok
            assert set(after[org]) - set(before[org]) == ({upload_table} if org == made else set())
        listed = requests.get(api_url(stack, "sources"), headers=home, timeout=30).json()["sources"]
        assert (upload_table in [s["name"] for s in listed]) is (made is not None)
        if ok and made:
            assert response.json()["rows"] == 2 and response.json()["source"]["name"] == upload_table
            with session_scope(stack.settings.db_url) as session:
                session.execute(delete(DataSource).where(DataSource.id == response.json()["source"]["id"]))
        elif ok:
            assert response.json()["rows"] == [
                {"city": "Lyon", "amount": 1.5},
                {"city": "Nantes", "amount": 2.0},
            ]
    elif route.startswith(("/warehouse", "/push")):
        check_warehouse_case(stack, method, route, response, ok, globex, home, admin, table, endpoint, body)
    elif route == "/sources/{name}/test" and ok:
        assert response.json()["ok"] is True
        assert [c["name"] for c in response.json()["columns"]][:3] == ["country", "continent", "year"]
    elif route == "/sources/{name}/query" and ok:
        table = pa.ipc.open_stream(response.content).read_all()
        assert response.headers["Content-Type"] == ARROW_STREAM and table.column_names == [
            "continent",
            "count",
        ]
        assert table["continent"].to_pylist() == sorted(table["continent"].to_pylist())
        assert sum(table["count"].to_pylist()) == warehouse_rows(stack)
    elif route == "/query" and ok:
        assert response.headers["Content-Type"] == ARROW_STREAM
        assert pa.ipc.open_stream(response.content).read_all()["n"].to_pylist() == [warehouse_rows(stack)]
    elif route == "/sources/{name}/data" and ok:
        assert response.headers["Content-Type"] == ARROW_STREAM
        table = pa.ipc.open_stream(response.content).read_all()
        assert table.num_rows == warehouse_rows(stack)
        assert table.column_names[:3] == ["country", "continent", "year"]
    elif route.startswith("/connections"):
        assert MATRIX_DB_PASSWORD not in response.text  # write-only, whoever asks
        home_list = requests.get(api_url(stack, "connections"), headers=home, timeout=30).json()
        home_ids = {c["id"] for c in home_list["connections"]}
        acme = requests.get(api_url(stack, f"connections/{connection['id']}"), headers=admin, timeout=30)
        gone = (method, route) == ("DELETE", "/connections/{connection_id}") and ok
        assert acme.status_code == (404 if gone else 200)
        assert (connection["id"] in home_ids) is (not globex and not gone)
        if (method, route) == ("GET", "/connections") and ok:
            assert {c["id"] for c in response.json()["connections"]} == home_ids
        elif (method, route) == ("POST", "/connections"):
            if ok:
                created.connections.add(response.json()["id"])
                assert response.json()["password"] == "set" and response.json()["id"] in home_ids
            names = [c["name"] for c in home_list["connections"]]
            assert (body["name"] in names) is ok
        elif route.endswith("/test") and ok:
            assert response.json()["ok"] is True and response.json()["server_version"]
        elif (method, route) == ("GET", "/connections/{connection_id}") and ok:
            assert response.json() == {**connection, "sources": []}
        elif (method, route) == ("PATCH", "/connections/{connection_id}"):
            assert (acme.json()["name"] == body["name"]) is ok
    elif (method, route) == ("GET", "/apps") and ok:
        ids = [a["id"] for a in response.json()["apps"]]
        if globex:
            assert stack.app_id not in ids and tiny_app not in ids
        else:
            assert stack.app_id in ids and tiny_app in ids
    elif (method, route) == ("POST", "/apps"):
        listed = requests.get(api_url(stack, "apps"), headers=home, timeout=30).json()["apps"]
        if globex:  # made in globex, not in acme
            acme = requests.get(api_url(stack, "apps"), headers=admin, timeout=30).json()["apps"]
            assert body["slug"] not in [a["slug"] for a in acme]
        if ok:
            created.apps.add(response.json()["id"])
            assert response.json()["slug"] == body["slug"] and response.json()["version"] == 1
            assert body["slug"] in [a["slug"] for a in listed]
        else:
            assert body["slug"] not in [a["slug"] for a in listed]
    elif (method, route) in PUBLISHING_CASES:
        check_app_case(stack, method, route, response, ok, app_id, user_id)
    elif (method, route) == ("DELETE", "/apps/{app_id}"):
        after = requests.get(api_url(stack, f"apps/{app_id}"), headers=admin, timeout=30)
        assert after.status_code == (404 if ok else 200)
        snapshots = stack.settings.published_dir / str(created.org_id("acme")) / str(app_id)
        assert snapshots.exists() is not ok
    elif route == "/apps/{app_id}/sharing":
        after = requests.get(api_url(stack, f"apps/{app_id}/sharing"), headers=admin, timeout=30).json()
        if ok:
            assert response.json() == after
        changed = method == "PUT" and ok
        assert after["visibility"] == ("restricted" if changed else "org")
        assert [u["email"] for u in after["users"]] == ([EMAILS["viewer"]] if changed else [])
    elif route == "/apps/{app_id}" and ok:
        assert response.json()["id"] == stack.app_id
        assert response.json()["url"].endswith(f"/services/carnet-viewer/apps/{stack.app_id}")
    elif (method, route) == ("GET", "/jobs") and ok:
        ids = [j["id"] for j in response.json()["jobs"]]
        if globex:
            assert shared_job not in ids and stack.job_id not in ids
        else:
            assert shared_job in ids and stack.job_id in ids
    elif (method, route) == ("POST", "/jobs"):
        listed = requests.get(api_url(stack, "jobs"), headers=admin, timeout=30).json()["jobs"]
        if ok:
            created.jobs.add(response.json()["id"])
            assert response.json()["name"] == body["name"] and response.json()["app_id"] == tiny_app
            assert body["name"] in [j["name"] for j in listed]
            gone = requests.delete(api_url(stack, f"jobs/{response.json()['id']}"), headers=admin, timeout=30)
            assert gone.status_code == 204
        else:
            assert body["name"] not in [j["name"] for j in listed]
    elif (method, route) in FRESH_JOB_CASES - {("DELETE", "/jobs/{job_id}")}:
        check_job_change_case(stack, method, route, response, ok, admin, job_id, body)
    elif route == "/hooks/jobs/{secret}":
        run = response.json()
        assert set(run) == {"run_id", "coalesced"}  # nothing about the job
        with session_scope(stack.settings.db_url) as session:
            row = session.get(JobRun, run["run_id"])
            assert (row.job_id, row.trigger, row.payload) == (hook_job[0], "webhook", HOOK_PAYLOAD)
    elif (method, route) == ("GET", "/jobs/{job_id}") and ok:
        assert response.json()["id"] == job_id and response.json()["cron"] == NEVER_CRON
    elif (method, route) == ("DELETE", "/jobs/{job_id}"):
        after = requests.get(api_url(stack, f"jobs/{job_id}"), headers=admin, timeout=30)
        if ok:
            assert response.text == ""
        assert after.status_code == (404 if ok else 200)
        assert created.job_exists(job_id) is not ok
    elif (method, route) == ("GET", RUN) and ok:
        assert response.json()["id"] == shared_run and response.json()["job_id"] == job_id
    elif (method, route) == ("GET", RUN + "/outputs/{output}") and ok:
        assert json.loads(response.content)["cells"], "the run's copy of the app's notebook"
    elif (method, route) == ("GET", "/jobs/{job_id}/runs") and ok:
        assert isinstance(response.json()["runs"], list)
    elif (method, route) == ("POST", "/jobs/{job_id}/runs"):
        if ok:
            run = response.json()
            assert run["job_id"] == job_id and run["trigger"] == "manual"
            assert run["status"] in ("queued", "running", "succeeded", "failed")
            runs = requests.get(api_url(stack, f"jobs/{job_id}/runs"), headers=admin, timeout=30).json()
            assert run["id"] in [r["id"] for r in runs["runs"]]
            assert created.run_count(job_id) == before + 1
        else:
            assert created.run_count(job_id) == before
    elif route == "/audit" and ok:
        events = response.json()["events"]
        assert events and {e["org_id"] for e in events} == {created.org_id("globex" if globex else "acme")}
    elif route == "/audit/export" and ok:
        assert response.headers["Content-Type"].startswith("text/csv")
        assert response.text.splitlines()[0].startswith("id,created_at,action,actor")
    elif (method, route) == ("GET", "/keys") and ok:
        assert all("key" not in k and "secret_hash" not in k for k in response.json()["keys"])
        ids = {k["id"] for k in response.json()["keys"]}
        acme_ids = {k["id"] for k in acme_keys.values()}
        assert (ids & acme_ids) == (set() if globex else acme_ids)
    elif (method, route) == ("POST", "/keys"):
        names = [
            k["name"] for k in requests.get(api_url(stack, "keys"), headers=home, timeout=30).json()["keys"]
        ]
        if globex:  # made in globex, not in acme
            acme = requests.get(api_url(stack, "keys"), headers=admin, timeout=30).json()["keys"]
            assert body["name"] not in [k["name"] for k in acme]
        if ok:
            created.keys.add(response.json()["id"])
            assert response.json()["name"] == body["name"] and response.json()["role"] == "viewer"
            assert key_works(stack, response.json()["key"])
            assert body["name"] in names
        else:
            assert "cak_" not in response.text
            assert body["name"] not in names
    elif (method, route) == ("DELETE", "/keys/{key_id}"):
        assert key_works(stack, key["key"]) is not ok
    elif route == "/keys/{key_id}/rotate":
        assert key_works(stack, key["key"]) is not ok
        if ok:
            assert response.json()["id"] == key["id"] and key_works(stack, response.json()["key"])
        else:
            assert "cak_" not in response.text
    elif route == PUBLIC_LINK and not globex:
        shown = requests.get(api_url(stack, f"apps/{app_id}/public-link"), headers=admin, timeout=30).json()
        # A fresh app has none; POST made one, DELETE removed the one made before; refused, nothing changed.
        assert shown["public"] is {"GET": False, "POST": ok, "DELETE": not ok}[method]
        assert ("url" in response.text) is (method == "POST" and ok)
    elif route == EMBED and ok:
        assert "/services/carnet-viewer/embed/" in response.json()["url"]
    elif route == "/internal/visitor-sessions":
        assert "token" not in response.text
    elif route == "/internal/viewer-sessions":
        assert response.status_code != 201
        assert "token" not in response.text
        assert viewer_kernel_tokens(stack) == before
    elif (method, route) == ("GET", "/users") and ok:
        emails = {u["email"] for u in response.json()["users"]}
        if globex:
            assert {GLOBEX_ADMIN, GLOBEX_VIEWER} <= emails and not emails & set(EMAILS.values())
        else:
            assert (
                set(EMAILS.values()) <= emails and GLOBEX_VIEWER not in emails and GLOBEX_ADMIN not in emails
            )
    elif (method, route) == ("POST", "/users"):
        listed = requests.get(api_url(stack, "users"), headers=home, timeout=30).json()["users"]
        assert (body["email"] in [u["email"] for u in listed]) is ok
        if globex:  # made in globex, not in acme
            acme = requests.get(api_url(stack, "users"), headers=admin, timeout=30).json()["users"]
            assert body["email"] not in [u["email"] for u in acme]
        if ok:
            assert response.json()["initial_password"]
            gone = requests.delete(api_url(stack, f"users/{response.json()['id']}"), headers=home, timeout=30)
            assert gone.status_code == 204
        else:
            assert "initial_password" not in response.text
    elif route == "/me/password" and response.status_code == 400:
        assert response.json()["field"] == "current_password"
    elif (method, route) == ("GET", "/groups") and ok:
        assert isinstance(response.json()["groups"], list)
        ids = {g["id"] for g in response.json()["groups"]}
        acme = requests.get(api_url(stack, "groups"), headers=admin, timeout=30).json()["groups"]
        acme_ids = {g["id"] for g in acme}
        assert (ids & acme_ids) == (set() if globex else acme_ids)
    elif (method, route) == ("POST", "/groups"):
        listed = requests.get(api_url(stack, "groups"), headers=home, timeout=30).json()["groups"]
        assert (body["name"] in [g["name"] for g in listed]) is ok
        if globex:  # made in globex, not in acme
            acme = requests.get(api_url(stack, "groups"), headers=admin, timeout=30).json()["groups"]
            assert body["name"] not in [g["name"] for g in acme]
        if ok:
            assert response.json()["name"] == body["name"] and response.json()["members"] == []
            gone = requests.delete(
                api_url(stack, f"groups/{response.json()['id']}"), headers=home, timeout=30
            )
            assert gone.status_code == 204
    elif route == "/org":
        acme = requests.get(api_url(stack, "org"), headers=admin, timeout=30).json()
        assert acme["slug"] == "acme" and acme["settings"]["timezone"] == "UTC"
        if ok:  # the caller's own org, never the other one
            assert response.json()["slug"] == ("globex" if globex else "acme")
            assert response.json()["settings"]["timezone"] == "UTC"
            assert "allow_public_apps" in response.json()["settings"]
    elif route == "/org/logo":
        check_logo_case(stack, method, response, ok, globex, home, admin)
    elif route.startswith("/org/mail"):
        smtp_server = request.getfixturevalue("smtp_server")
        check_mail_case(stack, method, route, response, ok, globex, home, admin, smtp_server, body)
    elif (method, route) == ("GET", "/groups/{group_id}") and ok:
        assert response.json() == group
    elif route == "/users/{user_id}/attributes":
        stored = requests.get(api_url(stack, f"users/{person['id']}/attributes"), headers=admin, timeout=30)
        expected_attributes = {"region": ["EU", "US"]} if ok and method == "PUT" else {}
        assert stored.json()["attributes"] == expected_attributes
    elif route == "/user-attributes/reload":
        stored = requests.get(
            api_url(stack, f"users/{attributes_person['id']}/attributes"), headers=admin, timeout=30
        )
        assert stored.json()["attributes"] == ({"region": ["EU"]} if ok else {})
        if ok:
            assert response.json()["attributes"] == ["region"] and response.json()["unknown_emails"] == []
    elif route == "/sources/{name}/row-rules":
        stored = requests.get(api_url(stack, f"sources/{source}/row-rules"), headers=admin, timeout=30)
        changed = ok and method == "PUT"
        assert stored.json()["rules"] == (body["rules"] if changed else [])
    if group is not None:
        after = requests.get(api_url(stack, f"groups/{group['id']}"), headers=admin, timeout=30)
        if (method, route) == ("DELETE", "/groups/{group_id}"):
            assert after.status_code == (404 if ok else 200)
        else:
            assert after.status_code == 200
            if (method, route) == ("PATCH", "/groups/{group_id}"):
                assert (after.json()["name"] == body["name"]) is ok
            if route == "/groups/{group_id}/members":
                assert after.json()["members"] == ([EMAILS["viewer"]] if ok else [])
            requests.delete(api_url(stack, f"groups/{group['id']}"), headers=admin, timeout=30)
    if person is not None:
        after = requests.get(api_url(stack, f"users/{person['id']}"), headers=admin, timeout=30)
        if (method, route) == ("DELETE", "/users/{user_id}"):
            assert after.status_code == (404 if ok else 200)
        else:
            assert after.status_code == 200
            if (method, route) == ("PATCH", "/users/{user_id}"):
                assert (after.json()["display_name"] == "Renamed by the matrix") is ok
            if route == "/users/{user_id}/password":
                assert ("initial_password" in response.text) is ok
            if route == "/users/{user_id}/invitation":
                assert ("/hub/carnet/invite/" in response.text) is ok
                assert (after.json()["invitation_expires_at"] is not None) is ok
            requests.delete(api_url(stack, f"users/{person['id']}"), headers=admin, timeout=30)


def check_job_change_case(stack, method, route, response, ok, admin, job_id, body) -> None:
    """What a PATCH of a job or a change of its webhook did, seen by acme's admin (fresh job each case)."""
    after = requests.get(api_url(stack, f"jobs/{job_id}"), headers=admin, timeout=30).json()
    if method == "PATCH":
        assert (after["name"] == body["name"]) is ok
        if ok:
            assert response.json() == after
    elif method == "POST":
        assert after["webhook"] is ok
        if ok:
            assert "/services/carnet/api/v1/hooks/jobs/" in response.json()["url"]
        else:
            assert "hooks/jobs" not in response.text
    else:  # DELETE: the webhook made before the call is gone only if allowed
        assert after["webhook"] is not ok
        if ok:
            assert response.text == ""


def check_warehouse_case(stack, method, route, response, ok, globex, home, admin, table, endpoint, body):
    """What a warehouse or push call of the matrix did, seen by the admin of the org it concerns."""
    lyon, nantes = {"id": 1, "city": "Lyon"}, {"id": 2, "city": "Nantes"}
    if route == "/warehouse/tables" and ok:
        names = [t["name"] for t in response.json()["tables"]]
        assert (DEMO_TABLE in names) is not globex
    elif route == WH and ok:
        assert response.json()["name"] == DEMO_TABLE and response.json()["rows"] == warehouse_rows(stack)
        assert [c["name"] for c in response.json()["columns"]][:3] == ["country", "continent", "year"]
    elif route == WH + "/preview" and ok:
        assert len(response.json()["rows"]) == 20 and response.json()["rows"][0]["country"]
    elif route == WH + "/loads" and ok:
        assert isinstance(response.json()["loads"], list)
    elif route == WH + "/load":
        # Made in the caller's own org only, and only if allowed.
        assert table_rows(stack, home, table) == ([lyon, nantes] if ok else None)
        if globex:
            assert table_rows(stack, admin, table) is None
        if ok:
            assert response.json()["rows_in"] == 2 and response.json()["status"] == "succeeded"
    elif route == WH + "/batch":
        after = [nantes, {"id": 3, "city": "Lille"}] if ok else [lyon, nantes]
        assert table_rows(stack, home, table) == after
    elif route == WH + "/sync":
        # Made in acme only, and only if allowed, with every row of the demo source.
        made = requests.get(api_url(stack, f"warehouse/tables/{table}"), headers=admin, timeout=30)
        assert made.status_code == (200 if ok else 404)
        if ok:
            assert made.json()["rows"] == response.json()["rows_in"] == warehouse_rows(stack)
            assert response.json()["status"] == "succeeded" and response.json()["mode"] == "replace"
        if globex:
            home_table = requests.get(api_url(stack, f"warehouse/tables/{table}"), headers=home, timeout=30)
            assert home_table.status_code == 404
    elif route == WH + "/push-endpoints" and method == "GET" and ok:
        assert all("url" not in e and "secret_hash" not in e for e in response.json()["push_endpoints"])
    elif route == WH + "/push-endpoints" and method == "POST":
        listed = {e["name"]: e for e in push_endpoints(stack, home, DEMO_TABLE)}  # the caller's own org
        assert (body["name"] in listed) is ok
        if globex:  # never in acme's list
            assert body["name"] not in {e["name"] for e in push_endpoints(stack, admin, DEMO_TABLE)}
        if ok:
            assert "/services/carnet/api/v1/push/" in response.json()["url"]
            gone = requests.delete(
                api_url(stack, f"warehouse/tables/{DEMO_TABLE}/push-endpoints/{response.json()['id']}"),
                headers=home,
                timeout=30,
            )
            assert gone.status_code == 204
        else:
            assert "/push/" not in response.text
    elif "{endpoint_id}" in route:
        listed = {e["id"]: e for e in push_endpoints(stack, admin, DEMO_TABLE)}
        assert (listed[endpoint["id"]]["revoked_at"] is not None) is ok
        if not ok:
            requests.delete(
                api_url(stack, f"warehouse/tables/{DEMO_TABLE}/push-endpoints/{endpoint['id']}"),
                headers=admin,
                timeout=30,
            )
    elif route == "/push/{token}":
        assert response.json()["rows_in"] == 1
        assert table_rows(stack, admin, table) == [lyon, nantes, {"id": 9, "city": "Pushed"}]
        if globex:
            assert table_rows(stack, home, table) is None


def test_matrix_covers_every_documented_operation():
    documented = {
        (method.upper(), path.removeprefix("/api/v1"))
        for path, operations in openapi_document("/services/carnet/")["paths"].items()
        for method in operations
    }
    assert documented == {(method, route) for method, route, *_ in MATRIX}


@pytest.mark.parametrize(
    "header",
    [
        "token ck_000000000000_not-a-real-secret",
        "token ck_garbage",
        "token not-a-hub-token-either",
        "Bearer ck_000000000000_not-a-real-secret",
    ],
    ids=["unknown carnet token", "malformed carnet token", "unknown hub token", "bearer scheme"],
)
def test_bad_credentials_are_a_json_401(carnet_stack, header):
    response = requests.get(api_url(carnet_stack, "me"), headers={"Authorization": header}, timeout=30)
    assert_json_error(response, 401)


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_dead_kernel_tokens_are_refused(carnet_stack, created, state):
    from datetime import timedelta

    from carnet.db.models import utcnow

    with session_scope(carnet_stack.settings.db_url) as session:
        token = mint_token(
            session,
            kind=TokenKind.viewer_kernel,
            user_id=created.user_id(EMAILS["analyst"]),
            org_id=created.org_id("acme"),
            ttl_seconds=3600,
        )
    me = requests.get(api_url(carnet_stack, "me"), headers=auth(token), timeout=30)
    assert me.status_code == 200
    prefix = token.split("_")[1]
    with session_scope(carnet_stack.settings.db_url) as session:
        row = session.scalar(select(Token).where(Token.prefix == prefix))
        if state == "revoked":
            row.revoked_at = utcnow()
        else:
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert_json_error(requests.get(api_url(carnet_stack, "me"), headers=auth(token), timeout=30), 401)
    data = requests.get(api_url(carnet_stack, f"sources/{DEMO_SOURCE}/data"), headers=auth(token), timeout=30)
    assert_json_error(data, 401)


def test_naming_an_organization_one_is_not_in_reveals_nothing(carnet_stack, tokens):
    headers = auth(tokens["analyst"])
    for org in ("globex", "no-such-org"):
        response = requests.get(api_url(carnet_stack, f"jobs?org={org}"), headers=headers, timeout=30)
        body = assert_json_error(response, 404)
        assert body["message"] == f"Unknown organization {org!r}"
    header = requests.get(
        api_url(carnet_stack, "me"), headers={**headers, "X-Carnet-Org": "globex"}, timeout=30
    )
    assert_json_error(header, 404)


# -- other organizations' ids behave like unknown ids -------------------------------------------------------
@pytest.fixture(scope="module")
def globex(created):
    """A globex app and job, made in the database: globex has only a viewer, who can create neither."""
    app_id = created.publish_app("globex", title="Globex secret app")
    job_id = created.add_job("globex", app_id, GLOBEX_VIEWER, name=unique("globex job"))
    return {"app_id": app_id, "job_id": job_id}


def get(stack, token, path, method="GET"):
    return requests.request(method, api_url(stack, path), headers=auth(token), timeout=30)


def test_globex_viewer_gets_acme_app_as_unknown(carnet_stack, hub_token):
    token = hub_token(GLOBEX_VIEWER)
    acme = get(carnet_stack, token, f"apps/{carnet_stack.app_id}")
    unknown = get(carnet_stack, token, f"apps/{UNKNOWN_ID}")
    assert_json_error(acme, 404)
    assert acme.json() == unknown.json() == {"status": 404, "message": "No such app"}
    listed = get(carnet_stack, token, "apps").json()["apps"]
    assert carnet_stack.app_id not in [a["id"] for a in listed]


def test_globex_viewer_learns_nothing_about_acme_jobs(carnet_stack, hub_token, shared_job):
    token = hub_token(GLOBEX_VIEWER)
    for suffix, method in (("", "GET"), ("/runs", "GET"), ("/runs", "POST"), ("", "DELETE")):
        acme = get(carnet_stack, token, f"jobs/{shared_job}{suffix}", method)
        unknown = get(carnet_stack, token, f"jobs/{UNKNOWN_ID}{suffix}", method)
        assert acme.status_code == unknown.status_code == 403, (method, suffix)
        assert acme.json() == unknown.json()


def test_acme_analyst_gets_globex_app_as_unknown(carnet_stack, tokens, hub_token, globex):
    token = tokens["analyst"]
    theirs = get(carnet_stack, token, f"apps/{globex['app_id']}")
    unknown = get(carnet_stack, token, f"apps/{UNKNOWN_ID}")
    assert_json_error(theirs, 404)
    assert theirs.json() == unknown.json() == {"status": 404, "message": "No such app"}
    assert globex["app_id"] not in [a["id"] for a in get(carnet_stack, token, "apps").json()["apps"]]
    # ...while the globex viewer does see it: the 404 above is about the organization, not the app.
    assert get(carnet_stack, hub_token(GLOBEX_VIEWER), f"apps/{globex['app_id']}").status_code == 200


@pytest.mark.parametrize(
    "suffix,method",
    [("", "GET"), ("/runs", "GET"), ("/runs", "POST"), ("", "DELETE")],
    ids=["GET /jobs/{id}", "GET /jobs/{id}/runs", "POST /jobs/{id}/runs", "DELETE /jobs/{id}"],
)
def test_acme_analyst_gets_globex_job_as_unknown(carnet_stack, tokens, globex, created, suffix, method):
    token = tokens["analyst"]
    theirs = get(carnet_stack, token, f"jobs/{globex['job_id']}{suffix}", method)
    unknown = get(carnet_stack, token, f"jobs/{UNKNOWN_ID}{suffix}", method)
    assert_json_error(theirs, 404)
    assert theirs.json() == unknown.json() == {"status": 404, "message": "No such job"}
    assert created.job_exists(globex["job_id"])
    assert created.run_count(globex["job_id"]) == 0
    assert globex["job_id"] not in [j["id"] for j in get(carnet_stack, token, "jobs").json()["jobs"]]


def test_acme_analyst_cannot_schedule_a_globex_app(carnet_stack, tokens, globex):
    before = get(carnet_stack, tokens["analyst"], "jobs").json()
    response = requests.post(
        api_url(carnet_stack, "jobs"),
        json={
            "name": unique("cross-org"),
            "app_id": globex["app_id"],
            "cron": NEVER_CRON,
            "recipients": ["x@acme.example"],
        },
        headers=auth(tokens["analyst"]),
        timeout=30,
    )
    assert response.json() == {"status": 404, "message": "No such app"}
    assert get(carnet_stack, tokens["analyst"], "jobs").json() == before


def test_a_globex_kernel_cannot_read_acme_sources(carnet_stack, created):
    token = created.kernel_token(GLOBEX_VIEWER, "globex", TokenKind.viewer_kernel)
    assert get(carnet_stack, token, "sources").json() == {"sources": []}
    for path in (f"sources/{DEMO_SOURCE}", f"sources/{DEMO_SOURCE}/data"):
        theirs, unknown = get(carnet_stack, token, path), get(carnet_stack, token, "sources/nope")
        assert_json_error(theirs, 404)
        assert theirs.json()["message"] == f"No source named {DEMO_SOURCE!r}"
        assert unknown.json()["message"] == "No source named 'nope'"


# -- every handler method carries a permission, and the OpenAPI document matches the routes ------------------
EXEMPT = (*PUBLIC_HANDLERS, *PUSH_HANDLERS, *JOB_HOOK_HANDLERS, HubOAuthCallbackHandler, NotFoundHandler)


def implemented_methods(handler) -> list[str]:
    return [m for m in HTTP_METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)]


def undecorated(routes) -> list[str]:
    missing = []
    for pattern, handler, *_ in routes:
        if issubclass(handler, EXEMPT):
            continue
        for name in implemented_methods(handler):
            method = getattr(handler, name)
            if not hasattr(method, "__carnet_action__") and not hasattr(method, "__carnet_service_only__"):
                missing.append(f"{name.upper()} {pattern} ({handler.__name__})")
    return missing


def test_every_handler_method_declares_its_permission():
    routes = all_handlers("/services/carnet/")
    assert len(routes) >= 12
    assert undecorated(routes) == []
    for _pattern, handler, *_ in routes:
        for name in implemented_methods(handler):
            action = getattr(getattr(handler, name), "__carnet_action__", None)
            assert action is None or action in ACTION_MIN_ROLE, (handler, name, action)


def test_the_permission_check_catches_an_undecorated_route():
    class Forgotten(web.RequestHandler):
        def get(self):
            pass

        @authorized("apps:list")
        def post(self):
            pass

    class Inherited(Forgotten):
        pass

    routes = [("/services/carnet/api/v1/forgotten", Forgotten), ("/x/inherited", Inherited)]
    assert undecorated(routes) == [
        "GET /services/carnet/api/v1/forgotten (Forgotten)",
        "GET /x/inherited (Inherited)",
    ]


def route_to_path(pattern: str, prefix: str = "/services/carnet") -> str:
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.removeprefix(prefix))
    if path.endswith("/?"):
        path = path[:-2] + "/"
    assert not re.search(r"[()?*+\[\]\\|^$]", path), f"cannot turn {pattern!r} into an OpenAPI path"
    return path


def served_operations(prefix: str = "/services/carnet/") -> dict[tuple[str, str], object]:
    operations = {}
    for pattern, handler, *_ in all_handlers(prefix):
        if handler is NotFoundHandler or not pattern.startswith(prefix + "api/"):
            continue
        for name in implemented_methods(handler):
            operations[(route_to_path(pattern), name)] = getattr(handler, name)
    return operations


def test_route_to_path():
    assert route_to_path("/services/carnet/api/v1/?") == "/api/v1/"
    runs = "/services/carnet/api/v1/jobs/(?P<job_id>[^/]+)/runs"
    assert route_to_path(runs) == "/api/v1/jobs/{job_id}/runs"
    with pytest.raises(AssertionError):
        route_to_path("/services/carnet/api/v1/(\\d+)")


def test_openapi_describes_exactly_the_served_routes():
    document = openapi_document("/services/carnet/")
    documented = {
        (path, method): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    served = served_operations()
    assert sorted(documented) == sorted(served)
    for key, operation in documented.items():
        handler_method = served[key]
        action = operation.get("x-carnet-permission")
        if action is not None:
            assert action in ACTION_MIN_ROLE, key
        assert action == getattr(handler_method, "__carnet_action__", None), key
        service_only = operation.get("x-carnet-service-only")
        enforced = getattr(handler_method, "__carnet_service_only__", None)
        assert (list(service_only) if service_only else None) == (list(enforced) if enforced else None), key


def test_admin_page_routes_are_walked_and_admin_only():
    routes = {pattern: handler for pattern, handler, *_ in all_handlers("/services/carnet/")}
    admin_routes = [p for p in routes if p.startswith("/services/carnet/admin")]
    # Every form of the page is an admin's action (written by hand, as the matrix).
    expected = {
        "admin/?": "users:manage",
        "admin/people": "users:manage",
        "admin/people/(?P<user_id>[^/]+)": "users:manage",
        "admin/groups": "groups:manage",
        "admin/groups/(?P<group_id>[^/]+)": "groups:manage",
        "admin/settings": "org:manage",
        "admin/settings/logo": "org:manage",
    }
    assert sorted(p.removeprefix("/services/carnet/") for p in admin_routes) == sorted(expected)
    assert undecorated([(p, routes[p]) for p in admin_routes]) == []
    for pattern in admin_routes:
        for name in implemented_methods(routes[pattern]):
            action = getattr(routes[pattern], name).__carnet_action__
            assert action == expected[pattern.removeprefix("/services/carnet/")], (pattern, name)
