"""The CONNECT tunnel's data path (gateway/splice.py) over real loopback sockets.

A tiny "proxy" accepts a client with a DetachableReader, reads a head through the stream API,
dials an upstream on 127.0.0.1 and joins the two with a Splice, as the egress proxy does after
the ClientHello.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from airlock.gateway.splice import WRITE_BUFFER_HIGH, DetachableReader, Splice

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Rig:
    """One proxy in front of one upstream handler; the splices it made, in order."""

    proxy_port: int
    splices: list[Splice] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # set: attach the client


async def _rig(upstream: Handler, head_bytes: int) -> tuple[Rig, list[asyncio.Server]]:
    loop = asyncio.get_running_loop()
    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]
    rig = Rig(proxy_port=0)
    rig.hold.set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(reader, DetachableReader)
        assert isinstance(writer.transport, asyncio.Transport)
        head = await reader.readexactly(head_bytes)
        await rig.hold.wait()
        splice = Splice(writer.transport)
        rig.splices.append(splice)
        await loop.create_connection(splice.upstream_protocol, "127.0.0.1", up_port)
        await splice.attach_client(reader, head)
        try:
            await asyncio.wait_for(asyncio.shield(splice.done), 60)
        finally:
            splice.close_upstream()
            writer.close()

    proxy = await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(DetachableReader(64 * 1024), on_client),
        "127.0.0.1",
        0,
    )
    rig.proxy_port = proxy.sockets[0].getsockname()[1]
    return rig, [up_server, proxy]


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    made: list[asyncio.Server] = []
    yield made
    for s in made:
        s.close()


async def _wait_done(rig: Rig) -> Splice:
    for _ in range(500):
        if rig.splices and rig.splices[-1].done.done():
            return rig.splices[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("the splice did not finish")


async def test_bytes_both_ways_with_half_close(servers: list[asyncio.Server]) -> None:
    """Client -> upstream until the client's EOF, then the upstream answers and closes."""
    got: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # to EOF: the client's half-close must arrive here
        got.append(data)
        w.write(b"answer:" + hashlib.sha256(data).hexdigest().encode())
        await w.drain()
        w.close()

    rig, made = await _rig(upstream, head_bytes=5)
    servers.extend(made)
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    body = os.urandom(3 * 1024 * 1024)
    w.write(b"HELLO" + body)
    await w.drain()
    w.write_eof()
    answer = await asyncio.wait_for(r.read(), 10)
    w.close()
    assert got == [b"HELLO" + body]
    assert answer == b"answer:" + hashlib.sha256(b"HELLO" + body).hexdigest().encode()
    splice = await _wait_done(rig)
    assert splice.error is None
    assert splice.bytes_up == 5 + len(body)
    assert splice.bytes_down == len(answer)


async def test_bytes_buffered_before_the_handoff_go_first(servers: list[asyncio.Server]) -> None:
    """What the stream reader held past the head (pipelined data) is not lost or reordered."""
    got: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.read())
        w.close()

    rig, made = await _rig(upstream, head_bytes=4)
    servers.extend(made)
    rig.hold.clear()  # the proxy reads the head, then waits: the rest sits in its reader
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"HEADpipelined-1;")
    await w.drain()
    await asyncio.sleep(0.2)
    rig.hold.set()
    await asyncio.sleep(0.2)
    w.write(b"after-2")
    await w.drain()
    w.write_eof()
    await asyncio.wait_for(r.read(), 10)
    w.close()
    assert got == [b"HEADpipelined-1;after-2"]


async def test_client_eof_before_the_handoff_is_passed_on(servers: list[asyncio.Server]) -> None:
    got: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await asyncio.wait_for(r.read(), 10))
        w.write(b"bye")
        w.close()

    rig, made = await _rig(upstream, head_bytes=4)
    servers.extend(made)
    rig.hold.clear()
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"HEADtail")
    w.write_eof()  # the EOF reaches the proxy's reader before the upstream exists
    await asyncio.sleep(0.2)
    rig.hold.set()
    assert await asyncio.wait_for(r.read(), 10) == b"bye"
    w.close()
    assert got == [b"HEADtail"]
    assert (await _wait_done(rig)).error is None


async def test_slow_reader_bounds_what_the_gateway_buffers(servers: list[asyncio.Server]) -> None:
    """The upstream pushes 128 MiB at a client that does not read: reading the upstream pauses
    once the client's write buffer is full, so the gateway holds about WRITE_BUFFER_HIGH."""
    total = 128 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    sent = 0

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        while sent < total:
            w.write(chunk)
            await w.drain()
            sent += len(chunk)
        w.close()

    rig, made = await _rig(upstream, head_bytes=1)
    servers.extend(made)
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port, limit=1 << 20)
    # Keep the client's own socket receive buffer small, so it cannot soak up the stream.
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    transport = w.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    w.write(b"x")
    await w.drain()
    peak = 0
    for _ in range(40):
        await asyncio.sleep(0.025)
        if rig.splices:
            peak = max(peak, rig.splices[0].client.get_write_buffer_size())
    assert rig.splices, "the proxy never spliced"
    # The upstream stalls far short of 128 MiB: kernel socket buffers on the three sockets
    # (loopback autotuning allows a few MiB each) plus the gateway's bound.
    assert sent < 48 * 1024 * 1024, f"upstream was not slowed: {sent} bytes sent"
    assert peak <= WRITE_BUFFER_HIGH + 512 * 1024, f"gateway buffered {peak} bytes"
    transport.resume_reading()
    digest = hashlib.sha256()
    received = 0
    while data := await asyncio.wait_for(r.read(1 << 20), 10):
        digest.update(data)
        received += len(data)
    w.close()
    assert received == total
    assert digest.hexdigest() == hashlib.sha256(chunk * (total // len(chunk))).hexdigest()


async def test_upstream_reset_ends_the_splice_with_an_error(
    servers: list[asyncio.Server],
) -> None:
    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(4)
        sock = w.get_extra_info("socket")
        # Linger 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    rig, made = await _rig(upstream, head_bytes=4)
    servers.extend(made)
    _r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"HEAD")
    await w.drain()
    splice = await _wait_done(rig)
    w.close()
    assert isinstance(splice.error, ConnectionError)
