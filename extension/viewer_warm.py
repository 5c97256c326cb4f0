"""``carnet/warm/<signed token>`` (POST): the scheduler's warm-up of an app for one person
(scheduler/kinds/warmup.py): the Viewer renders that person's page into its render pool now, so that their
first visit is handed a ready page (render_pool.py) instead of waiting for a cold render.

The token is the credential: signed by the scheduler with the platform's embed key for ``"use": "warm"``,
for one app and one person, for minutes (carnet.scheduler.kinds.warmup ``sign_warm``); no cookie is read, so
no XSRF check applies. The page is rendered exactly as the person's own visit would render it: the Viewer asks
the service for that person's viewer session (the same call as a visit; refused if they may not open the
app), and the pool's key is the one their visit computes (an empty query: the app as it opens). Nothing is
answered but whether a page now waits in the pool.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.utils import url_path_join
from tornado import web
from voila.utils import ENV_VARIABLE

from carnet.errors import CarnetError
from carnet.extension.prerender import render_context
from carnet.extension.render_pool import RETRY_AFTER, pool_key, render_pool_of
from carnet.extension.viewer import AppHandler, request_viewer_session
from carnet.settings import CarnetSettings

# What ``RenderPool.warm`` said -> the HTTP status of the answer.
STATUS = {"pooled": 200, "off": 409, "busy": 503, "failed": 500}
MESSAGES = {
    "pooled": "The page is pre-rendered and waits for its person",
    "off": "The Viewer's render pool is off (viewer_pool_size is 0): nothing can be pre-rendered",
    "busy": "The app is at its kernel cap: no page was pre-rendered, try again later",
    "failed": "Pre-rendering the page failed (the Viewer's log says why)",
}


class SignedTokenJsonMixin:
    """A scheduler's POST route of the Viewer whose only credential is a signed token in its URL: no cookie
    is read (so no XSRF check), every answer is JSON ``{status, message, ...}``."""

    def check_xsrf_cookie(self):
        return None  # no cookie is read: the signed token is the only credential

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": self._reason}))

    def answer(self, status: int, message: str, **fields) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"status": status, "message": message, **fields}))


class WarmHandler(SignedTokenJsonMixin, AppHandler):
    """POST carnet/warm/<payload>.<signature>: pre-render the token's app for the token's person."""

    SUPPORTED_METHODS = ("POST",)  # not AppHandler's page: a GET is a 405

    @allow_unauthenticated
    async def post(self, token):
        from carnet.scheduler.kinds.warmup import warm_payload

        try:
            payload = warm_payload(CarnetSettings(), token)
        except CarnetError as exc:  # unknown, tampered (404) or expired (403)
            self.answer(exc.status, exc.message)
            return
        email, app_id = payload["user"], str(payload["app"])
        pool = render_pool_of(self)
        ttl = pool.ttl + 600  # as a visit's refill: the pre-render's token lives as long as the page may wait
        # The person's own viewer session, as their visit asks for it (404 if they may not open the app).
        try:
            first = [await request_viewer_session(email, app_id, ttl_seconds=ttl)]
        except web.HTTPError as exc:
            message = exc.reason or (exc.log_message % exc.args if exc.args else exc.log_message)
            self.answer(exc.status_code, message or "Refused")
            return

        async def new_session():
            return first.pop() if first else await request_viewer_session(email, app_id, ttl_seconds=ttl)

        key = pool_key(first[0], "")
        if key is None:
            self.answer(409, "This page is never pre-rendered")
            return
        self.use_page_config(first[0])
        context = render_context(self, first[0]["notebook_path"])
        # The kernel sees the page's own address, as on a visit (never this URL: it holds the token).
        app_path = url_path_join(self.base_url, f"apps/{app_id}")
        context.env[ENV_VARIABLE.SCRIPT_NAME] = app_path
        context.env[ENV_VARIABLE.VOILA_REQUEST_URL] = (
            f"{self.request.protocol}://{self.request.host}{app_path}"
        )
        state = await pool.warm(key, context, new_session)
        if state == "busy":
            self.set_header("Retry-After", str(RETRY_AFTER))
        self.answer(STATUS[state], MESSAGES[state], state=state, app_id=key.app_id, version=key.version)


def warm_handlers(base: str, handler_kwargs: dict) -> list[tuple]:
    # Any token shape is checked by its signature; anything else is a 404.
    return [(url_path_join(base, r"carnet/warm/(?P<token>[^/]{1,8000})"), WarmHandler, handler_kwargs)]
