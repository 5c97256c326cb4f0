"""The result cache of source reads: the query service asks ``cached_read`` instead of reading a source.

Each source has a policy (``DataSource.cache_policy``): ``none`` (always read), ``ttl`` (an answer is reused
for ``cache_ttl_seconds``) or ``invalidate`` (reused until the source changes or someone invalidates it).

The key of an entry is a hash of everything that may change the answer: the organization, the source id, its
``version`` (bumped whenever its definition or data changes, so old entries become unreachable at once), its
kind, the request (canonical JSON of the query spec and the variables) and the caller's row-level context
(two people with different row rules, or a public viewer, must never share an entry: callers pass it
explicitly, ``""`` when no rule applies). Entries are stored per (org, source) by the backend chosen by
``CarnetSettings.cache_backend`` (``carnet.query.cache_backends``).

Identical requests arriving together are computed once: a lock per key in this process, and with Redis a
lock in Redis for the other processes (best effort: a waiter gives up after the read timeout and computes).
A failing cache (Redis down, a full disk) is logged and skipped: it never fails a read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyarrow as pa

from carnet.query.cache_backends import CacheBackend, DiskCache, MemoryCache, RedisCache

log = logging.getLogger(__name__)

POLICIES = ("none", "ttl", "invalidate")
# A year: longer is "until invalidated", which is what the invalidate policy is for.
MAX_TTL_SECONDS = 365 * 24 * 3600

_backends: dict[tuple, CacheBackend] = {}
_backends_lock = threading.Lock()


def cache_dir(settings) -> Path:
    """Root of the disk backend: one folder per organization below it."""
    return Path(settings.data_dir) / "cache"


def backend_for(settings) -> CacheBackend:
    """The process's backend for these settings (one instance: the memory cache and the locks live in it)."""
    name = settings.cache_backend
    if name == "memory":
        ident = ("memory", settings.cache_max_bytes)
    elif name == "disk":
        ident = ("disk", str(cache_dir(settings)), settings.cache_max_bytes)
    else:
        ident = ("redis", settings.cache_redis_url, settings.cache_redis_prefix)
    with _backends_lock:
        if ident not in _backends:
            if name == "memory":
                _backends[ident] = MemoryCache(settings.cache_max_bytes)
            elif name == "disk":
                _backends[ident] = DiskCache(cache_dir(settings), settings.cache_max_bytes)
            else:
                _backends[ident] = RedisCache(settings.cache_redis_url, settings.cache_redis_prefix)
        return _backends[ident]


def cache_key(ctx, request_key: str, row_context: str) -> str:
    """``v<version>-<sha256>``: the version in clear lets older versions' entries be found and dropped."""
    material = [int(ctx.org_id), int(ctx.source_id), int(ctx.version), ctx.kind, request_key, row_context]
    digest = hashlib.sha256(json.dumps(material, separators=(",", ":")).encode()).hexdigest()
    return f"v{int(ctx.version)}-{digest}"


def request_key_of(spec: dict | None, variables: dict | None) -> str:
    """Canonical JSON of a request (sorted keys, no spaces): equal requests give equal keys."""
    return json.dumps({"spec": spec, "variables": variables or {}}, sort_keys=True, separators=(",", ":"))


class _KeyLocks:
    """One lock per key, alive while someone holds or waits for it."""

    def __init__(self):
        self._locks: dict[tuple, list] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: tuple):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


_key_locks = _KeyLocks()
# (backend, org, source, version) whose older versions this process has dropped already: once is enough.
_pruned: set[tuple] = set()


def _quietly(what: str, call, *args, default=None):
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - a broken cache must not fail the read
        log.warning("Result cache %s failed, reading without it: %s", what, type(exc).__name__)
        return default


def cached_read(
    settings, ctx, *, policy: str, ttl: int | None, request_key: str, row_context: str, compute
) -> pa.Table:
    """``compute()`` (the read of source ``ctx``), or the table an identical earlier request got."""
    if policy not in POLICIES:
        raise ValueError(f"Unknown cache policy {policy!r}")
    if not isinstance(row_context, str) or not isinstance(request_key, str):
        raise TypeError("request_key and row_context must be strings")
    if policy == "none" or ctx.source_id is None or (policy == "ttl" and not (ttl and ttl > 0)):
        return compute()
    expiry = ttl if policy == "ttl" else None
    backend = _quietly("setup", backend_for, settings)
    if backend is None:
        return compute()
    where = (ctx.org_id, ctx.source_id, cache_key(ctx, request_key, row_context))
    hit = _quietly("read", backend.get, *where)
    if hit is not None:
        return hit
    with _key_locks.hold((id(backend), *where)):
        # Whoever held the lock before us may have just stored the answer.
        hit = _quietly("read", backend.get, *where)
        if hit is not None:
            return hit
        other_processes = _quietly(
            "lock", backend.cross_process_lock, *where, ctx.limits.timeout_seconds, default=None
        )
        with other_processes or nullcontext():
            if other_processes is not None:
                hit = _quietly("read", backend.get, *where)
                if hit is not None:
                    return hit
            table = compute()
            _quietly("write", backend.put, *where, table, expiry)
        # A new version (definition or data changed, maybe in another process): free the old entries.
        pruned = (id(backend), ctx.org_id, ctx.source_id, int(ctx.version))
        if pruned not in _pruned:
            _quietly("cleanup", backend.drop_versions_before, ctx.org_id, ctx.source_id, int(ctx.version))
            if len(_pruned) > 100_000:  # only saves repeated cleanups: forgetting is harmless
                _pruned.clear()
            _pruned.add(pruned)
    return table


def invalidate_source(settings, org_id: int, source_id: int) -> None:
    """Drop every entry of the source, all versions (call it when the source changes: a version bump makes
    the old entries unreachable already; this frees their space)."""
    backend_for(settings).invalidate_source(org_id, source_id)


def forget_source(settings, org_id: int, source_id: int) -> None:
    """``invalidate_source`` for a caller whose change is committed already: a failure is only logged."""
    _quietly("cleanup", invalidate_source, settings, org_id, source_id)


def invalidate_org(settings, org_id: int) -> None:
    """Drop every entry of the organization (when it is deleted)."""
    backend_for(settings).invalidate_org(org_id)
