"""Sessions in Redis, shared by several gateways: one control plane for several hosts.

Each gateway keeps every session in memory, as the SQLite store does (gateway/session_index.py),
and answers a request from there. What it changes it writes to Redis as a delta from the copy
it last read (core/session_merge.py), merged by one Lua script, so two gateways never undo each
other: a revocation stays, counters add up. A change other gateways must hear at once (a
revocation, a new or activated session) is published on a channel in the same script; each
gateway listens (a thread: ``redis-py``'s blocking pub/sub) and reloads that session.

Budgets: a request is counted in Redis before it is let through, by the same script, against
the session's cap, so across gateways exactly ``max_requests`` are served. Bytes, pushes and
the idle clock are written as deltas within ``FLUSH_DELAY``, like the SQLite store's usage.

Fail closed: the listener pings Redis every ``PING_INTERVAL``. While Redis does not answer, the
store is *unavailable*: it finds no session (every request is refused; the git proxy and the
control API say why, 503), and a state change raises :class:`StoreUnavailable` instead of being
acknowledged. When Redis answers again the listener subscribes anew, the store writes what it
held back and reloads every session (what was published meanwhile is not lost: it is read),
and only then is it available again.

Durability is Redis's: the server must run with ``appendonly yes`` and ``appendfsync always``
(airlock/testing/redis_server.py; docs/shared-store.md), so an acknowledged revocation is on disk
before the gateway reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from airlock.core.session import Session
from airlock.core.session_merge import delta, from_stored, with_scalars
from airlock.gateway.session_index import SessionIndex

FLUSH_DELAY = 0.5  # seconds, as gateway/store.py
PING_INTERVAL = 0.25  # seconds between the listener's health checks
TIMEOUT = 0.5  # seconds: a Redis call slower than this counts as Redis unreachable

# KEYS: the session's hash, its created-refs set, its pulls set, the set of all ids.
# ARGV: the delta (core/session_merge.py SessionDelta.to_wire), the channel, the request cap
# to count one request against ("" for none), the byte cap it must still be under, and
# "scalars" or "". Returns false for an unknown session, else {admitted (1/0), the hash's
# fields, the refs, the pulls}: what the gateway caches; with "scalars", {admitted, the
# merged scalar fields}: a request's count needs no more (a change to the body or the sets
# is published, and each gateway reloads the session when it hears).
_APPLY = """
local k, refs, pulls, ids = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local d = cjson.decode(ARGV[1])
local rank = {pending = 0, active = 1, revoked = 2}
if d.body ~= '' then
  redis.call('HSET', k, 'body', d.body)
  redis.call('SADD', ids, d.id)
elseif redis.call('EXISTS', k) == 0 then
  return false
end
local cur = redis.call('HGET', k, 'state')
if d.rank > (cur and rank[cur] or -1) then redis.call('HSET', k, 'state', d.state) end
if d.reason ~= '' then redis.call('HSETNX', k, 'revoked_reason', d.reason) end
for _, name in ipairs({'requests', 'bytes', 'pushes'}) do
  if tonumber(d[name]) ~= 0 then redis.call('HINCRBY', k, name, d[name]) end
end
if d.last_used ~= '' then
  local lu = redis.call('HGET', k, 'last_used')
  if not lu or tonumber(d.last_used) > tonumber(lu) then
    redis.call('HSET', k, 'last_used', d.last_used)
  end
end
for _, m in ipairs(d.refs_add) do redis.call('SADD', refs, m) end
for _, m in ipairs(d.refs_del) do redis.call('SREM', refs, m) end
for _, m in ipairs(d.pulls_add) do redis.call('SADD', pulls, m) end
for _, m in ipairs(d.pulls_del) do redis.call('SREM', pulls, m) end
local admitted = 0
if ARGV[3] ~= '' then
  local n = tonumber(redis.call('HGET', k, 'requests') or '0')
  local b = tonumber(redis.call('HGET', k, 'bytes') or '0')
  if redis.call('HGET', k, 'state') == 'active' and n < tonumber(ARGV[3])
     and b < tonumber(ARGV[4]) then
    redis.call('HINCRBY', k, 'requests', 1)
    admitted = 1
  end
end
if d.publish then redis.call('PUBLISH', ARGV[2], d.id) end
if ARGV[5] == 'scalars' then
  return {admitted, redis.call('HMGET', k, 'state', 'revoked_reason', 'last_used',
                               'requests', 'bytes', 'pushes')}
end
return {admitted, redis.call('HGETALL', k), redis.call('SMEMBERS', refs),
        redis.call('SMEMBERS', pulls)}
