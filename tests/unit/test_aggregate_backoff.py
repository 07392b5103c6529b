"""Bounded denial logging and per-source authentication back-off, with time passed in."""

from __future__ import annotations

from airlock.core.aggregate import DenialAggregator
from airlock.core.backoff import AuthBackoff


def test_repeats_become_one_count_line_with_request_ids() -> None:
    agg = DenialAggregator(interval=10)
    first, due = agg.record(0.0, ("not_granted", "s1"), "r0")
    assert first and due == []
    for i in range(1, 500):
        first, due = agg.record(float(i) / 100, ("not_granted", "s1"), f"r{i}")
        assert not first and due == []
    first, due = agg.record(11.0, ("not_granted", "s1"), "late")
    assert first  # a new window logs its first denial again
    assert len(due) == 1 and due[0]["count"] == 499
    ids = due[0]["request_ids"]
    assert isinstance(ids, list) and ids[0] == "r1" and len(ids) == 50


def test_keys_are_bounded() -> None:
    agg = DenialAggregator(interval=10, max_keys=3)
    for i in range(100):
        agg.record(0.0, ("r", str(i)))
    assert len(agg._counts) <= 4  # three keys plus the overflow key


def test_backoff_per_source_doubles_and_resets() -> None:
    b = AuthBackoff(threshold=3, base=1.0, maximum=8.0)
    assert b.failure("a", 0) is None and b.failure("a", 0) is None
    assert b.failure("a", 0) == 1.0
    assert b.blocked("a", 0.5) == 0.5 and b.blocked("b", 0.5) is None
    assert b.failure("a", 2) == 2.0 and b.failure("a", 5) == 4.0
    assert b.failure("a", 10) == 8.0 and b.failure("a", 20) == 8.0
    b.success("a")
    assert b.blocked("a", 20.1) is None and b.failure("a", 21) is None


def test_backoff_memory_is_bounded() -> None:
    b = AuthBackoff(threshold=1, max_sources=100)
    for i in range(1000):
        b.failure(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(b._entries) == 100
