"""Redaction of credentials, and the sandbox DNS policy, without any network."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from airlock.core.dnspolicy import answer
from airlock.core.redact import REDACTED, redact_text, redact_value

NAMES = {"airlock.internal": "10.213.0.1"}


def test_redacts_github_token_shapes_and_known_secrets() -> None:
    for tok in ("ghp_" + "a" * 36, "ghs_" + "B1" * 18, "github_pat_" + "x" * 40):
        assert tok not in redact_text(f"token {tok} here")
    assert "s3cret" not in redact_text("x s3cret y", ["s3cret"])
    assert REDACTED in redact_text("Authorization: Basic eC1hY2Nlc3M=")
    assert "pw" not in redact_text("https://user:pw@host/x")
    nested = redact_value({"a": ["ghp_" + "z" * 36, {"b": "ok"}]})
    assert nested == {"a": [REDACTED, {"b": "ok"}]}


def _q(name: str, qtype: str = "A") -> bytes:
    packed: bytes = DNSRecord.question(name, qtype).pack()
    return packed


def test_gateway_name_answered_everything_else_refused() -> None:
    r = DNSRecord.parse(answer(_q("airlock.internal"), NAMES) or b"")
    assert str(r.rr[0].rdata) == "10.213.0.1" and r.header.ra == 0
    r = DNSRecord.parse(answer(_q("AIRLOCK.internal."), NAMES) or b"")
    assert str(r.rr[0].rdata) == "10.213.0.1"
    for name in ("github.com", "x.airlock.internal", "exfil-data.attacker.example"):
        r = DNSRecord.parse(answer(_q(name), NAMES) or b"")
        assert r.header.rcode == RCODE.REFUSED and not r.rr
    r = DNSRecord.parse(answer(_q("airlock.internal", "AAAA"), NAMES) or b"")
    assert r.header.rcode == RCODE.NOERROR and not r.rr
    assert QTYPE.A == 1


def test_responses_and_garbage_are_dropped() -> None:
    reply = answer(_q("airlock.internal"), NAMES)
    assert reply is not None
    assert answer(reply, NAMES) is None  # a response is not a query
    assert answer(b"\x00" * 3, NAMES) is None
    assert answer(b"\xff" * 600, NAMES) is None


@given(st.binary(max_size=600))
def test_arbitrary_packets_never_raise(data: bytes) -> None:
    out = answer(data, NAMES)
    if out is not None:
        assert DNSRecord.parse(out).header.qr == 1
