"""Request, byte and concurrency limits, per session and global.

Storage is in memory by default, and then every check is synchronous: counters made for one
event loop (gateway/limitstore.py, `limits`' arithmetic without its locks, timer thread and
key building), no await, so nothing can run between a check and the request it admits.
``limits.storage_uri = "async+redis://host:6379"`` shares the counters between several
gateway replicas through `limits`' asyncio strategies on redis-py; those checks are awaited.

The order of the checks is written once, as a generator of :class:`_Ask` steps that a
synchronous or an asynchronous driver answers (:meth:`RateLimits.admit_now`,
:meth:`RateLimits.admit_request`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

from limits import RateLimitItem, parse
from limits.aio import strategies as aio_strategies
from limits.storage import storage_from_string

from airlock.gateway.limitstore import MemoryCounters
from airlock.gateway.metrics import Metrics

__all__ = ["OverLimit", "RateLimits"]

_SYNC_STORAGE = ("memory://", "async+memory://")


@dataclass(frozen=True)
class OverLimit:
    limit: str
    retry_after: int


@dataclass(slots=True)
class _Ask:
    """One question to the limiter: ``op`` ("hit", "test", "stats") of ``item`` for ``keys``.
    "stats" is answered with the time (wall clock) the limit next lets a request in."""

    counter: Literal["requests", "bytes"]
    op: Literal["hit", "test", "stats"]
    item: RateLimitItem
    keys: tuple[str, ...]
    cost: int = 1


# A check: yields questions, is sent each answer, returns the verdict.
_Check = Generator[_Ask, Any, OverLimit | None]


class RateLimits:
    def __init__(
        self,
        *,
        storage_uri: str,
        session_requests: str,
        session_bytes: str,
        global_requests: str,
        session_inflight: int,
        global_inflight: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: True when every check is answered without an await (in-memory storage).
        self.synchronous = storage_uri in _SYNC_STORAGE
        # A sliding-window counter for requests: no burst at window edges like a fixed
        # window, and O(1) per key (a moving window keeps, and sweeps, one entry per
        # request: 17 % of the gateway's CPU under load in bench/). Bytes use a fixed
        # window: a counter, where a moving window would store one entry per counted unit.
        self._memory: MemoryCounters | None = None
        self._limiters: dict[str, Any] = {}
        if self.synchronous:
            self._memory = MemoryCounters(clock=clock)
        else:
            # redis-py, the driver the shared session store uses too (limits' default for
            # async+redis is coredis, which the lock file does not carry).
            options = {"implementation": "redispy"} if storage_uri.startswith("async+redis") else {}
            storage = storage_from_string(storage_uri, **options)
            self._limiters = {
                "requests": aio_strategies.SlidingWindowCounterRateLimiter(storage),
                "bytes": aio_strategies.FixedWindowRateLimiter(storage),
            }
        self.session_requests: RateLimitItem = parse(session_requests)
        self.session_bytes: RateLimitItem = parse(session_bytes)
        self.global_requests: RateLimitItem = parse(global_requests)
        self.session_inflight = session_inflight
        self.global_inflight = global_inflight
        self.metrics = metrics
        self.clock = clock
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0

    # --- the checks, once --------------------------------------------------------------

    def _hit(self, limit: str) -> None:
        self.metrics.inc("airlock_limit_hits_total", help="Limits reached", limit=limit)

    def _retry_after(self, reset_at: float) -> int:
        return max(1, math.ceil(reset_at - self.clock()))

    def _admission(self, session_id: str) -> _Check:
        if self._inflight.get(session_id, 0) >= self.session_inflight:
            self._hit("session_inflight")
            return OverLimit("session_inflight", 1)
        if self._inflight_total >= self.global_inflight:
            self._hit("global_inflight")
            return OverLimit("global_inflight", 1)
        # A session over its byte budget waits for the window to move.
        byte_keys = ("bytes", session_id)
        if not (yield _Ask("bytes", "test", self.session_bytes, byte_keys)):
            self._hit("session_bytes")
            reset_at = yield _Ask("bytes", "stats", self.session_bytes, byte_keys)
            return OverLimit("session_bytes", self._retry_after(reset_at))
        for name, item, keys in (
            ("session_requests", self.session_requests, ("req", session_id)),
            ("global_requests", self.global_requests, ("req", "*")),
        ):
            if not (yield _Ask("requests", "hit", item, keys)):
                self._hit(name)
                reset_at = yield _Ask("requests", "stats", item, keys)
                return OverLimit(name, self._retry_after(reset_at))
        self._inflight[session_id] = self._inflight.get(session_id, 0) + 1
        self._inflight_total += 1
        return None

    def _release(self, session_id: str, nbytes: int) -> Generator[_Ask, Any, None]:
        n = self._inflight.get(session_id, 1) - 1
        if n <= 0:
            self._inflight.pop(session_id, None)
        else:
            self._inflight[session_id] = n
        self._inflight_total -= 1
        if nbytes > 0:
            # The window may go over budget by this request; the next one waits.
            yield _Ask("bytes", "hit", self.session_bytes, ("bytes", session_id), cost=nbytes)

    # --- the drivers -------------------------------------------------------------------

    def _ask_memory(self, ask: _Ask) -> bool | float:
        memory = self._memory
        assert memory is not None
        key = "/".join(ask.keys)
        item = ask.item
        if ask.counter == "requests":
            if ask.op == "hit":
                return memory.sliding_hit(key, item.amount, item.get_expiry(), ask.cost)
            return self.clock() + memory.sliding_reset_in(key, item.get_expiry())
        if ask.op == "hit":
            return memory.fixed_hit(key, item.amount, item.get_expiry(), ask.cost)
        if ask.op == "test":
            return memory.fixed_test(key, item.amount, ask.cost)
        return memory.fixed_reset_at(key)

    async def _ask_remote(self, ask: _Ask) -> bool | float:
        limiter = self._limiters[ask.counter]
        if ask.op == "stats":
            stats = await limiter.get_window_stats(ask.item, *ask.keys)
            reset: float = stats.reset_time
            return reset
        answer: bool = await getattr(limiter, ask.op)(ask.item, *ask.keys, cost=ask.cost)
        return answer

    def _run_now(self, check: Generator[_Ask, Any, Any]) -> Any:
        if not self.synchronous:
            raise RuntimeError("this limiter's storage is remote: await admit_request/done")
        answer: Any = None
        try:
            while True:
                answer = self._ask_memory(check.send(answer))
        except StopIteration as end:
            return end.value

    async def _run(self, check: Generator[_Ask, Any, Any]) -> Any:
        answer: Any = None
        try:
            while True:
                ask = check.send(answer)
                if self.synchronous:
                    answer = self._ask_memory(ask)
                else:
                    answer = await self._ask_remote(ask)
        except StopIteration as end:
            return end.value

    def admit_now(self, session_id: str) -> OverLimit | None:
        """Check and count one request; reserve an in-flight slot (``done_now`` after).
        In-memory storage only (:attr:`synchronous`)."""
        result: OverLimit | None = self._run_now(self._admission(session_id))
        return result

    def done_now(self, session_id: str, nbytes: int) -> None:
        self._run_now(self._release(session_id, nbytes))

    async def admit_request(self, session_id: str) -> OverLimit | None:
        """Check and count one request; reserve an in-flight slot. Call ``done`` after."""
        result: OverLimit | None = await self._run(self._admission(session_id))
        return result

    async def done(self, session_id: str, nbytes: int) -> None:
        await self._run(self._release(session_id, nbytes))

    def inflight(self) -> int:
        return self._inflight_total
