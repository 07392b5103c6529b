"""Pure pieces behind the plumbing fixes: renewal as a compare-and-set, the hello guard,
secret files through symlinks, resolver entries."""

from __future__ import annotations

import dataclasses
import os
import ssl
import time
from pathlib import Path

import pytest

from airlock.core import session as lifecycle
from airlock.core.session import Limits, SessionState
from airlock.core.tlshello import HELLO_RETRY_RANDOM, HelloGuard
from airlock.gateway.credentials import CredentialError, FileCredential
from airlock.gateway.resolver import parse_server
from airlock.testing.tls import make_test_ca_and_server_cert

LIMITS = Limits(idle_timeout=60, lifetime=600, max_requests=100, max_bytes=10**6)

# ------------------------------------------------------------------ renewal


def test_renewal_applies_to_the_current_session_not_the_copy_read_earlier() -> None:
    now = time.time()
    read_earlier = lifecycle.create_session(grants=(), now=now, limits=LIMITS)
    current = dataclasses.replace(read_earlier, requests=7, last_used=now + 5)
    renewed = lifecycle.apply_renewal(current, "ff" * 32, now=now + 6)
    assert renewed.cert_fingerprint == "ff" * 32
    assert (renewed.requests, renewed.last_used) == (7, now + 5)


def test_renewal_of_a_session_revoked_meanwhile_is_refused() -> None:
    now = time.time()
    s = lifecycle.create_session(grants=(), now=now, limits=LIMITS)
    revoked = lifecycle.revoke(s, "meanwhile")
    with pytest.raises(ValueError, match="ended"):
        lifecycle.apply_renewal(revoked, "ff" * 32, now=now)
    with pytest.raises(ValueError, match="no longer exists"):
        lifecycle.apply_renewal(None, "ff" * 32, now=now)
    assert revoked.state is SessionState.REVOKED


# ------------------------------------------------------------------ hello guard


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    tls = make_test_ca_and_server_cert(tmp_path_factory.mktemp("g"), ["a.test"], [])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    server.set_ecdh_curve("secp384r1")  # forces a HelloRetryRequest
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    return client, server


def _step(obj: ssl.SSLObject) -> None:
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass


def _handshake_bytes(
    pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[bytes, bytes, bytes, bytes]:
    """First ClientHello, HelloRetryRequest, second ClientHello, ServerHello flight."""
    client_ctx, server_ctx = pair
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client_ctx.wrap_bio(ci, co, server_hostname="a.test")
    s = server_ctx.wrap_bio(si, so, server_side=True)
    _step(c)
    ch1 = co.read()
    si.write(ch1)
    _step(s)
    hrr = so.read()
    ci.write(hrr)
    _step(c)
    ch2 = co.read()
    si.write(ch2)
    _step(s)
    return ch1, hrr, ch2, so.read()


def test_guard_passes_a_genuine_retry_and_is_done_at_the_server_hello(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    ch1, hrr, ch2, sh = _handshake_bytes(tls_pair)
    assert HELLO_RETRY_RANDOM in hrr
    g = HelloGuard("a.test")
    # Byte by byte: records and messages split anywhere are reassembled.
    for i in range(len(ch1)):
        assert g.client(ch1[i : i + 1]) is None
    g.server(hrr)
    assert g.retried and not g.done
    assert g.client(ch2) is None and g.client_hellos == 2
    g.server(sh)
    assert g.done
    assert g.client(b"\x17\x03\x03\x00\x05hello") is None  # nothing is looked at any more


@pytest.mark.parametrize(
    ("rewrite", "rule"),
    [
        (lambda h: h.replace(b"a.test", b"b.test"), "sni_mismatch"),
        (lambda h: h.replace(b"a.test", b"A.TEST"), None),  # same host, other case
        (lambda h: h[:5] + b"\x02" + h[6:], "not_tls"),  # not a ClientHello
    ],
)
def test_guard_checks_the_second_client_hello(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], rewrite: object, rule: str | None
) -> None:
    ch1, hrr, ch2, _ = _handshake_bytes(tls_pair)
    g = HelloGuard("a.test")
    assert g.client(ch1) is None
    g.server(hrr)
    ccs, hello = ch2[:6], ch2[6:]  # change_cipher_spec (middlebox compatibility), hello
    assert ccs == b"\x14\x03\x03\x00\x01\x01"
    assert g.client(ccs) is None
    refusal = g.client(rewrite(hello))  # type: ignore[operator]
    assert (refusal.rule if refusal else None) == rule


def test_guard_refuses_a_third_hello_and_garbage(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    ch1, _, _, _ = _handshake_bytes(tls_pair)
    g = HelloGuard("a.test")
    assert g.client(ch1 + ch1) is None
    refusal = g.client(ch1)
    assert refusal is not None and refusal.rule == "too_many_client_hellos"
    refusal = HelloGuard("a.test").client(b"GET / HTTP/1.1\r\n\r\n")
    assert refusal is not None and refusal.rule == "not_tls"


# ------------------------------------------------------------------ secret files


def test_secret_file_through_a_good_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("ghs_abc\n")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    cred = FileCredential(link)
    cred.check()
    assert cred.secrets() == ["ghs_abc"]


def test_secret_file_symlink_to_a_0644_file_names_the_target(tmp_path: Path) -> None:
    real = tmp_path / "store" / "real"
    real.parent.mkdir()
    real.write_text("ghs_abc\n")
    real.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(CredentialError) as exc:
        FileCredential(link).check()
    msg = str(exc.value)
    assert f"a symlink to {real}" in msg and f"chmod 600 {real}" in msg
    assert f"chmod 600 {link}" not in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_secret_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("ghs_abc\n")
    real.chmod(0o600)
    os.chown(real, 65534, 65534)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(CredentialError, match=f"owned by uid 65534.*chown <gateway user> {real}"):
        FileCredential(link).check()


# ------------------------------------------------------------------ resolver entries


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("9.9.9.9", ("9.9.9.9", 53)),
        ("9.9.9.9:5353", ("9.9.9.9", 5353)),
        ("2620:fe::fe", ("2620:fe::fe", 53)),
        ("[2620:fe::fe]:53", ("2620:fe::fe", 53)),
    ],
)
def test_resolver_entries(spec: str, want: tuple[str, int]) -> None:
    assert parse_server(spec) == want


@pytest.mark.parametrize(
    "spec", ["not-an-ip", "1.2.3.4:99999", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x", "dns.test"]
)
def test_bad_resolver_entries(spec: str) -> None:
    with pytest.raises(ValueError, match=repr(spec).replace("[", r"\[")):
        parse_server(spec)
