"""carnet.filters.prepared in a real IPython kernel (jupyter_client starts it): the widget's value is drawn
into the Output widget, the other options are made ahead while the kernel is idle, a choice then shows the
kept output without drawing again, a failing draw shows the generic message and logs its detail."""

from __future__ import annotations

import json
import queue
import textwrap
import time

import pytest
from jupyter_client.manager import start_new_kernel

SETUP = """
import ipywidgets as widgets
from carnet import filters

calls = []

def draw(value):
    calls.append(value)
    if value == "broken":
        raise RuntimeError("secret detail /srv/x")
    print(f"drawn {value}")
    display({"text/plain": f"chart of {value}"}, raw=True)

picker = widgets.Dropdown(options=["EU", "US", "APAC", "broken"], value="EU")
chart = widgets.Output()
state = filters.prepared(picker, chart, draw)
"""


@pytest.fixture(scope="module")
def kernel():
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run(client, code: str) -> dict:
    """Execute ``code`` and return the last line's value as JSON (printed by the code)."""
    reply = client.execute_interactive(textwrap.dedent(code), timeout=60, output_hook=_collect)
    assert reply["content"]["status"] == "ok", reply["content"]
    return json.loads(_collect.text.pop()) if _collect.text else {}


def _collect(msg):
    if msg["msg_type"] == "stream":
        _collect.streams.append(msg["content"]["text"])  # everything the page would be sent
        if msg["content"]["name"] == "stdout":
            _collect.text.append(msg["content"]["text"].strip().splitlines()[-1])


_collect.text = []
_collect.streams = []


def test_outputs_are_drawn_kept_and_made_ahead(kernel):
    first = run(
        kernel,
        SETUP
        + """
import json
print(json.dumps({"calls": calls, "outputs": [dict(o) for o in chart.outputs]}))
""",
    )
    assert first["calls"] == ["EU"]
    assert first["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "drawn EU\n"},
        {"output_type": "display_data", "data": {"text/plain": "chart of EU"}, "metadata": {}},
    ]
    # The kernel is idle between these requests: the other options are made ahead.
    ahead = {}
    for _ in range(100):
        ahead = run(
            kernel,
            """
import json, time
time.sleep(0)
print(json.dumps({"calls": calls, "made": state.made_ahead, "failed": sorted(state.failed_ahead)}))
""",
        )
        if ahead["made"] == 2 and ahead["failed"] == ["broken"]:
            break
    assert ahead["calls"] == ["EU", "US", "APAC", "broken"] and ahead["made"] == 2
    chosen = run(
        kernel,
        """
picker.value = "APAC"
print(json.dumps({"calls": calls, "outputs": [dict(o) for o in chart.outputs]}))
""",
    )
    assert chosen["calls"] == ["EU", "US", "APAC", "broken"]  # shown from what was kept: no new draw
    assert chosen["outputs"][1]["data"] == {"text/plain": "chart of APAC"}


def test_a_failing_draw_shows_the_generic_message_and_is_tried_again_when_chosen(kernel):
    shown = run(
        kernel,
        """
before = len(calls)
picker.value = "broken"
print(json.dumps({"new_calls": calls[before:], "outputs": [dict(o) for o in chart.outputs]}))
""",
    )
    assert shown["new_calls"] == ["broken"]  # a viewer's choice tries again
    html = shown["outputs"][0]["data"]["text/html"]
    assert "could not be displayed" in html and "secret detail" not in json.dumps(shown)
    # The detail (traceback) goes to the kernel process's log, never to the page: no stream message of any
    # parent carries it (ipykernel forwards file descriptor 2 too, with whatever parent is current).
    kernel.execute('picker.value = "EU"; picker.value = "broken"')
    streams, deadline = [], time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            msg = kernel.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        if msg["msg_type"] == "stream":
            streams.append(msg["content"]["text"])
    assert not [text for text in streams if "secret detail" in text or "Traceback" in text], streams


def test_only_selection_widgets_are_prepared(kernel):
    answer = run(
        kernel,
        """
try:
    filters.prepared(widgets.Text(), chart, draw)
    print(json.dumps({"error": None}))
except TypeError as error:
    print(json.dumps({"error": str(error)}))
""",
    )
    assert "selection widget" in answer["error"]
