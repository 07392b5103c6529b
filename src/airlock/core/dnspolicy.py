"""What the sandbox DNS answers: the gateway's own names, and nothing else. Pure, no I/O.

REFUSED (not NXDOMAIN) for every other name: REFUSED says "this server will not answer",
which stub resolvers treat as final for this server without caching a negative answer
about the outside name, and it tells the sandbox nothing about whether the name exists.
"""

from __future__ import annotations

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.dns import DNSError
from dnslib.label import DNSLabelError

MAX_QUERY_BYTES = 512


def answer(packet: bytes, names: dict[str, str], ttl: int = 60) -> bytes | None:
    """The reply to one query packet, or None to drop it (malformed, or not a query)."""
    if len(packet) > MAX_QUERY_BYTES:
        return None
    try:
        query = DNSRecord.parse(packet)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    if query.header.qr != 0 or len(query.questions) != 1 or query.header.opcode != 0:
        return None
    reply = query.reply()
    reply.header.ra = 0  # no recursion, ever
    # reply() copies the query's flag bits, its RCODE among them: a query carrying RCODE 5
    # for an answered name would get a "refused" answer (and count as a denial).
    reply.header.rcode = RCODE.NOERROR
    q = query.questions[0]
    name = str(q.qname).rstrip(".").lower()
    address = names.get(name)
    if address is None:
        reply.header.rcode = RCODE.REFUSED
    elif q.qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(address), ttl=ttl))
    # Known name, other type (AAAA...): NOERROR with no answer, so clients fall back to A.
    try:
        packed: bytes = reply.pack()
    except DNSLabelError:
        return None  # dnslib parsed a label over 63 bytes or a name over 255: malformed
    return packed