"""
_SCALARS = ("state", "revoked_reason", "last_used", "requests", "bytes", "pushes")


# A pull request being created holds a slot until it is recorded (or failed): KEYS the
# session's hash, its pulls set, its holds (a sorted set: token -> when it lapses). ARGV: the
# token, the cap, how long a hold lives (s). 1: held; 0: the pulls recorded and the holds of
# every gateway already reach the cap (or the session is not active). A hold whose gateway
# died lapses, so a crash mid-create costs the budget a slot for that long, never more.
_HOLD_PULL = """
local k, pulls, holds = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
if redis.call('HGET', k, 'state') ~= 'active' then return 0 end
if redis.call('SCARD', pulls) + redis.call('ZCARD', holds) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', holds, now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
PULL_HOLD_TTL = 300  # seconds: longer than any create (the API relay's read timeout, 120 s)


class StoreUnavailable(OSError):
    """Redis did not answer: nothing is acknowledged, nothing is authorised."""


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _s(v: Any) -> str:
    # errors="replace": a stray byte in the store (or on the channel) is a session id that
    # matches nothing, not an exception.
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def shown(url: str) -> str:
    """``url`` as messages and the audit log show it: without a password (in the address
    or as a query parameter)."""
    parts = urlsplit(url)
    if parts.query:
        query = [(k, "***" if "pass" in k.lower() else v) for k, v in parse_qsl(parts.query)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _client(url: str, retries: int) -> redis.Redis:
    """The gateway's client retries once, at once: a pooled connection that died with a
    Redis restart is replaced (and the command sent again) instead of failing. No more:
    its calls run on the event loop, and an unreachable Redis must cost one timeout, not
    several. The listener does not retry: a missed answer is the news."""
    return redis.Redis.from_url(
        url,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), retries),
        # Not on a timeout: the script may have run, and running it again would count twice.
        retry_on_error=[redis.exceptions.ConnectionError],
    )


