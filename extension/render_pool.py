"""The Viewer's render pool: pages rendered ahead of time, handed to the next visitor with the same data.

Plain Voila's preheated pool cannot know who is looking (its kernels start before the request), so Carnet
keeps its own. After a page of an app is served, the pool renders the same page again in the background: a
kernel that ran every cell, and the HTML Voila made of it. The next request with the same ``PoolKey`` gets
that HTML at once and the kernel behind it (its id is the one in the page, so widgets connect to it); the
pool then renders a fresh one. A warm-up job of the scheduler (scheduler/kinds/warmup.py) has a person's page
rendered into the pool before their first visit of the day (viewer_warm.py).

Why sharing a pre-rendered page is safe, and what the key holds:
- the app, its version, the page's own content (title, branding) and the URL's query (filter values);
- ``row_context``: the service's hash of what row-level rules see of the viewer (org, restricted or not,
  attribute values): equal hashes read equal rows, so a page made for one viewer holds nothing another
  with the same hash could not read;
- ``data_version``: the service's hash of the org's source versions, so a load makes older pages unused;
- the person: a page is never handed to someone else, even with the same row context. An app may show
  who it was rendered for (a Viewer kernel may read ``/me``), and with OS accounts (carnet.isolation) a
  kernel process runs as one person's account and cannot change it.
The kernel is rendered with a token minted for the visitor who caused the refill (short-lived: the pool's
TTL + 10 min); on hand-over it gets the new visitor's token through the Viewer's own kernel client
(``carnet.kernel_helpers.identity.use_token``, never through the visitor's websocket, which drops code),
so every read after a filter change is theirs. Until hand-over the kernel belongs to no one (owner "": no
websocket, no shutdown by anyone). Previews (``?as_user=``) and anonymous routes are never pooled.
Sources whose data changes outside Carnet (SQL, REST) keep no version: a pooled page of them is at most
``viewer_pool_ttl`` old.

Caps: kernels of open pages and pooled ones count toward ``viewer_max_kernels_per_app`` / ``_per_org``
(``Slot`` takes the place before the kernel starts, so concurrent requests cannot overshoot). A new
kernel beyond a cap first evicts pooled pages of that app (or org); if none is left the visitor gets a
"busy" page (503, Retry-After). Pooled pages expire after ``viewer_pool_ttl`` and when the app's version or
data change.

A pre-render also leaves a snapshot of its page (snapshots.py): a viewer with no pooled page of their own
is shown the snapshot of the same app version, data, filters and row context at once, while their own page
is pre-rendered (``viewer_prerender_concurrency`` at a time), and the page reloads into it when it is ready.

The scheduler's print pages (viewer_print_warm.py) are pooled too, but only on its request, for one print
token: a report job's page is rendered shortly before its fire time and handed to the ``print/<token>``
request of the same token and URL query (``print_pool_key``), never to anyone else, once, under the same
caps, TTL and reaper, and only into free places (it evicts nobody's page; people's pages may evict it).

Not done: preheated kernels not yet bound to anyone (imports done, identity given later): pages are per
person, and with OS accounts a kernel is bound to a person from its start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from jupyter_core.utils import ensure_async
from voila.utils import ENV_VARIABLE

from carnet.extension.prerender import RenderContext, prerender
from carnet.extension.snapshots import SnapshotStore, record_snapshot

log = logging.getLogger("carnet.viewer.pool")
RETRY_AFTER = 10  # seconds a busy visitor is asked to wait
_REAP_EVERY = 30.0
_TOKEN_SWAP_TIMEOUT = 30.0
_WARM_WAIT = 600.0  # a warm-up waits at most this long for a render of the same page already under way


@dataclass(frozen=True)
class PoolKey:
    app_id: int
    version: int
    org_id: int
    row_context: str
    data_version: str
    page: str  # hash of the rest of the service's answer (title, branding, ...)
    query: str  # the URL's query, pairs sorted
    person: int  # the viewer's user id: pages are personal (see above)


def pool_key(session: dict, query: str) -> PoolKey | None:
    """The key of a viewer session's page (the service's answer + the URL's query); None: not poolable."""
    if session.get("preview_by") or not session.get("row_context") or "data_version" not in session:
        return None
    app = session["app"]
    # Everything the service said about the page (title, branding, marks other routes add) but who asked:
    # a field added to the answer later splits the pool rather than leaking across it.
    shown = {k: v for k, v in session.items() if k not in ("token", "user", "notebook_path")}
    page = json.dumps(shown, sort_keys=True, default=str)
    return PoolKey(
        app_id=int(app["id"]),
        version=int(app["version"]),
        org_id=int(app["org_id"]),
        row_context=session["row_context"],
        data_version=session["data_version"],
        page=hashlib.sha256(page.encode()).hexdigest()[:16],
        query=json.dumps(sorted(parse_qsl(query, keep_blank_values=True))),
        person=int(session["user"]["id"]),
    )


