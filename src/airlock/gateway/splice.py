"""The CONNECT tunnel's data path: two transports joined protocol to protocol.

A StreamReader/StreamWriter pump copies every byte twice (``feed_data`` into a buffer, ``read``
out of it) and wakes a task for every chunk; under a 1 GiB tunnel that was two thirds of the
egress proxy's CPU (bench/README.md, "Findings"). Here each side's protocol writes what it
receives straight into the other transport. Back-pressure is the transports' own: when one
side's write buffer passes its high-water mark, reading from the other side pauses until the
buffer drains, so a slow reader never makes the gateway hold more than ``WRITE_BUFFER_HIGH``
per direction.

Once the guard is done (or if there is none), nothing looks at the bytes any more and the
splice hands the two sockets to a :class:`~airlock.gateway.kernel_splice.KernelRelay`: both
transports stop reading, their write buffers drain, and from then on ``splice(2)`` moves the
bytes through one pipe per direction (bounded, ``WRITE_BUFFER_HIGH``), never into Python. The
counters, budget charge, activity, half-close, stop and loss work the same in both modes; where
splice is unavailable or refused (EINVAL, a seccomp EPERM) the protocol path simply goes on.

:class:`Splice` only moves bytes and records when it did; how long a tunnel may live or
idle is the caller's decision (it polls :attr:`Splice.last_activity` and
:meth:`Splice.take_activity`, and waits on :attr:`Splice.done`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal, Protocol

from airlock.gateway import kernel_splice
from airlock.gateway.kernel_splice import KernelRelay

__all__ = ["CHARGE_BYTES", "WRITE_BUFFER_HIGH", "DetachableReader", "Guard", "Splice"]

#: Per direction, the most the gateway buffers before it stops reading the sender.
WRITE_BUFFER_HIGH = 1024 * 1024
#: Bytes are charged to the budget in batches of this size (a per-chunk call would cost ~5 %
#: of the relay's CPU); a tunnel overshoots an exhausted budget by less than this.
CHARGE_BYTES = 1024 * 1024


class _Refusal(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def detail(self) -> str: ...


class Guard(Protocol):
    """Sees the bytes of both directions before they are passed on, until it is ``done``
    (core/tlshello.py: every ClientHello of the handshake names the CONNECT host)."""

    @property
    def done(self) -> bool: ...
    def client(self, data: bytes) -> _Refusal | None: ...
    def server(self, data: bytes) -> None: ...


class DetachableReader(asyncio.StreamReader):
    """A StreamReader whose connection can be handed to another protocol mid-stream.

    The request head and the ClientHello are read through the stream API; after that the
    transport is given to a :class:`Splice` and whatever this reader still holds goes first.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.peer_ended = False

    def feed_eof(self) -> None:
        self.peer_ended = True
        super().feed_eof()

    async def detach(
        self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol
    ) -> tuple[bytes, bool]:
        """Give ``transport`` to ``protocol``; the bytes read but not consumed, and whether the
        peer had already sent EOF. This reader is finished afterwards."""
        transport.set_protocol(protocol)
        ended = self.peer_ended
        # No more data can arrive here now: ending the stream makes read() return exactly
        # the buffered bytes, without waiting.
        super().feed_eof()
        return await self.read(), ended


class _Side(asyncio.Protocol):
    """Attached to one transport; everything it receives is written to ``peer``."""

    def __init__(self, splice: Splice, upstream: bool) -> None:
        self.splice = splice
        self.upstream = upstream  # True: this side is the client, its bytes go upstream
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.splice.guard is not None and not self.splice.inspect(self.upstream, data):
            return  # refused: not one byte of it is passed on
        splice = self.splice
        splice.moved(self.upstream, len(data))
        self.peer.write(data)
        if splice.guard is None and splice.mode == "protocol" and splice.kernel:
            splice.hand_over()

    def eof_received(self) -> bool:
        self.splice.side_ended(self.upstream)
        return True  # keep the transport: the other direction may still be running

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.lost(exc)

    # This side's write buffer is full, and the peer is what fills it: stop reading the peer.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.splice.mode == "handover":  # this write buffer is empty now
            self.splice.try_kernel()
            return
        if self.peer is not None and not self.peer.is_closing() and self.splice.stopped is None:
            self.peer.resume_reading()


