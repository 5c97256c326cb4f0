"""Snapshots: the last rendered page of an app served at once to a viewer with no page ready, while a live
kernel is rendered for them in the background.

The render pool (render_pool.py) keeps pages per person; a burst of viewers (the morning's dashboard) would
each wait for a cold render. Each pre-render therefore also leaves a snapshot: its page's HTML and its
widgets' states, read from the kernel the way a browser reads them (ipywidgets' control comm,
``request_states`` -> ``update_states``). A viewer without a pooled page of their own gets the snapshot of the
same app version, data, filters and ROW CONTEXT (the person left out of the key), rendered by Voila's own
front end: its kernel websocket is answered by ``ReplayConnection``, which replays the recorded states (so
widgets, Output widgets and charts show exactly as they were) and does nothing else. The page says it is a
snapshot, asks ``carnet/live/<id>`` until the pool holds this person's own page, and reloads into it.

Sharing across people is safe for the rows (equal row contexts read equal rows, see render_pool.py), and a
snapshot is not shared when the page or its widgets hold the person's token or email (an app that greets
its viewer), and people share only with people of the same role (what /me tells besides the email);
an app that shows who is looking by other means (an id) would show the first viewer's to the others of the
same row context and role, see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from queue import Empty

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    serialize_binary_message,
)
from jupyter_server.services.kernels.handlers import KernelHandler
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from tornado import web

log = logging.getLogger("carnet.viewer.snapshots")
CONTROL_TARGET = "jupyter.widget.control"
CAPTURE_TIMEOUT = 15.0
MAX_SNAPSHOTS = 200  # pages kept (LRU); one per app version x data x filters x row context
SESSION_TTL = 3600.0  # a snapshot page's replay stays answerable this long
_CONFIG = re.compile(
    r'(<script id="jupyter-config-data" type="application/json">)(.*?)(</script>)', re.DOTALL
)
KERNEL_INFO = {
    "status": "ok",
    "protocol_version": "5.3",
    "implementation": "carnet-snapshot",
    "implementation_version": "1",
    "language_info": {
        "name": "python",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
    },
    "banner": "",
    "help_links": [],
}


def shared_key(key, role: str):
    """A snapshot's key: the pool's without the person, with their role (what /me tells besides the email,
    which ``shareable`` looks for)."""
    return replace(key, person=0), role


@dataclass
class Snapshot:
    html: str
    kernel_id: str  # the pre-render's kernel, named in ``html``
    states: dict  # the control comm's update_states data
    buffers: list[bytes]
    made: float = field(default_factory=time.monotonic)


@dataclass
class SnapshotSession:
    """One snapshot page handed to one person: its fake kernel id answers only them."""

    snapshot: Snapshot
    owner: str
    person_key: object  # the pool key of the person's own page (carnet/live/<id> asks the pool for it)
    made: float = field(default_factory=time.monotonic)


class SnapshotStore:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.snapshots: dict = {}  # shared key -> Snapshot (insertion order = age)
        self.sessions: dict[str, SnapshotSession] = {}

    def put(self, key, snapshot: Snapshot) -> None:
        self.snapshots.pop(key, None)
        self.snapshots[key] = snapshot
        while len(self.snapshots) > MAX_SNAPSHOTS:
            self.snapshots.pop(next(iter(self.snapshots)))

    def get(self, key) -> Snapshot | None:
        snapshot = self.snapshots.get(key)
        if snapshot is not None and time.monotonic() - snapshot.made > self.ttl:
            self.snapshots.pop(key, None)
            return None
        return snapshot

    def open(self, snapshot: Snapshot, owner: str, person_key, live_url: str) -> tuple[str, str]:
        """(the page for ``owner``, its fake kernel id)."""
        self._expire()
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = SnapshotSession(snapshot, owner, person_key)
        html = snapshot.html.replace(snapshot.kernel_id, session_id)
        return _mark_page(html, live_url.format(session_id=session_id)), session_id

    def session(self, session_id: str | None) -> SnapshotSession | None:
        return self.sessions.get(session_id) if session_id else None

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id in [s for s, v in self.sessions.items() if now - v.made > SESSION_TTL]:
            self.sessions.pop(session_id, None)


def _mark_page(html: str, live_url: str) -> str:
    """The page's front-end configuration says it is a snapshot and where to ask for the live page."""

    def mark(match):
        config = json.loads(match.group(2))
        config["carnetSnapshot"] = {"live": live_url}
        text = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return match.group(1) + text + match.group(3)

    return _CONFIG.sub(mark, html, count=1)


