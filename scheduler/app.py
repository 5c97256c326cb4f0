"""The scheduler service: a Hub-managed process (never inside anybody's server) that turns due jobs
into queued runs and executes queued runs, one at a time.

State lives in the platform database, so a restart loses nothing: due jobs are enqueued on the next
tick (carnet/scheduler/run_queue.py: misfires, skipped overlaps), and runs a killed scheduler left
'running' are queued again (or failed when out of tries) by the holder of the lease; their recorded mail is
sent once (carnet/scheduler/outbox.py). Exactly one instance runs jobs: the one holding the lease
(carnet/scheduler/lease.py); another waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from traitlets import Float, Integer, default, validate
from traitlets.config import Application

from carnet.db import upgrade
from carnet.scheduler.executor import JobExecutor
from carnet.scheduler.kinds import kinds
from carnet.scheduler.kinds.report import prerender_report_pages
from carnet.scheduler.lease import LeaseKeeper
from carnet.scheduler.notebook_workers import NotebookWorkerPool
from carnet.scheduler.outbox import deliver_due_notices
from carnet.scheduler.retention import sweep_outputs
from carnet.scheduler.run_queue import claim_next_run, enqueue_due_runs, recover_interrupted_runs
from carnet.scheduler.viewer_pdf import ViewerPdfSettings, ViewerPrinter
from carnet.settings import CarnetSettings

log = logging.getLogger("carnet.scheduler")


class SchedulerService(Application):
    name = "carnet-scheduler"
    description = "Runs Carnet's scheduled jobs."
    classes = [CarnetSettings, ViewerPdfSettings]

    poll_interval = Float(
        help="Seconds between two looks at the database for due jobs and queued runs. "
        "Environment: CARNET_SCHEDULER_POLL. Default: 2.",
    ).tag(config=True)

    @default("poll_interval")
    def _default_poll_interval(self):
        return float(os.environ.get("CARNET_SCHEDULER_POLL", "2"))

    cell_timeout = Integer(600, help="Seconds a single notebook cell of a job may run.").tag(config=True)

    lease_seconds = Float(
        help="Seconds the scheduler lease lasts without renewal. Only the scheduler holding the lease runs "
        "jobs (carnet/scheduler/lease.py); it renews it every third of this. A second instance waits, and "
        "takes over this long after the holder stopped renewing (killed, frozen, cut off). Environment: "
        "CARNET_SCHEDULER_LEASE. Default: 30.",
    ).tag(config=True)

    @default("lease_seconds")
    def _default_lease_seconds(self):
        return float(os.environ.get("CARNET_SCHEDULER_LEASE", "30"))

    retention_sweep_interval = Float(
        600,
        help="Seconds between two sweeps removing the outputs of runs older than their organization's "
        "job_output_retention_days (carnet/scheduler/retention.py).",
    ).tag(config=True)

    notebook_workers = Integer(
        2,
        help="Warm notebook workers kept at most (carnet/scheduler/notebook_workers.py): processes with "
        "papermill imported and a kernel pre-started, one per OS account that runs notebooks, so that a "
        "notebook run does not pay ~2 s of process and kernel start. The least recently used is stopped "
        "to make room. 0: every notebook run starts a process of its own.",
    ).tag(config=True)

    notebook_worker_idle_seconds = Float(
        600,
        help="Seconds a warm notebook worker may stay unused before it is stopped (with its kernel).",
    ).tag(config=True)

    report_prerender_seconds = Float(
        help="Seconds before a report job's fire time at which the scheduler asks the Viewer to pre-render "
        "the page its run will print (carnet/scheduler/kinds/report.py prerender_report_pages): the PDF is "
        "then printed from a ready page instead of a cold render. The page waits at most the Viewer's "
        "viewer_pool_ttl and is not used if the data changed meanwhile; the Viewer's render pool must be on "
        "(viewer_pool_size > 0). 0 turns it off. Environment: CARNET_REPORT_PRERENDER_SECONDS. Default: 90 "
        "(docs/SCHEDULER.md 'Pre-rendered report pages'; bench/RESULTS.md for what it saves).",
    ).tag(config=True)

    @default("report_prerender_seconds")
    def _default_report_prerender_seconds(self):
        return float(os.environ.get("CARNET_REPORT_PRERENDER_SECONDS", "90"))

    report_pages_held = Integer(
        help="Report pages the scheduler's own browser opens ahead of their fire time (with "
        "report_prerender_seconds) and holds, loaded and drawn, until their run prints them: the run then "
        "only prints (~0.3 s instead of the page's load and draw, ~5 s, after the Viewer's pre-render). "
        "Each held page keeps a browser page and a Viewer kernel for up to report_prerender_seconds; the "
        "report pages due beyond this number are pre-rendered by the Viewer instead. A held page is printed "
        "only if the app's version, the organization's data version and the owner's role and attributes "
        "are what they were when it was opened (else its run prints cold). 0: the Viewer pre-renders every "
        "page. Environment: CARNET_REPORT_PAGES_HELD. Default: 2.",
    ).tag(config=True)

    @default("report_pages_held")
    def _default_report_pages_held(self):
        return int(os.environ.get("CARNET_REPORT_PAGES_HELD", "2"))

    @validate("report_pages_held")
    def _validate_report_pages_held(self, proposal):
        if not 0 <= proposal["value"] <= 20:
            raise ValueError("SchedulerService.report_pages_held must be 0-20")
        return proposal["value"]

    _last_sweep = float("-inf")

    def tick(self, settings: CarnetSettings) -> bool:
        """One pass: enqueue due jobs, send due owner notices, run at most one queued run. True if a run
        was executed."""
        for run_id in enqueue_due_runs(settings.db_url):
            log.info("Queued scheduled run %s", run_id)
        if self.report_prerender_seconds > 0 and self.printer is not None:
            try:
                pdf = self.printer.settings
                lead = self.report_prerender_seconds
                prerender_report_pages(
                    settings,
                    pdf.viewer_url,
                    lead,
                    pdf.time_budget,
                    printer=self.printer,
                    hold=self.report_pages_held,
                )
            except Exception:
                log.exception("Pre-rendering report pages failed; their runs render cold")
        try:
            deliver_due_notices(settings)
        except Exception:
            log.exception("Sending owner notices failed; retried at the next tick")
        if time.monotonic() - self._last_sweep >= self.retention_sweep_interval:
            self._last_sweep = time.monotonic()
            try:
                sweep_outputs(settings)
            except Exception:
                log.exception("Removing old run outputs failed; tried again later")
        # Nothing runs between two ticks: a run still 'running' lost its end (the database was unreachable
        # when it finished, or it was killed): it is queued again or failed.
        recovered = recover_interrupted_runs(settings)
        if recovered:
            log.warning("Recovered %s interrupted run(s)", recovered)
        if self.worker_pool is not None:
            self.worker_pool.stop_idle()
        run_id = claim_next_run(settings.db_url)
        if run_id is None:
            return False
        status = JobExecutor(
            settings,
            run_id,
            cell_timeout=self.cell_timeout,
            printer=self.printer,
            notebook_workers=self.worker_pool,
        ).run()
        log.info("Run %s finished: %s", run_id, status.value)
        return True

    printer = None  # the process's one PDF browser (viewer_pdf.py), made at start
    worker_pool = None  # the warm notebook workers (notebook_workers.py), made at start

    def start(self):
        settings = CarnetSettings(parent=self)
        self.printer = ViewerPrinter(settings.chromium_path, ViewerPdfSettings(parent=self))
        if self.notebook_workers > 0:
            self.worker_pool = NotebookWorkerPool(self.notebook_workers, self.notebook_worker_idle_seconds)
        upgrade(settings.db_url)
        # Every job kind (built-in and from the carnet.job_kinds entry points) is loaded before the first
        # run: a broken plugin shows at start, and no run pays for the imports.
        log.info("Job kinds: %s", ", ".join(sorted(kinds())))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        log.info("Carnet scheduler started (poll every %ss)", self.poll_interval)
        lease = LeaseKeeper(settings.db_url, self.lease_seconds, stop)
        try:
            while lease.acquire():
                self.run_while_held(settings, lease, stop)
                if self.worker_pool is not None:  # the lease is lost: no runs here until it is back
                    self.worker_pool.close()
        finally:
            lease.release()
            self.printer.close()
            if self.worker_pool is not None:  # SIGTERM ends the loop above: no worker or kernel outlives us
                self.worker_pool.close()

    def run_while_held(self, settings: CarnetSettings, lease: LeaseKeeper, stop: threading.Event) -> None:
        while not stop.is_set() and lease.held:
            try:
                busy = self.tick(settings)
            except Exception:
                log.exception("Scheduler tick failed")
                busy = False
            if not busy:
                self.idle(stop)

    def idle(self, stop: threading.Event) -> None:
        """Waits a poll interval (less if stopped); pages held by the printer go on loading meanwhile."""
        if self.printer is None or not self.printer.pages_ahead:
            stop.wait(self.poll_interval)
            return
        end = time.monotonic() + self.poll_interval
        while not stop.is_set() and (left := end - time.monotonic()) > 0:
            self.printer.pump(min(left, 0.25))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    app = SchedulerService.instance()
    app.initialize(argv)
    app.start()
