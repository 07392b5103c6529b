"""The session state machine, with time passed in."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airlock.core import session as lc
from airlock.core.grants import Access, Grant
from airlock.core.session import Binding, Limits, Refusal, SessionState

G = (Grant("github.com", "acme", "repo", Access.READ),)
LIMITS = Limits(idle_timeout=100, lifetime=1000, max_requests=3, max_bytes=500)


def _s(**kw: object) -> lc.Session:
    s = lc.create_session(grants=G, now=0.0, limits=LIMITS)
    return dataclasses.replace(s, **kw)  # type: ignore[arg-type]


def test_fresh_session_is_usable() -> None:
    assert lc.check_usable(_s(), now=1, source_ip="1.2.3.4", cert_fingerprint=None) is None


def test_idle_timeout_and_only_success_extends_it() -> None:
    s = _s()
    assert lc.check_usable(s, now=100, source_ip="x", cert_fingerprint=None) is Refusal.IDLE_TIMEOUT
    failed = lc.finish_request(s, now=90, nbytes=1, success=False)
    assert (
        lc.check_usable(failed, now=101, source_ip="x", cert_fingerprint=None)
        is Refusal.IDLE_TIMEOUT
    )
    ok = lc.finish_request(s, now=90, nbytes=1, success=True)
    assert lc.check_usable(ok, now=101, source_ip="x", cert_fingerprint=None) is None


def test_absolute_lifetime_is_never_extended() -> None:
    s = _s()
    for t in range(0, 1000, 50):
        s = lc.finish_request(s, now=t, nbytes=0, success=True)
    assert lc.check_usable(s, now=999, source_ip="x", cert_fingerprint=None) is None
    assert lc.check_usable(s, now=1000, source_ip="x", cert_fingerprint=None) is Refusal.EXPIRED


def test_caps() -> None:
    s = _s()
    for _ in range(3):
        assert lc.check_usable(s, now=1, source_ip="x", cert_fingerprint=None) is None
        s = lc.begin_request(s)
    assert lc.check_usable(s, now=1, source_ip="x", cert_fingerprint=None) is Refusal.REQUEST_CAP
    b = lc.finish_request(_s(), now=1, nbytes=500, success=True)
    assert lc.check_usable(b, now=1, source_ip="x", cert_fingerprint=None) is Refusal.BYTE_CAP


def test_revoked_and_pending() -> None:
    assert (
        lc.check_usable(lc.revoke(_s(), "t"), now=1, source_ip="x", cert_fingerprint=None)
        is Refusal.REVOKED
    )
    pending = _s(state=SessionState.PENDING)
    assert (
        lc.check_usable(pending, now=1, source_ip="x", cert_fingerprint=None)
        is Refusal.NOT_ACTIVATED
    )
    with pytest.raises(ValueError):
        lc.activate(lc.revoke(pending, "t"), Binding("c" * 64, "n", "10.0.0.2"))


def test_binding_checks_source_and_arrival_address() -> None:
    s = lc.activate(
        _s(state=SessionState.PENDING),
        Binding("c" * 64, "net", "10.213.0.2", gateway_address="10.213.0.1"),
    )

    def check(src: str, local: str) -> Refusal | None:
        return lc.check_usable(s, now=1, source_ip=src, local_ip=local, cert_fingerprint=None)

    assert check("10.213.0.2", "10.213.0.1") is None
    assert check("10.213.0.3", "10.213.0.1") is Refusal.WRONG_SOURCE
    assert check("10.213.0.2", "10.213.16.1") is Refusal.WRONG_NETWORK


def test_bind_ip_and_certificate_fingerprint() -> None:
    s = lc.renew_certificate(_s(bind_ip="127.0.0.2"), "abc")
    assert (
        lc.check_usable(s, now=1, source_ip="127.0.0.1", cert_fingerprint="abc")
        is Refusal.WRONG_SOURCE
    )
    assert (
        lc.check_usable(s, now=1, source_ip="127.0.0.2", cert_fingerprint="old")
        is Refusal.WRONG_CERTIFICATE
    )
    assert lc.check_usable(s, now=1, source_ip="127.0.0.2", cert_fingerprint="abc") is None


def test_proxy_token() -> None:
    s = lc.with_proxy_token(_s(), "Zq9-secret-token")
    assert lc.proxy_token_matches(s, "Zq9-secret-token")
    assert not lc.proxy_token_matches(s, "tok2")
    assert not lc.proxy_token_matches(_s(), "tok")
    assert "Zq9-secret-token" not in str(s.to_json())


@given(
    st.lists(
        st.tuples(st.sampled_from(["begin", "ok", "fail"]), st.floats(min_value=0, max_value=2000)),
        max_size=30,
    )
)
def test_json_round_trip_and_monotonic_counters(ops: list[tuple[str, float]]) -> None:
    s = _s()
    last_requests = 0
    for op, t in ops:
        if op == "begin":
            s = lc.begin_request(s)
        else:
            s = lc.finish_request(s, now=t, nbytes=7, success=op == "ok")
        assert s.requests >= last_requests
        last_requests = s.requests
        assert s.expires_at == 1000  # nothing moves the absolute deadline
    assert lc.Session.from_json(s.to_json()) == s