class RedisSessionStore:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "airlock",
        on_event: Callable[..., None] = lambda event, **kw: None,
    ) -> None:
        self.url = url
        self.where = shown(url)  # never the password: this goes into messages and the log
        self._prefix = prefix
        self._channel = f"{prefix}:changed"
        self._ids_key = f"{prefix}:sessions"
        self._on_event = on_event  # the audit log's event()
        self._redis = _client(url, retries=1)
        self._apply_script = self._redis.register_script(_APPLY)
        self._hold_script = self._redis.register_script(_HOLD_PULL)
        self._cache = SessionIndex()  # what requests read: base plus this gateway's changes
        self._base: dict[str, Session] = {}  # each session as Redis last returned it
        self._dirty: set[str] = set()
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._recovery_queued = False  # one catch-up at a time on the loop, never a pile
        self.available = False
        self.unavailable_since: float | None = time.monotonic()
        self.outages = 0
        # Started by the gateway before it listens: an unreachable Redis is a start-up error.
        self._reload()
        self.available, self.unavailable_since = True, None

    # --- keys ------------------------------------------------------------------------------

    def _keys(self, sid: str) -> list[str]:
        base = f"{self._prefix}:s:{sid}"
        return [base, base + ":refs", base + ":pulls", self._ids_key]

    # --- reads: memory only ----------------------------------------------------------------

    def on_end(self, fn: Callable[[str | None], None]) -> None:
        """Call ``fn`` with each session that turns revoked (None: every session)."""
        self._cache.on_end.append(fn)

    def get(self, session_id: str) -> Session | None:
        return self._cache.get(session_id) if self.available else None

    def by_proxy_token(self, digest: str) -> list[Session]:
        return self._cache.by_proxy_token(digest) if self.available else []

    def live_bound_to(self, address: str) -> bool:
        return self.available and self._cache.live_bound_to(address)

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._cache) if self.available else iter(())

    # --- writes ----------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable(f"the session store ({self.where}) is unreachable")

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._set_available(False)
            raise StoreUnavailable(f"the session store ({self.where}) is unreachable") from exc
        except redis.exceptions.RedisError as exc:
            # It answers, but not as a store must (NOAUTH, a read-only replica, out of
            # memory): as good as unreachable, and said so.
            self._set_available(False)
            raise StoreUnavailable(f"the session store ({self.where}) refused: {exc}") from exc

    def _take(self, sid: str, result: Any, copy: Session | None) -> bool:
        """Cache what the script returned for ``sid`` (its scalars go onto ``copy``, the
        base this gateway had with its own changes); whether a request was admitted."""
        self._dirty.discard(sid)
        if not result:  # deleted meanwhile
            self._base.pop(sid, None)
            self._cache.pop(sid)
            return False
        if len(result) == 2:
            admitted, values = result
            assert copy is not None
            fields = {k: _s(v) for k, v in zip(_SCALARS, values, strict=True) if v is not None}
            s = with_scalars(copy, fields)
        else:
            admitted, flat, refs, pulls = result
            s = from_stored(_pairs(flat), map(_s, refs), map(_s, pulls))
        self._base[sid] = s
        self._cache.set(s)
        return bool(admitted)

    def _apply(self, sids: Sequence[str], *, admit: tuple[str, int, int] | None = None) -> bool:
        """Write the deltas of ``sids`` in one round trip; with ``admit`` (id, request cap,
        byte cap), also count one request of that session against the caps: whether it
        was admitted."""
        calls: list[tuple[str, list[str], list[str], Session | None]] = []
        for sid in sids:
            s = self._cache.get(sid)
            if s is None:
                continue
            base = self._base.get(sid)
            d = delta(base, s)
            cap, byte_cap = ("", "")
            if admit is not None and admit[0] == sid:
                cap, byte_cap = str(admit[1]), str(admit[2])
            if d.empty and not cap:
                self._dirty.discard(sid)
                continue
            # Only counters and the clock changed here: the scalars back are enough.
            scalars = base is not None and not d.others_should_hear
            args = [d.to_wire(), self._channel, cap, byte_cap, "scalars" if scalars else ""]
            calls.append((sid, self._keys(sid), args, s if scalars else None))
        if not calls:
            return False
        if len(calls) == 1:  # a request's count: one script call, no pipeline around it
            _, keys, args, _ = calls[0]
            results = [self._call(lambda: self._apply_script(keys, args))]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for _, keys, args, _ in calls:
                self._apply_script(keys, args, client=pipe)
            results = self._call(pipe.execute)
        admitted = False
        for (sid, _, _, copy), result in zip(calls, results, strict=True):
            took = self._take(sid, result, copy)
            admitted = admitted or (admit is not None and admit[0] == sid and took)
        return admitted

    def put(self, s: Session, *, durable: bool = True) -> None:
        if durable:
            self._check()
        before, was_dirty = self._cache.get(s.id), s.id in self._dirty
        self._cache.set(s)
        self._dirty.add(s.id)
        if durable:
            try:
                self._apply([s.id])
            except StoreUnavailable:
                # Not acknowledged, so not done: the copy goes back to what it was (a create
                # that failed leaves no session behind; the caller says so and may retry).
                if before is None:
                    self._cache.pop(s.id)
                else:
                    self._cache.set(before)
                if not was_dirty:
                    self._dirty.discard(s.id)
                raise
            return
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_pending = True
            loop.call_later(FLUSH_DELAY, self._flush_quietly)

    def begin_request(self, s: Session) -> bool:
        """Count one request of ``s`` against its cap in Redis (with what this gateway
        still held back of it): False when the gateways together have spent the request
        cap or the byte cap, or the session ended on another one. Raises
        :class:`StoreUnavailable`."""
        self._check()
        self._dirty.add(s.id)
        return self._apply([s.id], admit=(s.id, s.max_requests, s.max_bytes))

    def hold_pull(self, s: Session, cap: int) -> str | None:
        """A slot for one pull request ``s`` is about to create, counted with every
        gateway's recorded pulls and holds against ``cap``; None when none is left. Raises
        :class:`StoreUnavailable`."""
        self._check()
        token = secrets.token_hex(8)
        keys = self._keys(s.id)
        held = self._call(
            lambda: self._hold_script(
                [keys[0], keys[2], keys[0] + ":pull-holds"], [token, cap, PULL_HOLD_TTL]
            )
        )
        return token if held else None

    def release_pull(self, s: Session, token: str) -> None:
        """The create ended (recorded, refused upstream, or failed): its slot is free."""
        with contextlib.suppress(StoreUnavailable):  # then it lapses by itself
            self._call(lambda: self._redis.zrem(self._keys(s.id)[0] + ":pull-holds", token))

    def flush(self) -> None:
        """Write every held-back change (raises :class:`StoreUnavailable`; they stay held)."""
        self._flush_pending = False
        if self._dirty and self.available:
            self._apply(sorted(self._dirty))

    def _flush_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self.flush()

    def delete(self, session_id: str) -> None:
        self._check()
        keys = self._keys(session_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*keys[:3], keys[0] + ":pull-holds")
        pipe.srem(self._ids_key, session_id)
        pipe.publish(self._channel, session_id)
        self._call(pipe.execute)
        self._dirty.discard(session_id)
        self._base.pop(session_id, None)
        self._cache.pop(session_id)

    # --- reloads ---------------------------------------------------------------------------

    def _fetch(self, sids: Sequence[str]) -> list[tuple[str, Session | None]]:
        pipe = self._redis.pipeline(transaction=False)
        for sid in sids:
            k, refs, pulls, _ = self._keys(sid)
            pipe.hgetall(k)
            pipe.smembers(refs)
            pipe.smembers(pulls)
        raw = self._call(pipe.execute)
        out: list[tuple[str, Session | None]] = []
        for i, sid in enumerate(sids):
            fields, refs, pulls = raw[3 * i : 3 * i + 3]
            if not fields:
                out.append((sid, None))
                continue
            decoded = {_s(a): _s(b) for a, b in fields.items()}
            try:
                out.append((sid, from_stored(decoded, map(_s, refs), map(_s, pulls))))
            except (KeyError, ValueError, TypeError) as exc:
                # Unreadable (another version's body, a hand edit): not served, and said so.
                self._on_event("store_session_unreadable", session=sid, error=repr(exc)[:200])
                out.append((sid, None))
        return out

    def _install(self, fetched: list[tuple[str, Session | None]]) -> None:
        for sid, s in fetched:
            if sid in self._dirty:
                continue  # written (and so re-read) by the flush that follows
            if s is None:
                self._base.pop(sid, None)
                self._cache.pop(sid)
            else:
                self._base[sid] = s
                self._cache.set(s)

    def _reload(self) -> None:
        """Every session, as Redis has it now (sessions gone from Redis leave memory)."""
        ids = sorted(_s(x) for x in self._call(lambda: self._redis.smembers(self._ids_key)))
        fetched = self._fetch(ids)
        present = set(ids)
        for sid in self._cache.ids():
            if sid not in present and sid not in self._dirty:
                fetched.append((sid, None))
        self._install(fetched)

    def _changed(self, sid: str) -> None:
        """Another gateway changed ``sid`` (on the loop, from the listener thread): write
        what this gateway held back of it first, then read all of it (body and sets too:
        what was published is never only counters)."""
        if not self.available:
            return  # the resync on recovery reads it
        try:
            if sid in self._dirty:
                self._apply([sid])
            self._install(self._fetch([sid]))
        except StoreUnavailable:
            pass

    def _set_available(self, up: bool) -> None:
        if up == self.available:
            return
        self.available = up
        if up:
            down_for = time.monotonic() - (self.unavailable_since or time.monotonic())
            self.unavailable_since = None
            self._on_event("store_available", store=self.where, after_s=round(down_for, 3))
        else:
            self.unavailable_since = time.monotonic()
            self.outages += 1
            self._on_event("store_unavailable", store=self.where)
            self._cache.ended(None)  # no session can be vouched for: open tunnels end

    def _queue_recovery(self) -> None:
        """From the listener: one catch-up on the loop, unless one is already waiting."""
        if not self._recovery_queued:
            self._recovery_queued = True
            self._post(self._recovered)

    def _recovered(self) -> None:
        """The listener is subscribed (again): catch up on what was published before, then
        serve (again)."""
        self._recovery_queued = False
        try:
            if self._dirty:
                # Held-back usage first, so the reload below reads it merged.
                self._apply(sorted(self._dirty))
            self._reload()
        except StoreUnavailable:
            return  # the listener tries again
        self._set_available(True)

    # --- the listener thread ---------------------------------------------------------------

    async def run(self) -> None:
        """Listen for other gateways' changes and watch Redis, until :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        self._listener = threading.Thread(target=self._listen, name="store-listener", daemon=True)
        self._listener.start()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _listen(self) -> None:
        client = _client(self.url, retries=0)
        while not self._stop.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                # Subscribed: whatever changed before now is read by this reload (the first
                # time: what changed since the constructor's load).
                self._queue_recovery()
                # The pings go down the subscription itself: it is the connection whose loss
                # would make this gateway deaf to revocations (a NAT that dropped an idle
                # connection answers nothing, and says nothing either).
                last_pong = next_ping = time.monotonic()
                while not self._stop.is_set():
                    if time.monotonic() >= next_ping:
                        pubsub.ping()
                        next_ping = time.monotonic() + PING_INTERVAL
                    msg = pubsub.get_message(timeout=PING_INTERVAL)
                    if msg is not None and msg.get("type") == "pong":
                        last_pong = time.monotonic()
                    elif msg is not None and msg.get("type") == "message":
                        self._post(self._changed, _s(msg["data"]))
                    if time.monotonic() - last_pong > PING_INTERVAL + TIMEOUT:
                        raise TimeoutError("no answer on the subscription")
                    if not self.available:
                        # A call on the loop failed while this connection held: Redis
                        # answers here, so catch up (again, if the last try failed).
                        self._queue_recovery()
            except Exception:
                # The thread must not die: then nothing would notice outages or recover.
                self._post(self._set_available, False)
                self._stop.wait(PING_INTERVAL)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
        client.close()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(2 * TIMEOUT + PING_INTERVAL + 1)
        with contextlib.suppress(StoreUnavailable):
            self.flush()
        self._redis.close()
