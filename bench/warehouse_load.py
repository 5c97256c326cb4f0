"""Issue 5's load benchmark: a generated 10,000,000-row x 10-column CSV loaded, in one run, side by side by

(a) raw DuckDB: ``CREATE TABLE t AS SELECT * FROM read_csv('<file>')`` into a fresh DuckDB file, and
(b) ``carnet load <org> <table> <file>``: the real CLI (API key, progress on stderr) against a real Carnet
    stack started for this run (a fresh service, so its peak memory is these loads'), twice: through the
    Hub's URL (what an operator types) and direct to the service (the address kernels use, no proxy hop).

Each contender runs in its own child process; its peak RSS is that child's VmHWM (sampled until it exits).
The service's peak is VmHWM from /proc/<pid>/status (kept since it started: printed after start and after
each load). ``--repeat`` rounds (default 3) run the three contenders in a rotated order and the medians are
compared: on a shared 2-core machine a single run moves by up to 2x. Every loaded row count is checked (exit 1
if one is not ``--rows``). Target (issue 5): carnet within 1.5x of DuckDB, memory bounded (compare ``--rows
1000000`` with the full run).

Run: ``.venv/bin/python -m bench.warehouse_load [--rows N] [--keep DIR] [--repeat N]``; default
10,000,000 rows: ~1 GB of CSV in a temporary folder, removed at the end unless ``--keep DIR`` names one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import select

import carnet
from carnet.api_keys import mint_api_key
from carnet.db import session_scope
from carnet.db.models import Organization, User
from tests.helpers import VENV_BIN, CarnetStack

ORG, TABLE, ADMIN = "acme", "bench_load", "admin@acme.example"
CHUNK_ROWS = 500_000
WORDS = np.array(
    ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
)
CITIES = np.array(["Oslo", "Lyon", "Porto", "Turin", "Ghent", "Malmo", "Graz", "Split", "Cork", "Brno"])
EPOCH_DAY = np.datetime64("2020-01-01", "D")
EPOCH_SECOND = np.datetime64("2020-01-01T00:00:00", "s")

DUCKDB_CHILD = """
import sys, duckdb
with duckdb.connect(sys.argv[2]) as con:
    con.execute("SET enable_progress_bar = false")
    con.execute("CREATE TABLE t AS SELECT * FROM read_csv(?)", [sys.argv[1]])
    print(con.execute("SELECT count(*) FROM t").fetchone()[0])