PRINT_CONTEXT = "print:"  # a print page's row context: the hash of its token follows (print_pool_key)


def print_pool_key(session: dict, query: str, token: str) -> PoolKey | None:
    """The key of the scheduler's print page of ``token`` (carnet.print_pages) for the URL's ``query``: only a
    later request of the same token and query computes it. The token names its reader and expires in
    minutes, so its hash stands for the row context and the person; the service's ``data_version`` and the
    app's version make a page rendered before a load or a publish unused, as for people's pages. None: not
    poolable (a service that does not say its data version)."""
    if "data_version" not in session:
        return None
    shown = {k: v for k, v in session.items() if k not in ("token", "notebook_path")}
    page = json.dumps(shown, sort_keys=True, default=str)
    app = session["app"]
    return PoolKey(
        app_id=int(app["id"]),
        version=int(app["version"]),
        org_id=int(app["org_id"]),
        # Never equal to a person's row context (the service's hex hash): no visit is handed a print page.
        row_context=PRINT_CONTEXT + hashlib.sha256(token.encode()).hexdigest()[:32],
        data_version=session["data_version"],
        page=hashlib.sha256(page.encode()).hexdigest()[:16],
        query=json.dumps(sorted(parse_qsl(query, keep_blank_values=True))),
        person=int(session["user"]["id"]),
    )


@dataclass
class Entry:
    key: PoolKey
    kernel_id: str
    html: str
    made: float = field(default_factory=time.monotonic)


class Slot:
    """A place for one kernel under the caps, held from before the kernel starts until it is counted as a
    kernel (``ViewerKernelManager.start_kernel`` frees it) or the start failed."""

    def __init__(self, slots: list, app: tuple[int, int]):
        self.app, self._slots = app, slots
        slots.append(self)

    def free(self) -> None:
        if self in self._slots:
            self._slots.remove(self)


class Busy(Exception):
    """No kernel may start for this app now (a cap is reached and no pooled page could be evicted)."""


