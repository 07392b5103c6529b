"""gateway/shared_store.py against a real redis-server: several stores, one set of sessions.

Each store stands in for a gateway process (the gateway-level tests are in
test_replicas.py). Redis runs as production must run it (airlock/testing/redis_server.py):
append-only, fsync on every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from airlock.core import session as lc
from airlock.core.grants import parse_grant
from airlock.core.session_merge import SessionDelta, delta, from_stored, merge
from airlock.gateway.shared_store import _APPLY, RedisSessionStore, StoreUnavailable, _pairs, _s
from airlock.testing.redis_server import RedisServer

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0,
    reason="redis-server is not installed (./dev setup installs it)",
)

LIMITS = lc.Limits(idle_timeout=600, lifetime=3600, max_requests=10, max_bytes=10**9)
HOSTS = frozenset({"github.com"})


def _session(**kw: object) -> lc.Session:
    s = lc.create_session(
        grants=(parse_grant("github.com/acme/app:read", HOSTS),), now=time.time(), limits=LIMITS
    )
    return s if not kw else lc.Session(**{**s.__dict__, **kw})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.kill()


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``cond()`` holds (the loop keeps running meanwhile)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def _known(store: RedisSessionStore, sid: str) -> bool:
    return store.get(sid) is not None


def _revoked(store: RedisSessionStore, sid: str) -> bool:
    s = store.get(sid)
    return s is not None and s.state is lc.SessionState.REVOKED


@contextlib.asynccontextmanager
async def _stores(url: str, n: int) -> AsyncIterator[list[RedisSessionStore]]:
    stores = [RedisSessionStore(url) for _ in range(n)]
    for s in stores:
        await s.run()
    try:
        yield stores
    finally:
        for s in stores:
            s.close()


async def test_a_session_created_through_one_store_is_served_by_another(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: b.get(s.id) is not None, 1.0)
        assert b.get(s.id) == s
        assert b.by_proxy_token("nothing") == []


async def test_a_revocation_reaches_every_other_store_within_a_second(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 3) as stores:
        delays = []
        for i in range(30):
            s = _session()
            stores[i % 3].put(s)
            await _until(lambda: all(_known(x, s.id) for x in stores), 1.0)  # noqa: B023
            revoker, servers = stores[(i + 1) % 3], [stores[i % 3], stores[(i + 2) % 3]]
            t0 = time.monotonic()
            revoker.put(lc.revoke(revoker.get(s.id) or s, "operator"))
            await _until(lambda: all(_revoked(x, s.id) for x in servers), 1.0)  # noqa: B023
            delays.append(time.monotonic() - t0)
        assert max(delays) < 1.0, delays


async def test_a_stale_copy_writing_usage_never_undoes_a_revocation(server: RedisServer) -> None:
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: b.get(s.id) is not None)
        stale = b.get(s.id)
        assert stale is not None
        a.put(lc.revoke(s, "operator"))
        # b writes a busy, active copy before it can have heard (same loop turn).
        b.put(lc.finish_request(lc.begin_request(stale), now=time.time(), nbytes=7, success=True))
        b.flush()
        await _until(lambda: _revoked(a, s.id) and _revoked(b, s.id))
        fresh = RedisSessionStore(server.url)
        got = fresh.get(s.id)
        fresh.close()
        assert got is not None and got.state is lc.SessionState.REVOKED
        assert got.revoked_reason == "operator" and got.requests == 1 and got.bytes == 7


async def test_a_stale_activation_never_revives_a_revoked_session(server: RedisServer) -> None:
    """b revokes a pending session; a, not yet told, activates its copy: still revoked."""
    async with _stores(server.url, 2) as (a, b):
        s = _session(state=lc.SessionState.PENDING)
        a.put(s)
        await _until(lambda: _known(b, s.id))
        stale = a.get(s.id)
        assert stale is not None
        b.put(lc.revoke(b.get(s.id) or s, "operator"))
        a.put(lc.activate(stale, lc.Binding("c" * 64, "net", "10.1.0.2")))
        await _until(lambda: _revoked(a, s.id) and _revoked(b, s.id))
        fresh = RedisSessionStore(server.url)
        got = fresh.get(s.id)
        fresh.close()
        assert got is not None and got.state is lc.SessionState.REVOKED


async def test_requests_are_counted_once_across_stores_to_exactly_the_cap(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 3) as stores:
        s = _session()
        stores[0].put(s)
        await _until(lambda: all(x.get(s.id) is not None for x in stores))
        admitted = [stores[i % 3].begin_request(stores[i % 3].get(s.id) or s) for i in range(25)]
        assert admitted.count(True) == LIMITS.max_requests
        assert admitted[: LIMITS.max_requests] == [True] * LIMITS.max_requests
        for x in stores:
            x.flush()
        check = RedisSessionStore(server.url)
        assert (check.get(s.id) or s).requests == LIMITS.max_requests
        check.close()


async def test_a_revoked_session_is_not_admitted_by_a_store_that_has_not_heard(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: b.get(s.id) is not None)
        stale = b.get(s.id)
        assert stale is not None
        a.put(lc.revoke(s, "operator"))
        # Same loop turn: b's copy is still active, but the count in Redis says no.
        assert b.get(s.id) == stale
        assert b.begin_request(stale) is False
        assert (b.get(s.id) or stale).state is lc.SessionState.REVOKED


async def test_an_acknowledged_revocation_survives_a_redis_crash(server: RedisServer) -> None:
    async with _stores(server.url, 1) as (a,):
        ids = []
        for _ in range(20):
            s = _session()
            a.put(s)
            a.put(lc.revoke(s, "operator"))  # returned: acknowledged
            ids.append(s.id)
    server.kill()  # SIGKILL right after the last acknowledgement
    server.start()
    fresh = RedisSessionStore(server.url)
    try:
        for sid in ids:
            got = fresh.get(sid)
            assert got is not None and got.state is lc.SessionState.REVOKED, sid
    finally:
        fresh.close()


async def test_the_store_unreachable_fails_closed_and_recovers_by_itself(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: b.get(s.id) is not None)
        server.stop()
        down = await _until(lambda: not a.available and not b.available, 2.0)
        assert down < 1.5  # its connection closes with the server: at once, plus scheduling
        # Nothing is authorised, nothing is acknowledged.
        assert a.get(s.id) is None and list(a) == [] and not a.live_bound_to("10.0.0.1")
        with pytest.raises(StoreUnavailable):
            a.put(lc.revoke(s, "operator"))
        with pytest.raises(StoreUnavailable):
            a.begin_request(s)
        with pytest.raises(StoreUnavailable):
            a.put(_session())
        # The revocation that failed was not kept as if done.
        assert a._cache.get(s.id) == s
        b.put(lc.begin_request(s), durable=False)  # usage held back while down
        server.start()
        up = await _until(lambda: a.available and b.available, 5.0)
        assert up < 3.0
        assert a.get(s.id) is not None
        b.flush()
        check = RedisSessionStore(server.url)
        assert (check.get(s.id) or s).requests == 1  # the held-back request was written
        check.close()


async def test_a_store_cut_off_refuses_and_reads_what_it_missed_when_back(
    tmp_path: Path,
) -> None:
    """A partition: a firewall rule drops a's traffic to Redis (a reaches it at 127.0.0.2,
    b at 127.0.0.1). b revokes meanwhile; a refuses while cut off, and the first moment it
    is available again it already knows of the revocation."""
    srv = RedisServer(tmp_path / "redis", addresses=("127.0.0.1", "127.0.0.2"))
    srv.start()
    a, b = RedisSessionStore(srv.url_at("127.0.0.2")), RedisSessionStore(srv.url)
    try:
        await a.run()
        await b.run()
        s = _session()
        a.put(s)
        await _until(lambda: b.get(s.id) is not None)
        with _partition("127.0.0.2", srv.port):
            b.put(lc.revoke(b.get(s.id) or s, "operator"))
            cut = await _until(lambda: not a.available, 2.0)
            assert cut < 1.5  # the ping interval (0.25 s) and its timeout (0.5 s), plus scheduling
            assert a.get(s.id) is None
            await asyncio.sleep(1.0)
            assert not a.available and b.available
        await _until(lambda: a.available, 5.0)
        got = a.get(s.id)
        assert got is not None and got.state is lc.SessionState.REVOKED
    finally:
        a.close()
        b.close()
        srv.kill()


@contextlib.contextmanager
def _dropped(name: str, *matches: str) -> Iterator[None]:
    """Loopback packets matching any of ``matches`` (nft match expressions) dropped, in a
    table of their own that goes when the block ends."""
    table = f"airlock_test_{name}"
    drops = "".join(f"    {m} drop\n" for m in matches)
    rules = (
        f"table ip {table} {{\n  chain out {{\n    type filter hook output priority 0;\n"
        f"{drops}  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=True)


def _partition(address: str, port: int) -> contextlib.AbstractContextManager[None]:
    """Everything between ``address`` and Redis's ``port`` dropped, both ways."""
    return _dropped(
        f"partition_{port}",
        f"ip daddr {address} tcp dport {port}",
        f"ip saddr {address} tcp sport {port}",
    )


