"""The event-loop storage under `limits`' strategies, and the synchronous RateLimits on it:
limits hold, counters expire, and memory stays bounded however many sessions come and go."""

from __future__ import annotations

import asyncio
import time

import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

from airlock.gateway.limitstore import LoopMemoryStorage
from airlock.gateway.metrics import Metrics
from airlock.gateway.ratelimits import RateLimits


class Clock:
    # Starts at the real time: the strategies compute reset times from time.time().
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_sliding_window_admits_exactly_its_amount_then_recovers() -> None:
    clock = Clock()
    limiter = SlidingWindowCounterRateLimiter(LoopMemoryStorage(clock=clock))
    item = parse("10/minute")
    assert [limiter.hit(item, "s") for _ in range(12)] == [True] * 10 + [False] * 2
    assert limiter.hit(item, "other"), "another key has its own window"
    clock.now += 60 * 2.5  # two windows on: the weighted count is back to zero
    assert limiter.hit(item, "s")


def test_the_fixed_window_counts_cost_and_resets_at_its_expiry() -> None:
    clock = Clock()
    storage = LoopMemoryStorage(clock=clock)
    limiter = FixedWindowRateLimiter(storage)
    item = parse("1000/hour")
    assert limiter.hit(item, "b", cost=600)
    assert limiter.test(item, "b", cost=400)
    assert not limiter.test(item, "b", cost=401)
    assert limiter.get_window_stats(item, "b").remaining == 400
    assert not limiter.hit(item, "b", cost=401)  # counted all the same, as limits does
    assert limiter.get_window_stats(item, "b").remaining == 0
    clock.now += 3601
    assert limiter.get_window_stats(item, "b").remaining == 1000


def test_expired_counters_of_sessions_gone_are_dropped_by_later_writes() -> None:
    clock = Clock()
    storage = LoopMemoryStorage(clock=clock)
    limiter = FixedWindowRateLimiter(storage)
    item = parse("5/second")
    for i in range(10_000):
        limiter.hit(item, f"gone-{i}")
    assert len(storage) == 10_000
    clock.now += 2
    for _ in range(3_000):  # a few live sessions keep writing
        limiter.hit(item, "live")
        clock.now += 0.001
    # Each write drops a few expired counters: 3,000 writes cleared all 10,000.
    assert len(storage) <= 2


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
