"""TLS listeners that stay up under abuse.

asyncio's built-in TLS server hides handshake failures from the application. Here the TCP
connection is accepted first, checked against connection caps and the per-source
authentication back-off, then upgraded with ``loop.start_tls`` under a handshake timeout; a
failed handshake (no client certificate, another CA) is counted against its source. After
the handshake the connection is handed to aiohttp's protocol, whose keep-alive timer
(``header_timeout``) closes a connection with no complete request in that time (slowloris,
idle keep-alive).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airlock.core.aggregate import DenialAggregator
from airlock.core.backoff import AuthBackoff
from airlock.gateway.metrics import Metrics
from airlock.gateway.pki import certificate_current


@dataclass(frozen=True)
class ConnectionLimits:
    handshake_timeout: float = 10.0
    header_timeout: float = 15.0
    max_connections: int = 4096
    max_connections_per_source: int = 128
    auth_failure_threshold: int = 10
    auth_backoff_max: float = 60.0


class ConnectionGuard:
    """Shared by every git listener: connection caps, back-off, bounded logging."""

    def __init__(
        self,
        limits: ConnectionLimits,
        log: Callable[..., None],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.backoff = AuthBackoff(
            threshold=limits.auth_failure_threshold, maximum=limits.auth_backoff_max
        )
        self.denials = DenialAggregator(interval=10.0)
        self.per_source: dict[str, int] = {}
        self.total = 0

    async def stop(self) -> None:
        for line in self.denials.flush(self.clock(), force=True):
            self.log("denials_repeated", **line)

    def deny(self, reason: str, source: str, **fields: Any) -> None:
        """Count a denial; log the first of its kind per interval, then counts."""
        self.metrics.inc(
            "airlock_denials_total", help="Requests and connections refused", reason=reason
        )
        first, due = self.denials.record(self.clock(), (reason, source))
        for line in due:
            self.log("denials_repeated", **line)
        if first:
            self.log("denied", reason=reason, source=source, **fields)

    # --- connection accounting ----------------------------------------------------------

    def admit(self, source: str) -> str | None:
        """Why a new connection from ``source`` is refused before TLS, or None."""
        if self.backoff.blocked(source, self.clock()) is not None:
            return "auth_backoff"
        if self.total >= self.limits.max_connections:
            return "max_connections"
        if self.per_source.get(source, 0) >= self.limits.max_connections_per_source:
            return "max_connections_per_source"
        self.total += 1
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return None

    def release(self, source: str) -> None:
        self.total -= 1
        n = self.per_source.get(source, 1) - 1
        if n <= 0:
            self.per_source.pop(source, None)
        else:
            self.per_source[source] = n

    def handshake_failed(self, source: str, error: str) -> None:
        self.metrics.inc("airlock_handshake_failures_total", help="Failed TLS handshakes")
        blocked = self.backoff.failure(source, self.clock())
        if blocked is not None:
            self.metrics.inc(
                "airlock_limit_hits_total", help="Limits reached", limit="auth_backoff"
            )
        self.deny("tls_handshake_failed", source, error=error[:200])

    def handshake_ok(self, source: str) -> None:
        self.backoff.success(source)

    def open_connections(self) -> int:
        return self.total


class _Accept(asyncio.Protocol):
    def __init__(self, listener: TLSListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        guard = self.listener.guard
        refused = guard.admit(source)
        if refused is not None:
            guard.metrics.inc("airlock_limit_hits_total", help="Limits reached", limit=refused)
            guard.deny(refused, source)
            transport.abort()
            return
        # No byte is read before start_tls takes over (the ClientHello must not be lost).
        transport.pause_reading()
        self.transport = transport
        asyncio.get_running_loop().create_task(self.listener.upgrade(transport, source))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


class _AppTracker(asyncio.Protocol):
    """Wraps aiohttp's protocol to release the connection slot when it closes.

    The slot is given back exactly once, however the connection ends: a failed handshake
    is seen both by ``start_tls`` raising and by this protocol's ``connection_lost``, and a
    second release would drive the counts (and ``airlock_open_connections``) below zero.
    """

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard, source: str) -> None:
        self.inner, self.guard, self.source = inner, guard, source
        self.transport: asyncio.BaseTransport | None = None
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.guard.release(self.source)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class TLSListener:
    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
        guard: ConnectionGuard,
    ) -> None:
        """``ssl_context`` may be a function: asked at every handshake, so a CA rotation's
        new server certificate and client CAs apply to the next connection."""
        self.factory = factory
        self._ssl = ssl_context
        self.guard = guard
        self._server: asyncio.Server | None = None

    @property
    def ssl(self) -> ssl.SSLContext:
        return self._ssl if isinstance(self._ssl, ssl.SSLContext) else self._ssl()

    async def start(self, host: str, port: int, backlog: int = 512) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Accept(self), host, port, backlog=backlog, reuse_address=True
        )

    async def upgrade(self, transport: asyncio.Transport, source: str) -> None:
        loop = asyncio.get_running_loop()
        app = _AppTracker(self.factory(), self.guard, source)
        try:
            tls = await loop.start_tls(
                transport,
                app,
                self.ssl,
                server_side=True,
                ssl_handshake_timeout=self.guard.limits.handshake_timeout,
            )
        except (ssl.SSLError, TimeoutError, ConnectionError, OSError) as exc:
            self.guard.handshake_failed(source, f"{type(exc).__name__}: {exc}")
            app.release()
            transport.abort()
            return
        if tls is None:  # the peer went away during the handshake
            app.release()
            return
        ssl_obj = tls.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        if der and certificate_current(der, time.time()):
            # Only a verified, current client certificate clears the back-off: a
            # certificate-less handshake (allowed on sandbox listeners, for HTTP Basic) proves
            # nothing, and must not wipe the count of failed Basic attempts
            # (gateway/gitauth.py); nor may an expired one (its handshake completes only so
            # that its requests can be told the session has ended).
            self.guard.handshake_ok(source)
        app.connection_made(tls)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
