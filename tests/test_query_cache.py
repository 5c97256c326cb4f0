"""The result cache of source reads (carnet.query.cache), on each backend: in memory, on disk, and in the
real Redis at 127.0.0.1:6379 (keys under a random prefix, removed afterwards).

Each test counts how often the read itself (``compute``) runs: a hit must not run it, a miss must."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pyarrow as pa
import pytest
import redis
import requests

from carnet.db import session_scope
from carnet.db.models import DataSource
from carnet.query import cache as query_cache
from carnet.query.cache import cache_dir, cached_read, invalidate_org, invalidate_source, request_key_of
from carnet.settings import CarnetSettings
from carnet.sources import SourceContext
from carnet.warehouse import Warehouse
from tests.api_support import api_url, assert_json_error, auth, unique

REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ("memory", "disk", "redis")


@pytest.fixture(autouse=True)
def fresh_backends(monkeypatch):
    """Each test gets new backend instances (the memory cache of one test is not another's)."""
    monkeypatch.setattr(query_cache, "_backends", {})
    monkeypatch.setattr(query_cache, "_pruned", set())


def make_settings(tmp_path, backend: str, **extra) -> CarnetSettings:
    prefix = f"carnet-test:{uuid.uuid4().hex}:"
    return CarnetSettings(
        data_dir=str(tmp_path),
        cache_backend=backend,
        cache_redis_url=REDIS_URL,
        cache_redis_prefix=prefix,
        **extra,
    )


def redis_keys(settings) -> list[bytes]:
    return sorted(redis.Redis.from_url(REDIS_URL).keys(settings.cache_redis_prefix + "*"))


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path):
    settings = make_settings(tmp_path, request.param)
    yield settings
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=settings.cache_redis_prefix + "*"):
            client.delete(key)
        # Locks live under "lock:<prefix>...".
        for key in client.scan_iter(match="lock:" + settings.cache_redis_prefix + "*"):
            client.delete(key)


def ctx(settings, org_id=1, source_id=7, version=1, kind="warehouse_table") -> SourceContext:
    return SourceContext(
        settings=settings,
        org_id=org_id,
        name="orders",
        kind=kind,
        options={},
        source_id=source_id,
        version=version,
    )


class Reader:
    """A stand-in for a source read: counts its calls and answers a table naming the call."""

    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> pa.Table:
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        return pa.table({"call": [n] * 3, "amount": [1.5, 2.5, None]})


def read(settings, context, reader, *, policy="invalidate", ttl=None, request=None, row_context=""):
    key = request_key_of(request if request is not None else {"limit": 10}, {})
    return cached_read(
        settings, context, policy=policy, ttl=ttl, request_key=key, row_context=row_context, compute=reader
    )


# -- behaviour common to the three backends ----------------------------------------------------------------
def test_a_second_identical_request_is_a_hit_and_a_different_one_a_miss(settings):
    reader = Reader()
    first = read(settings, ctx(settings), reader)
    second = read(settings, ctx(settings), reader)
    assert reader.calls == 1
    assert second.equals(first) and second.column("amount").null_count == 1  # types and nulls survive
    other = read(settings, ctx(settings), reader, request={"limit": 11})
    assert reader.calls == 2 and other.column("call")[0].as_py() == 2


def test_the_request_key_is_canonical_json(settings):
    reader = Reader()
    spec_a = {"columns": ["a", "b"], "limit": 5}
    spec_b = {"limit": 5, "columns": ["a", "b"]}  # same request, keys in another order
    cached_read(
        settings,
        ctx(settings),
        policy="invalidate",
        ttl=None,
        request_key=request_key_of(spec_a, {"customer": "x"}),
        row_context="",
        compute=reader,
    )
    cached_read(
        settings,
        ctx(settings),
        policy="invalidate",
        ttl=None,
        request_key=request_key_of(spec_b, {"customer": "x"}),
        row_context="",
        compute=reader,
    )
    assert reader.calls == 1
    # Other variables: another database, maybe; another entry.
    cached_read(
        settings,
        ctx(settings),
        policy="invalidate",
        ttl=None,
        request_key=request_key_of(spec_a, {"customer": "y"}),
        row_context="",
        compute=reader,
    )
    assert reader.calls == 2


def test_policy_none_always_reads_and_stores_nothing(settings, tmp_path):
    reader = Reader()
    for _ in range(3):
        read(settings, ctx(settings), reader, policy="none")
    assert reader.calls == 3
    assert not (tmp_path / "cache").exists()
    if settings.cache_backend == "redis":
        assert redis_keys(settings) == []