def _partition_port(port: int) -> contextlib.AbstractContextManager[None]:
    """Drop one loopback TCP connection's packets both ways (by its client's port)."""
    return _dropped(f"conn_{port}", f"tcp sport {port}", f"tcp dport {port}")


def test_the_lua_merge_is_the_python_merge(server: RedisServer) -> None:
    """Random-ish deltas through the real script and through core/session_merge.merge."""
    client = redis.Redis.from_url(server.url)
    script = client.register_script(_APPLY)
    base = _session()
    steps: list[lc.Session] = [
        lc.begin_request(base),
        lc.finish_request(
            lc.begin_request(base), now=base.last_used + 5, nbytes=10**13, success=True
        ),
        lc.record_push(
            lc.begin_push(base), "github.com/acme/app", frozenset({"refs/heads/x"}), frozenset()
        ),
        lc.record_pull(base, "github.com/acme/app", 3, "PR_3"),
        lc.revoke(base, "first"),
        lc.revoke(base, "second"),
        lc.Session(**{**base.__dict__, "labels": {"k": "v"}}),
    ]
    keys = [f"t:s:{base.id}", f"t:s:{base.id}:refs", f"t:s:{base.id}:pulls", "t:sessions"]
    stored = merge(None, delta(None, base))
    raw = script(keys, [delta(None, base).to_wire(), "t:changed", "", "", ""])
    for new in steps:
        d = delta(base, new)
        stored = merge(stored, d)
        raw = script(keys, [d.to_wire(), "t:changed", "", "", ""])
    got = from_stored(_pairs(raw[1]), map(_s, raw[2]), map(_s, raw[3]))
    assert got == stored
    assert got.requests == 2 and got.bytes == 10**13 and got.revoked_reason == "first"
    assert json.loads(SessionDelta(base.id).to_wire())["publish"] is False
    client.close()


