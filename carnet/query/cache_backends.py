"""Where cached source results live: in this process, on disk, or in Redis (``carnet.query.cache`` uses them).

Every backend stores one Arrow table per key as Arrow IPC bytes, under a namespace of (org id, source id), so
that a source's entries can be dropped together and an organization's entries never mix with another's. A
backend only stores and forgets: which key to use, and when caching applies at all, is ``query_cache``'s job.

``get`` answers None for a missing, expired or unreadable entry (an unreadable one is also removed): a cache
never turns a read into an error.

Entry names start with the source version they were made for (``v<version>-<hash>``), so the entries of
older versions can be found and dropped (``drop_versions_before``) once a newer version is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

# Schema metadata key holding the wall-clock expiry of a disk entry (absent: no expiry). Removed on read.
EXPIRES_KEY = b"carnet.cache.expires_at"


def to_ipc(table: pa.Table, metadata: dict | None = None) -> bytes:
    schema = table.schema
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table.replace_schema_metadata(schema.metadata))
    return sink.getvalue().to_pybytes()


def from_ipc(data) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(data)).read_all()


def version_of(entry: str) -> int | None:
    """The version of an entry name ``v<version>-<hash>`` (None: not such a name)."""
    head, _, _ = entry.partition("-")
    return int(head[1:]) if head[:1] == "v" and head[1:].isdigit() else None


def _without(table: pa.Table, key: bytes) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata.pop(key, None)
    return table.replace_schema_metadata(metadata or None)


class CacheBackend:
    """Store Arrow tables by (org_id, source_id, digest); ``ttl`` seconds or None (until removed)."""

    def get(self, org_id: int, source_id: int, digest: str) -> pa.Table | None:
        raise NotImplementedError

    def put(self, org_id: int, source_id: int, digest: str, table: pa.Table, ttl: int | None) -> None:
        raise NotImplementedError

    def invalidate_source(self, org_id: int, source_id: int) -> None:
        raise NotImplementedError

    def drop_versions_before(self, org_id: int, source_id: int, version: int) -> None:
        """Remove the source's entries made for versions below ``version`` (unreachable: space only)."""
        raise NotImplementedError

    def invalidate_org(self, org_id: int) -> None:
        raise NotImplementedError

    def cross_process_lock(self, org_id: int, source_id: int, digest: str, timeout: float):
        """A context manager held while computing a missing entry, for other processes (None: none)."""
        return None


