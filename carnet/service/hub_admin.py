"""The Carnet service's calls to the Hub's REST API, to end a person's Hub sessions and server.

The service's own Hub token (JUPYTERHUB_API_TOKEN) holds the role ``carnet-service-admin``
(hub_config/jupyterhub_config.py). A failed call is logged, not raised: Carnet's own checks (inactive
users, roles read at every request) already refuse the person; the Hub call makes it immediate there too.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from carnet.hub_config.authenticator import AUTHORS_GROUP

log = logging.getLogger("carnet.service")


async def _hub(method: str, path: str, body: dict | None = None) -> int:
    api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not api or not token:
        log.warning("No Hub API configured: cannot %s %s", method, path)
        return 0
    request = HTTPRequest(
        f"{api}/{path}",
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=json.dumps(body) if body is not None else None,
        allow_nonstandard_methods=True,
        request_timeout=30,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
        return response.code
    except HTTPClientError as exc:
        if exc.code not in (400, 404):  # not running / never signed in: nothing to end
            log.warning("Hub refused %s %s: %s", method, path, exc)
        return exc.code
    except OSError as exc:
        log.warning("Hub unreachable for %s %s: %s", method, path, exc)
        return 0


def _user(name: str) -> str:
    return quote(name, safe="@")


async def forget_hub_user(name: str) -> None:
    """Stops the person's server and deletes them from the Hub: every Hub session and token dies.
    A person allowed back in is re-created by the Hub at their next sign-in."""
    await _hub("DELETE", f"users/{_user(name)}/server")
    await _hub("DELETE", f"users/{_user(name)}")


async def demote_hub_user(name: str) -> None:
    """The person is no longer an author: stop their Studio server, take them out of the authors group."""
    await _hub("DELETE", f"users/{_user(name)}/server")
    await _hub("DELETE", f"groups/{AUTHORS_GROUP}/users", {"users": [name]})


async def end_hub_sessions_after_update(email: str, changed: dict, still_author: bool) -> None:
    """After ``carnet.people.update_person`` committed ``changed``: a disabled person loses every Hub session
    and server; one who is no longer an author loses their Studio server and the authors group."""
    if changed.get("is_active") is False:
        await forget_hub_user(email)
    elif "role" in changed and not still_author:
        await demote_hub_user(email)
