"""TLS, server side, over an asyncio stream that has already been read from.

The egress proxy reads a CONNECT tunnel's first ClientHello itself (to check its SNI before
anything else happens), so the handshake cannot start on a fresh transport: the bytes read
so far are fed to an :class:`ssl.SSLObject` through memory BIOs, and the rest of the
connection goes the same way. Every wait is bounded by the caller's timeouts.
"""

from __future__ import annotations

import asyncio
import ssl

__all__ = ["TlsClosed", "TlsServerStream"]

CHUNK = 64 * 1024


class TlsClosed(Exception):
    """The TLS connection failed or ended (handshake refused, reset, EOF mid-record)."""


class TlsServerStream:
    def __init__(
        self,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._incoming.write(first)
        self._eof = False
        self.bytes_in = len(first)  # raw bytes, both directions, for the budgets
        self.bytes_out = 0

    @property
    def alpn(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.bytes_out += len(data)
            self._writer.write(data)
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise TlsClosed(f"write: {exc}") from None

    async def _fill(self) -> None:
        if self._eof:
            raise TlsClosed("eof")
        try:
            data = await self._reader.read(CHUNK)
        except (ConnectionError, OSError) as exc:
            raise TlsClosed(f"read: {exc}") from None
        if not data:
            self._eof = True
            self._incoming.write_eof()
            return
        self.bytes_in += len(data)
        self._incoming.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                await self._flush_quietly()  # the alert, so the client says why
                raise TlsClosed(f"handshake: {exc.reason or exc}") from None
            await self._flush()
            return

    async def read(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes of plaintext; b"" at the end of the stream."""
        while True:
            try:
                return self._tls.read(n)
            except ssl.SSLWantReadError:
                await self._flush()
                if self._eof:
                    return b""
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TlsClosed(f"read: {exc.reason or exc}") from None

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self._tls.write(view[:CHUNK])
            except ssl.SSLError as exc:
                raise TlsClosed(f"write: {exc.reason or exc}") from None
            view = view[n:]
            await self._flush()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except TlsClosed:
            pass

    async def close(self) -> None:
        """Send close_notify (best effort); the caller closes the socket."""
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass
        await self._flush_quietly()