def test_ttl_entries_expire(settings):
    reader = Reader()
    read(settings, ctx(settings), reader, policy="ttl", ttl=1)
    read(settings, ctx(settings), reader, policy="ttl", ttl=1)
    assert reader.calls == 1
    time.sleep(1.2)
    read(settings, ctx(settings), reader, policy="ttl", ttl=1)
    assert reader.calls == 2
    if settings.cache_backend == "redis":  # expired by Redis itself (PEXPIRE), not only ignored
        client = redis.Redis.from_url(REDIS_URL)
        (key,) = redis_keys(settings)
        assert 0 < client.pttl(key) <= 1000


def test_a_new_source_version_misses(settings):
    reader = Reader()
    read(settings, ctx(settings, version=1), reader)
    changed = read(settings, ctx(settings, version=2), reader)
    assert reader.calls == 2 and changed.column("call")[0].as_py() == 2


def stored_entries(settings) -> int:
    backend = query_cache.backend_for(settings)
    if settings.cache_backend == "memory":
        return len(backend._entries)
    if settings.cache_backend == "disk":
        return len(list(backend.root.glob("*/*/*.arrow")))
    return len(redis_keys(settings))


def test_reading_a_new_version_drops_the_older_versions_entries(settings):
    reader = Reader()
    read(settings, ctx(settings, version=1), reader, request={"q": 1})
    read(settings, ctx(settings, version=1), reader, request={"q": 2})
    read(settings, ctx(settings, source_id=8, version=1), reader)  # another source: kept
    assert stored_entries(settings) == 3
    read(settings, ctx(settings, version=2), reader, request={"q": 1})
    assert stored_entries(settings) == 2
    assert reader.calls == 4
    read(settings, ctx(settings, source_id=8, version=1), reader)
    assert reader.calls == 4


def test_row_contexts_never_share_an_entry(settings):
    reader = Reader()
    alice = read(settings, ctx(settings), reader, row_context='{"user":1,"rules":["region=EU"]}')
    bob = read(settings, ctx(settings), reader, row_context='{"user":2,"rules":["region=US"]}')
    public = read(settings, ctx(settings), reader, row_context="public")
    assert reader.calls == 3
    assert [t.column("call")[0].as_py() for t in (alice, bob, public)] == [1, 2, 3]
    again = read(settings, ctx(settings), reader, row_context='{"user":1,"rules":["region=EU"]}')
    assert reader.calls == 3 and again.equals(alice)


def test_row_context_is_a_required_argument(settings):
    with pytest.raises(TypeError):
        cached_read(settings, ctx(settings), policy="none", ttl=None, request_key="{}", compute=Reader())
    with pytest.raises(TypeError):  # None is not "no row rule": that must be said with ""
        cached_read(
            settings,
            ctx(settings),
            policy="invalidate",
            ttl=None,
            request_key="{}",
            row_context=None,
            compute=Reader(),
        )


def test_two_orgs_never_share_an_entry_even_with_the_same_source_id(settings, tmp_path):
    acme, globex = Reader(), Reader()
    read(settings, ctx(settings, org_id=1, source_id=5), acme)
    theirs = read(settings, ctx(settings, org_id=2, source_id=5), globex)
    assert (acme.calls, globex.calls) == (1, 1)
    assert theirs.column("call")[0].as_py() == 1  # globex's own read, not acme's table
    if settings.cache_backend == "disk":  # one folder per org: removing an org's folder removes its cache
        assert [p.name for p in (tmp_path / "cache" / "1" / "5").iterdir()] != []
        assert [p.name for p in (tmp_path / "cache" / "2" / "5").iterdir()] != []
    if settings.cache_backend == "redis":
        keys = [k.decode() for k in redis_keys(settings)]
        assert sorted(k.split(":")[2:4] for k in keys) == [["1", "5"], ["2", "5"]]
    invalidate_org(settings, 1)
    read(settings, ctx(settings, org_id=1, source_id=5), acme)
    read(settings, ctx(settings, org_id=2, source_id=5), globex)
    assert (acme.calls, globex.calls) == (2, 1)


def test_invalidate_source_removes_its_entries_of_every_version_only(settings):
    reader, other = Reader(), Reader()
    read(settings, ctx(settings, version=1), reader)
    read(settings, ctx(settings, version=2), reader)
    read(settings, ctx(settings, source_id=8), other)
    invalidate_source(settings, 1, 7)
    read(settings, ctx(settings, version=1), reader)
    read(settings, ctx(settings, version=2), reader)
    read(settings, ctx(settings, source_id=8), other)
    assert (reader.calls, other.calls) == (4, 1)


