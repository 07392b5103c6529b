"""Counters and gauges, rendered in the Prometheus text format (no client library needed
for a handful of series; the format is simple and stable)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._gauges: dict[str, Callable[[], dict[tuple[tuple[str, str], ...], float]]] = {}

    def inc(self, name: str, value: float = 1, help: str = "", **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._counters[name]
        series[key] = series.get(key, 0) + value
        if help:
            self._help.setdefault(name, help)

    def gauge(
        self, name: str, fn: Callable[[], dict[tuple[tuple[str, str], ...], float]], help: str
    ) -> None:
        self._gauges[name] = fn
        self._help[name] = help

    def value(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        out: list[str] = []
        for name in sorted(self._counters):
            out.append(f"# HELP {name} {self._help.get(name, name)}")
            out.append(f"# TYPE {name} counter")
            for labels, v in sorted(self._counters[name].items()):
                out.append(f"{name}{_labels(labels)} {v:g}")
        for name in sorted(self._gauges):
            out.append(f"# HELP {name} {self._help[name]}")
            out.append(f"# TYPE {name} gauge")
            for labels, v in sorted(self._gauges[name]().items()):
                out.append(f"{name}{_labels(labels)} {v:g}")
        return "\n".join(out) + "\n"
