"""Loggers that write to the kernel process's own stderr (the Viewer's log), never to the page.

In a kernel, ipykernel forwards ``sys.stderr`` and also file descriptor 2 (so ``sys.__stderr__`` too) to
the browser as stream output; ``sys.stderr.fileno()`` is its copy of the real stderr. Details of failures
(tracebacks, paths) go there; the page gets a generic message.
"""

from __future__ import annotations

import io
import logging
import os
import sys


class ProcessStderrHandler(logging.Handler):
    """Writes each record to the process's real stderr, found at each record (a test's capture of fd 2
    may change between records)."""

    def emit(self, record):
        try:
            fd = sys.stderr.fileno()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            fd = 2
        try:
            os.write(fd, (self.format(record) + "\n").encode(errors="replace"))
        except OSError:
            self.handleError(record)


def process_logger(name: str, fmt: str | None = None) -> logging.Logger:
    """``logging.getLogger(name)`` writing only to the process's real stderr (set up once)."""
    log = logging.getLogger(name)
    if not any(isinstance(h, ProcessStderrHandler) for h in log.handlers):
        handler = ProcessStderrHandler()
        if fmt:
            handler.setFormatter(logging.Formatter(fmt))
        log.addHandler(handler)
        log.propagate = False
    return log
