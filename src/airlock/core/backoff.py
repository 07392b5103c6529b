"""Back-off for sources that fail authentication. Pure: time passed in.

Keyed by source address: each sandbox has its own address on its own network, so one
sandbox's failures never lock out another.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _Entry:
    failures: int = 0
    blocked_until: float = 0.0


@dataclass
class AuthBackoff:
    threshold: int = 10  # failures allowed before the first block
    base: float = 1.0  # seconds of the first block; doubles with each further failure
    maximum: float = 60.0
    max_sources: int = 10_000  # memory bound: the oldest sources are forgotten first
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)

    def blocked(self, source: str, now: float) -> float | None:
        """Seconds this source must still wait, or None."""
        e = self._entries.get(source)
        if e is None or e.blocked_until <= now:
            return None
        return e.blocked_until - now

    def failure(self, source: str, now: float) -> float | None:
        """Record a failure; return the new block length in seconds when one starts."""
        e = self._entries.pop(source, None) or _Entry()
        self._entries[source] = e
        if len(self._entries) > self.max_sources:
            self._entries.popitem(last=False)
        e.failures += 1
        if e.failures < self.threshold:
            return None
        length = float(min(self.base * 2 ** (e.failures - self.threshold), self.maximum))
        e.blocked_until = now + length
        return length

    def success(self, source: str) -> None:
        self._entries.pop(source, None)