async def test_a_byte_budget_spent_through_one_store_stops_requests_on_another(
    server: RedisServer,
) -> None:
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: _known(b, s.id))
        assert a.begin_request(s)
        spent = lc.finish_request(
            a.get(s.id) or s, now=time.time(), nbytes=LIMITS.max_bytes, success=True
        )
        a.put(spent, durable=False)
        a.flush()
        # b's copy still says 0 bytes; the count in Redis says the budget is gone.
        stale = b.get(s.id)
        assert stale is not None and stale.bytes == 0
        assert b.begin_request(stale) is False
        assert (b.get(s.id) or stale).bytes == LIMITS.max_bytes


async def test_a_revocation_reaches_a_store_holding_back_an_empty_change(
    server: RedisServer,
) -> None:
    """b counted a request that moved nothing (a refused fetch), so its copy is marked as
    changed with nothing to write; a's revocation must still reach it."""
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: _known(b, s.id))
        assert b.begin_request(b.get(s.id) or s)
        b.put(b.get(s.id) or s, durable=False)  # finish_request with 0 bytes, no use
        a.put(lc.revoke(a.get(s.id) or s, "operator"))
        await _until(lambda: _revoked(b, s.id), 1.0)


async def test_a_body_change_reaches_a_store_holding_back_usage(server: RedisServer) -> None:
    """a changes the body (a renewal's certificate, here a label) while b holds back usage
    of the same session: b must take the new body, not keep its own."""
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: _known(b, s.id))
        busy = lc.finish_request(b.get(s.id) or s, now=time.time(), nbytes=9, success=True)
        b.put(busy, durable=False)
        a.put(lc.Session(**{**(a.get(s.id) or s).__dict__, "cert_fingerprint": "f" * 64}))
        await _until(lambda: (b.get(s.id) or s).cert_fingerprint == "f" * 64, 1.0)
        assert (b.get(s.id) or s).bytes == 9


async def test_a_silently_dead_subscription_is_noticed(server: RedisServer) -> None:
    """Only a's subscription connection is cut (its packets dropped: what a NAT that forgot
    an idle connection does), its other connections work: a must stop serving, because it
    can no longer hear revocations, and catch up when the connection is back."""
    async with _stores(server.url, 2) as (a, b):
        s = _session()
        a.put(s)
        await _until(lambda: _known(b, s.id))
        client = redis.Redis.from_url(server.url)
        subscribers = [c for c in client.client_list(_type="pubsub")]
        client.close()
        assert len(subscribers) == 2
        # Which one is a's? Cut one; the one whose store goes unavailable is a.
        port = int(subscribers[0]["addr"].rpartition(":")[2])
        with _partition_port(port):
            cut = await _until(lambda: not a.available or not b.available, 2.0)
            assert cut < 1.5
            deaf, other = (a, b) if not a.available else (b, a)
            other.put(lc.revoke(other.get(s.id) or s, "operator"))
            assert deaf.get(s.id) is None  # it serves nothing while it cannot hear
        await _until(lambda: deaf.available, 5.0)
        assert _revoked(deaf, s.id)
