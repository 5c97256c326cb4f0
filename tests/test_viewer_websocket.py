"""The Viewer's kernel websockets send at once: Nagle's algorithm (Tornado's default) held each widget
change's later frames for the peer's delayed ACK (~40 ms a change, measured with bench.viewer)."""

from __future__ import annotations

from pathlib import Path

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from traitlets.config import PyFileConfigLoader

from carnet.extension import viewer_kernels
from carnet.extension.viewer_kernels import NoDelayWebsocketConnection


def test_the_connection_turns_nagle_off_before_it_connects(monkeypatch):
    events = []
    handler = object.__new__(KernelWebsocketHandler)  # a real handler's type, no request behind it
    handler.set_nodelay = lambda value: events.append(("nodelay", value))
    monkeypatch.setattr(ZMQChannelsWebsocketConnection, "connect", lambda self: events.append("connect"))
    NoDelayWebsocketConnection(websocket_handler=handler).connect()
    assert events == [("nodelay", True), "connect"]


def test_the_viewer_uses_it(settings_env):  # its config file makes the published folder
    config_file = Path(viewer_kernels.__file__).with_name("viewer_config.py")
    loader = PyFileConfigLoader(config_file.name, path=str(config_file.parent))
    config = loader.load_config()
    assert config.ServerApp.kernel_websocket_connection_class == (
        "carnet.extension.viewer_kernels.NoDelayWebsocketConnection"
    )
