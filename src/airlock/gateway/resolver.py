"""Name resolution for the egress proxy: a static map (tests, demo) or the configured DNS servers.

The proxy resolves each name once, vets every answer, and dials an address it vetted; it
never hands a name to the operating system's resolver (whose answers it could not vet and
which could be asked again, later, with a different answer: DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dnslib import QTYPE, RCODE, DNSRecord
from dnslib.dns import DNSError

from airlock.core.egress import IPAddress
from airlock.core.hostnames import normalize_hostname

__all__ = [
    "DnsResolver",
    "ResolveError",
    "Resolver",
    "StaticEntry",
    "StaticResolver",
    "nameservers_from_resolv_conf",
    "parse_server",
]

MAX_ANSWERS = 32  # more than this from one lookup is not a host, it is an attack surface
_MAX_CNAME_CHAIN = 8


class ResolveError(Exception):
    """The name has no usable address (no such name, no answer, timeout, server failure)."""


class Resolver(Protocol):
    async def resolve(self, name: str) -> list[IPAddress]:
        """Every address ``name`` (normalised) has, A and AAAA; raises :class:`ResolveError`."""
        ...


@dataclass(frozen=True)
class StaticEntry:
    """One name in the config's static map.

    ``allow_private`` lets the proxy dial this name even though its address is loopback or
    private: for decoys in tests and the demo only, never for real hosts.
    """

    name: str
    addresses: tuple[IPAddress, ...]
    allow_private: bool = False

    @staticmethod
    def make(name: str, addresses: str | Iterable[str], allow_private: bool = False) -> StaticEntry:
        addrs = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addrs:
            raise ValueError(f"static entry {name!r} has no address")
        return StaticEntry(
            name=normalize_hostname(name),
            addresses=tuple(ipaddress.ip_address(a) for a in addrs),
            allow_private=allow_private,
        )


class StaticResolver:
    """Answers from a fixed map; names not in it go to ``fallback`` or fail."""

    def __init__(
        self,
        entries: Iterable[StaticEntry] | Mapping[str, str | Sequence[str]],
        fallback: Resolver | None = None,
    ) -> None:
        if isinstance(entries, Mapping):
            items = [StaticEntry.make(k, v) for k, v in entries.items()]
        else:
            items = list(entries)
        self._map = {e.name: e for e in items}
        self.fallback = fallback

    @property
    def private_ok(self) -> frozenset[str]:
        """Names whose entries are marked ``allow_private`` (for ``EgressPolicy``)."""
        return frozenset(n for n, e in self._map.items() if e.allow_private)

    async def resolve(self, name: str) -> list[IPAddress]:
        entry = self._map.get(name)
        if entry is not None:
            return list(entry.addresses)
        if self.fallback is not None:
            return await self.fallback.resolve(name)
        raise ResolveError(f"{name} is not in the static map")


def parse_server(spec: str) -> tuple[str, int]:
    """``"9.9.9.9"``, ``"9.9.9.9:53"``, ``"2620:fe::fe"`` or ``"[2620:fe::fe]:53"``.

    ValueError (with a message fit for a config error) for anything else.
    """
    s = spec.strip()
    port_text = "53"
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{spec!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else "53"
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
    else:
        host = s
    try:
        # Resolvers are given by address: no lookup to find the lookup.
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{spec!r}: not an IP address (give resolvers by address)") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{spec!r}: bad port {port_text!r}")
    return host, int(port_text)


def nameservers_from_resolv_conf(text: str) -> list[str]:
    """The ``nameserver`` addresses in a resolv.conf, in order (a default for ``servers``)."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%", 1)[0])))
            except ValueError:
                continue
    return out


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        # Only a reply carrying our random id counts; connected UDP already filters the source.
        if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == self.qid:
            if not self.reply.done():
                self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("closed"))


