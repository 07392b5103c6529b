"""In-memory rate-limit counters for one event loop: the arithmetic of `limits`' sliding-window
counter and fixed window, without its machinery.

Why not `limits`' own MemoryStorage: it is made for threads (a lock per key, a
``threading.Timer`` restarted every 10 ms under load, a new thread each time, that sweeps
*every* key, so its cost grows with the sessions seen in the last hour), and its strategies
build three key strings and pass six wrapped calls per check: 8 % of the gateway's CPU per
request in bench/ (py-spy), where these counters take a dict lookup and a few float
operations. The gateway's counters live on one asyncio loop, so nothing here locks or runs a
thread. A counter is dropped when it is read past its expiry, and a heap of expiry times
lets every write drop a few expired ones, so memory stays bounded by the live counters and
the cost per request is flat in the number of sessions.

Remote storage (Redis, shared by replicas) stays with `limits`' asyncio strategies
(gateway/ratelimits.py); both decide alike: the same weighted count, the same windows.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from math import floor

__all__ = ["SWEEP_PER_WRITE", "MemoryCounters"]

#: Expired counters dropped per write, at most: the sweep keeps up with any creation rate
#: (a write creates at most one counter) without a pause proportional to their number.
SWEEP_PER_WRITE = 4


class MemoryCounters:
    """Counters keyed by string. ``amount`` per ``period`` seconds, as in "1200/minute"."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # sliding window: key -> [window index, count of the previous window, of this one]
        self._sliding: dict[str, list[int]] = {}
        # fixed window: key -> (expires at, count); the window starts at its first hit
        self._fixed: dict[str, tuple[float, int]] = {}
        self._heap: list[tuple[float, str, str]] = []  # (drop after, table, key)

    def __len__(self) -> int:
        return len(self._sliding) + len(self._fixed)

    def _sweep(self, now: float) -> None:
        heap = self._heap
        for _ in range(SWEEP_PER_WRITE):
            if not heap or heap[0][0] > now:
                return
            _, table, key = heapq.heappop(heap)
            if table == "f":
                entry = self._fixed.get(key)
                if entry is not None and entry[0] <= now:
                    del self._fixed[key]
            else:
                window = self._sliding.get(key)
                if window is None:
                    continue
                period = int(table)
                drop_after = (window[0] + 2) * period
                if drop_after <= now:  # unused for two whole windows: its count is zero
                    del self._sliding[key]
                else:  # used since: look again when it can next be dropped
                    heapq.heappush(heap, (drop_after, table, key))

    # --- sliding-window counter ------------------------------------------------------

    def _window(self, key: str, period: int, now: float) -> tuple[list[int], float]:
        """The key's counts rolled to the current window, and the weighted count."""
        index = int(now // period)
        window = self._sliding.get(key)
        if window is None:
            window = [index, 0, 0]
        elif window[0] != index:
            previous = window[2] if window[0] == index - 1 else 0
            window = [index, previous, 0]
        weight = 1 - (now / period) % 1  # the share of the previous window still counted
        return window, window[1] * weight + window[2]

    def sliding_hit(self, key: str, amount: int, period: int, cost: int = 1) -> bool:
        """Count ``cost`` if the weighted count stays within ``amount``; False otherwise."""
        if cost > amount:
            return False
        now = self._clock()
        self._sweep(now)
        window, weighted = self._window(key, period, now)
        if floor(weighted) + cost > amount:
            return False
        if key not in self._sliding:
            heapq.heappush(self._heap, ((window[0] + 2) * period, str(period), key))
        window[2] += cost
        self._sliding[key] = window
        return True

    def sliding_reset_in(self, key: str, period: int) -> float:
        """Seconds until the weighted count of ``key`` next drops (as `limits` computes it)."""
        now = self._clock()
        window, _ = self._window(key, period, now)
        previous, current = window[1], window[2]
        left = (1 - (now / period) % 1) * period  # of the current window
        soonest = float("inf")
        if previous:
            soonest = left % (period / previous)
        if current:
            soonest = min(soonest, left)
        return 0.0 if soonest == float("inf") else soonest

    # --- fixed window -------------------------------------------------------------------

    def _fixed_count(self, key: str, now: float) -> int:
        entry = self._fixed.get(key)
        if entry is None or entry[0] <= now:
            return 0
        return entry[1]

    def fixed_test(self, key: str, amount: int, cost: int = 1) -> bool:
        """Would ``cost`` more fit in ``amount``? Nothing is counted."""
        return self._fixed_count(key, self._clock()) < amount - cost + 1

    def fixed_hit(self, key: str, amount: int, period: int, cost: int = 1) -> bool:
        """Count ``cost`` (also when it goes over, as `limits` does); True if within."""
        now = self._clock()
        self._sweep(now)
        entry = self._fixed.get(key)
        if entry is None or entry[0] <= now:
            expires = now + period
            heapq.heappush(self._heap, (expires, "f", key))
            entry = (expires, 0)
        count = entry[1] + cost
        self._fixed[key] = (entry[0], count)
        return count <= amount

    def fixed_reset_at(self, key: str) -> float:
        now = self._clock()
        entry = self._fixed.get(key)
        return entry[0] if entry is not None and entry[0] > now else now
