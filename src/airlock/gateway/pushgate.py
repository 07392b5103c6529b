"""The push gate: reads a push body far enough to decide it, and holds the pack back until
the decision is made.

The decision itself is pure (core/pushpolicy.py). This shell reads the command list (nothing
has gone upstream yet), and, when an update needs a fast-forward proof, reads on into the
pack, feeding the pushed commits to core/packfile.py until every proof is done or the pack
ends, holding at most ``git.max_proof_buffer`` bytes. git writes commits first, so a proof
usually completes after the pack's first few objects. Every byte read is kept, in order, and
sent upstream unchanged once the push is allowed; a refused push is read to its end and
answered with a status report, and nothing of it goes upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from airlock.core.packfile import PackError, PackScanner
from airlock.core.pktline import PktLineError, ReceivePackCommandParser, section_end
from airlock.core.pushpolicy import PushDecision
from airlock.core.requestbody import BodyRefused, BodyTooLarge

__all__ = ["BodyReader", "HeldPush", "drain", "prove", "read_commands"]


class BodyReader:
    """The client's request body, chunk by chunk, with the idle timeout and a byte count."""

    def __init__(self, request: web.BaseRequest, idle: float, count: Callable[[int], None]):
        self._request = request
        self._idle = idle
        self._count = count
        self.eof = False

    async def chunk(self) -> bytes:
        if self.eof:
            return b""
        data = await asyncio.wait_for(self._request.content.readany(), self._idle)
        if not data:
            self.eof = True
        self._count(len(data))
        return data


@dataclass
class HeldPush:
    """A push read as far as its decision needed; ``held`` is every byte read, in order."""

    commands: ReceivePackCommandParser
    held: list[bytes] = field(default_factory=list)
    held_bytes: int = 0
    reader: BodyReader | None = None  # where the rest of the body comes from

    def hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)

    def joined(self) -> bytes:
        data = b"".join(self.held)
        self.held = [data]
        return data


async def read_commands(reader: BodyReader, cap: int) -> HeldPush:
    """Read until the command list has been parsed (raises PktLineError, BodyTooLarge)."""
    push = HeldPush(ReceivePackCommandParser())
    while not push.commands.done:
        chunk = await reader.chunk()
        if not chunk:
            push.commands.finish()  # raises: the body ended inside the command list
        push.hold(chunk)
        if push.held_bytes > cap:
            raise BodyTooLarge(f"push command list of more than {cap} bytes")
        push.commands.feed(chunk)
    return push


async def prove(
    reader: BodyReader, push: HeldPush, decision: PushDecision, cap: int
) -> dict[str, bool]:
    """Read on into the pack until every pending update is proven a fast-forward, the pack
    ends, or ``cap`` bytes are held; ref -> proven. Raises BodyRefused for a broken pack."""
    pending = {d.update.ref: d.update for d in decision.pending}
    caps = push.commands.capabilities
    object_format = "sha256" if "object-format=sha256" in caps else "sha1"
    start = push.commands.command_section_length
    pack_at: int | None = None if "push-options" in caps else start
    scanner = PackScanner(object_format=object_format)
    proven: dict[str, bool] = dict.fromkeys(pending, False)

    def settle() -> bool:
        for ref, update in pending.items():
            if not proven[ref]:
                proven[ref] = scanner.fast_forward(update.old, update.new).proven
        return all(proven.values())

    def find_pack() -> None:
        nonlocal pack_at
        data = push.joined()
        if pack_at is None:
            pack_at = section_end(data, start)  # the push options end where the pack begins
        if pack_at is not None:
            scanner.feed(data[pack_at:])

    try:
        find_pack()
        while not settle():
            if reader.eof:
                if pack_at is not None:
                    scanner.finish()
                settle()
                break
            if push.held_bytes > cap:
                break  # the proof would need more than the gateway holds back
            chunk = await reader.chunk()
            if not chunk:
                continue
            push.hold(chunk)
            if pack_at is None:
                find_pack()
            else:
                scanner.feed(chunk)
    except (PackError, PktLineError) as exc:
        raise BodyRefused(f"pack: {exc}") from None
    return proven


async def drain(reader: BodyReader, already: int, limit: int) -> None:
    """Read a refused push to its end (git reads no answer before it has sent it all)."""
    total = already
    while chunk := await reader.chunk():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"body of more than {limit} bytes")
