"""The sandbox DNS server's handling of one query (core/dnspolicy.py answer, and
gateway/dns.py DNSServer.handle without its sockets).

Input: one DNS message as a sandbox sends it (UDP payload, or a TCP message without its
length prefix).
Invariants: nothing raises; the reply is None (dropped) or a DNS message that parses, is a
response with the query's id and question, no recursion, REFUSED for every name but the
gateway's own, and A answers only with the configured address; the server's handle() gives
the same bytes as answer().
"""

from __future__ import annotations

# What dnslib imports from the standard library is loaded first: only dnslib (the parser
# the sandbox's bytes reach) and airlock are instrumented, which keeps the target fast.
import asyncio  # noqa: F401
import base64  # noqa: F401
import calendar  # noqa: F401
import datetime  # noqa: F401
import socket  # noqa: F401
import struct  # noqa: F401

import atheris

with atheris.instrument_imports():
    from dnslib import QTYPE, RCODE, DNSRecord

    from airlock.core.dnspolicy import MAX_QUERY_BYTES, answer
    from airlock.gateway.dns import DNSServer

from _harness import main

_NAMES = {"gateway.airlock.test": "10.203.0.1", "github.com": "10.203.0.2"}
_ticks = [0.0]


def _clock() -> float:
    _ticks[0] += 10.0  # every query a new rate-limit period: the limiter never drops one
    return _ticks[0]


_SERVER = DNSServer("127.0.0.1", 0, lambda: _NAMES, clock=_clock, summary_interval=1e12)


def check(data: bytes) -> bool:
    reply = answer(data, _NAMES)
    assert _SERVER.handle(data, "10.203.0.9") == reply
    if reply is None:
        return False
    assert len(data) <= MAX_QUERY_BYTES
    query = DNSRecord.parse(data)
    parsed = DNSRecord.parse(reply)
    assert parsed.header.qr == 1 and parsed.header.ra == 0
    assert parsed.header.id == query.header.id
    assert len(parsed.questions) == 1
    name = str(parsed.questions[0].qname).rstrip(".").lower()
    if name not in _NAMES:
        assert parsed.header.rcode == RCODE.REFUSED and not parsed.rr
        return False
    assert parsed.header.rcode == RCODE.NOERROR
    for rr in parsed.rr:
        assert rr.rtype == QTYPE.A and str(rr.rdata) == _NAMES[name]
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
