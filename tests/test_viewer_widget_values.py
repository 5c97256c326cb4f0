"""Widget values a viewer's browser sends are checked against what the app offers (widget_guard.py).

On the real stack, over the app kernel's websocket, as a browser talks to it (comm messages): a Dropdown's
index out of its options, options of the browser's own, a slider beyond its range and a widened ``max``,
a disabled Text changed or re-enabled. The app's own record of what it saw (a Label its observers set)
must not change, no traceback comes back, the browser is sent the kernel's values, and a person's ordinary
change still works afterwards.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import nbformat
import pytest
import requests

from carnet.kernel_helpers.widget_guard import allowed_update, install
from tests.api_support import api_url, auth
from tests.test_viewer_security import kernel_id_of, viewer_url, ws_url
from tests.widget_wire import WidgetWire

ACME_VIEWER, ANALYST = "viewer@acme.example", "analyst@acme.example"
APP = """\
import json
import ipywidgets as widgets
from IPython.display import display
region = widgets.Dropdown(options=["North", "South"], value="North", description="Region")
year = widgets.IntSlider(min=2000, max=2010, value=2005, description="Year")
name = widgets.Text(value="fixed", description="Name", disabled=True)
seen = widgets.Label(value="", description="Seen")
boom = widgets.Checkbox(value=False, description="Boom")
def explode(change):
    raise ValueError("the app failed in /srv/secret/path.py")
boom.observe(explode, names="value")
def show(change=None):
    seen.value = json.dumps([region.value, year.value, name.value])
for w in (region, year, name):
    w.observe(show, names="value")
