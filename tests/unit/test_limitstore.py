"""The event-loop rate-limit counters, and the synchronous RateLimits on them:
limits hold, counters expire, and memory stays bounded however many sessions come and go."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

from airlock.gateway.limitstore import MemoryCounters
from airlock.gateway.metrics import Metrics
from airlock.gateway.ratelimits import RateLimits


class Clock:
    # Starts at the real time: the strategies compute reset times from time.time().
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_sliding_window_admits_its_amount_then_weighs_the_previous_window() -> None:
    clock = Clock()
    clock.now = 60 * 1_000_000 + 10.0  # 10 s into a window
    c = MemoryCounters(clock=clock)
    assert [c.sliding_hit("s", 10, 60) for _ in range(12)] == [True] * 10 + [False] * 2
    assert c.sliding_hit("other", 10, 60), "another key has its own window"
    assert c.sliding_reset_in("s", 60) == pytest.approx(50.0)
    clock.now += 60 + 20  # 30 s into the next window: the previous ten weigh half
    assert [c.sliding_hit("s", 10, 60) for _ in range(6)] == [True] * 5 + [False]
    clock.now += 60 * 2  # two windows on: nothing is counted any more
    assert c.sliding_hit("s", 10, 60, cost=10)
    assert not c.sliding_hit("s", 10, 60, cost=11)


def test_the_fixed_window_counts_cost_and_resets_at_its_expiry() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    assert c.fixed_hit("b", 1000, 3600, cost=600)
    assert c.fixed_test("b", 1000, cost=400)
    assert not c.fixed_test("b", 1000, cost=401)
    assert not c.fixed_hit("b", 1000, 3600, cost=401)  # counted all the same, as limits does
    assert not c.fixed_test("b", 1000, cost=1)
    assert c.fixed_reset_at("b") == pytest.approx(clock.now + 3600)
    clock.now += 3601
    assert c.fixed_test("b", 1000, cost=1000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30))
def test_hits_in_one_window_are_decided_as_limits_decides_them(costs: list[int]) -> None:
    """Against `limits`' own strategies and MemoryStorage (a new key, within one window)."""
    storage = MemoryStorage()
    sliding, fixed = SlidingWindowCounterRateLimiter(storage), FixedWindowRateLimiter(storage)
    item = parse("20/hour")
    ours = MemoryCounters()
    key = f"k{time.monotonic_ns()}"
    for cost in costs:
        assert ours.sliding_hit("s" + key, 20, 3600, cost) == sliding.hit(
            item, "s" + key, cost=cost
        )
        assert ours.fixed_test("f" + key, 20, cost) == fixed.test(item, "f" + key, cost=cost)
        assert ours.fixed_hit("f" + key, 20, 3600, cost) == fixed.hit(item, "f" + key, cost=cost)


def test_expired_counters_of_sessions_gone_are_dropped_by_later_writes() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    for i in range(5_000):
        c.fixed_hit(f"gone-{i}", 5, 1)
        c.sliding_hit(f"gone-{i}", 5, 1)
    assert len(c) == 10_000
    clock.now += 3
    for _ in range(3_000):  # a few live sessions keep writing
        c.fixed_hit("live", 10**9, 1)
        clock.now += 0.001
    # Each write drops a few expired counters: 3,000 writes cleared all 10,000.
    assert len(c) <= 2


def test_a_counter_used_over_many_windows_is_still_dropped_once_idle() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    for _ in range(20):  # busy across twenty windows, then silent
        c.sliding_hit("busy", 100, 1)
        clock.now += 1
    clock.now += 5
    for i in range(200):
        c.fixed_hit(f"other-{i}", 10, 1)
    assert len(c) <= 200, "the idle sliding counter was never dropped"


def _limits(clock: Clock, **kw: object) -> RateLimits:
    args: dict[str, object] = {
        "storage_uri": "async+memory://",
        "session_requests": "3/minute",
        "session_bytes": "1000/hour",
        "global_requests": "100/second",
        "session_inflight": 2,
        "global_inflight": 3,
        "metrics": Metrics(),
        "clock": clock,
    }
    args.update(kw)
    return RateLimits(**args)  # type: ignore[arg-type]


def test_rate_limits_in_memory_are_synchronous_and_hold_every_limit() -> None:
    clock = Clock()
    lim = _limits(clock)
    assert lim.synchronous
    assert lim.admit_now("a") is None and lim.admit_now("a") is None
    over = lim.admit_now("a")
    assert over is not None and over.limit == "session_inflight"
    lim.done_now("a", 10)
    lim.done_now("a", 2000)  # over the byte budget from here on
    over = lim.admit_now("a")
    assert over is not None and over.limit == "session_bytes" and over.retry_after >= 1
    assert lim.admit_now("b") is None and lim.admit_now("c") is None
    assert lim.admit_now("d") is None
    over = lim.admit_now("e")
    assert over is not None and over.limit == "global_inflight"
    for sid in "bcd":
        lim.done_now(sid, 0)
    assert lim.inflight() == 0
    assert lim.admit_now("b") is None
    lim.done_now("b", 0)
    assert lim.admit_now("b") is None
    lim.done_now("b", 0)
    over = lim.admit_now("b")
    assert over is not None and over.limit == "session_requests"
    assert 1 <= over.retry_after <= 120


def test_the_awaited_interface_gives_the_same_answers() -> None:
    async def main() -> list[str | None]:
        lim = _limits(Clock())
        seen: list[str | None] = []
        for _ in range(4):
            over = await lim.admit_request("a")
            seen.append(over.limit if over else None)
            if over is None:
                await lim.done("a", 0)
        return seen

    assert asyncio.run(main()) == [None, None, None, "session_requests"]


def test_a_remote_storage_cannot_be_asked_without_an_await() -> None:
    pytest.importorskip("redis", reason="the redis driver is not installed")
    lim = _limits(Clock(), storage_uri="async+redis://127.0.0.1:1")
    assert not lim.synchronous
    with pytest.raises(RuntimeError, match="await"):
        lim.admit_now("a")
