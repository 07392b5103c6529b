"""Bounded logging of denials: the first of a kind is logged, repeats become one count line.

Pure: the caller passes the time and writes what ``record`` and ``flush`` return.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DenialAggregator:
    interval: float = 10.0
    max_keys: int = 10_000  # beyond this, new keys are folded into one overflow key
    max_ids: int = 50  # request ids kept per key, so a sandbox's id can still be looked up
    _window_start: float | None = None
    _counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    _ids: dict[tuple[str, ...], list[str]] = field(default_factory=dict)

    def record(
        self, now: float, key: tuple[str, ...], request_id: str | None = None
    ) -> tuple[bool, list[dict[str, object]]]:
        """Count one denial. Returns (log this one individually?, summary lines due now)."""
        due = self.flush(now) if self._due(now) else []
        if self._window_start is None:
            self._window_start = now
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = ("overflow",)
        first = key not in self._counts
        self._counts[key] = self._counts.get(key, 0) + 1
        if not first and request_id is not None:
            ids = self._ids.setdefault(key, [])
            if len(ids) < self.max_ids:
                ids.append(request_id)
        return first, due

    def _due(self, now: float) -> bool:
        return self._window_start is not None and now - self._window_start >= self.interval

    def flush(self, now: float, force: bool = False) -> list[dict[str, object]]:
        """Summary lines for keys seen more than once in the window that ended."""
        if not force and not self._due(now):
            return []
        lines: list[dict[str, object]] = [
            {
                "key": list(k),
                "count": c - 1,
                "interval_s": self.interval,
                "request_ids": self._ids.get(k, []),
            }
            for k, c in self._counts.items()
            if c > 1
        ]
        self._counts.clear()
        self._ids.clear()
        self._window_start = None
        return lines
