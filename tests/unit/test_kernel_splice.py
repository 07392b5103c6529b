"""The tunnel's zero-copy relay (gateway/kernel_splice.py) and the Splice handing over to it.

Real loopback TCP sockets (the kind the egress proxy relays), real splice(2). The relay-level
tests drive a KernelRelay between two socket pairs with a recording owner; the Splice-level
tests run a tiny proxy (a DetachableReader head, then a Splice) as the egress proxy does.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from airlock.gateway import kernel_splice
from airlock.gateway.kernel_splice import KernelRelay
from airlock.gateway.splice import CHARGE_BYTES, WRITE_BUFFER_HIGH, DetachableReader, Splice

pytestmark = pytest.mark.skipif(not kernel_splice.available(), reason="needs os.splice")

MiB = 1024 * 1024


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Owner:
    """Records what the relay reports; ``budget``: pause the relay once more has moved."""

    budget: int | None = None
    relay: KernelRelay | None = None
    up: int = 0
    down: int = 0
    ended: list[bool] = field(default_factory=list)
    errors: list[Exception | None] = field(default_factory=list)
    unsupported: list[OSError] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def moved(self, upstream: bool, n: int) -> None:
        if upstream:
            self.up += n
        else:
            self.down += n
        if self.budget is not None and self.up + self.down > self.budget:
            assert self.relay is not None
            self.relay.pause()
            self.finished.set()

    def kernel_ended(self, upstream: bool) -> None:
        self.ended.append(upstream)
        if len(self.ended) == 2:
            self.finished.set()

    def lost(self, exc: Exception | None) -> None:
        self.errors.append(exc)
        self.finished.set()

    def kernel_unsupported(self, exc: OSError) -> None:
        self.unsupported.append(exc)
        self.finished.set()


@dataclass
class Pair:
    """client app <-> [relay_client | relay | relay_up] <-> upstream app."""

    client: socket.socket
    upstream: socket.socket
    relay: KernelRelay
    owner: Owner
    theirs: list[socket.socket]  # the relay side's own sockets (what a transport would hold)

    def close(self) -> None:
        self.relay.close()
        for s in (self.client, self.upstream, *self.theirs):
            s.close()


def relay_pair(budget: int | None = None) -> Pair:
    client, relay_client = tcp_pair()
    relay_up, upstream = tcp_pair()
    owner = Owner(budget=budget)
    relay = KernelRelay.open(
        asyncio.get_running_loop(),
        owner,
        relay_client.fileno(),
        relay_up.fileno(),
        pipe_size=WRITE_BUFFER_HIGH,
    )
    owner.relay = relay
    return Pair(client, upstream, relay, owner, [relay_client, relay_up])


async def send_all(sock: socket.socket, data: bytes, block: int = MiB) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    for i in range(0, len(view), block):
        await loop.sock_sendall(sock, view[i : i + block])


async def recv_all(sock: socket.socket, limit: float = 30) -> bytes:
    """Everything until EOF."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(limit):
        while chunk := await loop.sock_recv(sock, MiB):
            out += chunk
    return bytes(out)


async def test_64_mib_each_way_at_once_arrive_intact() -> None:
    p = relay_pair()
    try:
        p.relay.start()
        up_data, down_data = os.urandom(64 * MiB), os.urandom(64 * MiB)

        async def send(sock: socket.socket, data: bytes) -> None:
            await send_all(sock, data)
            sock.shutdown(socket.SHUT_WR)

        # Each side sends and receives at the same time (else both would wait on the other).
        _, _, got_down, got_up = await asyncio.gather(
            send(p.client, up_data),
            send(p.upstream, down_data),
            recv_all(p.client),
            recv_all(p.upstream),
        )
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up_data).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down_data).digest()
        await asyncio.wait_for(p.owner.finished.wait(), 5)
        assert (p.owner.up, p.owner.down) == (64 * MiB, 64 * MiB)
        assert sorted(p.owner.ended) == [False, True] and p.owner.errors == []
    finally:
        p.close()