def test_concurrent_identical_requests_read_once(settings):
    reader = Reader(delay=0.3)
    start = threading.Barrier(8)
    results = []

    def worker():
        start.wait()
        results.append(read(settings, ctx(settings), reader))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert reader.calls == 1
    assert len(results) == 8 and all(r.equals(results[0]) for r in results)


def test_a_source_without_id_is_never_cached(settings):
    reader = Reader()
    context = ctx(settings)
    context.source_id = None  # e.g. an ad-hoc read that no source row stands for
    read(settings, context, reader)
    read(settings, context, reader)
    assert reader.calls == 2


# -- size caps (memory and disk; Redis is bounded by its own maxmemory) ------------------------------------
def entry_size(tmp_path) -> int:
    """Bytes one Reader table takes in the cache (the same for each call number)."""
    from carnet.query.cache_backends import to_ipc

    return len(to_ipc(Reader()()))


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_the_size_cap_evicts_the_least_recently_used_entry(tmp_path, backend):
    size = entry_size(tmp_path)
    # Room for two entries (disk files carry the expiry metadata too: a little slack), not three.
    settings = make_settings(tmp_path, backend, cache_max_bytes=2 * size + 200)
    reader = Reader()
    read(settings, ctx(settings), reader, request={"q": "a"})
    time.sleep(0.02)  # distinct last-use times on disk
    read(settings, ctx(settings), reader, request={"q": "b"})
    time.sleep(0.02)
    read(settings, ctx(settings), reader, request={"q": "a"})  # a is now the most recently used
    assert reader.calls == 2
    time.sleep(0.02)
    read(settings, ctx(settings), reader, request={"q": "c"})  # evicts b
    assert reader.calls == 3
    read(settings, ctx(settings), reader, request={"q": "a"})
    read(settings, ctx(settings), reader, request={"q": "c"})
    assert reader.calls == 3
    read(settings, ctx(settings), reader, request={"q": "b"})
    assert reader.calls == 4
    backend_obj = query_cache.backend_for(settings)
    assert backend_obj.size() <= settings.cache_max_bytes


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_a_result_bigger_than_the_cap_is_returned_but_not_stored(tmp_path, backend):
    settings = make_settings(tmp_path, backend, cache_max_bytes=100)
    reader = Reader()
    assert read(settings, ctx(settings), reader).num_rows == 3
    read(settings, ctx(settings), reader)
    assert reader.calls == 2
    assert query_cache.backend_for(settings).size() == 0


# -- damaged entries and a missing cache -------------------------------------------------------------------
def test_a_corrupted_disk_entry_is_a_miss_and_is_removed(tmp_path):
    settings = make_settings(tmp_path, "disk")
    reader = Reader()
    read(settings, ctx(settings), reader)
    (entry,) = (tmp_path / "cache" / "1" / "7").glob("*.arrow")
    entry.write_bytes(entry.read_bytes()[:40])  # truncated, as by a crash or a full disk
    fresh = read(settings, ctx(settings), reader)
    assert reader.calls == 2 and fresh.column("call")[0].as_py() == 2
    # Replaced by the new read's entry, which is whole again.
    assert read(settings, ctx(settings), reader).equals(fresh) and reader.calls == 2
    entry.write_bytes(b"not arrow at all")
    query_cache.backend_for(settings).get(1, 7, entry.stem)
    assert not entry.exists()


def test_a_corrupted_redis_entry_is_a_miss_and_is_replaced(tmp_path):
    settings = make_settings(tmp_path, "redis")
    reader = Reader()
    read(settings, ctx(settings), reader)
    client = redis.Redis.from_url(REDIS_URL)
    (key,) = redis_keys(settings)
    try:
        client.set(key, b"garbage")
        read(settings, ctx(settings), reader)
        assert reader.calls == 2
        assert client.get(key) != b"garbage"
    finally:
        client.delete(key)


def test_an_unreachable_redis_never_fails_a_read(tmp_path):
    settings = make_settings(tmp_path, "redis")
    settings.cache_redis_url = "redis://127.0.0.1:1/0"  # nothing listens there
    reader = Reader()
    assert read(settings, ctx(settings), reader).num_rows == 3
    assert read(settings, ctx(settings), reader).num_rows == 3
    assert reader.calls == 2


def test_an_unknown_policy_is_refused(settings):
    with pytest.raises(ValueError, match="policy"):
        read(settings, ctx(settings), Reader(), policy="forever")


