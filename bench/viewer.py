"""Issue 6's Viewer speed baseline, side by side in one run on the same dashboard notebook (1,000,000 sales
rows, a plotly chart, an ipywidgets Dropdown that re-renders a second chart inside an Output widget):

(a) plain Voila: ``voila <notebook> --no-browser`` on a free port. Plain Voila has no Carnet sources, so its
    copy of the notebook reads the same rows straight from a Parquet file (pyarrow -> pandas); every other
    cell is the same.
(b) the Carnet Viewer: the rows loaded into the org's warehouse through the REST load route, a
    ``warehouse_table`` source over them read with ``carnet.sources[...].df()``, the notebook published as an
    app through the API and opened through the Hub's proxy by the signed-in viewer (login session cookie).

Measured for each side:
- first paint, cold: GET of the app page read to its last byte. Both sides use Voila's default (not
  progressive) rendering, where the response ends once every cell ran, so the last byte is the page with
  the chart's output; the page must carry the chart (its title and plotly's mime type) and the dropdown's
  widget view, else the render counts as failed. "Cold" = a new kernel for the request, the first render
  on that server. "Cached": plain Voila has no render cache, so it is a repeat visit (a cold kernel again,
  the repeat renders' median); the Viewer's is a visit made once its render pool (extension/render_pool.py,
  ``--pool`` pages per key) finished pre-rendering: ``--repeats`` such visits, the median, and how many were
  served from the pool (the Viewer's log says when pre-renders end and when one is handed over).
- repeat renders: ``--repeats`` sequential renders back to back (each kernel shut down after), renders per
  second (the Viewer's pool refills compete with them for the CPU).
- new filter value: on a rendered page's kernel, a Python websocket client (Jupyter's JSON kernel protocol,
  as the page's widget manager does) sets the dropdown's index and waits for the display_data carrying the
  new chart (its title names the region); ``--repeats`` changes, one after another. Plain Voila's dropdown
  filters and groups the DataFrame in pandas; the Viewer's does the same (``--subset pandas``, the default)
  or asks Carnet's query service for the region's totals (``--subset query``:
  ``carnet.sources[...].query(group_by=..., where=...)``, server-side, cached per value), or draws with the
  same pandas code through ``carnet.filters.prepared`` (``--subset prepared``: each region's chart kept, the
  other regions' made ahead while the kernel is idle; the change then arrives as the Output widget's state).
- The Viewer's stack runs with no kernel caps (CARNET_VIEWER_MAX_KERNELS_PER_APP/ORG=0).
- ``--viewers`` concurrent viewers: that many threads open the page at once; p50/p95 latency, errors; memory
  per viewer = the summed RSS (/proc) of the kernels those renders started / viewers.

Exits 1 if any render fails or lacks the chart. Run: ``.venv/bin/python -m bench.viewer [--quick]``
(``--viewers 50 --repeats 10 --rows 1000000`` are the defaults).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import requests

import carnet
from bench.common import start_stack, stop_stack
from bench.viewer_support import (
    PANDAS_SUBSET,
    PREPARED_CALLBACK,
    TABLE,
    RenderFailed,
    bench_notebook,
    filter_changes,
    find_process,
    kernel_pids,
    mem_available_mb,
    render,
    render_page,
    rss_mb,
    write_parquet,
)
from bench.warehouse_load import api_key
from tests.helpers import VENV_BIN, free_port, hub_login, make_hub_token, wait_until

VIEWER = "viewer@acme.example"
STALL = 60.0
KEPT_LOG = Path(tempfile.gettempdir()) / "carnet-bench-viewer-stack.log"
RENDER_LIMIT = 600.0  # seconds: 50 kernels starting at once on 2 cores take minutes, not hours
SNAPSHOT_LINE = "Served a snapshot of app {app} "


@dataclass
class Side:
    name: str
    page_url: str
    ws_base: str  # + "<kernel id>/channels"
    shutdown_base: str  # + "<kernel id>"
    server_pid: int
    headers: dict = field(default_factory=dict)  # for the websocket and the shutdown call
    cookies: object = None
    pool_log: Path | None = None  # the Viewer's log: its render pool says when a pre-render ends
    app_id: int = 0

    def pool_lines(self, what: str) -> int:
        if self.pool_log is None:
            return 0
        return self.pool_log.read_text(errors="replace").count(what.format(app=self.app_id))

    def wait_for_pool(self) -> None:
        """Until every pre-render the Viewer scheduled for the app has ended (a visitor arriving later)."""
        if self.pool_log is not None:
            scheduled, ended = "Pre-render of app {app} scheduled", "Pre-render of app {app} ended"
            wait_until(
                lambda: self.pool_lines(scheduled) == self.pool_lines(ended), RENDER_LIMIT, what="pre-renders"
            )

    def session(self) -> requests.Session:
        session = requests.Session()
        if self.cookies is not None:
            session.cookies.update(self.cookies)
        return session

    def live_kernel(self, session: requests.Session) -> str:
        """A rendered page's live kernel. The Viewer may answer with a snapshot (extension/snapshots.py),
        whose widgets answer no change: then wait, as the page does, until the person's live page is ready,
        and open that (the snapshot's page is closed as its beforeunload would)."""
        origin = "/".join(self.page_url.split("/")[:3])
        while True:
            _seconds, config = render_page(session, self.page_url, RENDER_LIMIT)
            kernel, live = config["kernelId"], (config.get("carnetSnapshot") or {}).get("live")
            if live is None:
                return kernel
            wait_until(
                lambda live=live: session.get(origin + live, timeout=30).json().get("ready"),
                RENDER_LIMIT,
                what="the live page after a snapshot",
            )
            self.shutdown(kernel)

    def shutdown(self, kernel_id: str) -> None:
        # The page's own beforeunload call: otherwise every render leaves a ~200 MB kernel behind.
        # Plain Voila checks XSRF (no token auth): a matching cookie and header, as the page sends.
        xsrf = uuid.uuid4().hex
        headers = {**self.headers, "X-XSRFToken": xsrf}
        url = self.shutdown_base + kernel_id
        answer = requests.post(url, headers=headers, cookies={"_xsrf": xsrf}, timeout=60)
        if answer.status_code >= 400:
            raise RenderFailed(f"{self.name}: shutting kernel {kernel_id} down answered {answer.status_code}")


@dataclass
class Result:
    cold: float = 0.0
    repeats: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)  # a visit once the render pool is ready
    pool_hits: int = 0
    filters: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kernels: int = 0
    memory_per_viewer: float = 0.0
    leftover: int = 0  # kernels still running after the concurrent phase (of failed renders)
    snapshots: int = 0  # concurrent visitors served a snapshot (extension/snapshots.py), no kernel of theirs