class MemoryCache(CacheBackend):
    """In this process: least recently used entries go first once their total size passes ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[bytes, float | None]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, org_id, source_id, digest):
        key = (int(org_id), int(source_id), digest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            data, expires = entry
            if expires is not None and time.time() >= expires:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
        return from_ipc(data)

    def put(self, org_id, source_id, digest, table, ttl):
        data = to_ipc(table)
        if len(data) > self.max_bytes:
            return  # would evict everything and still not fit
        key = (int(org_id), int(source_id), digest)
        expires = time.time() + ttl if ttl else None
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (data, expires)
            self._size += len(data)
            while self._size > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key) -> None:
        data, _ = self._entries.pop(key)
        self._size -= len(data)

    def invalidate_source(self, org_id, source_id):
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (int(org_id), int(source_id))]:
                self._drop(key)

    def invalidate_org(self, org_id):
        with self._lock:
            for key in [k for k in self._entries if k[0] == int(org_id)]:
                self._drop(key)

    def drop_versions_before(self, org_id, source_id, version):
        with self._lock:
            for key in list(self._entries):
                older = (version_of(key[2]) or 0) < version
                if key[:2] == (int(org_id), int(source_id)) and older:
                    self._drop(key)

    def size(self) -> int:
        return self._size


class DiskCache(CacheBackend):
    """Arrow IPC files ``<root>/<org_id>/<source_id>/<digest>.arrow``: one folder per organization (removing
    it removes the org's cache), writes are atomic (temporary file + rename, so a reader never sees half a
    file), and past ``max_bytes`` in all the least recently used files go first. The last use is kept in the
    file's mtime, set on every hit (atime is unreliable: most file systems are mounted noatime/relatime)."""

    def __init__(self, root: Path | str, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._evict_lock = threading.Lock()

    def _path(self, org_id, source_id, digest) -> Path:
        return self.root / str(int(org_id)) / str(int(source_id)) / f"{digest}.arrow"

    def get(self, org_id, source_id, digest):
        path = self._path(org_id, source_id, digest)
        try:
            table = from_ipc(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException) as exc:
            log.warning("Dropping unreadable cache entry %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        expires = (table.schema.metadata or {}).get(EXPIRES_KEY)
        try:
            expired = expires is not None and time.time() >= float(expires)
        except ValueError:
            expired = True
        if expired:
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: the table read is still good
            os.utime(path)
        return _without(table, EXPIRES_KEY)

    def put(self, org_id, source_id, digest, table, ttl):
        metadata = {EXPIRES_KEY: str(time.time() + ttl).encode()} if ttl else None
        data = to_ipc(table, metadata)
        if len(data) > self.max_bytes:
            return
        path = self._path(org_id, source_id, digest)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".arrow")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._evict()

    def _evict(self) -> None:
        """Remove expired files, then the least recently used ones while the total is over the cap."""
        with self._evict_lock:
            files, total, now = [], 0, time.time()
            for path in self.root.glob("*/*/*.arrow"):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
                total += stat.st_size
            files.sort()
            for _, size, path in files:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
            # Leftovers of writers that died between mkstemp and rename.
            for path in self.root.glob("*/*/.tmp-*"):
                try:
                    if now - path.stat().st_mtime > 3600:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass

    def invalidate_source(self, org_id, source_id):
        shutil.rmtree(self.root / str(int(org_id)) / str(int(source_id)), ignore_errors=True)

    def invalidate_org(self, org_id):
        shutil.rmtree(self.root / str(int(org_id)), ignore_errors=True)

    def drop_versions_before(self, org_id, source_id, version):
        folder = self.root / str(int(org_id)) / str(int(source_id))
        for path in folder.glob("*.arrow") if folder.is_dir() else ():
            if (version_of(path.stem) or 0) < version:
                path.unlink(missing_ok=True)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*/*.arrow"))


class RedisCache(CacheBackend):
    """Redis keys ``<prefix><org_id>:<source_id>:<digest>`` (per-org prefix, so an org's keys can be listed
    and dropped alone), expiry by Redis itself (PEXPIRE). Size is bounded by Redis's own maxmemory policy."""

    def __init__(self, url: str, prefix: str = "carnet:cache:", client=None):
        try:
            import redis
        except ImportError:
            from carnet.errors import ValidationError

            raise ValidationError(
                "The redis cache backend needs the redis package: pip install carnet[redis]",
                field="cache_backend",
            ) from None
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _key(self, org_id, source_id, digest) -> str:
        return f"{self.prefix}{int(org_id)}:{int(source_id)}:{digest}"

    def get(self, org_id, source_id, digest):
        key = self._key(org_id, source_id, digest)
        data = self.client.get(key)
        if data is None:
            return None
        try:
            return from_ipc(data)
        except pa.ArrowException as exc:
            log.warning("Dropping unreadable cache entry %s: %s", key, exc)
            self.client.delete(key)
            return None

    def put(self, org_id, source_id, digest, table, ttl):
        key = self._key(org_id, source_id, digest)
        self.client.set(key, to_ipc(table), px=int(ttl * 1000) if ttl else None)

    def _delete_matching(self, pattern: str) -> None:
        batch = []
        for key in self.client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch = []
        if batch:
            self.client.delete(*batch)

    def invalidate_source(self, org_id, source_id):
        self._delete_matching(f"{self.prefix}{int(org_id)}:{int(source_id)}:*")

    def invalidate_org(self, org_id):
        self._delete_matching(f"{self.prefix}{int(org_id)}:*")

    def drop_versions_before(self, org_id, source_id, version):
        start = f"{self.prefix}{int(org_id)}:{int(source_id)}:"
        older = [
            key
            for key in self.client.scan_iter(match=start + "v*", count=500)
            if (version_of(key.decode()[len(start) :]) or 0) < version
        ]
        for i in range(0, len(older), 500):
            self.client.delete(*older[i : i + 500])

    def cross_process_lock(self, org_id, source_id, digest, timeout):
        return _RedisLock(self.client, "lock:" + self._key(org_id, source_id, digest), timeout)


RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class _RedisLock:
    """Best effort: the first process computes, the others wait for it (at most ``timeout``) and then read
    its entry. The lock expires by itself, so a crashed holder only delays the others."""

    def __init__(self, client, key: str, timeout: float):
        self.client, self.key, self.timeout = client, key, timeout
        self.token = json.dumps([os.getpid(), threading.get_ident(), time.time()])

    def __enter__(self):
        deadline = time.monotonic() + self.timeout
        try:
            while not self.client.set(self.key, self.token, nx=True, px=int(self.timeout * 1000) + 1000):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - no lock: compute anyway
            log.warning("Result cache lock failed: %s", type(exc).__name__)
        return self

    def __exit__(self, *exc):
        # Release only our own lock (compare-and-delete), never one taken by another holder after expiry.
        try:
            self.client.eval(RELEASE_SCRIPT, 1, self.key, self.token)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("Result cache unlock failed: %s", type(exc).__name__)
