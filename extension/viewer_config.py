"""Jupyter server configuration of the Viewer service (``jupyterhub-singleuser --config=<this file>``).

The Viewer serves people who may only look: see carnet.extension.viewer for what each setting protects.
"""

import os

from jupyterhub.log import log_request as hub_log_request

from carnet.extension.html_fragments import EXPORTER_FILTERS
from carnet.extension.viewer_logs import log_without_link_secrets
from carnet.settings import CarnetSettings

c = get_config()  # noqa: F821 - provided by the Jupyter server when it loads this file

settings = CarnetSettings()

# Only Carnet's Viewer extension: no JupyterLab, no terminals, no language server, no Voila by-path routes.
c.ServerApp.jpserver_extensions = {
    "carnet.extension.viewer": True,
    "carnet.extension": False,
    "voila.server_extension": False,
    "voila": False,
    "jupyterlab": False,
    "jupyter_lsp": False,
    "jupyter_server_terminals": False,
    "notebook_shim": False,
    "notebook": False,
    "nbclassic": False,
}
c.ServerApp.terminals_enabled = False
# The request log never holds a public link's or embed URL's secret (JupyterHub's log format otherwise).
c.ServerApp.tornado_settings = {"log_function": log_without_link_secrets(hub_log_request)}
# The published snapshots are the only files the Viewer can reach; authors cannot write there.
settings.published_dir.mkdir(parents=True, exist_ok=True)
c.ServerApp.root_dir = str(settings.published_dir)

c.ServerApp.kernel_manager_class = "carnet.extension.viewer_kernels.ViewerKernelManager"
# Renders must not stall when widget outputs are synced as a reply arrives (see WakefulShellChannel).
c.ServerKernelManager.client_class = "carnet.extension.viewer_kernels.ViewerKernelClient"
c.ServerApp.authorizer_class = "carnet.extension.viewer.ViewerAuthorizer"
# Widget changes answer at once (Nagle's algorithm delayed each by ~40 ms: see NoDelayWebsocketConnection).
c.ServerApp.kernel_websocket_connection_class = "carnet.extension.viewer_kernels.NoDelayWebsocketConnection"
c.ContentsManager.allow_hidden = False

# Viewers interact through widgets only: code sent over the websocket is dropped.
c.MappingKernelManager.allowed_message_types = [
    "comm_open",
    "comm_msg",
    "comm_close",
    "comm_info_request",
    "kernel_info_request",
]
# Each render starts a kernel (~150 MB): shut idle ones down.
c.MappingKernelManager.cull_idle_timeout = int(os.environ.get("CARNET_VIEWER_CULL_IDLE", "900"))
c.MappingKernelManager.cull_interval = int(os.environ.get("CARNET_VIEWER_CULL_INTERVAL", "60"))
c.MappingKernelManager.cull_connected = False

# Each kernel runs as the OS account of the person looking (carnet.isolation), when Carnet runs as root.
c.KernelProvisionerFactory.default_provisioner_name = "carnet-account-provisioner"

c.VoilaConfiguration.template = "carnet"
# HTML outputs the template draws on the server stay inside their own output (extension/html_fragments.py).
c.VoilaExporter.filters = EXPORTER_FILTERS
c.VoilaConfiguration.strip_sources = True
c.VoilaConfiguration.show_tracebacks = False
c.VoilaConfiguration.file_allowlist = []
# A render never hangs forever (see STACK-NOTES: a stall was seen without a timeout).
c.VoilaExecutor.timeout = int(os.environ.get("CARNET_VIEWER_CELL_TIMEOUT", "120"))
