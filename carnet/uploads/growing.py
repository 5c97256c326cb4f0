"""A request body that is still arriving, read while it is written: so a big CSV load parses (and the
warehouse ingests) during the upload instead of after it.

The service's IO loop writes each piece of the body to a file and calls ``GrowingFile.wrote``; a load thread
reads the same file through ``GrowingFile.open()``, whose ``read``/``readline`` wait at the file's current end
until more is written, the body is complete (then they return what is left, like a plain file) or it failed.

A load holds its warehouse's write lock (loads of one organization take turns), so following a SLOW upload
would make the org's other loads wait for that client. The readers may therefore wait for data, in all, at
most as long as they have spent working since the body began (or ``wait_budget`` seconds, whichever is
more): following then at most doubles the time the load holds the lock compared with loading the arrived
file. Past that, ``BodyTooSlow`` is raised and the caller abandons the attempt (the load rolls back, no
history row) and loads the file once the whole body has arrived, as it always did.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

# What a loader may always spend waiting for the body, in all, before it gives up following it (more when
# it has worked longer than that: see above).
WAIT_BUDGET_SECONDS = 2.0


class BodyTooSlow(Exception):
    """The body arrives more slowly than the loader reads it: stop following it (the load waits for it)."""


class BodyFailed(Exception):
    """The body will never be complete: the client left, or it went over the size cap."""


class GrowingFile:
    """The writer's side (``wrote``, ``complete``, ``fail``) and the readers' (``open``, ``wait_for``)."""

    def __init__(self, path: Path, wait_budget: float = WAIT_BUDGET_SECONDS):
        self.path = path
        self.wait_budget = wait_budget
        self.waited = 0.0  # seconds readers spent waiting for data, in all
        self.started = time.monotonic()
        self._size = 0
        self._complete = False
        self._failed = False
        self._changed = threading.Condition()

    # -- the writer (the IO loop) --------------------------------------------------------------------------
    def wrote(self, size: int) -> None:
        """``size`` more bytes are on disk (flushed)."""
        with self._changed:
            self._size += size
            self._changed.notify_all()

    def complete(self) -> None:
        with self._changed:
            self._complete = True
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    # -- the readers --------------------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        return self._complete

    def wait_for(self, size: int) -> int:
        """Wait until ``size`` bytes are on disk or the body is complete; the bytes on disk then."""
        with self._changed:
            while True:
                if self._failed:
                    raise BodyFailed("the request body did not arrive whole")
                if self._size >= size or self._complete:
                    return self._size
                started = time.monotonic()
                worked = started - self.started - self.waited
                allowed = max(self.wait_budget, worked)
                if self.waited >= allowed:
                    raise BodyTooSlow(
                        f"the body arrives slowly: waited {self.waited:.1f} s for it, worked {worked:.1f} s"
                    )
                self._changed.wait(allowed - self.waited)
                self.waited += time.monotonic() - started

    def open(self) -> FollowingReader:
        return FollowingReader(self)


class FollowingReader:
    """A binary file reader (``read``, ``readline``, ``tell``, ``seek``) of a GrowingFile that waits for
    the bytes it is asked for; a context manager like ``open(path, "rb")``."""

    def __init__(self, growing: GrowingFile):
        self.growing = growing
        self._raw = open(growing.path, "rb")  # noqa: SIM115 - closed by close()/__exit__

    def read(self, size: int) -> bytes:
        self.growing.wait_for(self._raw.tell() + size)
        return self._raw.read(size)

    def readline(self) -> bytes:
        line = b""
        while True:
            available = self.growing.wait_for(self._raw.tell() + 1)
            line += self._raw.readline(max(available - self._raw.tell(), 0))
            if line.endswith(b"\n") or self.growing.is_complete and self._raw.tell() >= available:
                return line

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int) -> None:
        self._raw.seek(offset)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> FollowingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
