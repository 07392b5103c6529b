"""Prototypes of the fixes the profiles point at, applied by monkeypatching at start-up.

Nothing here changes src/: the main bench always measures the code as it is. These patches
let ``--patch`` runs show what a proposed change would buy before anyone writes it for real
(see bench/README.md, "Findings"). Each patch is the smallest change that removes what the
profile shows; the real fix belongs in the named src/ file.

    python -m bench.experiments gateway --patch ratelimit,store -- --config C --ready-file R

``ratelimit``  airlock/gateway/ratelimits.py: sliding-window *counter* instead of the moving
               window; limits' async MemoryStorage re-sweeps every moving-window key through
               ``asyncio.to_thread`` after each hit (17 % of gateway CPU under info/refs load).
``store``      airlock/gateway/store.py: write-behind. ``put`` updates the cache and marks the
               session dirty; dirty sessions are written in one transaction every 0.5 s (and at
               close), instead of ``json.dumps(asdict(session))`` + an INSERT twice per request.
``relay``      airlock/gateway/egress.py ``EgressProxy._relay``: splice the two transports with
               protocols (``data_received`` -> peer ``write``, pause/resume on the peer's
               buffer), instead of StreamReader.read + StreamWriter.write; StreamReader copies
               every byte twice (feed_data, read) and was 65 % of the proxy's CPU.

(uvloop was tried too and does not start: tlslistener.py asserts that transports are
``asyncio.Transport`` instances, which uvloop's are not.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

PATCHES = ("ratelimit", "store", "relay")


def patch_ratelimit() -> None:
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from airlock.gateway import ratelimits

    vars(ratelimits)["MovingWindowRateLimiter"] = SlidingWindowCounterRateLimiter


def patch_store() -> None:
    from airlock.core.session import Session
    from airlock.gateway.store import SessionStore

    original_close = SessionStore.close

    def put(self: SessionStore, s: Session) -> None:
        self._cache[s.id] = s
        dirty: set[str] = self.__dict__.setdefault("_dirty", set())
        dirty.add(s.id)
        if not self.__dict__.get("_flush_scheduled"):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                flush(self)
                return
            self._flush_scheduled = True  # type: ignore[attr-defined]
            loop.call_later(0.5, flush, self)

    def flush(self: SessionStore) -> None:
        self._flush_scheduled = False  # type: ignore[attr-defined]
        dirty: set[str] = self.__dict__.get("_dirty", set())
        if not dirty:
            return
        rows = [
            (sid, json.dumps(self._cache[sid].to_json())) for sid in dirty if sid in self._cache
        ]
        dirty.clear()
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO sessions (id, body) VALUES (?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self: SessionStore) -> None:
        flush(self)
        original_close(self)

    SessionStore.put = put  # type: ignore[method-assign]
    SessionStore.close = close  # type: ignore[method-assign]


class _Splice(asyncio.Protocol):
    """Bytes from the transport this protocol is attached to go straight to ``dst``."""

    def __init__(
        self,
        dst: asyncio.Transport,
        count: Callable[[int], None],
        finished: Callable[[BaseException | None], None],
    ) -> None:
        self.dst = dst
        self.count = count
        self.finished = finished

    def data_received(self, data: bytes) -> None:
        self.count(len(data))
        self.dst.write(data)

    def eof_received(self) -> bool:
        if self.dst.can_write_eof():
            with contextlib.suppress(OSError):
                self.dst.write_eof()
        self.finished(None)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished(exc or ConnectionResetError("closed"))

    # Our transport's write buffer is full: stop reading from the side that fills it.
    def pause_writing(self) -> None:
        self.dst.pause_reading()

    def resume_writing(self) -> None:
        if not self.dst.is_closing():
            self.dst.resume_reading()


def patch_relay() -> None:
    from airlock.gateway import egress

    async def _relay(
        self: egress.EgressProxy,
        rec: Any,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
        started: float,
        still_valid: Callable[[], bool],
    ) -> str:
        loop = asyncio.get_running_loop()
        last = loop.time()
        done: asyncio.Future[None] = loop.create_future()
        open_sides = 2
        error: list[BaseException] = []

        def up(n: int) -> None:
            nonlocal last
            rec.bytes_up += n
            last = loop.time()

        def down(n: int) -> None:
            nonlocal last
            rec.bytes_down += n
            last = loop.time()

        def finished(exc: BaseException | None) -> None:
            nonlocal open_sides
            if exc is not None:
                error.append(exc)
                open_sides = 0
            else:
                open_sides -= 1
            if open_sides <= 0 and not done.done():
                done.set_result(None)

        ct, ut = c_writer.transport, u_writer.transport
        assert isinstance(ct, asyncio.Transport) and isinstance(ut, asyncio.Transport)
        # Bytes the StreamReaders already hold (after the ClientHello) go first.
        for reader, dst, count in ((c_reader, ut, up), (u_reader, ct, down)):
            buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # prototype only
            pending = bytes(buffered)
            buffered.clear()
            if pending:
                count(len(pending))
                dst.write(pending)
        ct.set_protocol(_Splice(ut, up, finished))
        ut.set_protocol(_Splice(ct, down, finished))
        for t in (ct, ut):
            t.set_write_buffer_limits(high=1024 * 1024)
            if not t.is_reading():
                t.resume_reading()
        for reader, t in ((c_reader, ut), (u_reader, ct)):
            if reader.at_eof():
                finished(None)
                if t.can_write_eof():
                    t.write_eof()
        deadline = loop.time() + self.policy.max_tunnel_lifetime - (time.monotonic() - started)
        next_check = loop.time() + self.policy.session_recheck_interval
        while not done.done():
            now = loop.time()
            if now >= deadline:
                return "lifetime"
            if now - last >= self.policy.idle_timeout:
                return "idle_timeout"
            if now >= next_check:
                if not still_valid():
                    return "session_ended"
                next_check = now + self.policy.session_recheck_interval
            wake = min(deadline, last + self.policy.idle_timeout, next_check)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), max(0.0, wake - now))
        return "reset" if error else "closed"

    egress.EgressProxy._relay = _relay  # type: ignore[method-assign]


def apply(names: list[str]) -> None:
    table = {
        "ratelimit": patch_ratelimit,
        "store": patch_store,
        "relay": patch_relay,
    }
    for name in names:
        if name not in table:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        table[name]()


def main() -> None:
    """``gateway --patch a,b -- <airlock gateway args>``: the gateway with patches applied."""
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "gateway" or args[1] != "--patch":
        raise SystemExit(__doc__)
    names = [n for n in args[2].split(",") if n]
    rest = args[3:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    apply(names)
    from airlock.cli import main as cli

    sys.argv = ["airlock", "gateway", *rest]
    cli()


if __name__ == "__main__":
    main()
