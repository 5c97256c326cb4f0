"""How long Carnet's servers trust the Hub's word about a session (CarnetSettings.hub_auth_cache_seconds).

JupyterHub's ``HubOAuth`` caches "this cookie/token is person X" for ``cache_max_age`` seconds (300 by
default), so a session the Hub has ended (sign-out revokes its OAuth tokens) keeps working on the Carnet
service, the Viewer and Studio servers until the entry expires. Its cache treats 0 as *forever*, so "no
cache" needs a cache that keeps nothing.
"""

from __future__ import annotations

from jupyterhub.services.auth import HubOAuth, _ExpiringDict


class NoCache(_ExpiringDict):
    """A HubOAuth cache that keeps nothing: every lookup asks the Hub."""

    def __setitem__(self, key, value):
        return None


def hub_auth_cache(seconds: int) -> _ExpiringDict:
    return NoCache() if seconds <= 0 else _ExpiringDict(seconds)


def make_hub_auth(seconds: int, **kwargs) -> HubOAuth:
    """A HubOAuth (configured from the Hub's JUPYTERHUB_* variables) caching answers for ``seconds``."""
    return HubOAuth(cache_max_age=seconds, cache=hub_auth_cache(seconds), **kwargs)


def limit_server_hub_auth_cache(server_app, seconds: int) -> None:
    """Apply ``seconds`` to a jupyterhub-singleuser server (the Viewer, Studio servers), whose HubOAuth
    belongs to its identity provider; a plain Jupyter server (no Hub) has none and is left alone."""
    hub_auth = getattr(server_app.identity_provider, "hub_auth", None)
    if isinstance(hub_auth, HubOAuth):
        hub_auth.cache_max_age = seconds
        hub_auth.cache = hub_auth_cache(seconds)