def shareable(html: str, states: dict, buffers: list[bytes], session: dict) -> bool:
    """False when the page or its widgets hold who it was rendered for (token, email)."""
    user = session.get("user") or {}
    marks = [session.get("token"), user.get("email")]
    marks = [m for m in marks if isinstance(m, str) and len(m) >= 3]
    text = html + json.dumps(states)
    if any(mark in text for mark in marks):
        return False
    return not any(mark.encode() in buffer for mark in marks for buffer in buffers)


async def capture_states(kernel_manager, kernel_id: str) -> tuple[dict, list[bytes]]:
    """The widget states of a kernel, as a browser asks for them (ipywidgets' control comm)."""
    client = kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await ensure_async(client.wait_for_ready(timeout=CAPTURE_TIMEOUT))
        comm_id = uuid.uuid4().hex
        session = client.session
        client.shell_channel.send(
            session.msg(
                "comm_open",
                {"comm_id": comm_id, "target_name": CONTROL_TARGET, "data": {}},
                metadata={"version": "1.0.0"},  # ipywidgets 8's control protocol
            )
        )
        client.shell_channel.send(
            session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}})
        )
        deadline = time.monotonic() + CAPTURE_TIMEOUT
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"kernel {kernel_id} did not send its widget states")
                try:
                    msg = await ensure_async(client.get_iopub_msg(timeout=remaining))
                except Empty:
                    continue  # the deadline check above says when to give up
                content = msg.get("content", {})
                if msg["msg_type"] == "comm_msg" and content.get("comm_id") == comm_id:
                    data = content.get("data") or {}
                    if data.get("method") == "update_states":
                        return data, [bytes(b) for b in msg.get("buffers") or []]
        finally:
            client.shell_channel.send(session.msg("comm_close", {"comm_id": comm_id, "data": {}}))
    finally:
        client.stop_channels()


class ReplayConnection:
    """A snapshot page's kernel websocket: answers kernel_info, and the widget manager's request for the
    widgets' states with the recorded ones; everything else (code, widget changes) is dropped. Jupyter's
    legacy websocket protocol (JSON text frames; binary frames for messages with buffers)."""

    kernel_ws_protocol = ""  # the legacy protocol (select_subprotocol picks none)

    def __init__(self, session: SnapshotSession, websocket_handler, client_session: str):
        self.snapshot = session.snapshot
        self.handler = websocket_handler
        self.client_session = client_session
        self.session_id = uuid.uuid4().hex
        self.controls: set[str] = set()

    async def connect(self) -> None:
        self._send("iopub", "status", {"execution_state": "idle"}, parent={})

    def disconnect(self) -> None:
        self.controls.clear()

    def handle_incoming_message(self, ws_msg) -> None:
        try:
            msg = json.loads(ws_msg) if isinstance(ws_msg, str) else deserialize_binary_message(ws_msg)
            header = msg["header"]
            msg_type = header["msg_type"]
        except (ValueError, KeyError, TypeError):
            return  # not a kernel message: nothing to answer
        content = msg.get("content") or {}
        self._send("iopub", "status", {"execution_state": "busy"}, parent=header)
        if msg_type == "kernel_info_request":
            self._send("shell", "kernel_info_reply", KERNEL_INFO, parent=header)
        elif msg_type == "comm_info_request":
            self._send("shell", "comm_info_reply", {"status": "ok", "comms": {}}, parent=header)
        elif msg_type == "comm_open" and content.get("target_name") == CONTROL_TARGET:
            self.controls.add(content.get("comm_id"))
        elif (
            msg_type == "comm_msg"
            and content.get("comm_id") in self.controls
            and (content.get("data") or {}).get("method") == "request_states"
        ):
            self._send(
                "iopub",
                "comm_msg",
                {"comm_id": content["comm_id"], "data": self.snapshot.states},
                parent=header,
                buffers=self.snapshot.buffers,
            )
        self._send("iopub", "status", {"execution_state": "idle"}, parent=header)

    def _send(self, channel: str, msg_type: str, content: dict, parent: dict, buffers=()) -> None:
        msg = {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "carnet",
                "session": self.session_id,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "version": "5.3",
            },
            "parent_header": parent,
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": list(buffers),
        }
        try:
            if buffers:
                self.handler.write_message(serialize_binary_message(msg), binary=True)
            else:
                msg.pop("buffers")
                self.handler.write_message(json.dumps(msg))
        except Exception:  # noqa: BLE001 - a closed websocket: the page is gone
            log.debug("snapshot websocket closed", exc_info=True)


