"""The sandbox DNS server on one gateway address (UDP and TCP), answering only internal names."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from airlock.core.dnspolicy import answer
from airlock.gateway.dns_stats import DenialCounter, QueryRateLimiter, is_refused_reply


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.handle(data, addr[0])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSServer:
    def __init__(
        self,
        address: str,
        port: int,
        names: Callable[[], dict[str, str]],
        log: Callable[..., None] | None = None,
        *,
        rate: float = 50.0,
        burst: float = 200.0,
        summary_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address, self.port, self.names = address, port, names
        self.log, self.clock = log, clock
        self.limiter = QueryRateLimiter(rate, burst)  # per source = per sandbox on its network
        self.denials = DenialCounter(summary_interval, clock())
        self.summary_interval = summary_interval
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None

    def handle(self, data: bytes, source: str) -> bytes | None:
        """One query in, the reply (or None: drop) out; counts denials, never logs per query."""
        now = self.clock()
        reply: bytes | None
        if not self.limiter.allow(source, now):
            self.denials.add(source, "rate_limited")
            reply = None  # dropped: no reply means no amplification and no signal
        else:
            reply = answer(data, self.names())
            if reply is None:
                self.denials.add(source, "malformed")
            elif is_refused_reply(reply):
                self.denials.add(source, "refused")
        self._flush(now)
        return reply

    def _flush(self, now: float, force: bool = False) -> None:
        summary = self.denials.flush(now, force=force)
        if summary is not None and self.log is not None:
            self.log("dns_denied_summary", listener=self.address, **summary)

    async def _flush_periodically(self) -> None:
        # Counts from a burst followed by silence are still reported within one interval.
        while True:
            await asyncio.sleep(self.summary_interval)
            self._flush(self.clock())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UDP(self), local_addr=(self.address, self.port)
        )
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, self.address, self.port)
        except OSError:
            self._udp.close()
            raise
        self._flusher = asyncio.create_task(self._flush_periodically())

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: Any = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), 10)
                reply = self.handle(data, source)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        self._flush(self.clock(), force=True)
