"""Rendering an app's page ahead of time for the Viewer's render pool (carnet/extension/render_pool.py):
what a render needs of the request that caused it, and Voila's render of it into a string."""

from __future__ import annotations

import os
from dataclasses import dataclass

from jupyter_core.utils import ensure_async
from tornado.httputil import split_host_and_port
from voila._version import __version__ as voila_version
from voila.notebook_renderer import NotebookRenderer
from voila.utils import ENV_VARIABLE, get_page_config

from carnet.extension.viewer_kernels import KernelRequest, kernel_request


@dataclass
class RenderContext:
    """What a render needs of the request that caused it, kept to render the same page later."""

    handler: object  # the AppHandler (its server-wide managers and settings; its request is over)
    notebook_path: str
    page_config: dict
    env: dict  # Voila's request variables for the kernel (QUERY_STRING etc.)


def render_context(handler, notebook_path: str) -> RenderContext:
    request = handler.request
    host, port = split_host_and_port(request.host.lower())
    env = {
        ENV_VARIABLE.SCRIPT_NAME: request.path,
        ENV_VARIABLE.PATH_INFO: "",
        ENV_VARIABLE.QUERY_STRING: str(request.query),
        ENV_VARIABLE.SERVER_SOFTWARE: f"voila/{voila_version}",
        ENV_VARIABLE.SERVER_PROTOCOL: str(request.version),
        ENV_VARIABLE.SERVER_PORT: str(port) if port else "",
        ENV_VARIABLE.SERVER_NAME: host,
        ENV_VARIABLE.VOILA_PREHEAT: "False",
        ENV_VARIABLE.VOILA_BASE_URL: handler.base_url,
        ENV_VARIABLE.VOILA_SERVER_URL: handler.settings.get("server_url", "/"),
        ENV_VARIABLE.VOILA_REQUEST_URL: request.full_url(),
        ENV_VARIABLE.VOILA_APP_PORT: str(port) if port else "",
    }
    kwargs = {
        "base_url": handler.base_url,
        "settings": handler.settings,
        "log": handler.log,
        "voila_configuration": handler.voila_configuration,
    }
    page_config = get_page_config(**kwargs)
    if handler.page_config_hook:
        page_config = handler.page_config_hook(page_config, **kwargs, notebook_path=notebook_path)
    return RenderContext(handler, notebook_path, page_config, {str(k): v for k, v in env.items()})


async def prerender(context: RenderContext, session: dict, slot, km) -> tuple[str, str]:
    """Voila's render (its non-preheated path in ``VoilaHandler.get_generator``) into a string, with a kernel
    that belongs to no one yet (owner ""), started in ``slot`` (a render_pool.Slot). Returns (kernel id,
    HTML)."""
    handler = context.handler
    renderer = NotebookRenderer(
        request_handler=None,
        voila_configuration=handler.voila_configuration,
        traitlet_config=handler.traitlet_config,
        notebook_path=session["notebook_path"],
        template_paths=handler.template_paths,
        config_manager=handler.config_manager,
        contents_manager=handler.contents_manager,
        base_url=handler.base_url,
        kernel_spec_manager=handler.kernel_spec_manager,
        page_config=context.page_config,
        mathjax_config=handler.settings.get("mathjax_config"),
        mathjax_url=handler.settings.get("mathjax_url"),
    )
    await renderer.initialize()
    request = KernelRequest(
        owner="",
        token=session["token"],
        user_id=session["user"]["id"],
        slot=slot,
        # The same kernel environment as a page rendered on request (the branding is in the pool's key).
        brand_color=(session.get("branding") or {}).get("color") or "",
    )
    reset = kernel_request.set(request)
    try:
        kernel_id = await ensure_async(
            km.start_kernel(
                kernel_name=renderer.notebook.metadata.kernelspec.name,
                path=os.path.dirname(session["notebook_path"]),
                env={**os.environ, **context.env},
            )
        )
    finally:
        kernel_request.reset(reset)
    try:
        parts = [
            html async for html, _ in renderer.generate_content_generator(kernel_id, km.get_kernel(kernel_id))
        ]
    except BaseException:
        await ensure_async(km.shutdown_kernel(kernel_id))
        raise
    return kernel_id, "".join(parts)
