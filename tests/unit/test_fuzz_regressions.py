"""Regression tests for what the fuzz targets (fuzz/targets/) found in the parsers.

Each crashing input is also kept in the target's corpus (fuzz/corpus/<target>/regression-*),
so the fuzzer starts from it on every run.
"""

from __future__ import annotations

from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

from airlock.core.dnspolicy import answer
from airlock.gateway.dns_stats import is_refused_reply

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
NAMES = {"github.com": "10.203.0.2"}


def test_dns_reply_rcode_is_the_gateways_not_the_querys() -> None:
    # fuzz/corpus/dns_query/regression-query-rcode-echoed: a query for an answered name
    # with header flags 0x001c (RCODE 12). dnslib's reply() copies the query's flag bits,
    # RCODE among them, so the reply said RCODE 12; with RCODE 5 it said REFUSED and the DNS
    # server counted an answered query as a denial.
    packet = (CORPUS / "dns_query" / "regression-query-rcode-echoed").read_bytes()
    for rcode in (12, RCODE.REFUSED, RCODE.NXDOMAIN):
        query = DNSRecord.parse(packet)
        query.header.rcode = rcode
        reply = answer(query.pack(), NAMES)
        assert reply is not None
        parsed = DNSRecord.parse(reply)
        assert parsed.header.rcode == RCODE.NOERROR
        assert [r.rtype for r in parsed.rr] == [QTYPE.A]
        assert not is_refused_reply(reply)
    # And a name the gateway does not serve is still REFUSED whatever the query said.
    other = DNSRecord.question("example.com")
    other.header.rcode = RCODE.NOERROR
    reply = answer(other.pack(), NAMES)
    assert reply is not None and DNSRecord.parse(reply).header.rcode == RCODE.REFUSED
