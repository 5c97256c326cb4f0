"""What the Viewer gives carnet.dash, on the real stack: plotly's map outlines from the Viewer itself (no CDN:
the app page's policy refuses it), and the org's branding colour as the dashboard's theme (the kernel gets
it as ``CARNET_BRAND_COLOR``, extension/viewer_kernels.py), on the demo's seeded "World dashboard"."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Organization
from tests.api_support import api_url, auth
from tests.test_dash_stack import html_with, states
from tests.test_viewer_security import kernel_id_of, viewer_url, ws_url
from tests.widget_wire import WidgetWire

ADMIN, ACME_VIEWER = "admin@acme.example", "viewer@acme.example"
ORG_COLOR = "#7b2cbf"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture
def org_color(carnet_stack, hub_token):
    """Acme's primary colour set through the admin settings API; the seeded settings back afterwards."""
    url = carnet_stack.settings.db_url
    with session_scope(url) as session:
        acme = session.scalar(select(Organization).where(Organization.slug == "acme"))
        saved = (acme.id, dict(acme.settings or {}))
    answer = requests.patch(
        api_url(carnet_stack, "org"),
        json={"primary_color": ORG_COLOR.upper()},
        headers=auth(hub_token(ADMIN)),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    yield ORG_COLOR
    with session_scope(url) as session:
        session.get(Organization, saved[0]).settings = saved[1]


def test_the_viewer_serves_map_outlines_and_nothing_else_from_that_folder(carnet_stack, hub_token):
    viewer = auth(hub_token(ACME_VIEWER))
    base = viewer_url(carnet_stack, "carnet/topojson/")
    world = requests.get(base + "world_110m.json", headers=viewer, timeout=30)
    assert world.status_code == 200 and "json" in world.headers["Content-Type"]
    assert world.json()["type"] == "Topology" and "countries" in world.json()["objects"]
    # Only .json files of the package's dist folder: not the package's own files, no traversal.
    for path in ("../package.json", "%2e%2e/package.json", "../README.md", ".hidden.json", "world_110m.js"):
        assert requests.get(base + path, headers=viewer, timeout=30).status_code == 404, path


async def first_state(url: str, token: str) -> dict:
    async with WidgetWire(url, token) as wire:
        found = await states(wire)
        figures = [
            output["data"][PLOTLY]
            for _, state in found
            if state.get("_model_name") == "OutputModel"
            for output in state.get("outputs", [])
            if PLOTLY in output.get("data", {})
        ]
        return {"kpi": html_with(found, "Population</div>")[1], "figures": figures}


def test_a_dashboard_takes_its_orgs_colour(carnet_stack, hub_token, org_color):
    token = hub_token(ACME_VIEWER)
    page = requests.get(
        viewer_url(carnet_stack, f"apps/{carnet_stack.dash_app_id}"), headers=auth(token), timeout=180
    )
    assert page.status_code == 200, page.text[:500]
    kernel_id = kernel_id_of(page.text)
    try:
        result = asyncio.run(first_state(ws_url(carnet_stack, kernel_id), token))
    finally:
        requests.post(
            viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"), headers=auth(token), timeout=60
        )
    # The page's header has the colour (the template) and so does the dashboard the kernel drew.
    assert f"border-left:4px solid {org_color}" in result["kpi"]
    bars = [f for f in result["figures"] if f["layout"]["title"]["text"] == "Population by continent"]
    assert len(bars) == 1, json.dumps(result["figures"])[:500]
    assert bars[0]["layout"]["colorway"][0] == org_color
    assert bars[0]["data"][0]["marker"]["color"] == org_color