class Splice:
    """Relays bytes between a client transport and an upstream transport, both directions.

    Use: create it, pass :meth:`upstream_protocol` to ``loop.create_connection`` for the
    upstream, then :meth:`attach_client` with the client's transport and reader. :attr:`done`
    resolves when both directions have ended (EOF each way) or either connection is lost.
    """

    def __init__(
        self,
        client: asyncio.Transport,
        charge: Callable[[int], bool] | None = None,
        guard: Guard | None = None,
        kernel: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = client
        self.charge = charge  # bytes moved -> False when the budget is spent
        # Sees every byte before it is passed on, until done; must already have seen the
        # ``first`` bytes given to attach_client.
        self.guard = guard
        self.stopped: str | None = None  # why the splice stopped itself ("byte_rate")
        self.stopped_detail = ""
        self._uncharged = 0
        self.upstream: asyncio.Transport | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.last_activity = self._loop.time()
        self._first_since_look: float | None = None  # first byte since take_activity()
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._ended = {True: False, False: False}  # direction (upstream?) -> EOF passed on
        self._from_client = _Side(self, upstream=True)
        self._from_upstream = _Side(self, upstream=False)
        self._from_upstream.peer = client
        # "protocol" -> "handover" (both paused, write buffers draining) -> "kernel"; back to
        # "protocol" for good if the relay cannot be had.
        self.kernel = kernel and kernel_splice.available()
        self.mode: Literal["protocol", "handover", "kernel"] = "protocol"
        self.relay: KernelRelay | None = None

    def upstream_protocol(self) -> asyncio.Protocol:
        return self._from_upstream

    async def attach_client(self, reader: DetachableReader, first: bytes) -> None:
        """Send ``first`` upstream, then join the client: its buffered bytes go next, and from
        here on every byte it sends. Call after the upstream connection is made."""
        up = self.upstream = self._upstream_transport()
        self._from_client.peer = up
        for t in (self.client, up):
            t.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        up.write(first)
        self.moved(True, len(first))
        rest, ended = await reader.detach(self.client, self._from_client)
        if rest and (self.guard is None or self.inspect(True, rest)):
            self.moved(True, len(rest))
            up.write(rest)
        if self.stopped is not None:
            return
        if self.client.is_closing():  # the client went away while the upstream was dialed
            self._finish(ConnectionResetError("client closed before the tunnel opened"))
        elif ended:
            self.side_ended(True)
        elif not self.client.is_reading():
            self.client.resume_reading()
        if self.guard is None and self.kernel and self.mode == "protocol":
            self.hand_over()

    def _upstream_transport(self) -> asyncio.Transport:
        # create_connection() has called connection_made on our protocol by now.
        t = self._from_upstream.transport
        if t is None:
            raise RuntimeError("attach_client() before the upstream connection was made")
        return t

    # --------------------------------------------------------------- called by the sides

    def moved(self, upstream: bool, n: int) -> None:
        if upstream:
            self.bytes_up += n
        else:
            self.bytes_down += n
        self.last_activity = self._loop.time()
        if self._first_since_look is None:
            self._first_since_look = self.last_activity
        self._uncharged += n
        if self._uncharged >= CHARGE_BYTES:
            self.settle()

    def take_activity(self) -> tuple[float, float] | None:
        """(first, last) byte moved since the previous call, in loop time; None if none."""
        first, self._first_since_look = self._first_since_look, None
        return None if first is None else (first, self.last_activity)

    def inspect(self, upstream: bool, data: bytes) -> bool:
        """Show ``data`` to the guard; False (and the splice stopped) if it is refused."""
        guard = self.guard
        assert guard is not None
        if upstream:
            refusal = guard.client(data)
            if refusal is not None:
                self.guard = None
                self.stop(refusal.rule, refusal.detail)
                return False
        else:
            guard.server(data)
        if guard.done:
            self.guard = None  # nothing more to check: no cost for the rest of the tunnel
        return True

    # ------------------------------------------------------------- to the kernel relay

    def hand_over(self) -> None:
        """Nothing is inspected any more: stop reading both sides and, once both write
        buffers are empty, let the kernel relay move the bytes."""
        up = self.upstream
        if up is None or self.stopped is not None or self.done.done():
            return
        self.mode = "handover"
        for t in (self.client, up):
            t.pause_reading()
            # resume_writing is called the moment the buffer is empty.
            t.set_write_buffer_limits(high=0, low=0)
        self.try_kernel()

    def try_kernel(self) -> None:
        """Start the relay if both write buffers are empty (else the next resume_writing)."""
        up = self.upstream
        assert up is not None
        if self.mode != "handover":
            return
        if self.stopped is not None or self.done.done():
            self.mode = "protocol"
            return
        if self.client.is_closing() or up.is_closing():
            self._back_to_protocol()  # its connection_lost ends the splice
            return
        if self.client.get_write_buffer_size() or up.get_write_buffer_size():
            return
        try:
            self.relay = KernelRelay.open(
                self._loop,
                self,
                self.client.get_extra_info("socket").fileno(),
                up.get_extra_info("socket").fileno(),
                pipe_size=WRITE_BUFFER_HIGH,
                client_ended=self._ended[True],
                upstream_ended=self._ended[False],
            )
        except OSError:
            self._back_to_protocol()
            return
        self.mode = "kernel"
        self.relay.start()

    def _back_to_protocol(self) -> None:
        self.mode = "protocol"
        self.kernel = False  # not tried again for this tunnel
        self.relay = None
        up = self.upstream
        assert up is not None
        for t, ended in ((self.client, self._ended[True]), (up, self._ended[False])):
            t.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            if not ended and self.stopped is None and not t.is_closing():
                t.resume_reading()

    def kernel_ended(self, upstream: bool) -> None:
        """The relay passed one direction's EOF on (it shut the socket down itself)."""
        self._ended[upstream] = True
        if all(self._ended.values()):
            self._finish(None)

    def kernel_unsupported(self, exc: OSError) -> None:
        self._back_to_protocol()

    # ------------------------------------------------------------------------ ending

    def stop(self, why: str, detail: str = "") -> None:
        """End the splice from inside: nothing more is read either way."""
        if self.stopped is None:
            self.stopped, self.stopped_detail = why, detail
        if self.relay is not None:
            self.relay.pause()
        for t in (self.client, self.upstream):
            if t is not None:
                t.pause_reading()  # nothing more is read while the handler closes up
        self._finish(None)

    def settle(self) -> None:
        """Charge what moved since the last charge; out of budget ends the splice."""
        n, self._uncharged = self._uncharged, 0
        if n and self.charge is not None and not self.charge(n) and self.stopped is None:
            self.stop("byte_rate")

    def side_ended(self, upstream: bool) -> None:
        """One direction saw EOF: pass it on (half-close) and finish when both have."""
        dst = self.upstream if upstream else self.client
        if dst is not None and dst.can_write_eof() and not dst.is_closing():
            with contextlib.suppress(OSError):
                dst.write_eof()
        self._ended[upstream] = True
        if all(self._ended.values()):
            self._finish(None)

    def lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self.relay is not None:
            self.relay.close()  # its duplicate fds only: the transports keep the sockets
        if not self.done.done():
            self.error = exc
            self.done.set_result(None)

    def close_upstream(self) -> None:
        """Drop the upstream connection at once (the client's is its handler's to close)."""
        if self.relay is not None:
            self.relay.close()
        t = self._from_upstream.transport
        if t is not None:
            t.abort()