class ViewerKernelWebsocketHandler(KernelWebsocketHandler):
    """Jupyter's kernel websocket, and for a snapshot page's fake kernel id, the replay (mounted before the
    server's own handler of the same route)."""

    def _snapshot_session(self) -> SnapshotSession | None:
        store = self.settings.get("carnet_snapshots")
        return store.session(self.kernel_id) if store is not None else None

    async def pre_get(self):
        session = self._snapshot_session()
        if session is None:
            return await super().pre_get()
        user = self.current_user
        if user is None or getattr(user, "username", None) != session.owner:
            raise web.HTTPError(403)
        self.connection = ReplayConnection(session, self, self.get_argument("session_id", ""))

    async def open(self, kernel_id):
        if isinstance(self.connection, ReplayConnection):
            super(KernelWebsocketHandler, self).open()  # the ping loop (WebSocketMixin)
            await self.connection.connect()
            return
        await super().open(kernel_id)


class ViewerKernelHandler(KernelHandler):
    """``api/kernels/<id>``: Jupyter's, and for a snapshot page's fake kernel its model (the widget manager
    reads it before it connects)."""

    @web.authenticated
    async def get(self, kernel_id):
        store = self.settings.get("carnet_snapshots")
        session = store.session(kernel_id) if store is not None else None
        if session is None:
            return await super().get(kernel_id)
        if getattr(self.current_user, "username", None) != session.owner:
            raise web.HTTPError(403)
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "id": kernel_id,
                    "name": "python3",
                    "last_activity": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                    "execution_state": "idle",
                    "connections": 1,
                }
            )
        )


class LiveHandler(JupyterHandler):
    """``carnet/live/<snapshot id>``: ``{"ready": true}`` once the pool holds the person's own page."""

    @web.authenticated
    async def get(self, session_id):
        store = self.settings.get("carnet_snapshots")
        session = store.session(session_id) if store is not None else None
        if session is None or getattr(self.current_user, "username", None) != session.owner:
            raise web.HTTPError(404)
        pool = self.settings.get("carnet_render_pool")
        ready = pool is not None and pool.pooled(session.person_key) > 0
        self.set_header("Cache-Control", "no-store")
        self.finish({"ready": ready})


async def record_snapshot(store: SnapshotStore, kernel_manager, key, kernel_id: str, html: str, session):
    """After a pre-render: the page and its widgets' states, kept for others of the same row context."""
    server_log = getattr(kernel_manager, "log", log)  # the Viewer's own log (the stack's log file)
    try:
        states, buffers = await capture_states(kernel_manager, kernel_id)
    except Exception as error:  # noqa: BLE001 - a snapshot is an extra: the pooled page stands without it
        server_log.warning("No snapshot of app %s: %r", key.app_id, error)
        return
    if not shareable(html, states, buffers, session):
        server_log.info("App %s shows who is looking: its pages are not shared as snapshots", key.app_id)
        return
    role = (session.get("user") or {}).get("role", "")
    store.put(shared_key(key, role), Snapshot(html, kernel_id, states, buffers))
