"""An in-memory storage for `limits`' synchronous strategies, for one event loop.

`limits`' own MemoryStorage is made for threads: a lock per key, and a ``threading.Timer``
that it restarts every 10 ms under load (a new thread each time) to sweep *every* key, so its
cost grows with the number of sessions that made a request in the last hour (the byte
window). The gateway's counters live on one asyncio loop, so this storage takes no lock and
runs no thread: a counter is dropped when it is read past its expiry, and a heap of expiry
times lets every write drop a few expired counters, so memory stays bounded by the counters
that are live and the cost per request stays flat.

The semantics are MemoryStorage's (the same sliding-window arithmetic, the same fixed-window
expiry set when a counter is created), so the strategies decide exactly as before.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from math import floor

from limits.storage.base import SlidingWindowCounterSupport, Storage, TimestampedSlidingWindow

__all__ = ["LoopMemoryStorage"]

#: Expired counters dropped per write, at most: the sweep keeps up with any creation rate
#: (every write creates at most one counter) without a pause proportional to their number.
SWEEP_PER_WRITE = 4


class LoopMemoryStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    STORAGE_SCHEME = ["airlock+loopmemory"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        clock: Callable[[], float] = time.time,
        **options: float | str | bool,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expiry, key); stale entries skipped

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return len(self._counts)

    def _sweep(self, now: float) -> None:
        heap = self._heap
        for _ in range(SWEEP_PER_WRITE):
            if not heap or heap[0][0] > now:
                return
            at, key = heapq.heappop(heap)
            if self._expires.get(key) == at:  # not renewed since this entry was pushed
                self._counts.pop(key, None)
                self._expires.pop(key, None)

    def _live(self, key: str, now: float) -> int:
        at = self._expires.get(key)
        if at is None:
            return 0
        if at <= now:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
            return 0
        return self._counts[key]

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._clock()
        self._sweep(now)
        count = self._live(key, now) + amount
        self._counts[key] = count
        if count == amount:  # a new counter: its window starts now
            at = now + expiry
            self._expires[key] = at
            heapq.heappush(self._heap, (at, key))
        return count

    def decr(self, key: str, amount: int = 1) -> int:
        now = self._clock()
        count = self._live(key, now)
        if key in self._counts:
            count = max(count - amount, 0)
            self._counts[key] = count
        return count

    def get(self, key: str) -> int:
        return self._live(key, self._clock())

    def get_expiry(self, key: str) -> float:
        now = self._clock()
        self._live(key, now)
        return self._expires.get(key, now)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        n = len(self._counts)
        self._counts.clear()
        self._expires.clear()
        self._heap.clear()
        return n

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)
        self._expires.pop(key, None)

    # --- sliding window counter (the arithmetic of limits' MemoryStorage) -------------

    def _window(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        previous_count = self._live(previous_key, now)
        current_count = self._live(current_key, now)
        previous_ttl = (
            0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        )
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self._clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        return self._window(previous_key, current_key, expiry, now)

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous_count, previous_ttl, current_count, _ = self._window(
            previous_key, current_key, expiry, now
        )
        if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
            return False
        # No other hit can come between the check and the count: one thread, no await.
        self.incr(current_key, 2 * expiry, amount=amount)
        return True

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        now = self._clock()
        for k in self.sliding_window_keys(key, expiry, now):
            self.clear(k)
