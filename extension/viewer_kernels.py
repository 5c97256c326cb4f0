"""Kernels of the Viewer: each is started only for an app render, carries the identity of the person
looking (their Carnet token, their OS account) and belongs to them (see carnet.extension.viewer)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from dataclasses import dataclass
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Type

from carnet.branding import brand_color_env
from carnet.extension.viewer_topojson import topojson_env
from carnet.isolation import KERNEL_ACCOUNT_ENV, accounts_enabled, ensure_account
from carnet.settings import CarnetSettings

# Environment variables of the Viewer service that never reach a kernel.
_PRIVATE_ENV_PREFIXES = ("JUPYTERHUB_", "CARNET_", "JPY_")
# Longest a wait on a kernel's shell socket may overlook a reply that already arrived (WakefulShellChannel).
_SHELL_WAKE_UP = 0.25
# A viewer's browser may change only the values a person picks in the app's widgets (ipykernel's extension).
WIDGET_GUARD_ARGUMENT = "--IPKernelApp.extensions=carnet.kernel_helpers.widget_guard"


@dataclass(frozen=True)
class KernelRequest:
    owner: str  # the Hub user name of the person looking at the app
    token: str  # a Carnet viewer_kernel token carrying that person's identity
    user_id: int  # their Carnet user id: the kernel runs as their OS account (carnet.isolation)
    # The place taken for this kernel under the per-app/per-org caps (render_pool.Slot), if any.
    slot: object | None = None
    # The primary colour of the app's org (its branding), for carnet.dash's Theme; "" for Carnet's own.
    brand_color: str = ""


kernel_request: contextvars.ContextVar[KernelRequest | None] = contextvars.ContextVar(
    "carnet_kernel_request", default=None
)


def kernel_env(base_env: dict, token: str, brand_color: str = "") -> dict:
    env = {k: v for k, v in base_env.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
    env["CARNET_API_URL"] = os.environ.get("CARNET_API_URL", "")
    env["CARNET_TOKEN"] = token
    env.update(topojson_env())  # where plotly finds map outlines (viewer_topojson.py)
    env.update(brand_color_env(brand_color))
    return env


class ViewerKernelManager(AsyncMappingKernelManager):
    """Starts kernels only for an app render, records who each kernel belongs to."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kernel_owners: dict[str, str] = {}
        # (app id, org id) of each kernel started under a cap (render_pool.RenderPool counts them).
        self.kernel_apps: dict[str, tuple[int, int]] = {}

    async def start_kernel(self, *args, **kwargs):
        request = kernel_request.get()
        if request is None:
            raise web.HTTPError(403, "Kernels are started only to render an app")
        env = kernel_env(kwargs.get("env") or dict(os.environ), request.token, request.brand_color)
        if accounts_enabled():
            account = await asyncio.to_thread(ensure_account, CarnetSettings(), request.user_id)
            env.update(account.environment())
            env[KERNEL_ACCOUNT_ENV] = account.name  # read (and removed) by AccountProvisioner
        kwargs["env"] = env
        kwargs["extra_arguments"] = [*(kwargs.get("extra_arguments") or []), WIDGET_GUARD_ARGUMENT]
        kernel_id = await super().start_kernel(*args, **kwargs)
        self.kernel_owners[kernel_id] = request.owner
        if request.slot is not None:
            self.kernel_apps[kernel_id] = request.slot.app
            request.slot.free()  # counted as a kernel from now on
        return kernel_id

    def remove_kernel(self, kernel_id):
        # Called whenever a kernel goes away (shutdown, culling): the owner map must not grow forever.
        self.kernel_owners.pop(kernel_id, None)
        self.kernel_apps.pop(kernel_id, None)
        return super().remove_kernel(kernel_id)

    def owner_of(self, kernel_id: str | None) -> str | None:
        return self.kernel_owners.get(kernel_id) if kernel_id else None


class WakefulShellChannel(AsyncZMQSocketChannel):
    """A shell channel whose waits re-check the socket every ``_SHELL_WAKE_UP`` seconds.

    While Voila's executor (nbclient) waits for a cell's execute_reply on the shell socket, it also sends
    on that socket: every output captured by an ``ipywidgets.Output`` is synced back to the kernel as a
    comm_msg. jupyter_client sends through a blocking shadow of the asyncio socket, which can swallow the
    socket's edge-triggered wake-up; the reply then sits unread until the cell timeout (120 s a cell,
    STACK-NOTES' "stall"). A fresh poll sees a message that is already there, so polling in slices bounds
    that delay to a fraction of a second.
    """

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _SHELL_WAKE_UP if deadline is None else max(0.0, deadline - time.monotonic())
            if await self.socket.poll(int(min(remaining, _SHELL_WAKE_UP) * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class ViewerKernelClient(AsyncKernelClient):
    """The client Voila renders an app with (``ServerKernelManager.client_class`` in viewer_config.py)."""

    shell_channel_class = Type(WakefulShellChannel)


class NoDelayWebsocketConnection(ZMQChannelsWebsocketConnection):
    """A kernel websocket with Nagle's algorithm off (``ServerApp.kernel_websocket_connection_class``). A
    widget change is answered with several small frames (busy, the echo, the new outputs, idle); with Nagle
    on, Tornado's default, each frame after the first waited for the peer's delayed ACK: ~40 ms a change."""

    def connect(self):
        self.websocket_handler.set_nodelay(True)
        return super().connect()