async def test_half_close_is_passed_on_and_the_other_way_goes_on() -> None:
    p = relay_pair()
    loop = asyncio.get_running_loop()
    try:
        p.relay.start()
        await loop.sock_sendall(p.client, b"request")
        p.client.shutdown(socket.SHUT_WR)
        # The upstream sees the request, then EOF: the client's half-close was passed on.
        assert await recv_all(p.upstream, 5) == b"request"
        assert p.owner.ended == [True]
        # The other direction still works, for a while and then to its own EOF.
        for i in range(3):
            await loop.sock_sendall(p.upstream, b"part%d;" % i)
            await asyncio.sleep(0.05)
        p.upstream.shutdown(socket.SHUT_WR)
        assert await recv_all(p.client) == b"part0;part1;part2;"
        await asyncio.wait_for(p.owner.finished.wait(), 5)
        assert p.owner.ended == [True, False] and p.owner.errors == []
    finally:
        p.close()


async def test_a_reset_is_reported_as_lost() -> None:
    p = relay_pair()
    loop = asyncio.get_running_loop()
    try:
        p.relay.start()
        await loop.sock_sendall(p.client, b"x" * 1000)
        assert await loop.sock_recv(p.upstream, 1000)
        # Linger 0: close() sends RST instead of FIN.
        p.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        p.upstream.close()
        await asyncio.wait_for(p.owner.finished.wait(), 5)
        [exc] = p.owner.errors
        assert isinstance(exc, ConnectionResetError | BrokenPipeError)
        assert p.relay.closed  # it let go of its fds at once
    finally:
        p.close()


