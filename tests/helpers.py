"""Test helpers that drive real processes: the Carnet stack under JupyterHub, an SMTP server, kernels."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import requests

from carnet.demo import seed_demo
from carnet.secret_files import ensure_hub_secrets
from carnet.settings import CarnetSettings

VENV_BIN = Path(sys.executable).parent


# Listening ports for the tests' servers, below Linux's ephemeral range (32768-60999): a port the kernel
# hands out for "port 0" is also handed to outgoing connections, and one of the suite's thousands of
# connections took a stack's Hub port between its choice and its bind once ("Address already in use": every
# test of that worker then errored).
LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range (random, so two xdist workers
    choosing at once do not pick the same one)."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)  # noqa: S311 - not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-31999")


class GaveUp(Exception):
    """Raised by a wait_until predicate when waiting longer cannot help."""


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except GaveUp:
            raise
        except Exception as exc:  # the thing we wait for may not answer yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"Timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


class SmtpCatcher:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it receives."""

    def __init__(self):
        self.port = free_port()
        self.messages: list[email.message.Message] = []
        self._controller = None

    def start(self):
        from aiosmtpd.controller import Controller

        catcher = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                message = email.message_from_bytes(envelope.content)
                message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                catcher.messages.append(message)
                return "250 Message accepted for delivery"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self):
        if self._controller:
            self._controller.stop()


class CarnetStack:
    """JupyterHub (+ proxy, Carnet service, Viewer, scheduler) started with ``carnet hub``."""

    def __init__(self, data_dir: Path, smtp: SmtpCatcher | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.ports = {name: free_port() for name in ("HUB", "HUB_API", "PROXY_API", "SERVICE", "VIEWER")}
        self.url = f"http://127.0.0.1:{self.ports['HUB']}"
        # The one loopback port the service may fetch from (REST sources): a test serves its stand-in API
        # there while it runs; every other loopback port stays refused.
        self.fetch_port = free_port()
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("CARNET_") or k.startswith("CARNET_TEST")
            },
            "CARNET_DATA_DIR": str(self.data_dir),
            # This xdist worker's OS accounts (tests/conftest.py pytest_configure), else the default.
            "CARNET_OS_ACCOUNT_PREFIX": os.environ.get("CARNET_OS_ACCOUNT_PREFIX") or "carnet-u",
            "CARNET_SCHEDULER_POLL": "0.5",
            # Cheap password hashes (bcrypt cost 4, not 12): stacks seed, create and sign in people all the
            # time; tests/test_units.py checks the production cost.
            "CARNET_PASSWORD_HASH_ROUNDS": "4",
            "CARNET_LOCKOUT_SECONDS": "3",  # short sign-in locks (tests/test_audit.py waits them out)
            "CARNET_FETCH_ALLOW_HOSTS": f"127.0.0.1:{self.fetch_port}",
            # The test database servers (and the closed / silent ports the connection tests use); other
            # non-public addresses stay refused (tests/test_connections.py checks a few).
            "CARNET_SQL_ALLOW_HOSTS": "127.0.0.1",
            # No pre-rendered pages (each a background render + a kernel) unless a test turns them on
            # (tests/test_viewer_pool.py): other tests count kernels and tokens of their own renders.
            "CARNET_VIEWER_POOL_SIZE": "0",
            **{f"CARNET_{name}_PORT": str(port) for name, port in self.ports.items()},
        }
        if smtp:
            self.env.update(CARNET_SMTP_HOST="127.0.0.1", CARNET_SMTP_PORT=str(smtp.port))
        self.extra_env = dict(env or {})  # e.g. CARNET_WAREHOUSE_URL: a stack on the PostgreSQL warehouse
        self.env.update(self.extra_env)
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "stack.log"
        self.passwords: dict[str, str] = {}
        self.app_id = None
        self.dash_app_id = None  # the demo's carnet.dash dashboard
        self.job_id = None

    @property
    def settings(self) -> CarnetSettings:
        warehouse = {
            "warehouse_url": self.extra_env.get("CARNET_WAREHOUSE_URL", ""),
            "warehouse_schema_prefix": self.extra_env.get("CARNET_WAREHOUSE_SCHEMA_PREFIX", "carnet_org_"),
        }
        return CarnetSettings(
            data_dir=str(self.data_dir), db_url=f"sqlite:///{self.data_dir / 'carnet.sqlite'}", **warehouse
        )

    def seed(self):
        ensure_hub_secrets(self.data_dir)
        result = seed_demo(self.settings)
        self.passwords = result.created_passwords
        self.app_id, self.job_id = result.app_id, result.job_id
        self.dash_app_id = result.dash_app_id

    def start(self, timeout: float = 90):
        self.seed()
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the life of the process
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "carnet"),
                "--data-dir",
                str(self.data_dir),
                "hub",
                "--port",
                str(self.ports["HUB"]),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready():
            if self.process.poll() is not None:
                raise GaveUp(f"carnet hub exited with {self.process.returncode}:\n{self.log_tail()}")
            api = requests.get(f"{self.url}/services/carnet/api/v1/", timeout=2)
            viewer = requests.get(
                f"{self.url}/services/carnet-viewer/apps/1", timeout=2, allow_redirects=False
            )
            return api.status_code == 200 and viewer.status_code in (302, 303) and self._scheduler_started()

        try:
            wait_until(ready, timeout, what="the Carnet stack")
        except Exception:
            self.stop()
            raise

    def _scheduler_started(self) -> bool:
        return b"Carnet scheduler started" in self.log_path.read_bytes()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        # The proxy and spawned servers may outlive the Hub (STACK-NOTES): kill what the pid files name.
        for pid_file in (self.data_dir / "jupyterhub-proxy.pid",):
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        if self.process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        # The Hub's managed services (Viewer, scheduler, service) and Studio servers run in sessions of their
        # own: a Hub killed before it stopped them leaves them running, competing for the CPU with the
        # tests after. Whatever still belongs to this stack's data directory goes too.
        kill_processes_of(self.data_dir)
        keep = os.environ.get("CARNET_TEST_KEEP_LOGS")  # a folder: each stack's log is copied there
        if keep and self.log_path.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, Path(keep) / f"{self.data_dir.name}.log")


