"""Talking to an app's widgets over its kernel websocket as a browser would (comm messages only): find the
widgets' comms, read a widget's state as the kernel holds it, send it an update."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def _message(msg_type: str, content: dict, session: str) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": "browser",
            "session": session,
            "msg_type": msg_type,
            "version": "5.3",
            "date": "2026-01-01T00:00:00Z",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "buffers": [],
        "channel": "shell",
    }


class WidgetWire:
    def __init__(self, url: str, token: str):
        self.url, self.token, self.session = url, token, uuid.uuid4().hex
        self.connection = None
        self.received: list[dict] = []

    async def __aenter__(self):
        request = HTTPRequest(self.url, headers={"Authorization": f"token {self.token}"})
        self.connection = await websocket_connect(request)
        return self

    async def __aexit__(self, *exc):
        self.connection.close()

    async def send(self, msg_type: str, content: dict) -> str:
        msg = _message(msg_type, content, self.session)
        await self.connection.write_message(json.dumps(msg))
        return msg["header"]["msg_id"]

    async def until(self, predicate, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(self.connection.read_message(), timeout=0.5)
            except TimeoutError:
                continue
            if raw is None:
                raise ConnectionError("the kernel websocket closed")
            msg = json.loads(raw)
            self.received.append(msg)
            if predicate(msg):
                return msg
        raise TimeoutError("no such message")

    async def idle_after(self, msg_id: str, timeout: float = 30) -> None:
        await self.until(
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id
                and m["header"]["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
            ),
            timeout,
        )

    async def comms(self) -> list[str]:
        msg_id = await self.send("comm_info_request", {"target_name": "jupyter.widget"})
        reply = await self.until(
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "comm_info_reply"
            )
        )
        return list(reply["content"]["comms"])

    async def state(self, comm_id: str) -> dict:
        """The widget's state as the kernel holds it (ipywidgets answers "request_state" with an update)."""
        msg_id = await self.send("comm_msg", {"comm_id": comm_id, "data": {"method": "request_state"}})
        answer = await self.until(
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id
                and m["header"]["msg_type"] == "comm_msg"
                and m["content"]["data"].get("method") == "update"
            )
        )
        return answer["content"]["data"]["state"]

    async def widgets(self) -> dict[str, tuple[str, dict]]:
        """{description or model name: (comm id, state)} of the app's widgets with a description."""
        found = {}
        for comm_id in await self.comms():
            state = await self.state(comm_id)
            name = state.get("description") or state.get("_model_name")
            found.setdefault(name, (comm_id, state))
        return found

    async def update(self, comm_id: str, state: dict) -> None:
        """What a browser sends when a person changes a widget: waits until the kernel has handled it."""
        msg_id = await self.send(
            "comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": state, "buffer_paths": []}}
        )
        await self.idle_after(msg_id)
