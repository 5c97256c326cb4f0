"""Idle Viewer kernels are shut down (extension/viewer_config.py: CARNET_VIEWER_CULL_IDLE, jupyter_server's
culler): a page left without its websocket loses its kernel; a page whose websocket is open keeps it. On a
stack of its own with a short idle time (the pool off, so no pre-rendered kernel joins in)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from bench.viewer_support import kernel_id_of
from tests.api_support import auth
from tests.helpers import CarnetStack, hub_login, make_hub_token, wait_until

VIEWER = "viewer@acme.example"
IDLE, INTERVAL = 4, 1


@pytest.fixture(scope="module")
def culling_stack(smtp_server):
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-cull-stack-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - kernels' accounts traverse it
    env = {
        "CARNET_VIEWER_POOL_SIZE": "0",
        "CARNET_VIEWER_CULL_IDLE": str(IDLE),
        "CARNET_VIEWER_CULL_INTERVAL": str(INTERVAL),
    }
    stack = CarnetStack(data_dir, smtp=smtp_server, env=env)
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def culled(stack, kernel: str) -> bool:
    return any("Culling" in line and kernel in line for line in stack.log_tail(2000).splitlines())


async def hold_open(url: str, headers: dict, seconds: float) -> None:
    """A page's websocket, open (and quiet) for ``seconds``."""
    connection = await websocket_connect(HTTPRequest(url, headers=headers, request_timeout=30))
    try:
        await asyncio.sleep(seconds)
    finally:
        connection.close()


def test_an_idle_kernel_without_its_page_is_culled_and_one_with_its_page_is_kept(culling_stack):
    stack = culling_stack
    browser = hub_login(stack.url, VIEWER, stack.passwords[VIEWER])
    headers = auth(make_hub_token(stack.url, browser, VIEWER))
    url = f"{stack.url}/services/carnet-viewer/apps/{stack.app_id}"
    left = kernel_id_of(browser.get(url, timeout=120).text)
    kept = kernel_id_of(browser.get(url, timeout=120).text)
    ws = f"ws://127.0.0.1:{stack.ports['HUB']}/services/carnet-viewer/api/kernels/{kept}/channels"
    started = time.monotonic()
    # The second page stays connected (quiet) for several idle periods while the first is left alone.
    asyncio.run(hold_open(ws, headers, IDLE * 3 + INTERVAL * 2))
    assert culled(stack, left), stack.log_tail(40)
    assert not culled(stack, kept)
    assert time.monotonic() - started < 60
    # Once its page is gone too, the second goes the same way.
    wait_until(lambda: culled(stack, kept), 60, what="the second kernel's culling")
