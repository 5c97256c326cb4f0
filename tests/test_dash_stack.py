"""The sample dashboard built only with carnet.dash (carnet/demo_dash.py), published and rendered by the
stack's Viewer for a viewer: the kernel reads the demo's gapminder source through the query service, the
URL's filter value is taken, and over the kernel's websocket (as a browser talks to it) a filter change
redraws the KPIs, the text and the charts with the new values, and the table's "Next" button shows the
second page. The app is the demo's seeded "World dashboard". Expected values are computed from the same data
(plotly's gapminder) in the test."""

from __future__ import annotations

import asyncio
import json

import plotly
import pytest
import requests

from carnet.demo_dash import DASH_TITLE, PAGE_SIZE
from tests.api_support import api_url, auth
from tests.test_viewer_security import kernel_id_of, viewer_url, ws_url
from tests.widget_wire import WidgetWire

STUDIO, ACME_VIEWER = "studio@acme.example", "viewer@acme.example"


@pytest.fixture(scope="module")
def dash_app(carnet_stack, hub_token):
    """The demo's own "World dashboard" app, as seeded (carnet/demo.py)."""
    app = requests.get(
        api_url(carnet_stack, f"apps/{carnet_stack.dash_app_id}"), headers=auth(hub_token(STUDIO)), timeout=30
    )
    assert app.status_code == 200 and app.json()["title"] == DASH_TITLE, app.text
    return carnet_stack.dash_app_id


def expected(continent: str, year: int = 2007) -> dict:
    data = plotly.data.gapminder()
    rows = data[(data["continent"] == continent) & (data["year"] == year)]
    before = data[(data["continent"] == continent) & (data["year"] == year - 5)]
    change = (rows["pop"].sum() - before["pop"].sum()) / before["pop"].sum()
    return {
        "pop": f"{rows['pop'].sum():,}",
        "change": f"{abs(change):.1%} vs previous",
        "countries": f"{rows['country'].nunique():,}",
        "life": f"{rows['lifeExp'].mean():.2f} years",
        "first_page": rows.sort_values("pop", ascending=False)["country"].tolist()[:PAGE_SIZE],
        "second_page": rows.sort_values("pop", ascending=False)["country"].tolist()[
            PAGE_SIZE : 2 * PAGE_SIZE
        ],
        "count": len(rows),
        "countries_list": rows["country"].tolist(),
    }


async def states(wire: WidgetWire) -> list[tuple[str, dict]]:
    return [(comm_id, await wire.state(comm_id)) for comm_id in await wire.comms()]


def html_with(found, text: str) -> tuple[str, str]:
    matches = [
        (c, s["value"]) for c, s in found if s.get("_model_name") == "HTMLModel" and text in s["value"]
    ]
    assert len(matches) == 1, (text, [s.get("value") for _, s in found if "value" in s])
    return matches[0]


async def use_dashboard(url: str, token: str) -> dict:
    async with WidgetWire(url, token) as wire:
        found = await states(wire)
        result = {
            "kpi": html_with(found, "Population</div>")[1],
            "text": html_with(found, "people lived")[1],
        }
        result["countries"] = html_with(found, "Countries</div>")[1]
        result["table"] = html_with(found, "<table")[1]
        continent = next(c for c, s in found if s.get("description") == "Continent")
        labels = next(s for c, s in found if c == continent)["_options_labels"]
        result["labels"] = labels
        result["index"] = next(s for c, s in found if c == continent)["index"]

        before = len(wire.received)
        await wire.update(continent, {"index": labels.index("Asia")})
        after = await states(wire)
        result["kpi_asia"] = html_with(after, "Population</div>")[1]
        result["text_asia"] = html_with(after, "people lived")[1]
        result["table_asia"] = html_with(after, "<table")[1]
        # The chart is redrawn: plotly's figure is displayed (captured by its Output widget in a browser).
        figures = [
            m["content"]["data"]["application/vnd.plotly.v1+json"]
            for m in wire.received[before:]
            if m["header"]["msg_type"] == "display_data"
            and "application/vnd.plotly.v1+json" in m["content"].get("data", {})
        ]
        result["figures"] = figures
        result["errors"] = [m for m in wire.received if m["header"]["msg_type"] == "error"]

        following = next(c for c, s in after if s.get("description") == "Next")
        await wire.send(
            "comm_msg", {"comm_id": following, "data": {"method": "custom", "content": {"event": "click"}}}
        )
        await wire.until(
            lambda m: (
                m["header"]["msg_type"] == "comm_msg"
                and f"Rows {PAGE_SIZE + 1}" in json.dumps(m["content"]["data"].get("state", {}))
            ),
            timeout=60,
        )
        result["table_page2"] = html_with(await states(wire), "<table")[1]
        return result


def test_a_carnet_dash_dashboard_renders_and_follows_its_filters(carnet_stack, hub_token, dash_app):
    token = hub_token(ACME_VIEWER)
    page = requests.get(
        viewer_url(carnet_stack, f"apps/{dash_app}"),
        params={"continent": "Europe"},
        headers=auth(token),
        timeout=180,
    )
    assert page.status_code == 200, page.text[:500]
    assert "carnet-cell-error" not in page.text and "Traceback" not in page.text
    kernel_id = kernel_id_of(page.text)
    try:
        result = asyncio.run(use_dashboard(ws_url(carnet_stack, kernel_id), token))
    finally:
        requests.post(
            viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"), headers=auth(token), timeout=60
        )

    europe, asia = expected("Europe"), expected("Asia")
    # The URL's continent is the dropdown's starting value; the options come from the source.
    assert result["labels"] == ["All", "Africa", "Americas", "Asia", "Europe", "Oceania"]
    assert result["labels"][result["index"]] == "Europe"
    assert europe["pop"] in result["kpi"] and europe["change"] in result["kpi"]
    assert europe["countries"] in result["countries"]
    assert "<strong>Europe</strong>, 2007" in result["text"] and europe["life"] in result["text"]
    assert all(f"<td>{c}</td>" in result["table"] for c in europe["first_page"])
    assert f"of {europe['count']}" not in result["table"]  # the position is beside the table

    assert asia["pop"] in result["kpi_asia"] and asia["change"] in result["kpi_asia"]
    assert "carnet-kpi-up" in result["kpi_asia"]
    assert "<strong>Asia</strong>" in result["text_asia"] and asia["life"] in result["text_asia"]
    assert all(f"<td>{c}</td>" in result["table_asia"] for c in asia["first_page"])
    # The charts follow the continent (the year filter does not apply to the trend over time).
    titles = {figure["layout"]["title"]["text"]: figure for figure in result["figures"]}
    assert sorted(titles) == ["Life expectancy by country", "Population by continent", "Population over time"]
    assert list(titles["Population by continent"]["data"][0]["x"]) == ["Asia"]
    assert [trace["name"] for trace in titles["Population over time"]["data"]] == ["Asia"]
    # The map's outlines come from the Viewer itself (viewer_topojson.py), relative to the app's page.
    world = titles["Life expectancy by country"]
    assert sorted(world["data"][0]["locations"]) == sorted(asia["countries_list"])
    assert world["config"] == {"topojsonURL": "../carnet/topojson/"}
    assert result["errors"] == []

    assert all(f"<td>{c}</td>" in result["table_page2"] for c in asia["second_page"])
    assert not any(f"<td>{c}</td>" in result["table_page2"] for c in asia["first_page"])
