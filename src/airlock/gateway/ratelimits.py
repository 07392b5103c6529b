"""Request, byte and concurrency limits, per session and global, with the `limits` library.

Storage is in memory by default; ``limits.storage_uri = "async+redis://host:6379"`` shares the
counters between several gateway replicas (the redis driver must be installed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from airlock.gateway.metrics import Metrics


@dataclass(frozen=True)
class OverLimit:
    limit: str
    retry_after: int


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
        storage = storage_from_string(storage_uri)
        # A sliding-window counter: no burst at window edges like a fixed window, and O(1)
        # per key (a moving window keeps, and sweeps, one entry per request: 17 % of the
        # gateway's CPU under load in bench/).
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        # Bytes use a fixed window: a counter, where a moving window would store one entry
        # per counted unit.
        self.byte_limiter = FixedWindowRateLimiter(storage)
        self.session_requests: RateLimitItem = parse(session_requests)
        self.session_bytes: RateLimitItem = parse(session_bytes)
        self.global_requests: RateLimitItem = parse(global_requests)
        self.session_inflight = session_inflight
        self.global_inflight = global_inflight
        self.metrics = metrics
        self.clock = clock
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0

    async def _retry(self, item: RateLimitItem, *ids: str) -> int:
        stats = await self.limiter.get_window_stats(item, *ids)
        return max(1, math.ceil(stats.reset_time - self.clock()))

    def _hit(self, limit: str) -> None:
        self.metrics.inc("airlock_limit_hits_total", help="Limits reached", limit=limit)

    async def admit_request(self, session_id: str) -> OverLimit | None:
        """Check and count one request; reserve an in-flight slot. Call ``done`` after."""
        if self._inflight.get(session_id, 0) >= self.session_inflight:
            self._hit("session_inflight")
            return OverLimit("session_inflight", 1)
        if self._inflight_total >= self.global_inflight:
            self._hit("global_inflight")
            return OverLimit("global_inflight", 1)
        # A session over its byte budget waits for the window to move.
        if not await self.byte_limiter.test(self.session_bytes, "bytes", session_id):
            self._hit("session_bytes")
            stats = await self.byte_limiter.get_window_stats(
                self.session_bytes, "bytes", session_id
            )
            return OverLimit("session_bytes", max(1, math.ceil(stats.reset_time - self.clock())))
        if not await self.limiter.hit(self.session_requests, "req", session_id):
            self._hit("session_requests")
            return OverLimit(
                "session_requests", await self._retry(self.session_requests, "req", session_id)
            )
        if not await self.limiter.hit(self.global_requests, "req", "*"):
            self._hit("global_requests")
            return OverLimit("global_requests", await self._retry(self.global_requests, "req", "*"))
        self._inflight[session_id] = self._inflight.get(session_id, 0) + 1
        self._inflight_total += 1
        return None

    async def done(self, session_id: str, nbytes: int) -> None:
        n = self._inflight.get(session_id, 1) - 1
        if n <= 0:
            self._inflight.pop(session_id, None)
        else:
            self._inflight[session_id] = n
        self._inflight_total -= 1
        if nbytes > 0:
            # The window may go over budget by this request; the next one waits.
            await self.byte_limiter.hit(self.session_bytes, "bytes", session_id, cost=nbytes)

    def inflight(self) -> int:
        return self._inflight_total
