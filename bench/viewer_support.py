"""Helpers of ``bench.viewer``: the bench notebook, its data, one timed page render, the filter change over
the kernel websocket, and the kernels' memory read from /proc."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import duckdb
import nbformat
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

TABLE = "bench_viewer_sales"
REGIONS = ["Africa", "Andes", "Baltics", "Benelux", "Iberia", "Levant", "Nordics", "Pacific"]
# What the page must carry to count as painted: the static chart (its title and plotly's mime type, only
# in outputs: both sides strip sources) and the dropdown's widget view.
CHART_TITLE = "Sales by day, all regions"
PAGE_MARKERS = (CHART_TITLE, "application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json")
PLOTLY = "application/vnd.plotly.v1+json"


class RenderFailed(Exception):
    pass


def write_parquet(path: Path, rows: int) -> None:
    """``rows`` sales rows generated inside DuckDB (never through pandas), written as Parquet."""
    regions = ", ".join(f"'{r}'" for r in REGIONS)
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (
                SELECT i AS id,
                       DATE '2026-01-01' + CAST(i % 365 AS INTEGER) AS day,
                       [{regions}][1 + CAST(hash(i) % {len(REGIONS)} AS INTEGER)] AS region,
                       'product_' || CAST(hash(i + 7) % 20 AS VARCHAR) AS product,
                       CAST(hash(i + 13) % 10000 AS DOUBLE) / 100 AS amount
                FROM range({rows}) t(i)
            ) TO '{path}' (FORMAT parquet)"""
        )


# The dropdown's work per new value, in pandas over the DataFrame in the kernel (plain Voila's way).
PANDAS_SUBSET = (
    "subset = df[df.region == picker.value]\n"
    "        by_product = subset.groupby('product', as_index=False).amount.sum()"
)


# The same dropdown and chart as a Carnet author writes them with carnet.filters.prepared: the same pandas
# code draws one region; Carnet keeps each region's chart and makes the other regions' ahead while idle.
PREPARED_CALLBACK = (
    "import carnet\n"
    "picker = widgets.Dropdown(options=sorted(df.region.unique()), description='Region')\n"
    "chart = widgets.Output()\n\n"
    "def draw(region):\n"
    "    subset = df[df.region == region]\n"
    "    by_product = subset.groupby('product', as_index=False).amount.sum()\n"
    "    px.bar(by_product, x='product', y='amount', width=1000, height=420,\n"
    "           title=f'Sales by product in {region}').show()\n\n"
    "carnet.filters.prepared(picker, chart, draw)\n"
    "display(widgets.VBox([picker, chart]))"
)


