"""What counts as use of a session (core/session.py counts_as_use), how an ended session is
named to its client, the certificate time check that replaced OpenSSL's, and the gateway's
id file (gateway/identity.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airlock.core import session as lc
from airlock.core.grants import Access, Grant
from airlock.core.session import Limits, Refusal, Session, SessionState, Use
from airlock.gateway import gitauth
from airlock.gateway.identity import GatewayIdError, load_or_create_gateway_id
from airlock.gateway.pki import (
    CertificateAuthority,
    cert_fingerprint,
    certificate_current,
    make_csr,
    new_private_key,
)

G = (Grant("github.com", "acme", "repo", Access.READ),)
LIMITS = Limits(idle_timeout=100, lifetime=1000, max_requests=50, max_bytes=10**6)


def _s(**kw: object) -> Session:
    s = lc.create_session(grants=G, now=0.0, limits=LIMITS)
    return dataclasses.replace(s, **kw)  # type: ignore[arg-type]


def _use(began: float, ended: float | None = None, **kw: bool) -> Use:
    flags = {"admitted": True, "succeeded": True, **kw}
    return Use(began=began, ended=began if ended is None else ended, **flags)


def _usable(s: Session, now: float) -> Refusal | None:
    return lc.check_usable(s, now=now, source_ip="x", cert_fingerprint=None)


# ------------------------------------------------------------------------------ the rule


def test_admitted_successful_use_extends_the_idle_deadline() -> None:
    s = lc.record_use(_s(), _use(90))
    assert s.last_used == 90
    assert _usable(s, 150) is None
    assert _usable(s, 190) is Refusal.IDLE_TIMEOUT


@pytest.mark.parametrize(
    "flags",
    [
        {"admitted": False, "succeeded": True},  # refused: token, binding, allowlist, caps...
        {"admitted": False, "succeeded": False},
        {"admitted": True, "succeeded": False},  # let through, but failed or stopped by a check
    ],
)
def test_refused_or_failed_requests_never_count(flags: dict[str, bool]) -> None:
    s = _s()
    assert not lc.counts_as_use(s, _use(90, **flags))
    assert lc.record_use(s, _use(90, **flags)) is s
    assert _usable(lc.record_use(s, _use(90, **flags)), 101) is Refusal.IDLE_TIMEOUT


def test_use_never_revives_an_ended_session() -> None:
    s = _s()
    # Idle deadline (100) passed before the use began: however late it is reported, no.
    assert not lc.counts_as_use(s, _use(100))
    assert not lc.counts_as_use(s, _use(150, 160))
    assert _usable(lc.record_use(s, _use(100)), 101) is Refusal.IDLE_TIMEOUT
    # Revoked, or not yet activated: never.
    assert not lc.counts_as_use(lc.revoke(s, "t"), _use(50))
    assert not lc.counts_as_use(_s(state=SessionState.PENDING), _use(50))
    # A use that "ended before it began" is nonsense, not use.
    assert not lc.counts_as_use(s, _use(50, 40))


def test_a_request_in_flight_from_a_live_moment_is_use_to_its_end() -> None:
    """A clone admitted at 90 that takes until 250 (past the idle deadline at 100)."""
    s = lc.record_use(_s(), _use(90, 250))
    assert s.last_used == 250 and _usable(s, 300) is None
    git = lc.finish_request(_s(), now=250, nbytes=5, success=True, began=90)
    assert git.last_used == 250 and git.bytes == 5
    # Without `began`, a git request is taken to begin when it ends: no revival.
    late = lc.finish_request(_s(), now=250, nbytes=5, success=True)
    assert late.last_used == 0 and late.bytes == 5


def test_the_lifetime_is_never_extended_and_last_used_never_moves_back() -> None:
    s = lc.record_use(_s(last_used=900.0), _use(950, 5000))
    assert s.last_used == 1000 and s.expires_at == 1000
    assert _usable(s, 999.9) is None and _usable(s, 1000) is Refusal.EXPIRED
    later = lc.record_use(_s(), _use(80))
    assert lc.record_use(later, _use(60)) is later  # an older use reported late


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1200),
            st.floats(min_value=0, max_value=300),
            st.booleans(),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_any_sequence_of_uses(ops: list[tuple[float, float, bool, bool]]) -> None:
    s = _s()
    for began, length, admitted, succeeded in ops:
        before = s
        use = Use(admitted=admitted, succeeded=succeeded, began=began, ended=began + length)
        s = lc.record_use(s, use)
        assert s.expires_at == 1000  # nothing moves the absolute deadline
        assert s.last_used >= before.last_used
        if s is not before:
            assert admitted and succeeded and began < before.idle_deadline
        if not (admitted and succeeded):
            assert s is before
    assert Session.from_json(s.to_json()) == s


# ------------------------------------------------------------------------------ told


def test_ended_refusals_are_named_the_rest_are_not() -> None:
    assert lc.ended_as(Refusal.REVOKED) == "revoked"
    assert lc.ended_as(Refusal.EXPIRED) == "expired"
    assert lc.ended_as(Refusal.IDLE_TIMEOUT) == "expired"
    assert lc.ended_as("idle_timeout") == "expired"
    for r in Refusal:
        if r not in (Refusal.REVOKED, Refusal.EXPIRED, Refusal.IDLE_TIMEOUT):
            assert lc.ended_as(r) is None, r
    assert lc.ended_as(None) is None
    assert lc.ended_as("basic_wrong_source") is None


# ------------------------------------------------------------------------------ certificate time


def _cert(tmp_path: Path, session_id: str, not_before: float, not_after: float) -> bytes:
    from cryptography.hazmat.primitives import serialization

    ca = CertificateAuthority.load_or_create(tmp_path, dt.datetime.now(dt.UTC))
    skew = dt.timedelta(minutes=5)  # issue_session back-dates not_before by this much
    cert = ca.issue_session(
        make_csr(new_private_key()),
        session_id,
        dt.datetime.fromtimestamp(not_before, dt.UTC) + skew,
        dt.datetime.fromtimestamp(not_after, dt.UTC),
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_certificate_current(tmp_path: Path) -> None:
    der = _cert(tmp_path, "s-" + "a" * 32, 1_000_000, 2_000_000)
    assert certificate_current(der, 1_500_000)
    assert certificate_current(der, 1_000_000) and certificate_current(der, 2_000_000)
    assert not certificate_current(der, 999_999)
    assert not certificate_current(der, 2_000_001)
    assert not certificate_current(b"not a certificate", 1_500_000)


def test_a_live_sessions_certificate_outside_its_validity_is_refused(tmp_path: Path) -> None:
    """The TLS layer no longer checks the time (so an ended session can be told); the
    request check does, even for a session that would otherwise be usable."""
    s = lc.create_session(grants=G, now=1_000_000, limits=LIMITS)
    der = _cert(tmp_path, s.id, 1_000_000, 1_000_050)  # ends before the session does
    s = lc.renew_certificate(s, cert_fingerprint(der))

    def usable(now: float) -> Refusal | str | None:
        return gitauth.usable(s, der, now=now, source_ip="127.0.0.1", local_ip="127.0.0.1")

    assert usable(1_000_010) is None
    assert usable(1_000_060) is Refusal.CERTIFICATE_NOT_CURRENT
    assert usable(999_000) is Refusal.CERTIFICATE_NOT_CURRENT  # not yet valid
    # The session's own end is named first (the normal case: the certificate ends with it).
    assert usable(1_000_000 + LIMITS.idle_timeout + 1) is Refusal.IDLE_TIMEOUT


# ------------------------------------------------------------------------------ gateway id


def test_gateway_id_is_created_once_and_kept(tmp_path: Path) -> None:
    gid = load_or_create_gateway_id(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{16}", gid)
    path = tmp_path / "gateway-id"
    assert path.read_text() == gid + "\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_or_create_gateway_id(tmp_path) == gid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway-id"]  # no temp file left


def test_gateway_id_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        load_or_create_gateway_id(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "gateway-id").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"0123456789ABCDEF\n", b"0123456789abcde\n", b"0123456789abcdef0\n",
     b"0123456789abcdef\n\n", b" 0123456789abcdef", b"\xff" * 16],
)  # fmt: skip
def test_a_bad_gateway_id_file_is_an_error_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "gateway-id"
    path.write_bytes(content)
    with pytest.raises(GatewayIdError, match="gateway-id: not a gateway id"):
        load_or_create_gateway_id(tmp_path)
    assert path.read_bytes() == content


def test_a_gateway_id_without_newline_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "gateway-id").write_text("0123456789abcdef")
    assert load_or_create_gateway_id(tmp_path) == "0123456789abcdef"


def test_a_symlinked_gateway_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("0123456789abcdef\n")
    (tmp_path / "gateway-id").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GatewayIdError, match="cannot read"):
        load_or_create_gateway_id(tmp_path)


def test_racing_threads_agree_on_one_id(tmp_path: Path) -> None:
    barrier = threading.Barrier(16)
    seen: list[str] = []

    def start() -> None:
        barrier.wait()
        seen.append(load_or_create_gateway_id(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 16 and len(set(seen)) == 1
    assert (tmp_path / "gateway-id").read_text() == seen[0] + "\n"


def _start_in_process(state_dir: str, barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    out.put(load_or_create_gateway_id(Path(state_dir)))  # type: ignore[attr-defined]


def test_racing_processes_agree_on_one_id(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [
        ctx.Process(target=_start_in_process, args=(str(tmp_path), barrier, out)) for _ in range(8)
    ]
    for p in procs:
        p.start()
    ids = {out.get(timeout=20) for _ in procs}
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert len(ids) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway-id"]
