"""core/session_merge.py: deltas from several gateways merge without losing one."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core import session as lc
from airlock.core.grants import parse_grant
from airlock.core.session_merge import body_of, delta, from_stored, merge, to_stored

LIMITS = lc.Limits(idle_timeout=600, lifetime=3600, max_requests=100, max_bytes=10**9)


def _session() -> lc.Session:
    return lc.create_session(
        grants=(parse_grant("github.com/acme/app:read", frozenset({"github.com"})),),
        now=1_000_000.0,
        limits=LIMITS,
    )


# One gateway's changes to its copy: what core/session.py's functions do.
_change = st.one_of(
    st.tuples(st.just("request")),
    st.tuples(st.just("bytes"), st.integers(0, 10**12)),
    st.tuples(st.just("push")),
    st.tuples(st.just("use"), st.floats(1_000_000.0, 1_003_600.0)),
    st.tuples(st.just("ref"), st.sampled_from(["refs/heads/a", "refs/heads/b"])),
    st.tuples(st.just("unref"), st.sampled_from(["refs/heads/a", "refs/heads/b"])),
    st.tuples(st.just("pull"), st.integers(1, 4)),
    st.tuples(st.just("revoke"), st.sampled_from(["operator", "supervise"])),
    st.tuples(st.just("label"), st.sampled_from(["x", "y"])),
)


def _apply(s: lc.Session, change: tuple[object, ...]) -> lc.Session:
    kind = change[0]
    if kind == "request":
        return lc.begin_request(s)
    if kind == "bytes":
        return dataclasses.replace(s, bytes=s.bytes + int(change[1]))  # type: ignore[call-overload]
    if kind == "push":
        return lc.begin_push(s)
    if kind == "use":
        return lc.record_use(s, lc.Use(True, True, s.last_used, float(change[1])))  # type: ignore[arg-type]
    if kind == "ref":
        return lc.record_push(s, "github.com/acme/app", frozenset({str(change[1])}), frozenset())
    if kind == "unref":
        return lc.record_push(s, "github.com/acme/app", frozenset(), frozenset({str(change[1])}))
    if kind == "pull":
        return lc.record_pull(s, "github.com/acme/app", int(change[1]), f"PR_{change[1]}")  # type: ignore[call-overload]
    if kind == "revoke":
        return lc.revoke(s, str(change[1]))
    return dataclasses.replace(s, labels={**s.labels, "k": str(change[1])})


def _edit(s: lc.Session, changes: list[tuple[object, ...]]) -> lc.Session:
    for c in changes:
        s = _apply(s, c)
    return s


def test_a_new_session_round_trips_through_the_store() -> None:
    s = _session()
    assert merge(None, delta(None, s)) == s
    assert from_stored(*to_stored(s)) == s


def test_a_delta_that_brings_no_body_does_not_invent_a_session() -> None:
    s = _session()
    assert merge(None, delta(s, lc.begin_request(s))) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(_change, max_size=6), st.lists(_change, max_size=6))
def test_two_gateways_changes_merge_in_either_order(
    a: list[tuple[object, ...]], b: list[tuple[object, ...]]
) -> None:
    base = _session()
    stored = merge(None, delta(None, base))
    assert stored is not None
    da, db = delta(base, _edit(base, a)), delta(base, _edit(base, b))
    ab, ba = merge(merge(stored, da), db), merge(merge(stored, db), da)
    assert ab is not None and ba is not None
    # Counters add up: each gateway's requests, bytes and pushes counted once.
    for name in ("requests", "bytes", "pushes"):
        want = getattr(_edit(base, a), name) + getattr(_edit(base, b), name)
        assert getattr(ab, name) == getattr(ba, name) == want
    # A revocation on either side stays, whatever the other wrote after it.
    revoked = any(c[0] == "revoke" for c in a + b)
    assert (ab.state is lc.SessionState.REVOKED) is revoked
    assert (ba.state is lc.SessionState.REVOKED) is revoked
    # The idle clock never moves back.
    assert ab.last_used == ba.last_used == max(_edit(base, a).last_used, _edit(base, b).last_used)
    # Sets: what either side holds at the end is there (the base held none, so neither
    # removed anything the other added), in both orders.
    for name in ("created_refs", "pulls"):
        union = set(getattr(_edit(base, a), name)) | set(getattr(_edit(base, b), name))
        assert set(getattr(ab, name)) == set(getattr(ba, name)) == union


def test_a_stale_copy_cannot_undo_a_revocation() -> None:
    base = _session()
    stored = merge(None, delta(None, base))
    revoked = merge(stored, delta(base, lc.revoke(base, "operator")))
    # The other gateway never heard: its copy is active and busy, and it writes that.
    busy = lc.finish_request(lc.begin_request(base), now=1_000_100.0, nbytes=512, success=True)
    after = merge(revoked, delta(base, busy))
    assert after is not None
    assert after.state is lc.SessionState.REVOKED and after.revoked_reason == "operator"
    assert after.requests == 1 and after.bytes == 512


def test_usage_alone_is_not_published_and_changes_leave_the_body_alone() -> None:
    base = _session()
    busy = lc.finish_request(lc.begin_request(base), now=1_000_100.0, nbytes=512, success=True)
    d = delta(base, busy)
    assert d.body is None and not d.others_should_hear
    assert delta(base, lc.revoke(base, "x")).others_should_hear
    assert body_of(busy) == body_of(base)