def bench_notebook(
    load_code: str, rows: int, subset_code: str = PANDAS_SUBSET, callback_code: str | None = None
) -> dict:
    """The dashboard both sides render; the data-loading cell differs, and ``subset_code`` (which must set
    ``by_product``) may be Carnet's server-side query instead of pandas; ``callback_code`` replaces the
    whole dropdown cell (PREPARED_CALLBACK)."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [
        md("# Sales\nOne million sales rows, a chart and a region filter."),
        code(f"{load_code}\nassert len(df) == {rows}, len(df)"),
        code(
            "import ipywidgets as widgets\n"
            "import plotly.express as px\n"
            "from IPython.display import display\n\n"
            "daily = df.groupby(['day', 'region'], as_index=False).amount.sum()\n"
            "px.line(daily, x='day', y='amount', color='region',\n"
            f"        title='{CHART_TITLE}', width=1000, height=420).show()"
        ),
        code(
            callback_code
            or "picker = widgets.Dropdown(options=sorted(df.region.unique()), description='Region')\n"
            "chart = widgets.Output()\n\n"
            "def render(change=None):\n"
            "    with chart:\n"
            "        chart.clear_output(wait=True)\n"
            f"        {subset_code}\n"
            "        px.bar(by_product, x='product', y='amount', width=1000, height=420,\n"
            "               title=f'Sales by product in {picker.value}').show()\n\n"
            "picker.observe(render, names='value')\n"
            "render()\n"
            "display(widgets.VBox([picker, chart]))"
        ),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def page_config(page_html: str) -> dict:
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page_html, re.S
    )
    if not match:
        raise RenderFailed("the page has no jupyter-config-data")
    return json.loads(match.group(1))


def kernel_id_of(page_html: str) -> str:
    return page_config(page_html)["kernelId"]


def render(session: requests.Session, url: str, limit: float) -> tuple[float, str]:
    seconds, config = render_page(session, url, limit)
    return seconds, config["kernelId"]


def render_page(session: requests.Session, url: str, limit: float) -> tuple[float, dict]:
    """GET the app page and read it to its end (Voila's default rendering: the response ends once every cell
    ran, so this is "first paint with the chart"). Returns (seconds, the page's front-end configuration:
    ``kernelId``, ``carnetSnapshot`` on a snapshot page); raises RenderFailed.

    ``limit`` is a wall-clock cap on the whole read: a stalled render keeps the response alive with
    heartbeats (STACK-NOTES), so a read timeout alone would never fire."""
    started = time.perf_counter()
    chunks = []
    try:
        with session.get(url, stream=True, timeout=(10, limit)) as response:
            if response.status_code != 200:
                raise RenderFailed(f"HTTP {response.status_code}: {response.text[:300]}")
            for chunk in response.iter_content(chunk_size=None):
                chunks.append(chunk)
                if time.perf_counter() - started > limit:
                    raise RenderFailed(f"no complete page after {limit:.0f} s")
    except requests.RequestException as exc:
        raise RenderFailed(f"{type(exc).__name__}: {exc}") from None
    seconds = time.perf_counter() - started
    page = b"".join(chunks).decode(errors="replace")
    missing = [marker for marker in PAGE_MARKERS if marker not in page]
    if missing:
        raise RenderFailed(f"the page lacks {missing} (a cell failed?)")
    return seconds, page_config(page)


# -- the filter: a dropdown change sent as the page's widget manager would, over the kernel websocket ---


def _message(msg_type: str, content: dict, session: str) -> dict:
    header = {"msg_id": uuid.uuid4().hex, "username": "bench", "session": session, "msg_type": msg_type}
    header.update(version="5.3", date="2026-01-01T00:00:00Z")
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}


async def _until(connection, predicate, deadline: float) -> dict:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RenderFailed("the kernel did not answer in time")
        raw = await asyncio.wait_for(connection.read_message(), timeout=left)
        if raw is None:
            raise RenderFailed("the kernel websocket closed")
        message = json.loads(raw)
        if predicate(message):
            return message


def _parent(message: dict) -> str | None:
    return message.get("parent_header", {}).get("msg_id")


async def _filter_changes(ws_url: str, headers: dict, changes: int, limit: float) -> list[float]:
    connection = await websocket_connect(HTTPRequest(ws_url, headers=headers, request_timeout=limit))
    session, deadline = uuid.uuid4().hex, time.monotonic() + limit
    try:
        send = connection.write_message
        info = _message("comm_info_request", {"target_name": "jupyter.widget"}, session)
        send(json.dumps(info))
        msg_id = info["header"]["msg_id"]
        reply = await _until(
            connection,
            lambda m: _parent(m) == msg_id and m["header"]["msg_type"] == "comm_info_reply",
            deadline,
        )
        comms = list(reply["content"]["comms"])
        # Which comm is the dropdown: ask every widget for its state (ipywidgets' "request_state").
        asked = {}
        for comm_id in comms:
            request = _message("comm_msg", {"comm_id": comm_id, "data": {"method": "request_state"}}, session)
            asked[request["header"]["msg_id"]] = comm_id
            send(json.dumps(request))

        def is_dropdown(m):
            data = m["content"].get("data", {}) if m["header"]["msg_type"] == "comm_msg" else {}
            return _parent(m) in asked and data.get("state", {}).get("_model_name") == "DropdownModel"

        state_msg = await _until(connection, is_dropdown, deadline)
        dropdown, state = state_msg["content"]["comm_id"], state_msg["content"]["data"]["state"]
        labels, index = state["_options_labels"], state["index"]
        samples = []
        for _ in range(changes):
            index = (index + 1) % len(labels)
            update = {"method": "update", "state": {"index": index}, "buffer_paths": []}
            change = _message("comm_msg", {"comm_id": dropdown, "data": update}, session)
            change_id, wanted = change["header"]["msg_id"], f"Sales by product in {labels[index]}"
            started = time.perf_counter()
            send(json.dumps(change))

            def is_new_chart(m, change_id=change_id, wanted=wanted):
                if _parent(m) != change_id:
                    return False
                content = m["content"]
                if m["header"]["msg_type"] == "display_data":  # a callback drawing into the Output
                    return wanted in json.dumps(content.get("data", {}).get(PLOTLY, {}).get("layout", {}))
                # carnet.filters.prepared: the Output widget's new outputs, as a state update
                outputs = content.get("data", {}).get("state", {}).get("outputs") or []
                layouts = [o.get("data", {}).get(PLOTLY, {}).get("layout", {}) for o in outputs]
                return m["header"]["msg_type"] == "comm_msg" and wanted in json.dumps(layouts)

            await _until(connection, is_new_chart, deadline)
            samples.append(time.perf_counter() - started)

            def idle(m, change_id=change_id):
                return _parent(m) == change_id and m["content"].get("execution_state") == "idle"

            await _until(connection, idle, deadline)  # the next change starts on an idle kernel
        return samples
    finally:
        connection.close()


def filter_changes(ws_url: str, headers: dict, changes: int, limit: float = 300) -> list[float]:
    """Seconds from sending a new dropdown value to the kernel's new chart output, ``changes`` times."""
    try:
        return asyncio.run(_filter_changes(ws_url, headers, changes, limit))
    except (OSError, KeyError, TimeoutError, ValueError) as exc:
        raise RenderFailed(f"filter change over {ws_url}: {type(exc).__name__}: {exc}") from None


# -- kernels' memory ------------------------------------------------------------------------------------


def _proc(pid: str, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def find_process(command: bytes, environ: bytes) -> int:
    """The process with ``command`` in its command line and ``environ`` among its variables."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if command in _proc(entry.name, "cmdline") and environ in _proc(entry.name, "environ").split(
                    b"\0"
                ):
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no process running {command!r} with {environ!r}")


def kernel_pids(server_pid: int) -> set[int]:
    """The ipykernel processes whose parent is ``server_pid`` (they may run as other OS accounts)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of stat is the parent pid; field 2 (the name) may hold spaces: split after it.
            ppid = int(_proc(entry.name, "stat").rsplit(b")", 1)[1].split()[1])
            if ppid == server_pid and b"ipykernel" in _proc(entry.name, "cmdline"):
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0