@pytest.mark.parametrize(
    ("total", "block"),
    [
        (128 * MiB, MiB),
        # Small segments: the pipe runs out of slots (one per fragment) long before it holds
        # its size in bytes; the relay must still stop watching the sender.
        (32_000_000, 1000),
    ],
)
async def test_a_slow_reader_bounds_what_the_relay_holds_without_spinning(
    total: int, block: int
) -> None:
    """The upstream pushes at a client that reads nothing: the pipe fills (at most
    WRITE_BUFFER_HIGH), the upstream is no longer read, and the loop idles meanwhile."""
    p = relay_pair()
    loop = asyncio.get_running_loop()
    p.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    p.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chunk = os.urandom(block)
    sent = 0

    async def push() -> None:
        nonlocal sent
        while sent < total:
            await loop.sock_sendall(p.upstream, chunk)
            sent += len(chunk)
        p.upstream.shutdown(socket.SHUT_WR)

    try:
        p.relay.start()
        pusher = asyncio.create_task(push())
        peak = 0
        for _ in range(20):  # let it stall
            await asyncio.sleep(0.025)
            peak = max(peak, p.relay.held(False))
        # Stalled now: half a second of it must cost next to no CPU (no busy loop).
        cpu0, stalled_at = time.process_time(), sent
        for _ in range(20):
            await asyncio.sleep(0.025)
            peak = max(peak, p.relay.held(False))
        cpu = time.process_time() - cpu0
        assert sent == stalled_at, "still sending: not stalled"
        assert sent < min(48 * MiB, total), f"upstream was not slowed: {sent} bytes sent"
        assert p.relay.pipe_size(False) <= WRITE_BUFFER_HIGH
        assert 0 < peak <= WRITE_BUFFER_HIGH, f"relay held {peak} bytes"
        assert cpu < 0.15, f"{cpu:.2f} s CPU in 0.5 s of a stalled tunnel"
        digest = hashlib.sha256()
        received = 0
        async with asyncio.timeout(30):
            while data := await loop.sock_recv(p.client, MiB):
                digest.update(data)
                received += len(data)
        await pusher
        assert received == total
        assert digest.digest() == hashlib.sha256(chunk * (total // block)).digest()
    finally:
        p.close()


async def test_pause_moves_nothing_more() -> None:
    """The owner's budget pauses the relay inside ``moved``: what comes later is not read and
    not one more byte leaves the pipe."""
    p = relay_pair(budget=2 * MiB)
    loop = asyncio.get_running_loop()
    try:
        p.relay.start()
        sender = asyncio.create_task(send_all(p.client, os.urandom(32 * MiB)))
        await asyncio.wait_for(p.owner.finished.wait(), 10)
        moved = p.owner.up
        assert 2 * MiB < moved <= 2 * MiB + WRITE_BUFFER_HIGH
        await asyncio.sleep(0.2)
        assert p.owner.up == moved
        got = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                while data := await loop.sock_recv(p.upstream, MiB):
                    got += len(data)
        assert got < moved  # the batch that crossed the budget was not passed on
        sender.cancel()
    finally:
        p.close()


async def test_unsupported_splice_hands_back_before_any_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seccomp profile without splice answers EPERM: the owner is told to carry on."""

    def refused(*_a: object, **_k: object) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    p = relay_pair()
    loop = asyncio.get_running_loop()
    try:
        monkeypatch.setattr(os, "splice", refused)
        await loop.sock_sendall(p.client, b"hello")
        await asyncio.sleep(0.05)
        p.relay.start()
        await asyncio.wait_for(p.owner.finished.wait(), 5)
        assert [e.errno for e in p.owner.unsupported] == [errno.EPERM]
        assert p.owner.errors == [] and p.relay.closed
    finally:
        p.close()


async def test_every_fd_is_closed_once_and_none_leaks() -> None:
    loop = asyncio.get_running_loop()
    before = open_fds()
    for i in range(30):
        p = relay_pair()
        owned = list(p.relay._fds)
        assert len(owned) == 6  # two duplicates, two pipes
        p.relay.start()
        await loop.sock_sendall(p.client, b"x")
        assert await loop.sock_recv(p.upstream, 10) == b"x"
        if i % 3 == 0:
            p.client.shutdown(socket.SHUT_WR)
            p.upstream.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(p.owner.finished.wait(), 5)
        elif i % 3 == 1:
            p.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            p.upstream.close()
            await asyncio.wait_for(p.owner.finished.wait(), 5)
        p.relay.close()
        p.relay.close()  # a second close touches nothing
        for fd in owned:
            with pytest.raises(OSError):
                os.fstat(fd)  # each was closed (and nothing reused it in between)
        p.close()
    assert open_fds() == before


# ----------------------------------------------------------------------- the Splice

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class CountingGuard:
    """Done once ``server_bytes`` bytes of the server's stream went by; keeps what it saw."""

    def __init__(self, server_bytes: int) -> None:
        self.server_bytes = server_bytes
        self.seen_client = bytearray()
        self.seen_server = bytearray()
        self.done = False

    def client(self, data: bytes) -> None:
        assert not self.done, "the guard was fed after it was done"
        self.seen_client += data
        return None

    def server(self, data: bytes) -> None:
        assert not self.done, "the guard was fed after it was done"
        self.seen_server += data
        self.done = len(self.seen_server) >= self.server_bytes


@dataclass
class Rig:
    proxy_port: int
    splices: list[Splice] = field(default_factory=list)
    charge: Callable[[int], bool] | None = None
    guard: CountingGuard | None = None
    relay_limit: float = 60
    client_sndbuf: int | None = None  # the proxy's socket to the client


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    made: list[asyncio.Server] = []
    yield made
    for s in made:
        s.close()
        await s.wait_closed()


async def rig(servers: list[asyncio.Server], upstream: Handler, **kw: object) -> Rig:
    loop = asyncio.get_running_loop()
    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]
    r = Rig(proxy_port=0, **kw)  # type: ignore[arg-type]

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(reader, DetachableReader)
        assert isinstance(writer.transport, asyncio.Transport)
        if r.client_sndbuf is not None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, r.client_sndbuf)
        head = await reader.readexactly(4)
        if r.guard is not None:
            r.guard.client(head)
        splice = Splice(writer.transport, charge=r.charge, guard=r.guard)
        r.splices.append(splice)
        await loop.create_connection(splice.upstream_protocol, "127.0.0.1", up_port)
        await splice.attach_client(reader, head)
        try:
            await asyncio.wait_for(asyncio.shield(splice.done), r.relay_limit)
        finally:
            splice.close_upstream()
            writer.close()

    proxy = await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(DetachableReader(64 * 1024), on_client),
        "127.0.0.1",
        0,
    )
    r.proxy_port = proxy.sockets[0].getsockname()[1]
    servers.extend([up_server, proxy])
    return r


