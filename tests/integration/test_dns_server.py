"""The sandbox DNS server on a real socket: garbage in, nothing out, and still answering."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

from dnslib import RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.dns import DNSServer

NAMES = {"airlock.internal": "10.213.0.1"}


async def _ask(port: int, name: str, source: str = "127.0.0.1") -> DNSRecord | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, DNSRecord.question(name).pack(), ("127.0.0.53", port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
        return DNSRecord.parse(data)
    except TimeoutError:
        return None
    finally:
        sock.close()


async def test_garbage_flood_then_still_answers() -> None:
    logged: list[tuple[str, dict[str, object]]] = []
    server = DNSServer(
        "127.0.0.53",
        0,
        lambda: NAMES,
        lambda event, **kw: logged.append((event, kw)),
        rate=100_000,
        burst=100_000,
    )
    server.port = 0
    await server.start()
    port = server._udp.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(1000):
            sender.sendto(
                os.urandom(int.from_bytes(os.urandom(1), "big") + 1), ("127.0.0.53", port)
            )
        sender.close()
        # 1,000 concurrent TCP connections that send nonsense or nothing.
        tcp_port = server._tcp.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def bad_tcp() -> None:
            try:
                r, w = await asyncio.open_connection("127.0.0.53", tcp_port)
                w.write(struct.pack("!H", 40) + os.urandom(40))
                await w.drain()
                await asyncio.wait_for(r.read(100), 1)
                w.close()
            except (OSError, TimeoutError):
                pass

        await asyncio.gather(*(bad_tcp() for _ in range(1000)))
        reply = await _ask(port, "airlock.internal")
        assert reply is not None and str(reply.rr[0].rdata) == "10.213.0.1"
        refused = await _ask(port, "example.org")
        assert refused is not None and refused.header.rcode == RCODE.REFUSED
    finally:
        await server.stop()
    # Denials are summarised, not logged one line per packet.
    assert len(logged) < 10


async def test_rate_limit_drops_a_flooding_source_only() -> None:
    server = DNSServer("127.0.0.53", 0, lambda: NAMES, None, rate=1, burst=5)
    await server.start()
    port = server._udp.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.61", 0))
        sock.setblocking(False)
        for _ in range(20):  # a burst, sent faster than the bucket refills
            await loop.sock_sendto(
                sock, DNSRecord.question("airlock.internal").pack(), ("127.0.0.53", port)
            )
        replies = 0
        try:
            while True:
                await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.5)
                replies += 1
        except TimeoutError:
            pass
        sock.close()
        assert 5 <= replies <= 6, replies  # the burst, plus at most one refilled token
        # Another source (another sandbox) is answered meanwhile.
        assert await _ask(port, "airlock.internal", "127.0.0.62") is not None
    finally:
        await server.stop()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=700))
def test_handle_never_raises(data: bytes) -> None:
    server = DNSServer("127.0.0.53", 0, lambda: NAMES, None)
    out = server.handle(data, "127.0.0.70")
    assert out is None or DNSRecord.parse(out).header.qr == 1
