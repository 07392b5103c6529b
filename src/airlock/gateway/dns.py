"""The sandbox DNS server on one gateway address (UDP and TCP), answering only internal names."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import cast

from airlock.core.dnspolicy import answer


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, names: Callable[[], dict[str, str]]) -> None:
        self.names = names
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.names())
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSServer:
    def __init__(self, address: str, port: int, names: Callable[[], dict[str, str]]) -> None:
        self.address, self.port, self.names = address, port, names
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UDP(self.names), local_addr=(self.address, self.port)
        )
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, self.address, self.port)
        except OSError:
            self._udp.close()
            raise

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), 10)
                reply = answer(data, self.names())
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