def measure(side: Side, repeats: int, viewers: int) -> Result:
    result = Result()
    baseline = kernel_pids(side.server_pid)
    session = side.session()
    result.cold, kernel = render(session, side.page_url, RENDER_LIMIT)
    side.shutdown(kernel)
    print(f"{side.name}: cold first paint {result.cold:.2f} s", flush=True)
    for _ in range(repeats):
        seconds, kernel = render(session, side.page_url, RENDER_LIMIT)
        result.repeats.append(seconds)
        side.shutdown(kernel)
    print(
        f"{side.name}: {repeats} repeat renders, median {statistics.median(result.repeats):.2f} s", flush=True
    )
    if side.pool_log is not None:
        hits = side.pool_lines("Handed pre-rendered kernel")
        for _ in range(repeats):
            side.wait_for_pool()
            seconds, kernel = render(session, side.page_url, RENDER_LIMIT)
            result.cached.append(seconds)
            side.shutdown(kernel)
        result.pool_hits = side.pool_lines("Handed pre-rendered kernel") - hits
        print(
            f"{side.name}: {repeats} visits with the pool ready, median "
            f"{statistics.median(result.cached):.3f} s ({result.pool_hits} served from the pool)",
            flush=True,
        )
    else:
        result.cached = result.repeats  # no render cache: a later visit is a cold render again
    kernel = side.live_kernel(session)
    try:
        result.filters = filter_changes(f"{side.ws_base}{kernel}/channels", side.headers, repeats)
    finally:
        side.shutdown(kernel)
    print(
        f"{side.name}: {repeats} filter changes, median {statistics.median(result.filters):.2f} s", flush=True
    )

    side.wait_for_pool()  # the concurrent visitors arrive on a Viewer that had time to pre-render
    snapshots_before = side.pool_lines(SNAPSHOT_LINE)
    barrier = threading.Barrier(viewers)

    def viewer(_):
        own = side.session()
        barrier.wait()  # all threads ask at the same moment
        try:
            return render(own, side.page_url, RENDER_LIMIT)
        except RenderFailed as exc:
            return exc

    with ThreadPoolExecutor(max_workers=viewers) as pool:
        outcomes = list(pool.map(viewer, range(viewers)))
    started = kernel_pids(side.server_pid) - baseline
    result.kernels = len(started)
    result.snapshots = side.pool_lines(SNAPSHOT_LINE) - snapshots_before
    result.memory_per_viewer = sum(rss_mb(pid) for pid in started) / viewers
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            result.errors.append(str(outcome))
        else:
            result.latencies.append(outcome[0])
            side.shutdown(outcome[1])
    # Kernels of failed renders (no id known) should not weigh on the other side's numbers: give them a
    # minute to end, then go on and say how many are left (they end with their server).
    try:
        wait_until(lambda: not (kernel_pids(side.server_pid) - baseline), 60, what="kernels to end")
    except TimeoutError:
        result.leftover = len(kernel_pids(side.server_pid) - baseline)
    print(f"{side.name}: {viewers} concurrent, {len(result.errors)} errors", flush=True)
    return result