def kill_processes_of(data_dir: Path) -> list[int]:
    """SIGKILLs every process whose environment names ``data_dir`` as CARNET_DATA_DIR, whose command line
    names a path inside it (kernels: their connection files under the accounts' homes) or whose working
    directory is inside it; returns their pids. A kernel left running as ``carnet-u<N>`` would also keep
    the next stack from moving that account's home (usermod refuses while the account has processes)."""
    marker = f"CARNET_DATA_DIR={Path(data_dir)}".encode()
    root = str(Path(data_dir).resolve())
    inside = (root + "/").encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ or inside in command or cwd == root or cwd.startswith(root + "/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def hub_login(base_url: str, email: str, password: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base_url}/hub/login", timeout=10)
    response = session.post(
        f"{base_url}/hub/login",
        data={"username": email, "password": password, "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
        timeout=30,
        allow_redirects=False,
    )
    if response.status_code != 302:
        raise AssertionError(f"login of {email} failed: {response.status_code}")
    return session


def user_path(email: str) -> str:
    """The URL path of a user's server, quoted as the Hub quotes it ('@' stays)."""
    return f"/user/{quote(email, safe='@~')}/"


def hub_xsrf_headers(session: requests.Session) -> dict:
    return {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}


def make_hub_token(base_url: str, session: requests.Session, email: str) -> str:
    response = session.post(
        f"{base_url}/hub/api/users/{quote(email)}/tokens",
        json={"note": f"test {uuid.uuid4().hex[:6]}", "expires_in": 3600},
        headers=hub_xsrf_headers(session),
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["token"]


def start_server(
    base_url: str, session: requests.Session, email: str, timeout: float = 90
) -> requests.Response:
    """Ask the Hub for the user's server; returns the Hub's answer (403 for viewers) after it is ready."""
    user = quote(email)
    response = session.post(
        f"{base_url}/hub/api/users/{user}/server", json={}, headers=hub_xsrf_headers(session), timeout=60
    )
    if response.status_code not in (201, 202):
        return response

    def ready():
        model = session.get(f"{base_url}/hub/api/users/{user}", timeout=10).json()
        server = model.get("servers", {}).get("")
        return server and server.get("ready")

    wait_until(ready, timeout, what=f"the server of {email}")
    return response


def stop_server(base_url: str, session: requests.Session, email: str, timeout: float = 60) -> None:
    """Stop the user's server (if any) and wait until the Hub says it is gone."""
    user = quote(email)
    session.delete(f"{base_url}/hub/api/users/{user}/server", headers=hub_xsrf_headers(session), timeout=60)

    def gone():
        return not session.get(f"{base_url}/hub/api/users/{user}", timeout=10).json().get("servers")

    wait_until(gone, timeout, what=f"the server of {email} to stop")


async def _execute(ws_url: str, token: str, code: str, timeout: float) -> dict:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    connection = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    connection.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    result = {"stdout": "", "error": None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(connection.read_message(), timeout=deadline - time.monotonic())
        if raw is None:
            break
        message = json.loads(raw)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if kind == "stream" and message["content"]["name"] == "stdout":
            result["stdout"] += message["content"]["text"]
        elif kind == "error":
            result["error"] = f"{message['content']['ename']}: {message['content']['evalue']}"
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            break
    connection.close()
    return result


def execute_in_kernel(ws_url: str, token: str, code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a kernel over its websocket; returns its stdout and error, if any."""
    return asyncio.run(_execute(ws_url, token, code, timeout))
