"""PDFs of an app with nothing for Voila's front end (text and a table): the Viewer's static page vs the same
app with one widget output (which brings the front end: ~9 MB of scripts), vs papermill + nbconvert webpdf.

    python -m bench.static_pages [--repeat 5]

One stack, one warm ViewerPrinter (as the scheduler has it), rows interleaved. Each Carnet row is timed
(wall) and its CPU counted over every process of the machine (the Viewer, its kernels, Chromium's browser,
renderer and GPU processes, the proxy), so the saving shows as CPU as well as time. Takes the machine's
Carnet stack lock (/tmp/carnet-stack.lock).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import requests

from bench.scheduler_jobs import (
    CHROMIUM_BINARY,
    VENV_BIN,
    machine_state,
    pdf_text,
    run_tool,
    stack_lock,
    webpdf_browsers_path,
)

REPORT = """import pandas as pd
orders = pd.DataFrame({"sku": [f"Sku{i:02d}" for i in range(30)], "amount": [100 + i for i in range(30)]})
print(f"Total ordered {orders['amount'].sum():,}")
orders"""
# One widget output: the page now needs Voila's front end (its bundle, the widget manager, plotly.js).
WIDGET = "import ipywidgets\nipywidgets.HTML('<b>Orders this week</b>')"


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Orders")])
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent (every process, user + system), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from sqlalchemy import select

    from bench.common import start_stack, stop_stack, studio_token
    from carnet.db import session_scope
    from carnet.db.models import App, User
    from carnet.print_pages import sign_print
    from carnet.scheduler.viewer_pdf import Letterhead, ViewerPdfSettings, ViewerPrinter

    print(f"start: {machine_state()}")
    with stack_lock():
        stack = start_stack()
        work = Path(tempfile.mkdtemp(prefix="carnet-bench-static-"))
        printer = None
        try:
            settings = stack.settings
            token = studio_token(settings)
            apps = {}
            for slug, nb in (("static", notebook(REPORT)), ("front-end", notebook(REPORT, WIDGET))):
                made = requests.post(
                    f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/api/v1/apps",
                    json={"slug": f"bench-{slug}", "title": "Orders", "notebook": nb},
                    headers={"Authorization": f"token {token}"},
                    timeout=60,
                )
                made.raise_for_status()
                apps[slug] = made.json()["id"]
            with session_scope(settings.db_url) as session:
                owner = session.scalar(select(User).where(User.email == "studio@acme.example")).id
            printer = ViewerPrinter(
                CHROMIUM_BINARY,
                ViewerPdfSettings(viewer_url=f"{stack.url}/services/carnet-viewer/", time_budget=180),
            )
            executed, report_nb = work / "executed.ipynb", work / "report.ipynb"
            nbformat.write(notebook(REPORT), report_nb)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CARNET_")},
                "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            }
            webpdf_env = {**env, "PLAYWRIGHT_BROWSERS_PATH": str(webpdf_browsers_path(work, env))}

            def plain_tools():
                papermill = [str(VENV_BIN / "papermill"), str(report_nb), str(executed), "--no-progress-bar"]
                webpdf = [str(VENV_BIN / "jupyter"), "nbconvert", "--to", "webpdf", str(executed)]
                if not (run_tool(papermill, env) and run_tool(webpdf, webpdf_env)):
                    raise SystemExit("papermill + nbconvert --to webpdf failed")

            def carnet_print(slug: str):
                def run():
                    with session_scope(settings.db_url) as session:
                        signed = sign_print(session, settings, session.get(App, apps[slug]), as_user=owner)
                    printer.print_token(signed, work / f"{slug}.pdf", Letterhead("Acme", "#0b7285", "Orders"))

                return run

            rows = {"papermill + nbconvert --to webpdf": plain_tools}
            rows["Carnet, page with a widget (Voila's front end)"] = carnet_print("front-end")
            rows["Carnet, static page (no front end)"] = carnet_print("static")
            for run in rows.values():  # warm-up: the browser's launch, first imports
                run()
            walls = {name: [] for name in rows}
            cpus = {name: [] for name in rows}
            for _ in range(args.repeat):
                for name, run in rows.items():
                    time.sleep(1.0)  # the previous page's kernel shutdown, off every row's clock
                    cpu, started = busy_seconds(), time.perf_counter()
                    run()
                    walls[name].append(time.perf_counter() - started)
                    time.sleep(2.0)  # this page's kernel shutdown and context close, counted in its CPU
                    cpus[name].append(busy_seconds() - cpu)
            for slug in ("static", "front-end"):
                text = pdf_text(work / f"{slug}.pdf")
                if "Total ordered 3,435" not in text or "Sku29" not in text:
                    raise SystemExit(f"the {slug} PDF lacks the report's text:\n{text[:2000]}")
            webpdf_text = pdf_text(executed.with_suffix(".pdf"))
            baseline_wall = statistics.median(next(iter(walls.values())))
            print(f"\nPDF of a text + table app, {args.repeat} rounds (interleaved); end: {machine_state()}")
            print(f"{'':50s} {'wall s':>7s} {'min s':>7s} {'CPU s':>7s} {'x plain':>8s}")
            for name in rows:
                wall = statistics.median(walls[name])
                print(
                    f"{name:50s} {wall:7.3f} {min(walls[name]):7.3f} {statistics.median(cpus[name]):7.2f}"
                    f" {baseline_wall / wall:7.2f}x"
                )
            print("text checked in every PDF: Carnet 'Total ordered 3,435' and Sku29;", end=" ")
            print(f"webpdf {'has' if 'Total ordered 3,435' in webpdf_text else 'LACKS'} it")
        finally:
            if printer is not None:
                printer.close()
            stop_stack(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
