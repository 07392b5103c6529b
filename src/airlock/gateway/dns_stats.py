"""Aggregate denial counting and per-source rate limiting, for the sandbox DNS (and the proxy).

Pure: no I/O, time passed in. A sandbox that tries to tunnel data through DNS sends
thousands of queries; logging each would turn the audit log into the tunnel's sink and a
disk-filling attack, so denials are counted and reported once per interval.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["DenialCounter", "QueryRateLimiter", "is_refused_reply"]


def is_refused_reply(reply: bytes) -> bool:
    """True if a packed DNS reply carries RCODE REFUSED (5) or NXDOMAIN (3)."""
    return len(reply) >= 4 and (reply[3] & 0x0F) in (3, 5)


class DenialCounter:
    """Counts denials by (source, reason) and hands out the totals once per ``interval``.

    Call :meth:`add` for each denial and :meth:`flush` whenever convenient (on each packet,
    from a timer); ``flush`` returns the totals at most once per interval, None otherwise.
    Memory is bounded: past ``max_keys`` distinct keys, new ones are counted under
    ``("*", reason)``.
    """

    def __init__(self, interval: float, now: float, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._since = now
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, source: str, reason: str, n: int = 1) -> None:
        key = (source, reason)
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = ("*", reason)
        self._counts[key] += n

    @property
    def pending(self) -> int:
        return sum(self._counts.values())

    def flush(self, now: float, force: bool = False) -> dict[str, object] | None:
        """The interval's summary as log fields, or None when not due or nothing counted."""
        if not force and now - self._since < self.interval:
            return None
        if not self._counts:
            self._since = now
            return None
        by_reason: Counter[str] = Counter()
        by_source: Counter[str] = Counter()
        for (source, reason), n in self._counts.items():
            by_reason[reason] += n
            by_source[source] += n
        summary: dict[str, object] = {
            "interval_s": round(now - self._since, 3),
            "total": sum(by_reason.values()),
            "by_reason": dict(by_reason),
            # the busiest sources only: the log line stays short under a flood
            "by_source": dict(by_source.most_common(20)),
        }
        self._counts.clear()
        self._since = now
        return summary


@dataclass
class _Bucket:
    tokens: float
    updated: float


class QueryRateLimiter:
    """A token bucket per source: ``rate`` queries a second on average, bursts to ``burst``.

    Bounded memory: when ``max_sources`` buckets exist, full ones (idle sources) are dropped;
    if none is full, the oldest is, which at worst gives that source a fresh burst.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, source: str, now: float) -> bool:
        b = self._buckets.get(source)
        if b is None:
            if len(self._buckets) >= self.max_sources:
                self._evict(now)
            b = self._buckets[source] = _Bucket(tokens=self.burst, updated=now)
        else:
            # max(0, ...): a clock that steps backwards must not mint tokens or go negative
            elapsed = max(0.0, now - b.updated)
            b.tokens = min(self.burst, b.tokens + elapsed * self.rate)
            b.updated = max(b.updated, now)
        if b.tokens >= 1:
            b.tokens -= 1
            return True
        return False

    def _evict(self, now: float) -> None:
        full = [
            s
            for s, b in self._buckets.items()
            if b.tokens + max(0.0, now - b.updated) * self.rate >= self.burst
        ]
        for s in full:
            del self._buckets[s]
        if len(self._buckets) >= self.max_sources:
            oldest = min(self._buckets, key=lambda s: self._buckets[s].updated)
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)