def test_the_backend_setting_accepts_only_known_names(monkeypatch, tmp_path):
    with pytest.raises(Exception, match="memory, disk or redis"):
        CarnetSettings(data_dir=str(tmp_path), cache_backend="memcached")
    monkeypatch.setenv("CARNET_CACHE_BACKEND", "memory")
    assert CarnetSettings(data_dir=str(tmp_path)).cache_backend == "memory"
    monkeypatch.delenv("CARNET_CACHE_BACKEND")
    assert CarnetSettings(data_dir=str(tmp_path)).cache_backend == "disk"


# -- several processes on one Redis ------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from carnet.query.cache import cached_read
    from carnet.settings import CarnetSettings
    from carnet.sources import SourceContext

    data_dir, prefix, log, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    settings = CarnetSettings(data_dir=data_dir, cache_backend="redis", cache_redis_prefix=prefix)
    ctx = SourceContext(settings=settings, org_id=1, name="s", kind="k", options={}, source_id=3)

    def compute():
        with open(log, "a") as out:
            out.write("computed\\n")
        time.sleep(1.0)
        return pa.table({"x": [1, 2]})

    time.sleep(max(0.0, start_at - time.time()))
    table = cached_read(settings, ctx, policy="invalidate", ttl=None, request_key="{}", row_context="",
                        compute=compute)
    print(table.num_rows)
    """
)


def test_identical_requests_in_two_processes_read_once_with_redis(tmp_path):
    settings = make_settings(tmp_path, "redis")
    log = tmp_path / "computed.log"
    start_at = str(time.time() + 3)  # both children past their imports
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), settings.cache_redis_prefix, str(log), start_at],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=60)[0].strip() for child in children]
        assert outputs == ["2", "2"]
        assert log.read_text().splitlines() == ["computed"]
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match="*" + settings.cache_redis_prefix + "*"):
            client.delete(key)


# -- the REST routes, on the real stack (disk backend, the embedded default) -------------------------------
@pytest.fixture(scope="module")
def studio(hub_token):
    return auth(hub_token("studio@acme.example"))


def replace_rows(stack, org_id: int, table: str, n: int) -> None:
    """Change the warehouse table behind a source without telling Carnet (no version bump)."""
    Warehouse(stack.settings.warehouse_path(org_id)).replace_table(table, pa.table({"n": list(range(n))}))


@pytest.fixture
def cached_source(carnet_stack, studio, admin, created):
    acme = created.org_id("acme")
    table = f"cache_{uuid.uuid4().hex[:10]}"
    replace_rows(carnet_stack, acme, table, 3)
    name = unique("cache-src")
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=studio,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    yield {"name": name, "id": made.json()["id"], "table": table, "org_id": acme}
    requests.delete(api_url(carnet_stack, f"sources/{name}"), headers=admin, timeout=30)


def query_rows(stack, headers, name) -> int:
    response = requests.post(api_url(stack, f"sources/{name}/query"), json={}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return pa.ipc.open_stream(response.content).read_all().num_rows


def stored_policy(stack, source_id: int) -> tuple:
    with session_scope(stack.settings.db_url) as session:
        row = session.get(DataSource, source_id)
        return row.cache_policy, row.cache_ttl_seconds


def last_event(stack, admin, action: str, target: str) -> dict:
    events = requests.get(api_url(stack, "audit"), params={"action": action}, headers=admin, timeout=30)
    return next(e for e in events.json()["events"] if e["target"] == target)


def test_a_cached_source_answers_from_the_cache_until_invalidated(carnet_stack, studio, admin, cached_source):
    stack, name = carnet_stack, cached_source["name"]
    entries = cache_dir(stack.settings) / str(cached_source["org_id"]) / str(cached_source["id"])
    # Not cached by default: a change of the table shows at once.
    assert query_rows(stack, studio, name) == 3
    replace_rows(stack, cached_source["org_id"], cached_source["table"], 4)
    assert query_rows(stack, studio, name) == 4
    assert not entries.exists()

    response = requests.put(
        api_url(stack, f"sources/{name}/cache"), json={"policy": "invalidate"}, headers=studio, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"policy": "invalidate", "ttl_seconds": None}
    assert stored_policy(stack, cached_source["id"]) == ("invalidate", None)
    event = last_event(stack, admin, "source.cache.policy", f"source/{name}")
    assert event["actor"] == "studio@acme.example"
    assert (event["details"]["policy"], event["details"]["ttl_seconds"]) == ("invalidate", None)

    assert query_rows(stack, studio, name) == 4
    assert len(list(entries.glob("*.arrow"))) == 1
    # The table changed behind Carnet's back (no version bump): the cached answer is served.
    replace_rows(stack, cached_source["org_id"], cached_source["table"], 5)
    assert query_rows(stack, studio, name) == 4

    gone = requests.delete(api_url(stack, f"sources/{name}/cache"), headers=studio, timeout=30)
    assert gone.status_code == 204, gone.text
    assert not entries.exists()
    event = last_event(stack, admin, "source.cache.invalidate", f"source/{name}")
    assert event["actor"] == "studio@acme.example" and event["details"]["source_id"] == cached_source["id"]
    assert query_rows(stack, studio, name) == 5

    # Back to no cache: entries dropped, every query reads the table.
    response = requests.put(
        api_url(stack, f"sources/{name}/cache"), json={"policy": "none"}, headers=studio, timeout=30
    )
    assert response.status_code == 200 and not entries.exists()
    replace_rows(stack, cached_source["org_id"], cached_source["table"], 6)
    assert query_rows(stack, studio, name) == 6


def test_changing_or_deleting_a_source_drops_its_cached_answers(carnet_stack, studio, cached_source):
    stack, name = carnet_stack, cached_source["name"]
    entries = cache_dir(stack.settings) / str(cached_source["org_id"]) / str(cached_source["id"])
    response = requests.put(
        api_url(stack, f"sources/{name}/cache"), json={"policy": "invalidate"}, headers=studio, timeout=30
    )
    assert response.status_code == 200, response.text
    assert query_rows(stack, studio, name) == 3
    (first,) = entries.glob("*.arrow")
    replace_rows(stack, cached_source["org_id"], cached_source["table"], 8)
    # Any change of the definition is a new version: the next query misses, the old entry is dropped.
    changed = requests.patch(
        api_url(stack, f"sources/{name}"), json={"description": "changed"}, headers=studio, timeout=30
    )
    assert changed.status_code == 200, changed.text
    assert query_rows(stack, studio, name) == 8
    (second,) = entries.glob("*.arrow")
    assert second.name != first.name and not first.exists()
    gone = requests.delete(api_url(stack, f"sources/{name}"), headers=studio, timeout=30)
    assert gone.status_code == 204
    assert not entries.exists()


def test_a_ttl_policy_is_stored_and_its_answers_expire(carnet_stack, studio, cached_source):
    stack, name = carnet_stack, cached_source["name"]
    response = requests.put(
        api_url(stack, f"sources/{name}/cache"),
        json={"policy": "ttl", "ttl_seconds": 1},
        headers=studio,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert stored_policy(stack, cached_source["id"]) == ("ttl", 1)
    assert query_rows(stack, studio, name) == 3
    replace_rows(stack, cached_source["org_id"], cached_source["table"], 7)
    assert query_rows(stack, studio, name) == 3
    time.sleep(1.2)
    assert query_rows(stack, studio, name) == 7


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"policy": "forever"}, "policy", id="unknown-policy"),
        pytest.param({}, "policy", id="no-policy"),
        pytest.param({"policy": "ttl"}, "ttl_seconds", id="ttl-missing"),
        pytest.param({"policy": "ttl", "ttl_seconds": 0}, "ttl_seconds", id="ttl-zero"),
        pytest.param({"policy": "ttl", "ttl_seconds": -5}, "ttl_seconds", id="ttl-negative"),
        pytest.param({"policy": "ttl", "ttl_seconds": "60"}, "ttl_seconds", id="ttl-text"),
        pytest.param({"policy": "ttl", "ttl_seconds": True}, "ttl_seconds", id="ttl-boolean"),
        pytest.param({"policy": "ttl", "ttl_seconds": 1.5}, "ttl_seconds", id="ttl-fraction"),
        pytest.param({"policy": "ttl", "ttl_seconds": 10**12}, "ttl_seconds", id="ttl-huge"),
        pytest.param({"policy": "none", "ttl_seconds": 60}, "ttl_seconds", id="ttl-without-ttl-policy"),
        pytest.param({"policy": "invalidate", "version": 9}, "version", id="unknown-field"),
    ],
)
def test_bad_cache_policies_are_refused_and_change_nothing(carnet_stack, studio, cached_source, body, field):
    response = requests.put(
        api_url(carnet_stack, f"sources/{cached_source['name']}/cache"), json=body, headers=studio, timeout=30
    )
    assert_json_error(response, 400)
    assert response.json()["field"] == field
    assert stored_policy(carnet_stack, cached_source["id"]) == ("none", None)


def test_a_body_that_is_not_an_object_is_refused(carnet_stack, studio, cached_source):
    response = requests.put(
        api_url(carnet_stack, f"sources/{cached_source['name']}/cache"),
        data="[1, 2]",
        headers=studio,
        timeout=30,
    )
    assert_json_error(response, 400)
