"""Whose kernel this is, changed after start: the Viewer's render pool (carnet/extension/render_pool.py)
executes a kernel ahead of time and hands it to the next viewer with the same data; it then calls
``use_token`` through its own kernel client (never through the viewer's websocket, which drops code) so
every later read of the app is made with that viewer's Carnet token."""

from __future__ import annotations

import os

from carnet import client


def use_token(token: str) -> int:
    """Makes ``token`` the kernel's Carnet token: the environment and every client made from it (also ones the
    notebook keeps, e.g. a ``carnet.sources[...]`` handle). Returns how many clients were updated."""
    if not isinstance(token, str) or not token.startswith("ck_"):
        raise ValueError("not a Carnet token")
    os.environ["CARNET_TOKEN"] = token
    updated = 0
    for api in list(client._ENV_CLIENTS):
        api.token = token
        api._http.headers["Authorization"] = f"Bearer {token}"
        updated += 1
    return updated
