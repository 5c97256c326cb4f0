"""The demo app rendered by Carnet's Viewer (through the Hub's proxy, signed in as a viewer) vs plain
standalone Voila rendering the same notebook snapshot with the same data access."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from bench.common import report, start_stack, stop_stack, studio_token, timed
from carnet.db import session_scope
from carnet.db.models import App
from carnet.publishing import current_notebook_path
from tests.helpers import free_port, hub_login, wait_until

REPEAT = 8


def main():
    stack = start_stack()
    voila = None
    try:
        settings = stack.settings
        with session_scope(settings.db_url) as session:
            notebook = current_notebook_path(settings, session.get(App, stack.app_id))
        port = free_port()
        env = {
            **os.environ,
            "CARNET_API_URL": f"http://127.0.0.1:{stack.ports['SERVICE']}/services/carnet/",
            "CARNET_TOKEN": studio_token(settings),
        }
        voila = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "voila"),
                str(notebook),
                f"--port={port}",
                "--no-browser",
                "--Voila.ip=127.0.0.1",
                "--VoilaExecutor.timeout=120",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        plain_url = f"http://127.0.0.1:{port}/"
        wait_until(
            lambda: requests.get(plain_url + "api/kernelspecs", timeout=2).status_code < 500,
            60,
            what="plain voila",
        )
        session = hub_login(stack.url, "viewer@acme.example", stack.passwords["viewer@acme.example"])
        app_url = f"{stack.url}/services/carnet-viewer/apps/{stack.app_id}"
        assert session.get(app_url, timeout=120).status_code == 200  # OAuth handshake + warm imports

        def plain():
            response = requests.get(plain_url, timeout=120)
            assert response.status_code == 200 and "Norway" in response.text

        def carnet():
            response = session.get(app_url, timeout=120)
            assert response.status_code == 200 and "Norway" in response.text

        plain()
        report(
            "Demo app, full HTML (cold kernel per request, data via the Carnet API in both)",
            [
                ("plain Voila (standalone, same notebook)", timed(plain, REPEAT)),
                ("Carnet Viewer via Hub proxy", timed(carnet, REPEAT)),
            ],
        )
    finally:
        if voila:
            voila.terminate()
            voila.wait(timeout=20)
        stop_stack(stack)


if __name__ == "__main__":
    main()