def percentile(samples: list[float], p: int) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def report(plain: Result, viewer: Result, args) -> None:
    def rate(r):
        return len(r.repeats) / sum(r.repeats)

    median = statistics.median
    rows = [
        ("first paint, cold (s)", plain.cold, viewer.cold, ""),
        (
            "first paint, cached (s)*",
            median(plain.cached),
            median(viewer.cached),
            "<= 0.10",
        ),
        ("renders per second, sequential (higher: better)", rate(plain), rate(viewer), ""),
        ("new filter value, median (s)", median(plain.filters), median(viewer.filters), "<= 0.33"),
        (
            f"{args.viewers} concurrent: p50 (s)",
            percentile(plain.latencies, 50),
            percentile(viewer.latencies, 50),
            "",
        ),
        (
            f"{args.viewers} concurrent: p95 (s)",
            percentile(plain.latencies, 95),
            percentile(viewer.latencies, 95),
            "< 2 s",
        ),
        (
            f"{args.viewers} concurrent: max (s)",
            max(plain.latencies, default=0),
            max(viewer.latencies, default=0),
            "",
        ),
        (f"{args.viewers} concurrent: errors", len(plain.errors), len(viewer.errors), "0"),
        ("memory per viewer (MB, kernels' RSS)", plain.memory_per_viewer, viewer.memory_per_viewer, ""),
    ]
    print(f"\n{args.rows:,} rows, {args.repeats} repeats, {args.viewers} viewers, {os.cpu_count()} cores")
    print(f"{'':48s} {'plain':>9s} {'Carnet':>9s} {'C/plain':>8s}  {'target':9s} met")
    for name, a, b, target in rows:
        ratio = f"{b / a:8.2f}" if a else f"{'-':>8s}"
        if target.startswith("<="):
            met = "yes" if b / a <= float(target.split()[1]) else "no"
        elif target == "< 2 s":
            met = "yes" if b < 2 else "no"
        elif target == "0":
            met = "yes" if b == 0 else "no"
        else:
            met = ""
        print(f"{name:48s} {a:9.3f} {b:9.3f} {ratio}  {target:9s} {met}")
    print(
        "* plain Voila has no render cache: its 'cached' row is the repeat renders' median. Carnet's is the\n"
        f"  median of visits made once its render pool was ready ({viewer.pool_hits} of {len(viewer.cached)}"
        " served from the pool);\n"
        "  target: cached first paint >= 10x faster than plain Voila.\n"
        "  Filter target: >= 3x faster. Concurrent target: Carnet p95 < 2 s with 0 errors. First paint =\n"
        "  the whole page read (non-progressive Voila: it ends when every cell ran), checked for the chart."
    )
    print(f"kernels started by the concurrent renders: plain {plain.kernels}, Carnet {viewer.kernels}")
    print(
        f"Carnet concurrent visitors served a snapshot at once (their live page rendered afterwards, "
        f"CARNET_VIEWER_PRERENDER_CONCURRENCY at a time): {viewer.snapshots} of {args.viewers}"
    )
    print(f"kernels still running a minute after: plain {plain.leftover}, Carnet {viewer.leftover}")
    for name, r in (("plain", plain), ("Carnet", viewer)):
        # A render held open by heartbeats until a cell timeout: the stall STACK-NOTES describes.
        slow = [t for t in (r.cold, *r.repeats, *r.latencies) if t > STALL]
        if slow:
            print(
                f"{name}: {len(slow)} renders took over {STALL:.0f} s: {', '.join(f'{t:.0f}' for t in slow)}"
            )
    for name, r in (("plain", plain), ("Carnet", viewer)):
        for error in sorted(set(r.errors)):
            print(f"{name} error x{r.errors.count(error)}: {error[:300]}")


