"""Exactly one active scheduler: a lease row in the platform database.

Every scheduler process tries to take the lease (``LeaseKeeper.acquire``); the one holding an unexpired row
runs jobs, the others wait and try again. The holder renews it from a thread every ``ttl / 3`` seconds, so
a long run never lets it lapse; a holder that stops renewing (killed, frozen, cut off from the database)
loses it after ``ttl`` seconds and another instance takes over. Taking and renewing are one conditional
UPDATE (``WHERE holder = me OR expires_at < now``), which the database serialises: two instances asking at
the same moment cannot both win (PostgreSQL and MariaDB re-check the condition on the row they waited for;
SQLite writes one at a time). A holder that finds the lease taken by someone else stops running jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from carnet.db import session_scope
from carnet.db.models import SchedulerLease, utcnow

log = logging.getLogger("carnet.scheduler")
LEASE_NAME = "scheduler"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take_lease(db_url: str, holder: str, ttl: float, now=None) -> bool:
    """Take or renew the lease for ``ttl`` seconds; False when another holder's lease is still valid."""
    now = now or utcnow()
    until = now + timedelta(seconds=ttl)
    with session_scope(db_url) as session:
        changed = session.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == LEASE_NAME,
                or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now),
            )
            .values(holder=holder, expires_at=until)
        ).rowcount
        if changed:
            return True
        if session.get(SchedulerLease, LEASE_NAME) is not None:
            return False
    try:  # no row yet: the first insert wins, a concurrent one fails on the primary key
        with session_scope(db_url) as session:
            session.add(SchedulerLease(name=LEASE_NAME, holder=holder, expires_at=until))
        return True
    except IntegrityError:
        return False


def give_up_lease(db_url: str, holder: str) -> None:
    """At a clean stop: the next instance need not wait for the lease to expire."""
    with session_scope(db_url) as session:
        session.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == LEASE_NAME, SchedulerLease.holder == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


class LeaseKeeper:
    """Holds the lease for one scheduler process: ``acquire`` (blocking until held or stopped), then
    ``held`` says whether it still is (renewed in the background)."""

    def __init__(self, db_url: str, ttl: float, stop: threading.Event):
        self.db_url, self.ttl, self.stop = db_url, ttl, stop
        self.holder = holder_id()
        self._held = threading.Event()
        self._renewer: threading.Thread | None = None
        self._valid_until = 0.0  # time.monotonic() when the last renewal runs out

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def acquire(self) -> bool:
        waiting_said = False
        while not self.stop.is_set():
            if self._try():
                log.info("Scheduler %s holds the lease: running jobs", self.holder)
                self._renewer = threading.Thread(target=self._renew, name="carnet-lease", daemon=True)
                self._renewer.start()
                return True
            if not waiting_said:
                log.info("Scheduler %s waits: another instance has the lease", self.holder)
                waiting_said = True
            self.stop.wait(max(self.ttl / 3, 0.2))
        return False

    def _try(self) -> bool:
        """Take or renew. A database error is not a loss while the last renewal still runs (a busy SQLite
        file, a blip): the lease is ours until ``_valid_until``, minus a margin for clocks and the wait."""
        asked = time.monotonic()
        try:
            held = take_lease(self.db_url, self.holder, self.ttl)
        except Exception:  # noqa: BLE001 - said in the log; the lease lapses if this lasts
            log.warning("Could not reach the database for the scheduler lease", exc_info=True)
            held = self._held.is_set() and time.monotonic() < self._valid_until - self.ttl / 3
        else:
            if held:
                self._valid_until = asked + self.ttl
        if held:
            self._held.set()
        else:
            self._held.clear()
        return held

    def _renew(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            if not self._try():
                log.warning("Scheduler %s lost the lease: it stops running jobs", self.holder)
                return

    def release(self) -> None:
        if self._held.is_set():
            self._held.clear()
            give_up_lease(self.db_url, self.holder)
