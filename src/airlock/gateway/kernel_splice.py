"""A tunnel's bytes moved kernel to kernel: ``splice(2)`` through one pipe per direction.

Once a CONNECT tunnel's TLS checks are done (gateway/splice.py hands over), nothing reads the
bytes any more, so there is no reason to copy them into Python. Per direction the relay
splices from the sending socket into a pipe and from the pipe into the receiving socket; the
data never leaves the kernel. Both sockets are plain TCP (the sandbox speaks plain HTTP
CONNECT to the gateway; TLS is end to end, inside the tunnel).

Everything the protocol path does is kept: every byte spliced in is reported to the owner
(``moved``: byte counts, activity, budget charge, which may stop the relay at once); EOF one way
is passed on with ``shutdown(SHUT_WR)`` while the other way goes on; a reset or broken pipe is
reported as ``lost``. What the gateway holds per direction is bounded by the pipe's size
(``F_SETPIPE_SZ``, :data:`~airlock.gateway.splice.WRITE_BUFFER_HIGH`): a sender is only
watched while its pipe has room, a receiver only while its pipe holds bytes it would not take.

Driven by the event loop's ``add_reader``/``add_writer`` on duplicates of the sockets' fds (the
transports keep their own; they are paused and empty while the relay runs). The relay owns its
duplicates and pipes and closes each exactly once (:meth:`KernelRelay.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import sys
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MIN_PIPE", "UNSUPPORTED_ERRNOS", "KernelRelay", "RelayOwner", "available"]

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
#: A pipe smaller than this (the kernel's per-user pipe budget is spent, say) is not worth it:
#: the tunnel stays on the protocol path.
MIN_PIPE = 64 * 1024
#: Errors that mean "splice cannot be used here" (kernel, socket type, or a seccomp profile
#: without it), not "the connection failed"; before any byte moved the owner falls back.
UNSUPPORTED_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP})
#: Splice rounds (in, then out) per direction per wake-up: one busy tunnel must not keep the
#: loop from the others; the rest is scheduled with call_soon.
_ROUNDS = 8
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def available() -> bool:
    """Whether this platform has ``os.splice`` (Linux, Python 3.10+)."""
    return sys.platform.startswith("linux") and hasattr(os, "splice")


class RelayOwner(Protocol):
    """What the relay reports to (gateway/splice.py's Splice)."""

    def moved(self, upstream: bool, n: int) -> None:
        """``n`` bytes were taken from the sender (client if ``upstream``); may stop the relay."""

    def kernel_ended(self, upstream: bool) -> None:
        """That direction's EOF was passed on."""

    def lost(self, exc: Exception | None) -> None:
        """A connection failed; the relay has stopped."""

    def kernel_unsupported(self, exc: OSError) -> None:
        """splice is refused here and no byte moved yet: the relay is closed, take over."""


@dataclass
class _Way:
    """One direction: ``src`` -> pipe -> ``dst``."""

    upstream: bool  # True: client -> upstream
    src: int
    dst: int
    pipe_r: int
    pipe_w: int
    cap: int  # the pipe's size in bytes
    held: int = 0  # bytes in the pipe now
    src_eof: bool = False
    in_blocked: bool = False  # EAGAIN splicing in with bytes held: the pipe may be full
    out_blocked: bool = False  # EAGAIN splicing out: wait until dst is writable
    ended: bool = False  # EOF passed on (or already before the relay began)
    reading: bool = False  # src is watched for this way
    writing: bool = False  # dst is watched for this way
    scheduled: bool = False  # a call_soon pump is pending


def _make_pipe(size: int) -> tuple[int, int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # refused (per-user pipe budget): keep what we have
            fcntl.fcntl(w, _F_SETPIPE_SZ, size)
        cap = int(fcntl.fcntl(w, _F_GETPIPE_SZ))
        if cap < MIN_PIPE:
            raise OSError(errno.ENOBUFS, f"pipe of {cap} bytes only")
        return r, w, min(cap, size)
    except BaseException:
        os.close(r)
        os.close(w)
        raise


class KernelRelay:
    """Moves bytes between two connected non-blocking stream sockets, both ways, by splice.

    ``open`` duplicates the two fds (the caller keeps and closes its own) and makes the pipes;
    ``start`` begins watching. ``client_ended`` / ``upstream_ended``: that side's EOF was
    already seen and passed on before the relay began (its direction starts ended).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: RelayOwner,
        ways: tuple[_Way, _Way],
        fds: list[int],
    ) -> None:
        self._loop = loop
        self._owner = owner
        self._up, self._down = ways
        self._fds = fds  # every fd this relay owns: closed once, by close()
        self.running = False
        self.closed = False
        self.moved_any = False

    @classmethod
    def open(
        cls,
        loop: asyncio.AbstractEventLoop,
        owner: RelayOwner,
        client_fd: int,
        upstream_fd: int,
        *,
        pipe_size: int,
        client_ended: bool = False,
        upstream_ended: bool = False,
    ) -> KernelRelay:
        """Raises OSError (nothing left open) if the fds or pipes cannot be had."""
        fds: list[int] = []
        try:
            c = os.dup(client_fd)
            fds.append(c)
            u = os.dup(upstream_fd)
            fds.append(u)
            for fd in (c, u):
                os.set_blocking(fd, False)
            ur, uw, ucap = _make_pipe(pipe_size)
            fds += [ur, uw]
            dr, dw, dcap = _make_pipe(pipe_size)
            fds += [dr, dw]
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        up = _Way(True, c, u, ur, uw, ucap, ended=client_ended, src_eof=client_ended)
        down = _Way(False, u, c, dr, dw, dcap, ended=upstream_ended, src_eof=upstream_ended)
        return cls(loop, owner, (up, down), fds)

    # ----------------------------------------------------------------------- control

    def start(self) -> None:
        if self.closed or self.running:
            return
        self.running = True
        for way in (self._up, self._down):
            self._pump(way)
            if not self.running:
                return

    def pause(self) -> None:
        """Stop watching anything (nothing more is read or written); fds stay open."""
        self.running = False
        for way in (self._up, self._down):
            self._watch(way, read=False, write=False)

    def close(self) -> None:
        """Stop, and close every fd the relay owns (once; later calls do nothing)."""
        if self.closed:
            return
        self.pause()
        self.closed = True
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def held(self, upstream: bool) -> int:
        """Bytes in that direction's pipe: what the gateway holds for it right now."""
        return (self._up if upstream else self._down).held

    def pipe_size(self, upstream: bool) -> int:
        return (self._up if upstream else self._down).cap

    # ----------------------------------------------------------------------- data path

    def _pump(self, way: _Way) -> None:
        way.scheduled = False
        if not self.running:
            return
        progressed = False
        for _ in range(_ROUNDS):
            progressed = False
            if not way.src_eof and not way.in_blocked and way.held < way.cap:
                try:
                    n = os.splice(way.src, way.pipe_w, way.cap - way.held, flags=_FLAGS)
                except BlockingIOError:
                    # Nothing to read; or, with bytes held, a pipe full of partly used pages.
                    way.in_blocked = way.held > 0
                except OSError as exc:
                    self._fail(exc)
                    return
                else:
                    progressed = True
                    if n == 0:
                        way.src_eof = True
                    else:
                        way.held += n
                        self.moved_any = True
                        self._owner.moved(way.upstream, n)
                        if not self.running:  # stopped (the budget): pass nothing more on
                            return
            if way.held and not way.out_blocked:
                try:
                    n = os.splice(way.pipe_r, way.dst, way.held, flags=_FLAGS)
                except BlockingIOError:
                    way.out_blocked = True
                except OSError as exc:
                    self._fail(exc)
                    return
                else:
                    way.held -= n
                    way.in_blocked = False  # the pipe has room again
                    progressed = progressed or n > 0
            if way.src_eof and not way.held and not way.ended:
                way.ended = True
                progressed = False
                self._shutdown_write(way.dst)
                self._owner.kernel_ended(way.upstream)
                if not self.running:
                    return
            if not progressed:
                break
        else:
            if progressed and not way.scheduled:  # more to do: after the others had a turn
                way.scheduled = True
                self._loop.call_soon(self._pump, way)
        self._arm(way)

    @staticmethod
    def _shutdown_write(fd: int) -> None:
        s = socket.socket(fileno=fd)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # not connected any more: the reading side reports the loss
        finally:
            s.detach()  # the fd stays ours, closed by close()

    def _arm(self, way: _Way) -> None:
        if not self.running:
            return
        read = not way.src_eof and not way.in_blocked and way.held < way.cap
        write = way.held > 0 and way.out_blocked
        self._watch(way, read=read, write=write)

    def _watch(self, way: _Way, *, read: bool, write: bool) -> None:
        if read != way.reading:
            way.reading = read
            if read:
                self._loop.add_reader(way.src, self._readable, way)
            else:
                self._loop.remove_reader(way.src)
        if write != way.writing:
            way.writing = write
            if write:
                self._loop.add_writer(way.dst, self._writable, way)
            else:
                self._loop.remove_writer(way.dst)

    def _readable(self, way: _Way) -> None:
        self._pump(way)

    def _writable(self, way: _Way) -> None:
        way.out_blocked = False
        self._pump(way)

    def _fail(self, exc: OSError) -> None:
        unsupported = exc.errno in UNSUPPORTED_ERRNOS and not self.moved_any
        self.close()
        if unsupported:
            self._owner.kernel_unsupported(exc)
        else:
            self._owner.lost(exc)
