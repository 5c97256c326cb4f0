"""Warm notebook workers: the scheduler's pool of ``carnet.scheduler.notebook_worker`` processes.

A cold notebook run starts a Python process (papermill's imports) and a kernel, ~2 s before the notebook's
first cell. A warm worker has papermill imported and a kernel started before the run comes, so a run only
costs the hand-over. Workers are keyed by the OS account runs execute as (uid/gid; None when accounts are
off): a worker runs as that account, exactly as a cold run's process would, and only serves that account's
runs. Each run gets a fresh kernel (the worker starts the next one after a run); the worker's process is
what is reused.

Limits: at most ``size`` workers at once (the least recently used idle one is stopped to make room), and a
worker idle for ``idle_seconds`` is stopped (``stop_idle``, called on every scheduler tick). A worker past
its run's time limit, dead, or answering garbage is killed and dropped; the next run starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("carnet.scheduler")

# What a worker's environment must never hold: the variables of one run (set inside its kernel at hand-over).
RUN_VARIABLES = ("CARNET_TOKEN", "CARNET_JOB_PARAMS", "CARNET_RUN_DIR")
STOP_GRACE_SECONDS = 5


class WorkerTimedOut(Exception):
    """The worker did not answer before the run's deadline (it has been killed)."""


class WorkerGone(Exception):
    """The worker died or answered something that is not an answer (it has been killed); ``detail`` is the
    last line it wrote on stderr, as a crashed cold run would report."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotebookWorker:
    """One worker process, talked to in JSON lines (see notebook_worker.py)."""

    def __init__(self, key, env: dict, popen_args: dict):
        self.key = key
        self.env = env
        # stderr of the worker and of its kernels (their fd 1 too); each run keeps its own slice of it.
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.process = subprocess.Popen(  # noqa: S603 - our own module, arguments are ours
            [sys.executable, "-m", "carnet.scheduler.notebook_worker"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            start_new_session=True,
            **popen_args,
        )
        self.kernel_pid: int | None = None
        self.ready = False
        self.last_used = time.monotonic()
        self.runs = 0
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_size(self) -> int:
        return os.fstat(self.log_file.fileno()).st_size

    def log_since(self, offset: int) -> str:
        # pread: the worker writes through the same open file, whose offset must not move.
        size = self.log_size()
        return os.pread(self.log_file.fileno(), max(size - offset, 0), offset).decode(errors="replace")

    def read_answer(self, deadline: float) -> dict:
        """The worker's next JSON line; WorkerTimedOut past ``deadline``, WorkerGone at end of output or on
        anything but a JSON object."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimedOut
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerGone("the notebook worker exited")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise WorkerGone(f"the notebook worker answered garbage: {line[:200]!r}")
        return answer

    def wait_ready(self, deadline: float) -> None:
        if self.ready:
            return
        answer = self.read_answer(deadline)
        if answer.get("ready") is not True:
            raise WorkerGone(f"the notebook worker answered garbage: {answer!r:.200}")
        self.kernel_pid = answer.get("kernel_pid")
        self.ready = True

    def run(self, request: dict, deadline: float) -> dict:
        """Hand one run over; its answer (``ok`` or ``error``)."""
        self.ready = False
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            raise WorkerGone("the notebook worker exited") from None
        self.runs += 1
        answer = self.read_answer(deadline)
        self.kernel_pid = None  # the worker shut the run's kernel down before answering
        if not (answer.get("ok") is True or isinstance(answer.get("error"), str)):
            raise WorkerGone(f"the notebook worker answered garbage: {answer!r:.200}")
        return answer

    def kill(self) -> None:
        """SIGKILL the worker's process group and its kernel's (a kernel has a session of its own)."""
        for group in (self.process.pid, self.kernel_pid):
            if group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """End of input: the worker shuts its kernel down and exits; killed if it does not."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.log_file.close()


class NotebookWorkerPool:
    """The scheduler's warm workers, one per OS account at most ``size`` at once (LRU)."""

    def __init__(self, size: int = 2, idle_seconds: float = 600):
        self.size = size
        self.idle_seconds = idle_seconds
        self._idle: OrderedDict = OrderedDict()  # key -> idle worker, least recently used first
        self._busy: set[NotebookWorker] = set()
        self._lock = threading.Lock()

    def workers(self) -> list[NotebookWorker]:
        with self._lock:
            return [*self._idle.values(), *self._busy]

    def take(self, key, env: dict, popen_args: dict, deadline: float) -> NotebookWorker:
        """A ready worker for ``key`` (its kernel started): the idle one, else a new one. A worker that died
        while idle is replaced (once); none of the run has happened yet."""
        for attempt in range(2):
            worker = self._checkout(key, env, popen_args)
            try:
                worker.wait_ready(deadline)
                return worker
            except WorkerGone as exc:
                detail = self.last_error_line(worker, 0, exc.detail)
                self.discard(worker)
                if attempt:
                    raise WorkerGone(detail) from None
                log.warning("Notebook worker %s gone before its run (%s); starting another", worker.pid, exc)
            except WorkerTimedOut:
                self.discard(worker)
                raise
        raise AssertionError("unreachable")

    def _checkout(self, key, env: dict, popen_args: dict) -> NotebookWorker:
        stale = []
        with self._lock:
            worker = self._idle.pop(key, None)
            if worker is not None and (not worker.alive() or worker.env != env):
                stale.append(worker)
                worker = None
            if worker is None:
                while self._idle and len(self._idle) + len(self._busy) >= self.size:
                    stale.append(self._idle.popitem(last=False)[1])  # the least recently used
                worker = NotebookWorker(key, env, popen_args)
                log.info("Started notebook worker %s for account %s", worker.pid, key)
            self._busy.add(worker)
        for old in stale:
            old.stop()
        return worker

    def release(self, worker: NotebookWorker) -> None:
        """A worker that answered its run goes back to the pool (it is starting its next kernel)."""
        extra = None
        with self._lock:
            self._busy.discard(worker)
            worker.last_used = time.monotonic()
            if worker.key in self._idle or len(self._idle) + len(self._busy) >= self.size:
                extra = worker  # another run of the account or the limit took its place meanwhile
            else:
                self._idle[worker.key] = worker
        if extra is not None:
            extra.stop()

    def discard(self, worker: NotebookWorker) -> None:
        """Kill a worker that failed its run (timed out, died, answered garbage)."""
        with self._lock:
            self._busy.discard(worker)
            if self._idle.get(worker.key) is worker:
                del self._idle[worker.key]
        worker.kill()

    @staticmethod
    def last_error_line(worker: NotebookWorker, offset: int, fallback: str) -> str:
        """The last line the worker wrote on stderr since ``offset`` (a crash's traceback ends there)."""
        with contextlib.suppress(ValueError, OSError):
            lines = worker.log_since(offset).strip().splitlines()
            if lines:
                return lines[-1]
        return fallback

    def stop_idle(self) -> int:
        """Stop the workers idle longer than ``idle_seconds``; how many were stopped."""
        now = time.monotonic()
        with self._lock:
            expired = [key for key, w in self._idle.items() if now - w.last_used >= self.idle_seconds]
            stopped = [self._idle.pop(key) for key in expired]
        for worker in stopped:
            log.info("Stopping notebook worker %s (idle)", worker.pid)
            worker.stop()
        return len(stopped)

    def close(self) -> None:
        """Stop every worker (the scheduler stops)."""
        with self._lock:
            workers = [*self._idle.values(), *self._busy]
            self._idle.clear()
            self._busy.clear()
        for worker in workers:
            worker.stop()


def worker_folder(env: dict, as_owner: dict) -> Path:
    """A neutral working directory for a worker: the account's home, else the temporary folder."""
    if as_owner and env.get("HOME"):
        return Path(env["HOME"])
    return Path(tempfile.gettempdir())