class DnsResolver:
    """Asks the configured recursive resolvers (by address) for A and AAAA, over UDP.

    Tries each server in order until one gives a definite answer; a truncated UDP reply is
    retried over TCP. Follows the CNAME chain inside one answer only.
    """

    def __init__(self, servers: list[str], timeout: float = 3.0) -> None:
        if not servers:
            raise ValueError("DnsResolver needs at least one server address")
        self.servers = [parse_server(s) for s in servers]
        self.timeout = timeout

    async def resolve(self, name: str) -> list[IPAddress]:
        results = await asyncio.gather(
            self._lookup(name, QTYPE.A), self._lookup(name, QTYPE.AAAA), return_exceptions=True
        )
        addresses: list[IPAddress] = []
        errors: list[str] = []
        for r in results:
            if isinstance(r, BaseException):
                errors.append(str(r))
            else:
                addresses.extend(a for a in r if a not in addresses)
        if not addresses:
            raise ResolveError(f"{name}: no address ({'; '.join(errors) or 'empty answer'})")
        return addresses[:MAX_ANSWERS]

    async def _lookup(self, name: str, qtype: int) -> list[IPAddress]:
        last: Exception = ResolveError("no server answered")
        for host, port in self.servers:
            try:
                return await self._ask(host, port, name, qtype)
            except ResolveError as exc:
                if str(exc).endswith("NXDOMAIN"):
                    raise  # definite: another server would say the same
                last = exc
            except (OSError, TimeoutError, DNSError, ValueError) as exc:
                last = exc
        raise ResolveError(str(last) or type(last).__name__)

    async def _ask(self, host: str, port: int, name: str, qtype: int) -> list[IPAddress]:
        qid = secrets.randbelow(65536)  # unpredictable id against off-path spoofing
        query = DNSRecord.question(name, QTYPE.get(qtype))
        query.header.id = qid
        packet: bytes = query.pack()
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _OneShot(qid), remote_addr=(host, port)
        )
        try:
            transport.sendto(packet)
            data = await asyncio.wait_for(proto.reply, self.timeout)
        finally:
            transport.close()
        reply = DNSRecord.parse(data)
        if reply.header.tc:
            reply = DNSRecord.parse(await self._ask_tcp(host, port, packet))
        return self._addresses(reply, name, qtype, qid)

    async def _ask_tcp(self, host: str, port: int, packet: bytes) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(2), self.timeout)
            return await asyncio.wait_for(
                reader.readexactly(struct.unpack("!H", head)[0]), self.timeout
            )
        finally:
            writer.close()

    @staticmethod
    def _addresses(reply: DNSRecord, name: str, qtype: int, qid: int) -> list[IPAddress]:
        if reply.header.id != qid or reply.header.qr != 1:
            raise ResolveError("reply does not match the query")
        qs = reply.questions
        if len(qs) != 1 or str(qs[0].qname).rstrip(".").lower() != name or qs[0].qtype != qtype:
            raise ResolveError("reply is for another question")
        rcode = reply.header.rcode
        if rcode == RCODE.NXDOMAIN:
            raise ResolveError(f"{name}: NXDOMAIN")
        if rcode != RCODE.NOERROR:
            raise ResolveError(f"{name}: {RCODE.get(rcode)}")
        # Follow the CNAME chain from the asked name; records for other owners are ignored.
        owners = {name}
        for _ in range(_MAX_CNAME_CHAIN):
            grew = False
            for rr in reply.rr:
                owner = str(rr.rname).rstrip(".").lower()
                if rr.rtype == QTYPE.CNAME and owner in owners:
                    target = str(rr.rdata).rstrip(".").lower()
                    if target not in owners:
                        owners.add(target)
                        grew = True
            if not grew:
                break
        out: list[IPAddress] = []
        for rr in reply.rr:
            if rr.rtype == qtype and str(rr.rname).rstrip(".").lower() in owners:
                out.append(ipaddress.ip_address(str(rr.rdata)))
        return out
