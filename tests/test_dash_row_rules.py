"""carnet.dash under row-level rules, on the real stack: a dashboard's dropdown offers only the values the
person looking may see (its options are a query of the source, through the same rules as the data), and
its KPI sums only their rows. The analyst's rule gives region EU; the admin is not restricted."""

from __future__ import annotations

import asyncio

import nbformat
import pytest
import requests

from tests.api_support import api_url, unique
from tests.test_dash_stack import html_with, states
from tests.test_row_security import people, sales  # noqa: F401 - fixtures
from tests.test_viewer_security import kernel_id_of, viewer_url, ws_url
from tests.widget_wire import WidgetWire

APP = """\
from carnet import dash
dash.Dashboard(
    dash.KPI("Sales", {{"amount": "sum"}}),
    filters=[dash.Dropdown("region")],
    source={source!r},
)
"""


@pytest.fixture(scope="module")
def ruled_app(carnet_stack, people, sales, created):  # noqa: F811 - the imported fixtures
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(APP.format(source=sales["source"]))])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    made = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": unique("dash-rls"), "title": "Sales by region", "notebook": notebook},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.apps.add(made.json()["id"])
    return made.json()["id"]


async def read(url: str, token: str) -> tuple[list[str], str]:
    async with WidgetWire(url, token) as wire:
        found = await states(wire)
        region = next(s for _, s in found if s.get("description") == "Region")
        return region["_options_labels"], html_with(found, "Sales</div>")[1]


def seen_by(stack, headers: dict, app_id: int) -> tuple[list[str], str]:
    page = requests.get(viewer_url(stack, f"apps/{app_id}"), headers=headers, timeout=180)
    assert page.status_code == 200, page.text[:500]
    kernel_id = kernel_id_of(page.text)
    token = headers["Authorization"].removeprefix("token ")
    try:
        return asyncio.run(read(ws_url(stack, kernel_id), token))
    finally:
        requests.post(viewer_url(stack, f"voila/api/shutdown/{kernel_id}"), headers=headers, timeout=60)


def test_dashboard_options_and_values_follow_the_row_rules(carnet_stack, people, ruled_app):  # noqa: F811
    options, kpi = seen_by(carnet_stack, people["analyst"], ruled_app)
    assert options == ["All", "EU"]
    assert ">90</div>" in kpi  # 10 + 20 + 60
    options, kpi = seen_by(carnet_stack, people["admin"], ruled_app)
    assert options == ["All", "APAC", "EU", "US"]
    assert ">210</div>" in kpi
