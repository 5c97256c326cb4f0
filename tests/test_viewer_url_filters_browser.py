"""Filter values in the app's URL (carnet.filters.bind), in a real headless Chromium as a viewer: the app
opens with the URL's value, a change of the filter is written into the address (other arguments kept), and
that address opens the app with the same filter; a value the filter does not offer is ignored."""

from __future__ import annotations

import uuid

import nbformat
import pytest
import requests

from tests.api_support import api_url, auth
from tests.test_viewer_browser import browser, sign_in  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.slow

ACME_VIEWER, STUDIO = "viewer@acme.example", "studio@acme.example"


def publish_region_app(carnet_stack, hub_token, output_cell: str, title: str):
    """Publish (as acme's studio) an app whose Region dropdown is bound to the URL's ``region``, then
    ``output_cell``; yields its id and removes it after."""
    code = nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(
        cells=[
            code(
                "import carnet\n"
                "import ipywidgets as widgets\n"
                "region = carnet.filters.bind(\n"
                "    widgets.Dropdown(options=['North', 'South', 'East'], description='Region'),\n"
                "    'region',\n"
                ")\n"
                "region"
            ),
            code(output_cell),
        ]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    studio = auth(hub_token(STUDIO))
    response = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": f"region-{uuid.uuid4().hex[:8]}", "title": title, "notebook": notebook},
        headers=studio,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    yield response.json()["id"]
    requests.delete(api_url(carnet_stack, f"apps/{response.json()['id']}"), headers=studio, timeout=30)


@pytest.fixture(scope="module")
def filtered_app(carnet_stack, hub_token):
    yield from publish_region_app(
        carnet_stack,
        hub_token,
        "widgets.interactive_output(lambda region: print(f'Region is {region}'), {'region': region})",
        "URL filters",
    )


def test_filter_values_travel_in_the_url(browser, carnet_stack, filtered_app):  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, carnet_stack, ACME_VIEWER)
        app_url = f"{carnet_stack.url}/services/carnet-viewer/apps/{filtered_app}"
        page.goto(f"{app_url}?region=South&keep=1")
        page.get_by_text("Region is South").wait_for(state="visible", timeout=120_000)
        dropdown = page.locator(".widget-dropdown select")
        assert dropdown.input_value() == "South"

        dropdown.select_option("East")
        page.get_by_text("Region is East").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => new URLSearchParams(location.search).get('region') === 'East'", timeout=30_000
        )
        assert page.evaluate("new URLSearchParams(location.search).get('keep')") == "1"

        copied = page.url
        other = context.new_page()
        other.goto(copied)
        other.get_by_text("Region is East").wait_for(state="visible", timeout=120_000)
        other.close()

        page.goto(f"{app_url}?region=Mars")  # not an option: the notebook's own default
        page.get_by_text("Region is North").wait_for(state="visible", timeout=120_000)
        page.wait_for_function(
            "() => new URLSearchParams(location.search).get('region') === 'North'", timeout=30_000
        )
    finally:
        context.close()