show()
display(region, year, name, seen, boom)
"""
START = ["North", 2005, "fixed"]
# (widget, what the browser sends, what the app has seen afterwards)
ATTACKS = [
    ("Region", {"index": 7}, START),
    ("Region", {"index": -1}, START),
    ("Region", {"index": "South"}, START),
    ("Region", {"_options_labels": ["North", "South", "Mars"]}, START),
    ("Region", {"index": 2}, START),
    # Beyond the range: ipywidgets clamps it to the slider's max.
    ("Year", {"value": 99_999}, ["North", 2010, "fixed"]),
    ("Year", {"max": 99_999}, ["North", 2010, "fixed"]),
    ("Year", {"value": 99_999}, ["North", 2010, "fixed"]),
    # The range is the app's: min is not taken, the value is clamped to the real min.
    ("Year", {"min": -5, "value": -5}, ["North", 2000, "fixed"]),
    ("Name", {"value": "changed while disabled"}, ["North", 2000, "fixed"]),
    ("Name", {"disabled": False}, ["North", 2000, "fixed"]),
    ("Name", {"value": "changed once enabled"}, ["North", 2000, "fixed"]),
    # The app's own callback fails: logged for its authors, no traceback to the browser.
    ("Boom", {"value": True}, ["North", 2000, "fixed"]),
]


@pytest.fixture(scope="module")
def widget_app(carnet_stack, hub_token):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(APP)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    answer = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": f"widgets-{uuid.uuid4().hex[:8]}", "title": "Widget values", "notebook": notebook},
        headers=auth(hub_token(ANALYST)),
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    yield answer.json()["id"]
    requests.delete(
        api_url(carnet_stack, f"apps/{answer.json()['id']}"), headers=auth(hub_token(ANALYST)), timeout=30
    )


async def attack(url: str, token: str) -> dict:
    async with WidgetWire(url, token) as wire:
        found = await wire.widgets()
        comm = {name: found[name][0] for name in ("Region", "Year", "Name", "Seen", "Boom")}

        async def seen():
            return json.loads((await wire.state(comm["Seen"]))["value"])

        async def state(name):
            return await wire.state(comm[name])

        result = {"start": await seen(), "steps": []}
        for name, update, _ in ATTACKS:
            before = len(wire.received)
            await wire.update(comm[name], update)
            sent_back = [
                m["content"]["data"]["state"]
                for m in wire.received[before:]
                if m["header"]["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm[name]
            ]
            result["steps"].append((await seen(), sent_back))
        result["region"], result["year"], result["name"] = (
            await state("Region"),
            await state("Year"),
            await state("Name"),
        )
        # A person's ordinary changes still work.
        await wire.update(comm["Region"], {"index": 1})
        await wire.update(comm["Year"], {"value": 2003})
        result["after"] = await seen()
        result["errors"] = [m for m in wire.received if m["header"]["msg_type"] == "error"]
        result["streams"] = [m["content"] for m in wire.received if m["header"]["msg_type"] == "stream"]
        return result


def test_browser_updates_outside_the_offered_options_are_refused(carnet_stack, hub_token, widget_app):
    token = hub_token(ACME_VIEWER)
    page = requests.get(viewer_url(carnet_stack, f"apps/{widget_app}"), headers=auth(token), timeout=120)
    assert page.status_code == 200
    kernel_id = kernel_id_of(page.text)
    result = asyncio.run(attack(ws_url(carnet_stack, kernel_id), token))

    assert result["start"] == START
    # A slider value beyond the range is clamped by ipywidgets; nothing else the browser sent is taken.
    for (name, update, expected), (seen, _) in zip(ATTACKS, result["steps"], strict=True):
        assert seen == expected, (name, update, seen)
    # The browser was sent the kernel's own values back for what it may not set.
    sent_back = {
        (name, json.dumps(update)): back
        for (name, update, _), (_, back) in zip(ATTACKS, result["steps"], strict=True)
    }
    assert {"max": 2010} in sent_back[("Year", json.dumps({"max": 99_999}))]
    assert {"disabled": True} in sent_back[("Name", json.dumps({"disabled": False}))]
    assert {"value": "fixed"} in sent_back[("Name", json.dumps({"value": "changed once enabled"}))]
    assert {"index": 0} in sent_back[("Region", json.dumps({"index": 7}))]

    assert result["region"]["_options_labels"] == ["North", "South"] and result["region"]["index"] == 0
    assert (result["year"]["min"], result["year"]["max"], result["year"]["value"]) == (2000, 2010, 2000)
    assert result["name"]["disabled"] is True and result["name"]["value"] == "fixed"
    assert result["after"] == ["South", 2003, "fixed"]
    # No traceback (nor a path of the Viewer's) reached the browser; the kernel logged the refusals.
    assert result["errors"] == []
    log = carnet_stack.log_path.read_text(errors="replace")
    assert "Ignored a browser update of IntSlider: max" in log
    assert "Refused a browser update of Dropdown: Invalid selection: index out of bounds" in log
    assert "A browser update of Checkbox failed: the app failed in /srv/secret/path.py" in log
    assert "/srv/secret/path.py" not in json.dumps(result["streams"])
    assert "Ignored a browser update of Text: disabled" in log
    # The kernel is alive and still the viewer's.
    alive = requests.get(
        viewer_url(carnet_stack, f"api/kernels/{kernel_id}"), headers=auth(token), timeout=30
    )
    assert alive.status_code == 200
    requests.post(
        viewer_url(carnet_stack, f"voila/api/shutdown/{kernel_id}"), headers=auth(token), timeout=60
    )


@pytest.mark.parametrize(
    ("state", "disabled", "kept", "refused"),
    [
        ({"value": 3}, False, {"value": 3}, []),
        ({"index": 1, "_options_labels": ["x"]}, False, {"index": 1}, ["_options_labels"]),
        (
            {"max": 9, "min": 0, "step": 2, "description": "x"},
            False,
            {},
            ["description", "max", "min", "step"],
        ),
        ({"value": 3}, True, {}, ["value"]),
        ({"selected_index": 2, "outputs": []}, False, {"selected_index": 2, "outputs": []}, []),
    ],
)
def test_allowed_update(state, disabled, kept, refused):
    class Widget:
        pass

    widget = Widget()
    widget.disabled = disabled
    assert allowed_update(widget, state) == (kept, refused)


def test_guard_in_process(monkeypatch):
    import ipywidgets as widgets

    from carnet.kernel_helpers import widget_guard

    # Undone after the test: other tests of this process use plain ipywidgets.
    monkeypatch.setattr(widgets.Widget, "set_state", widgets.Widget.set_state)
    monkeypatch.setattr(widget_guard, "_installed", False)
    install()

    slider = widgets.IntSlider(min=0, max=10, value=5)
    slider.set_state({"max": 100})
    slider.set_state({"value": 100})
    assert (slider.max, slider.value) == (10, 10)
    dropdown = widgets.Dropdown(options=["a", "b"])
    dropdown.set_state({"index": 5})
    assert dropdown.value == "a"
    dropdown.set_state({"index": 1})
    assert dropdown.value == "b"