def mode(s: Splice) -> str:
    return s.mode  # read afresh (an assert on it narrows the attribute for mypy)


async def wait_done(r: Rig) -> Splice:
    for _ in range(500):
        if r.splices and r.splices[-1].done.done():
            return r.splices[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("the splice did not finish")


async def test_guard_sees_every_byte_until_done_then_the_kernel_moves_the_rest(
    servers: list[asyncio.Server],
) -> None:
    """The server pushes 8 MiB at once at a client not reading yet (small socket buffers): the
    guard is done after the first 1 MiB, with part of it still in the proxy's write buffer, so
    the hand-over must wait for that to drain. Every byte arrives, in order; the guard saw
    exactly the bytes before it was done, and nothing after."""
    down = os.urandom(8 * MiB)
    up_body = os.urandom(4 * MiB)
    got_up: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await r.readexactly(4) == b"HELO"
        w.write(down)
        await w.drain()
        got_up.append(await r.read())
        w.close()

    guard = CountingGuard(MiB)
    rg = await rig(servers, upstream, guard=guard, client_sndbuf=64 * 1024)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", rg.proxy_port))
    await loop.sock_sendall(client, b"HELO")
    await asyncio.sleep(0.3)  # the client reads nothing yet: the proxy's buffer fills
    splice = rg.splices[0]
    assert splice.client.get_write_buffer_size() > 0
    assert splice.mode == "handover", "the hand-over went ahead with bytes still buffered"
    received = bytearray()
    async with asyncio.timeout(10):
        while len(received) < len(down):
            received += await loop.sock_recv(client, MiB)
    assert received == down
    assert mode(splice) == "kernel"
    await send_all(client, up_body)
    client.shutdown(socket.SHUT_WR)
    assert await recv_all(client, 10) == b""
    client.close()
    assert got_up == [up_body]
    assert guard.done and bytes(guard.seen_client) == b"HELO"
    assert down.startswith(bytes(guard.seen_server)) and len(guard.seen_server) < len(down)
    s = await wait_done(rg)
    assert s.error is None
    assert (s.bytes_up, s.bytes_down) == (4 + len(up_body), len(down))


async def test_budget_exhaustion_stops_a_kernel_tunnel(servers: list[asyncio.Server]) -> None:
    charged: list[int] = []
    budget = 4 * MiB

    def charge(n: int) -> bool:
        charged.append(n)
        return sum(charged) <= budget

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(4)
        block = os.urandom(MiB)
        for _ in range(64):
            w.write(block)
            await w.drain()
        w.close()

    rg = await rig(servers, upstream, charge=charge)
    reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
    writer.write(b"HELO")
    received = 0
    async with asyncio.timeout(10):
        while data := await reader.read(MiB):
            received += len(data)
    writer.close()
    s = await wait_done(rg)
    assert s.mode == "kernel"
    assert s.stopped == "byte_rate"
    assert all(n >= CHARGE_BYTES for n in charged)  # charged in batches, not per chunk
    assert budget < s.bytes_down <= budget + 2 * CHARGE_BYTES + WRITE_BUFFER_HIGH
    assert received <= s.bytes_down < 64 * MiB


async def test_activity_is_recorded_in_kernel_mode(servers: list[asyncio.Server]) -> None:
    go = asyncio.Event()

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(4)
        await go.wait()
        w.write(b"y" * 100_000)
        await w.drain()
        await r.read()
        w.close()

    rg = await rig(servers, upstream)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
    writer.write(b"HELO")
    await writer.drain()
    for _ in range(100):
        if rg.splices and rg.splices[0].mode == "kernel":
            break
        await asyncio.sleep(0.01)
    s = rg.splices[0]
    assert s.mode == "kernel"
    s.take_activity()  # the head: not this test's business
    await asyncio.sleep(0.2)
    assert s.take_activity() is None  # nothing moved
    quiet_since = s.last_activity
    before = loop.time()
    go.set()
    await reader.readexactly(100_000)
    span = s.take_activity()
    assert span is not None and before <= span[0] <= span[1] <= loop.time()
    assert s.last_activity > quiet_since
    writer.write_eof()
    assert await reader.read() == b""
    writer.close()
    await wait_done(rg)


async def test_stop_ends_a_kernel_tunnel_and_nothing_more_moves(
    servers: list[asyncio.Server],
) -> None:
    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(4)
        for _ in range(1000):
            w.write(b"z" * 65536)
            await w.drain()
            await asyncio.sleep(0.002)
        w.close()

    rg = await rig(servers, upstream, relay_limit=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
    writer.write(b"HELO")
    await reader.readexactly(1_000_000)
    s = rg.splices[0]
    assert s.mode == "kernel"
    s.stop("session_ended")
    assert s.done.done() and s.stopped == "session_ended"
    moved = s.bytes_down
    await asyncio.sleep(0.2)
    assert s.bytes_down == moved
    writer.close()


async def test_no_fd_leak_over_many_kernel_tunnels(servers: list[asyncio.Server]) -> None:
    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(data)
        await w.drain()
        w.close()

    rg = await rig(servers, upstream)
    before = open_fds()
    for i in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
        writer.write(b"HELO" + b"%d" % i * 1000)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"HELO" + b"%d" % i * 1000
        writer.close()
        await writer.wait_closed()
        s = await wait_done(rg)
        assert s.mode == "kernel" and s.relay is not None and s.relay.closed
    for _ in range(100):  # the proxy side's handlers close their transports just after
        if open_fds() == before:
            break
        await asyncio.sleep(0.01)
    assert open_fds() == before


async def test_splice_refused_keeps_the_protocol_path(
    servers: list[asyncio.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_a: object, **_k: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "splice", refused)

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(hashlib.sha256(data).digest())
        await w.drain()
        w.close()

    rg = await rig(servers, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
    body = os.urandom(3 * MiB)
    writer.write(b"HELO" + body)
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == hashlib.sha256(b"HELO" + body).digest()
    writer.close()
    s = await wait_done(rg)
    assert s.mode == "protocol" and s.error is None
    assert s.bytes_up == 4 + len(body)


async def test_no_pipe_to_be_had_keeps_the_protocol_path(
    servers: list[asyncio.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of fds, or the user's pipe budget spent (fs.pipe-user-pages-soft: then new pipes
    get 2 pages only): the tunnel simply stays on the protocol path."""
    real_pipe2 = os.pipe2

    def small_pipe2(flags: int) -> tuple[int, int]:
        r, w = real_pipe2(flags)
        fcntl.fcntl(w, kernel_splice._F_SETPIPE_SZ, 4096)  # what a spent budget gives
        return r, w

    def refuse_size(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == kernel_splice._F_SETPIPE_SZ and arg > 4096:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_fcntl(fd, cmd, arg)

    real_fcntl = fcntl.fcntl
    monkeypatch.setattr(os, "pipe2", small_pipe2)
    monkeypatch.setattr(fcntl, "fcntl", refuse_size)

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read())
        await w.drain()
        w.close()

    rg = await rig(servers, upstream)
    before = open_fds()
    reader, writer = await asyncio.open_connection("127.0.0.1", rg.proxy_port)
    body = os.urandom(2 * MiB)
    writer.write(b"HELO" + body)
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"HELO" + body
    writer.close()
    await writer.wait_closed()
    s = await wait_done(rg)
    assert s.mode == "protocol" and s.relay is None and s.error is None
    for _ in range(100):
        if open_fds() == before:
            break
        await asyncio.sleep(0.01)
    assert open_fds() == before  # the pipes that were too small were closed again
