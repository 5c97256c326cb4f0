"""The Content-Security-Policy of the Viewer's app pages: a notebook's outputs (markdown, HTML, SVG, widget
values) cannot run script on the platform's origin.

Why hashes and no nonce: the Carnet template (voila_templates/carnet) emits no inline script at all — Voila's
inline helpers live in ``static/carnet-boot.js`` — so the only inline script a page has is Voila's render
heartbeat, a fixed text the handler writes while a cell runs long, allowed by its hash. The header is then the
same for every response: nothing per request has to reach the template, so it also holds for pages rendered
ahead of the request (a kernel/render pool). Scripts load only from the Viewer's own origin ('self'); a
``<script>`` in an output, an inline handler (``onerror=``), a ``javascript:`` URL, or a script JupyterLab's
renderer re-creates from a trusted HTML output has neither a nonce nor a matching hash, so the browser refuses
it. ``<iframe srcdoc>`` documents inherit the policy.
"""

from __future__ import annotations

import base64
import hashlib

# voila.handler.VoilaHandler.get_generator's time_out(): "<script>window.voila_heartbeat()</script>\n".
HEARTBEAT_SCRIPT = "window.voila_heartbeat()"


def script_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Styles may be inline: JupyterLab, widgets and plotly set style attributes and add <style> elements; CSS
# cannot run script, and it can fetch nothing beyond img-src/font-src.
APP_PAGE_DIRECTIVES = (
    "default-src 'self'",
    # 'report-sample': a refusal names the start of the refused script (reports, securitypolicyviolation).
    f"script-src 'self' 'report-sample' {script_hash(HEARTBEAT_SCRIPT)}",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "media-src 'self' data: blob:",
    # The kernel websocket is on the page's own origin ('self' covers ws:/wss: of it).
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "frame-src 'none'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
)


def app_page_policy(inherited: str = "") -> str:
    """The app page's policy, after what the server already sends (``frame-ancestors``, report-uri): those
    directives stay as they are, the page's own ones are added."""
    kept = [d.strip() for d in inherited.split(";") if d.strip()]
    names = {d.split()[0] for d in APP_PAGE_DIRECTIVES}
    kept = [d for d in kept if d.split()[0] not in names]
    return "; ".join([*kept, *APP_PAGE_DIRECTIVES])


class AppPagePolicyMixin:
    """Put first in the bases of a handler that renders an app (Voila) page."""

    @property
    def content_security_policy(self) -> str:
        return app_page_policy(super().content_security_policy)