class RenderPool:
    def __init__(self, kernel_manager, settings):
        self.km = kernel_manager
        self.log = getattr(kernel_manager, "log", log)  # the server's log (the stack's log file)
        self.size, self.ttl = settings.viewer_pool_size, settings.viewer_pool_ttl
        self.max_app, self.max_org = settings.viewer_max_kernels_per_app, settings.viewer_max_kernels_per_org
        self.entries: dict[PoolKey, list[Entry]] = {}
        self.refilling: set[PoolKey] = set()
        self.slots: list[Slot] = []
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        # Pre-renders at a time (a burst of viewers gets snapshots meanwhile, snapshots.py).
        self._rendering = asyncio.Semaphore(settings.viewer_prerender_concurrency)
        self.snapshots = SnapshotStore(self.ttl)

    # -- caps -----------------------------------------------------------------------------------------
    def kernels_of(self, app_id: int, org_id: int) -> tuple[int, int]:
        held = [*self.km.kernel_apps.values(), *(slot.app for slot in self.slots)]
        return sum(a == app_id for a, _ in held), sum(o == org_id for _, o in held)

    def _room(self, app_id: int, org_id: int) -> str | None:
        """None if a kernel may start, else which cap is reached ("app" or "org")."""
        in_app, in_org = self.kernels_of(app_id, org_id)
        if self.max_app and in_app >= self.max_app:
            return "app"
        if self.max_org and in_org >= self.max_org:
            return "org"
        return None

    async def reserve(self, app_id: int, org_id: int, evict: bool = True) -> Slot:
        """A slot for a new kernel of the app; pooled pages make room when ``evict``. Raises Busy."""
        while (full := self._room(app_id, org_id)) is not None:
            victims = [
                e
                for entries in self.entries.values()
                for e in entries
                if (e.key.app_id == app_id if full == "app" else e.key.org_id == org_id)
            ]
            if not evict or not victims:
                raise Busy(full)
            await self._discard(min(victims, key=lambda e: e.made))
        return Slot(self.slots, (app_id, org_id))  # no await since the check: no one else took it

    # -- the pool -------------------------------------------------------------------------------------
    def pooled(self, key: PoolKey) -> int:
        return len(self.entries.get(key, ()))

    async def hand_over(self, key: PoolKey, owner: str, token: str) -> Entry | None:
        """A pooled page for ``key``, its kernel now ``owner``'s and carrying ``token``; None if none."""
        self._start_reaper()
        await self._drop_stale(key)
        while self.entries.get(key):
            entry = self.entries[key].pop(0)
            if not self.entries[key]:
                del self.entries[key]
            if entry.kernel_id not in self.km or time.monotonic() - entry.made > self.ttl:
                await self._shutdown(entry.kernel_id)
                continue
            try:
                await self._use_token(entry.kernel_id, token)
            except Exception:
                self.log.exception("Could not give pooled kernel %s its new token", entry.kernel_id)
                await self._shutdown(entry.kernel_id)
                continue
            self.km.kernel_owners[entry.kernel_id] = owner
            self.log.info("Handed pre-rendered kernel %s of app %s over", entry.kernel_id, key.app_id)
            return entry
        return None

    def refill(
        self, key: PoolKey | None, context: RenderContext, new_session, someone_waits: bool = False
    ) -> None:
        """Renders ``key``'s page in the background if the pool lacks one; ``new_session()`` asks the service
        for a fresh viewer session (a token of the same person) for it. ``someone_waits``: the person has a
        snapshot page open that reloads into this one (snapshots.py), so it may evict other pooled pages at
        a cap, as that person's own render would."""
        if key is None or not self.size or key in self.refilling or self.pooled(key) >= self.size:
            return
        self.refilling.add(key)
        # "scheduled" and "ended" lines pair up: bench/viewer.py waits for them to know the pool is ready.
        self.log.info("Pre-render of app %s scheduled", key.app_id)
        task = asyncio.ensure_future(self._refill(key, context, new_session, someone_waits))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def warm(self, key: PoolKey, context: RenderContext, new_session) -> str:
        """Pre-render ``key``'s page now, before its person asks (the scheduler's warm-up, viewer_warm.py),
        unless the pool holds one already. Returns "pooled" (a page waits for the person, up to the pool's
        TTL), "off" (no pool), "busy" (at a cap: a warm-up never takes places from open pages) or "failed"
        (the render failed: the log says why)."""
        if not self.size:
            return "off"
        self._start_reaper()  # a warmed page nobody takes is shut down after the TTL
        deadline = time.monotonic() + _WARM_WAIT
        while key in self.refilling and time.monotonic() < deadline:  # a render of this page is under way
            await asyncio.sleep(0.5)
        if self.pooled(key):
            return "pooled"
        if key in self.refilling or self._room(key.app_id, key.org_id) is not None:
            return "busy"
        self.refilling.add(key)
        self.log.info("Pre-render of app %s scheduled (warm-up)", key.app_id)
        await self._refill(key, context, new_session)
        return "pooled" if self.pooled(key) else "failed"

    def prerender_print(self, key: PoolKey, context: RenderContext, new_session, token: str) -> str:
        """Starts rendering the scheduler's print page of ``token`` (``key``: print_pool_key) into the pool
        (viewer_print_warm.py) and returns at once: "scheduled", "rendering" (already under way), "pooled"
        (already waiting), "off" (no pool) or "busy" (at a cap: a print page never takes places from people's
        pages). The page is rendered once: it is never refilled after its print takes it, nor snapshotted."""
        if not self.size:
            return "off"
        self._start_reaper()  # a print page nobody takes is shut down after the TTL
        if self.pooled(key):
            return "pooled"
        if key in self.refilling:
            return "rendering"
        if self._room(key.app_id, key.org_id) is not None:
            return "busy"
        self.refilling.add(key)
        self.log.info("Pre-render of app %s scheduled (print page)", key.app_id)
        task = asyncio.ensure_future(self._refill(key, context, new_session, print_token=token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return "scheduled"

    async def take_print(self, key: PoolKey, owner: str, token: str, wait: float) -> Entry | None:
        """The pooled print page of ``key`` for ``owner`` (hand_over), waiting up to ``wait`` seconds for
        its pre-render if one is under way (it started earlier than a cold render would now)."""
        deadline = time.monotonic() + wait
        while key in self.refilling and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return await self.hand_over(key, owner, token)

    async def _refill(
        self, key: PoolKey, context: RenderContext, new_session, someone_waits=False, print_token=None
    ) -> None:
        made = False
        try:
            if self._room(key.app_id, key.org_id) is not None and not someone_waits:
                return  # at a cap: not even a token is minted for it
            session = await new_session()
            query = context.env[ENV_VARIABLE.QUERY_STRING]
            now_key = (
                pool_key(session, query)
                if print_token is None
                else print_pool_key(session, query, print_token)
            )
            if now_key != key:
                return  # the app or its data changed meanwhile: the next visit renders anew
            try:
                # The pool never takes the last places from people, unless for a person waiting.
                slot = await self.reserve(key.app_id, key.org_id, evict=someone_waits)
            except Busy:
                return
            try:
                async with self._rendering:
                    kernel_id, html = await prerender(context, session, slot, self.km)
            finally:
                slot.free()
            # Before the page is offered: its widgets' states are read while nobody has it yet. A print
            # page is for its token only: no snapshot of it is shown to anyone.
            if print_token is None:
                await record_snapshot(self.snapshots, self.km, key, kernel_id, html, session)
            self.entries.setdefault(key, []).append(Entry(key, kernel_id, html))
            made = True
            self.log.info("Pre-rendered app %s v%s in kernel %s", key.app_id, key.version, kernel_id)
        except Exception:
            self.log.exception("Pre-rendering app %s failed", key.app_id)
        finally:
            self.refilling.discard(key)
            if made and print_token is None:
                self.refill(key, context, new_session)  # one at a time up to the pool's size
            self.log.info("Pre-render of app %s ended", key.app_id)

    async def _use_token(self, kernel_id: str, token: str) -> None:
        client = self.km.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            # silent + no history: the token is neither broadcast on iopub nor kept in the kernel's In[].
            code = (
                "from carnet.kernel_helpers.identity import use_token as _carnet_use_token\n"
                f"_carnet_use_token({token!r})\ndel _carnet_use_token"
            )
            reply = await ensure_async(
                client.execute(
                    code, silent=True, store_history=False, reply=True, timeout=_TOKEN_SWAP_TIMEOUT
                )
            )
            if reply["content"].get("status") != "ok":
                raise RuntimeError(f"use_token answered {reply['content'].get('ename')}")
        finally:
            client.stop_channels()

    # -- expiry ---------------------------------------------------------------------------------------
    async def _drop_stale(self, key: PoolKey) -> None:
        """Pooled pages of an older version or older data of the same app are never served again."""
        for other in list(self.entries):
            if other.app_id == key.app_id and (other.version, other.data_version) != (
                key.version,
                key.data_version,
            ):
                for entry in self.entries.pop(other, []):
                    await self._shutdown(entry.kernel_id)

    async def reap(self) -> None:
        now = time.monotonic()
        for key in list(self.entries):
            for entry in [e for e in self.entries.get(key, []) if now - e.made > self.ttl]:
                await self._discard(entry)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():

            async def loop():
                while True:
                    await asyncio.sleep(_REAP_EVERY)
                    try:
                        await self.reap()
                    except Exception:
                        log.exception("Expiring pooled pages failed")

            self._reaper = asyncio.ensure_future(loop())

    async def _discard(self, entry: Entry) -> None:
        entries = self.entries.get(entry.key, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                self.entries.pop(entry.key, None)
        await self._shutdown(entry.kernel_id)

    async def _shutdown(self, kernel_id: str) -> None:
        if kernel_id in self.km:
            try:
                # Nobody is attached to a pooled kernel: no need for a graceful shutdown.
                await ensure_async(self.km.shutdown_kernel(kernel_id, now=True))
            except Exception:
                log.exception("Shutting pooled kernel %s down failed", kernel_id)


def render_pool_of(handler) -> RenderPool:
    """The Viewer's one pool (made on first use, in the web app's settings)."""
    pool = handler.settings.get("carnet_render_pool")
    if pool is None:
        from carnet.settings import CarnetSettings

        pool = handler.settings["carnet_render_pool"] = RenderPool(handler.kernel_manager, CarnetSettings())
        handler.settings["carnet_snapshots"] = pool.snapshots  # the replay websocket finds them there
    return pool


BUSY_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Busy</title>
<meta http-equiv="refresh" content="{retry}"></head>
<body style="font-family: sans-serif; margin: 4rem auto; max-width: 36rem; color: #243b53">
<h1>This app is busy</h1>
<p>Too many people have it open right now. Try again in a moment: this page reloads itself in {retry}
seconds.</p></body></html>
"""


def write_busy(handler) -> None:
    """The "busy, try again in a moment" answer: 503 with Retry-After."""
    handler.set_status(503)
    handler.set_header("Retry-After", str(RETRY_AFTER))
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    handler.set_header("Cache-Control", "no-store")
    handler.finish(BUSY_PAGE.format(retry=RETRY_AFTER))
