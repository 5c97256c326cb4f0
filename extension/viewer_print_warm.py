"""``carnet/warm-print/<print token>?<filters>`` (POST): the scheduler's pre-render of a report's print page.

A report job prints the Viewer's ``print/<token>?<filters>`` page (carnet.print_pages,
scheduler/viewer_pdf.py); a cold render of it (kernel start, the app's imports and cells) is most of a PDF's
time. Shortly before a report's fire time the scheduler signs the print token its run will use and POSTs it
here (carnet.scheduler.kinds.report ``prerender_report_pages``): the Viewer renders that page into its render
pool now, keyed by the token, the URL's query, the app's version and the data version (render_pool.py
``print_pool_key``), and the run's ``GET print/<the same token>?<the same query>`` is handed it at once
(viewer_visitors.py ``PrintAppHandler``). Another token or another query never computes that key; a load or
a publish in between changes it, and the print renders cold over the new data.

The print token is the only credential, with the answers of ``print/<token>`` (unknown or tampered: 404,
expired: 403; here as JSON): its signature and expiry are checked here first (carnet.print_pages
``print_payload``: with the pool off nothing more is asked), then by the service, which also refuses an owner
who may no longer open the app; no cookie is read, so no XSRF check applies. The answer comes
at once, before the render: 202 "scheduled" (or "rendering", already under way), 200 "pooled" (already
waiting), 409 "off" (no render pool), 503 "busy" (at a kernel cap: a print page never takes places from
people's pages). Whatever it says, the print still works: it renders cold.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.utils import url_path_join
from tornado import web
from voila.utils import ENV_VARIABLE

from carnet.errors import CarnetError
from carnet.extension.prerender import render_context
from carnet.extension.render_pool import RETRY_AFTER, print_pool_key, render_pool_of
from carnet.extension.viewer import AppHandler
from carnet.extension.viewer_logs import without_link_secret
from carnet.extension.viewer_visitors import request_visitor_session
from carnet.extension.viewer_warm import SignedTokenJsonMixin
from carnet.print_pages import print_payload
from carnet.settings import CarnetSettings

# What ``RenderPool.prerender_print`` said -> the HTTP status of the answer.
STATUS = {"scheduled": 202, "rendering": 202, "pooled": 200, "off": 409, "busy": 503}
MESSAGES = {
    "scheduled": "The print page is being pre-rendered",
    "rendering": "The print page is already being pre-rendered",
    "pooled": "The print page is pre-rendered and waits for its print",
    "off": "The Viewer's render pool is off (viewer_pool_size is 0): the print will render cold",
    "busy": "The app is at its kernel cap: no print page was pre-rendered, the print will render cold",
}


class WarmPrintHandler(SignedTokenJsonMixin, AppHandler):
    """POST carnet/warm-print/<payload>.<signature>?<query>: pre-render that print page into the pool."""

    SUPPORTED_METHODS = ("POST",)  # not AppHandler's page: a GET is a 405
    carnet_public = False  # rendered as the print page is: no "Public" mark

    def _request_summary(self) -> str:
        # Tornado's line for a refused request, without the token (a credential for minutes).
        return f"{self.request.method} {without_link_secret(self.request.uri)} ({self.request.remote_ip})"

    @allow_unauthenticated
    async def post(self, token):
        try:
            print_payload(CarnetSettings(), token)  # the print page's answers: 404 unknown, 403 expired
        except CarnetError as exc:
            self.answer(exc.status, exc.message)
            return
        pool = render_pool_of(self)
        if not pool.size:  # before the service mints a kernel token for nothing
            self.answer(STATUS["off"], MESSAGES["off"], state="off")
            return
        try:
            # The service checks it again and whether its reader may still open the app (404 if not).
            first = [await request_visitor_session("print", token)]
        except web.HTTPError as exc:
            message = exc.reason or (exc.log_message % exc.args if exc.args else exc.log_message)
            self.answer(exc.status_code, message or "Refused")
            return

        async def new_session():
            return first.pop() if first else await request_visitor_session("print", token)

        query = self.request.query
        key = print_pool_key(first[0], query, token)
        if key is None:
            self.answer(409, "This page is never pre-rendered")
            return
        self.use_page_config(first[0])
        context = render_context(self, first[0]["notebook_path"])
        # The kernel sees the print page's own address, exactly as on a cold render of it.
        print_path = url_path_join(self.base_url, f"print/{token}")
        context.env[ENV_VARIABLE.SCRIPT_NAME] = print_path
        context.env[ENV_VARIABLE.VOILA_REQUEST_URL] = (
            f"{self.request.protocol}://{self.request.host}{print_path}" + (f"?{query}" if query else "")
        )
        state = pool.prerender_print(key, context, new_session, token)
        if state == "busy":
            self.set_header("Retry-After", str(RETRY_AFTER))
        self.answer(STATUS[state], MESSAGES[state], state=state, app_id=key.app_id, version=key.version)


def warm_print_handlers(base: str, handler_kwargs: dict) -> list[tuple]:
    # Any token shape reaches the service, which answers 404 for anything it does not know.
    return [
        (
            url_path_join(base, r"carnet/warm-print/(?P<token>[^/]{1,8000})"),
            WarmPrintHandler,
            handler_kwargs,
        )
    ]
