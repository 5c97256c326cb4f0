"""Shared bench helpers: a seeded Carnet stack, tokens for direct API use, timing and the results table."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import Membership, TokenKind, User
from carnet.tokens import mint_token
from tests.helpers import CarnetStack


def start_stack(env: dict | None = None) -> CarnetStack:
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-bench-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - people's OS accounts traverse it to their homes
    stack = CarnetStack(data_dir, env=env)
    stack.start()
    return stack


def stop_stack(stack: CarnetStack) -> None:
    stack.stop()
    shutil.rmtree(stack.data_dir, ignore_errors=True)


def studio_token(settings, email: str = "studio@acme.example") -> str:
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == email))
        membership = session.scalar(select(Membership).where(Membership.user_id == user.id))
        return mint_token(
            session, kind=TokenKind.studio_kernel, user_id=user.id, org_id=membership.org_id, ttl_seconds=3600
        )


def timed(function, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return samples


def report(title: str, rows: list[tuple[str, list[float]]]) -> None:
    """Print median/min per row and each row's ratio to the first (the plain tool)."""
    baseline = statistics.median(rows[0][1])
    print(f"\n{title}")
    print(f"{'':42s} {'median s':>9s} {'min s':>8s} {'n':>3s} {'x plain':>8s}")
    for name, samples in rows:
        median = statistics.median(samples)
        print(f"{name:42s} {median:9.3f} {min(samples):8.3f} {len(samples):3d} {median / baseline:8.2f}")