"""


def generate_csv(path: Path, rows: int, seed: int = 42) -> None:
    """Ten typed columns, written CHUNK_ROWS at a time (the file is never built whole in memory)."""
    rng = np.random.default_rng(seed)
    options = pacsv.WriteOptions(quoting_style="none")  # like pandas: no quotes where none are needed
    writer = None
    try:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            chunk = pa.table(
                {
                    "id": np.arange(start + 1, start + n + 1, dtype=np.int64),
                    "quantity": rng.integers(-1000, 100_000, n),
                    "price": np.round(rng.random(n) * 1000, 2),
                    "ratio": rng.standard_normal(n),
                    "product": np.char.add(rng.choice(WORDS, n), rng.integers(0, 1000, n).astype(str)),
                    "city": rng.choice(CITIES, n),
                    "day": EPOCH_DAY + rng.integers(0, 2500, n).astype("timedelta64[D]"),
                    "created": EPOCH_SECOND + rng.integers(0, 200_000_000, n).astype("timedelta64[s]"),
                    "active": rng.random(n) < 0.5,
                    "note": rng.choice(np.array(["", "ok", "late delivery", "returned", "gift"]), n),
                }
            )
            if writer is None:
                writer = pacsv.CSVWriter(str(path), chunk.schema, write_options=options)
            writer.write_table(chunk)
    finally:
        if writer is not None:
            writer.close()


def run_child(command: list[str], env: dict | None = None) -> tuple[float, float, str, str, int]:
    """(seconds, peak RSS MB of that child alone, stdout, stderr, exit code).

    The peak is the child's VmHWM, sampled every 50 ms until it exits (VmHWM only grows, so the last sample
    is the peak but for its last 50 ms). Not ``ru_maxrss``: on Linux a forked child's includes the RSS of
    this (large) parent from before its exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        peak = 0.0
        while True:
            waited, status = os.waitpid(process.pid, os.WNOHANG)
            if waited:
                break
            with contextlib.suppress(OSError, RuntimeError):  # exiting: its last sample stands
                peak = max(peak, vm_hwm_mb(process.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return seconds, peak, out.read().decode(), err.read().decode(), process.returncode


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def service_pid(stack: CarnetStack) -> int:
    """The Carnet service: the Hub's managed service ``python -m carnet.service`` in the stack's session."""
    wanted = f"CARNET_DATA_DIR={stack.data_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            # The Hub starts its services in their own sessions: told apart by this stack's data dir.
            if b"carnet.service" in cmdline and wanted in environ:
                return int(entry.name)
        except OSError:
            continue
    raise RuntimeError("the Carnet service process was not found")


def api_key(stack: CarnetStack) -> str:
    with session_scope(stack.settings.db_url) as session:
        org = session.scalar(select(Organization).where(Organization.slug == ORG))
        admin = session.scalar(select(User).where(User.email == ADMIN))
        _key, text = mint_api_key(session, org_id=org.id, creator_id=admin.id, name="bench", role="studio")
        return text


def load_with_cli(stack: CarnetStack, key: str, pid: int, url: str, table: str, data: Path) -> tuple:
    """``carnet load`` in a child process: (seconds, its peak RSS MB, the table's rows as the API reports
    them, the service's VmHWM after it, the engine's own seconds, the CLI's stdout and stderr)."""
    env = {**stack.env, "CARNET_URL": url, "CARNET_API_KEY": key}
    seconds, peak, out, err, code = run_child([str(VENV_BIN / "carnet"), "load", ORG, table, str(data)], env)
    hwm = vm_hwm_mb(pid)
    if code != 0:
        raise SystemExit(f"FAIL: carnet load exited {code}:\n{err[-2000:]}")
    handle = carnet.Client(stack.url, key).warehouse.table(table)
    rows, last = handle.describe()["rows"], handle.history(limit=1)[0]
    return seconds, peak, rows, hwm, last.get("duration_seconds"), out, err


def progress_proof(stderr: str) -> list[str]:
    updates = [part.strip() for part in stderr.replace("\n", "\r").split("\r") if part.strip()]
    sent = [u for u in updates if u.startswith("sent ")]
    if not sent or "(100%)" not in sent[-1]:
        raise SystemExit(f"FAIL: the CLI showed no progress:\n{stderr[-2000:]}")
    picks = sorted({0, len(sent) // 4, len(sent) // 2, 3 * len(sent) // 4, len(sent) - 1})
    return [f"{len(sent)} progress updates, e.g.:", *(f"  {sent[i]}" for i in picks)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", help="generate into (and keep) this folder instead of a temporary one")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of the three contenders; the medians are compared"
    )
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="carnet-bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"bench_{args.rows}.csv"
    stack = None
    try:
        if not data.exists():
            started = time.perf_counter()
            generate_csv(data, args.rows)
            seconds = time.perf_counter() - started
            print(f"generated {data} ({data.stat().st_size / 1e6:.0f} MB) in {seconds:.1f} s")
        size_mb = data.stat().st_size / 1e6

        stack_dir = Path(tempfile.mkdtemp(prefix="carnet-bench-"))
        os.chmod(stack_dir, 0o711)  # noqa: S103 - people's OS accounts traverse it to their homes
        stack = CarnetStack(stack_dir)
        stack.env["CARNET_UPLOAD_MAX_BYTES"] = str(max(200 * 1024 * 1024, 2 * data.stat().st_size))
        stack.start()
        key, pid = api_key(stack), service_pid(stack)
        hwm_start = vm_hwm_mb(pid)
        # The address kernels use (CARNET_API_URL): the same service without the Hub's proxy in between.
        direct = f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/"

        def duckdb_alone():
            duck_db = work / "duckdb.duckdb"
            duck_db.unlink(missing_ok=True)
            duck = run_child([sys.executable, "-c", DUCKDB_CHILD, str(data), str(duck_db)])
            duck_db.unlink(missing_ok=True)
            if duck[4] != 0:
                raise SystemExit(f"FAIL: duckdb child: {duck[3][-2000:]}")
            return duck[0], duck[1], int(duck[2].split()[-1])

        contenders = {
            "duckdb": duckdb_alone,
            "hub": lambda: load_with_cli(stack, key, pid, stack.url, TABLE, data),
            "direct": lambda: load_with_cli(stack, key, pid, direct, TABLE + "_direct", data),
        }
        runs: dict[str, list] = {name: [] for name in contenders}
        for round_ in range(args.repeat):
            # Each round runs all three, in a rotated order: a busy moment of the machine hits each in turn.
            order = list(contenders)[round_ % 3 :] + list(contenders)[: round_ % 3]
            for name in order:
                runs[name].append(contenders[name]())
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{name} {runs[name][-1][0]:.2f} s" for name in contenders),
                flush=True,
            )

        def median_run(name):
            return sorted(runs[name], key=lambda run: run[0])[len(runs[name]) // 2]

        duck, via_hub, via_service = median_run("duckdb"), median_run("hub"), median_run("direct")
        print(
            f"\n{args.rows:,} rows x 10 columns, {size_mb:.0f} MB of CSV, {os.cpu_count()} cores; "
            f"median of {args.repeat} rounds"
        )
        print(f"{'':52s} {'seconds':>8s} {'rows/s':>12s} {'peak RSS MB':>12s} {'x duckdb':>9s}")
        lines = [
            ("raw DuckDB read_csv -> table (child process)", *duck),
            ("carnet load via the Hub's URL (CLI process)", *via_hub[:3]),
            ("carnet load direct to the service (CLI process)", *via_service[:3]),
        ]
        for name, seconds, peak, _rows in lines:
            rate = args.rows / seconds
            print(f"{name:52s} {seconds:8.2f} {rate:12,.0f} {peak:12.0f} {seconds / duck[0]:9.2f}")
        print(
            f"Carnet service peak RSS (VmHWM): {hwm_start:.0f} MB after start, "
            f"{max(vm_hwm_mb(pid), via_hub[3], via_service[3]):.0f} MB after all loads"
        )
        for name, run in (("via the Hub", via_hub), ("direct", via_service)):
            print(f"{name}: load engine's own time (load history) {run[4]} s; the CLI said: {run[5].strip()}")
        print("\n".join(progress_proof(via_hub[6])))
        counts = [run[2] for name in runs for run in runs[name]]
        if any(rows != args.rows for rows in counts):
            print(f"FAIL: a row count differs from {args.rows}: {counts}")
            return 1
        print(f"row counts OK: {len(counts)} loads of {args.rows:,} rows")
        return 0
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.data_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