def start_plain_voila(work: Path, parquet: Path, rows: int) -> tuple[subprocess.Popen, Side]:
    load = f"import pyarrow.parquet as pq\ndf = pq.read_table({str(parquet)!r}).to_pandas()"
    notebook = work / "viewer_bench_plain.ipynb"
    nbformat.write(nbformat.from_dict(bench_notebook(load, rows)), notebook)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    command = [str(VENV_BIN / "voila"), str(notebook), f"--port={port}", "--no-browser"]
    command += ["--Voila.ip=127.0.0.1", "--VoilaExecutor.timeout=120"]
    process = subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=(work / "voila.log").open("wb")
    )
    base = f"http://127.0.0.1:{port}/"
    wait_until(lambda: requests.get(base + "api/kernelspecs", timeout=2).status_code < 500, 60, what="voila")
    side = Side(
        "plain Voila", base, f"ws://127.0.0.1:{port}/api/kernels/", base + "voila/api/shutdown/", process.pid
    )
    return process, side


def carnet_side(stack, rows: int, parquet: Path, subset: str = "pandas") -> Side:
    key = api_key(stack)
    client = carnet.Client(stack.url, key)
    loaded = client.warehouse.table(TABLE).load_file(parquet)  # the REST load route
    if loaded.get("rows_out") != rows:
        raise RenderFailed(f"the warehouse load answered {loaded}")
    api, headers = f"{stack.url}/services/carnet/api/v1/", {"Authorization": f"Bearer {key}"}
    source = {"name": TABLE, "kind": "warehouse_table", "options": {"table": TABLE}}
    answer = requests.post(api + "sources", json=source, headers=headers, timeout=60)
    if answer.status_code != 201:
        raise RenderFailed(f"creating the source answered {answer.status_code}: {answer.text[:300]}")
    # --subset query: the dropdown asks the query service for the region's totals (server-side, cached per
    # value); pandas (the default): the same callback as plain Voila's, over the DataFrame in the kernel.
    subset_code = PANDAS_SUBSET
    if subset == "query":
        subset_code = (
            f"by_product = carnet.sources[{TABLE!r}].query(group_by=['product'], "
            "aggregates={'amount': 'sum'}, where={'region': picker.value})"
        )
    callback = PREPARED_CALLBACK if subset == "prepared" else None
    notebook = bench_notebook(
        f'import carnet\ndf = carnet.sources["{TABLE}"].df()', rows, subset_code, callback
    )
    app = {"slug": f"bench-viewer-{uuid.uuid4().hex[:6]}", "title": "Viewer bench", "notebook": notebook}
    answer = requests.post(api + "apps", json=app, headers=headers, timeout=60)
    if answer.status_code != 201:
        raise RenderFailed(f"publishing answered {answer.status_code}: {answer.text[:300]}")
    app_id = answer.json()["id"]
    session = hub_login(stack.url, VIEWER, stack.passwords[VIEWER])
    viewer_base = f"{stack.url}/services/carnet-viewer/"
    # The Hub OAuth handshake, on an app id that does not exist: cookies set, no kernel started.
    session.get(viewer_base + "apps/999999999", timeout=60)
    token = make_hub_token(stack.url, session, VIEWER)
    hub = f"127.0.0.1:{stack.ports['HUB']}"
    pid = find_process(b"viewer_config", f"CARNET_DATA_DIR={stack.data_dir}".encode())
    return Side(
        "Carnet Viewer",
        f"{viewer_base}apps/{app_id}",
        f"ws://{hub}/services/carnet-viewer/api/kernels/",
        f"{viewer_base}voila/api/shutdown/",
        pid,
        headers={"Authorization": f"token {token}"},
        cookies=session.cookies,
        pool_log=stack.log_path,
        app_id=app_id,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=None, help="concurrent viewers (default 50)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="sequential renders and filter changes (10)"
    )
    parser.add_argument("--rows", type=int, default=None, help="rows in the table (1,000,000)")
    parser.add_argument("--pool", type=int, default=1, help="the Viewer's pre-rendered pages per key (1)")
    parser.add_argument(
        "--subset",
        choices=("pandas", "query", "prepared"),
        default="pandas",
        help="the Viewer app's dropdown: pandas over the DataFrame (as plain Voila), the query service, or "
        "the pandas draw through carnet.filters.prepared (kept per region, other regions made ahead)",
    )
    parser.add_argument("--quick", action="store_true", help="a check: 100,000 rows, 3 repeats, 4 viewers")
    args = parser.parse_args(argv)
    quick = (4, 3, 100_000) if args.quick else (50, 10, 1_000_000)
    args.viewers, args.repeats, args.rows = (
        given if given is not None else default
        for given, default in zip((args.viewers, args.repeats, args.rows), quick, strict=True)
    )
    # A kernel holding the rows: ~150 MB of imports + the DataFrame and its Arrow copy.
    # Measured: ~330 MB per kernel at 1M rows. 4 GB stay free for the rest of the machine.
    needed = args.viewers * (150 + 180 * args.rows / 1e6) + 4096
    if mem_available_mb() < needed:
        print(f"FAIL: {args.viewers} viewers need ~{needed:.0f} MB, {mem_available_mb():.0f} MB available")
        return 2
    work = Path(tempfile.mkdtemp(prefix="carnet-bench-viewer-"))
    os.chmod(work, 0o711)  # noqa: S103 - people's OS accounts traverse it
    parquet = work / f"{TABLE}.parquet"
    stack = voila = None
    try:
        write_parquet(parquet, args.rows)
        os.chmod(parquet, 0o644)
        voila, plain = start_plain_voila(work, parquet, args.rows)
        # The render pool on (one pre-rendered page per key); no kernel caps: the bench's own viewers
        # must all get a page.
        stack = start_stack(
            {
                "CARNET_VIEWER_POOL_SIZE": str(args.pool),
                "CARNET_VIEWER_MAX_KERNELS_PER_APP": "0",
                "CARNET_VIEWER_MAX_KERNELS_PER_ORG": "0",
            }
        )
        viewer = carnet_side(stack, args.rows, parquet, args.subset)
        started = time.perf_counter()
        plain_result = measure(plain, args.repeats, args.viewers)
        viewer_result = measure(viewer, args.repeats, args.viewers)
        print(f"measured in {time.perf_counter() - started:.0f} s")
        report(plain_result, viewer_result, args)
        if plain_result.errors:
            # The baseline's own failures are a result (plain Voila under 50 viewers), not the bench's.
            print(f"plain Voila failed {len(plain_result.errors)} renders (the errors above)")
        if viewer_result.errors:
            # Viewer pages show a generic message for a failed cell; the reason is in the stack's log.
            shutil.copyfile(stack.log_path, KEPT_LOG)
            print(f"FAIL: Carnet renders failed (the errors above; the stack's log is kept at {KEPT_LOG})")
            return 1
        return 0
    except RenderFailed as exc:
        print(f"FAIL: {exc}")
        if stack is not None:
            print(f"the Carnet stack's log ends with:\n{stack.log_tail(40)}")
        return 1
    finally:
        if voila is not None:
            voila.terminate()
            try:
                voila.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck shutting kernels down after a burst it could not serve
                voila.kill()
                voila.wait(timeout=30)
        if stack is not None:
            stop_stack(stack)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
