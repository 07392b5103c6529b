"""Regression tests for what the fuzz targets (fuzz/targets/) found in the parsers.

Each crashing input is also kept in the target's corpus (fuzz/corpus/<target>/regression-*),
so the fuzzer starts from it on every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from airlock.core.api_policy import Allow, ApiRequest, Refuse, decide_api
from airlock.core.dnspolicy import answer
from airlock.core.pktline import FLUSH, encode_pkt
from airlock.core.reportstatus import ReportStatusReader
from airlock.gateway.dns import DNSServer
from airlock.gateway.dns_stats import is_refused_reply
from tests.unit.test_api_policy import make_ctx

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


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/repos/octo/hello/pulls/7/requested_reviewers", b'{"reviewers":[1e999]}'),
        ("PATCH", "/repos/octo/hello/pulls/7", b'{"body":"x","maintainer_can_modify":-1E400}'),
        ("POST", "/repos/octo/hello/issues/7/comments", b'{"body":1e999}'),
    ],
)
def test_api_json_number_out_of_range_is_malformed(method: str, target: str, body: bytes) -> None:
    # fuzz/corpus/api_rest/regression-infinity-in-body: json.loads reads 1e999 as infinity,
    # and the re-serialised body sent upstream said Infinity, which is not JSON (and not
    # what the client sent); the policy's "strict JSON" now refuses it.
    decision = decide_api(ApiRequest(method, target, body, "application/json"), make_ctx())
    assert isinstance(decision, Refuse), decision
    assert decision.status == 400 and decision.reason == "malformed"
    assert "out of range" in decision.message


def test_graphql_variables_number_out_of_range_is_malformed() -> None:
    # fuzz/corpus/api_graphql/regression-infinity-in-variables
    body = (CORPUS / "api_graphql" / "regression-infinity-in-variables").read_bytes()[1:]
    decision = decide_api(ApiRequest("POST", "/graphql", body, "application/json"), make_ctx())
    assert isinstance(decision, Refuse) and decision.status == 400, decision
    finite = body.replace(b"1e999", b'"c"')
    allowed = decide_api(ApiRequest("POST", "/graphql", finite, "application/json"), make_ctx())
    assert isinstance(allowed, Allow), allowed  # the same request with a finite value passes
    assert allowed.body is not None and b"Infinity" not in allowed.body


@pytest.mark.parametrize(
    "name", ["regression-label-over-63-bytes", "regression-name-over-255-bytes"]
)
def test_dns_query_with_a_name_no_message_can_carry_is_dropped(name: str) -> None:
    # dnslib parses a label length byte of 64..191 (and names over 255 bytes), then raised
    # DNSLabelError packing the reply: an exception out of answer(), a traceback logged by
    # the event loop for every such query, none of them counted as malformed.
    packet = (CORPUS / "dns_query" / name).read_bytes()
    assert answer(packet, NAMES) is None
    logged: list[tuple[str, dict[str, object]]] = []
    server = DNSServer(
        "127.0.0.1",
        0,
        lambda: NAMES,
        lambda event, **f: logged.append((event, f)),
        clock=lambda: 0.0,
    )
    assert server.handle(packet, "10.203.0.9") is None
    server._flush(0.0, force=True)
    assert logged == [
        (
            "dns_denied_summary",
            {
                "listener": "127.0.0.1",
                "interval_s": 0.0,
                "total": 1,
                "by_reason": {"malformed": 1},
                "by_source": {"10.203.0.9": 1},
            },
        )
    ]


def _confirmed(stream: bytes, size: int, sideband: bool) -> set[str]:
    reader = ReportStatusReader(sideband=sideband)
    for i in range(0, len(stream), size):
        reader.feed(stream[i : i + size])
    return reader.confirmed()


def _answer(sideband: bool) -> bytes:
    report = encode_pkt(b"unpack ok\n") + encode_pkt(b"ok refs/heads/agent/x\n") + FLUSH
    if not sideband:
        return report
    return encode_pkt(b"\x02Resolving deltas\n") + encode_pkt(b"\x01" + report) + FLUSH


@pytest.mark.parametrize("sideband", [True, False])
def test_report_status_verdict_does_not_depend_on_the_reads(sideband: bool) -> None:
    # fuzz/corpus/reportstatus/regression-bytes-after-the-answer: bytes after the answer's
    # last flush made a report read in one piece untrusted (the reader failed on them before
    # using the packets it had) and were ignored when they came in a later read, so which
    # refs were recorded as updated depended on how the upstream's answer was cut.
    answer = _answer(sideband)
    for size in (1, 3, 7, len(answer)):
        assert _confirmed(answer, size, sideband) == {"refs/heads/agent/x"}
        for garbage in (b"\xffnot a packet", b"0000", b"00"):
            assert _confirmed(answer + garbage, size, sideband) == set(), (size, garbage)
    fuzzed = (CORPUS / "reportstatus" / "regression-bytes-after-the-answer").read_bytes()
    verdicts = {frozenset(_confirmed(fuzzed[1:], size, True)) for size in (1, 5, 64, 4096)}
    assert verdicts == {frozenset()}
