"""The Viewer's request log without link secrets: a public link's or embed URL's path segment is the
credential itself, and failed requests are logged with their URI (warning level), so a revoked or mistyped
link would otherwise stay in the log. Set as ``ServerApp.tornado_settings["log_function"]`` by
viewer_config.py (JupyterHub's extension replaces any log function set later)."""

from __future__ import annotations

import re

_SECRET_IN_PATH = re.compile(r"(/(?:public|embed|print|warm-print)/)[^/?#]+")


def without_link_secret(uri: str) -> str:
    """``uri`` with a public link's, embed URL's or print page's (carnet.print_pages) secret replaced by
    ``[secret]``."""
    return _SECRET_IN_PATH.sub(r"\1[secret]", uri)


def log_without_link_secrets(log_function):
    """``log_function`` (the server's request logger), given each request's URI without link secrets."""

    def log_request(handler):
        request = handler.request
        uri = request.uri
        request.uri = without_link_secret(uri)
        try:
            log_function(handler)
        finally:
            request.uri = uri

    return log_request
