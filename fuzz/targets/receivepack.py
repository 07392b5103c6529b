"""The receive-pack (push) command list (core/pktline.py ReceivePackCommandParser).

Input: byte 0 picks the chunking, the rest is a git-receive-pack request body (the pkt-line
commands, a flush, then pack data the parser must not read).
Invariants: only PktLineError escapes; any chunking gives the same commands, capabilities
and verdict; every command has two lower-case hex object ids of one length and a ref under
``refs/`` without ``..``, ``@{``, controls or spaces; the command section ends in a flush
inside the body, and nothing after it changes the result.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from airlock.core.pktline import PktLineError, ReceivePackCommandParser, RefUpdate

from _harness import chunks, main

_HEX = frozenset("0123456789abcdef")
_BAD_REF_CHARS = frozenset(" ~^:?*[\\\x7f") | frozenset(chr(c) for c in range(0x20))

Parsed = tuple[list[RefUpdate], frozenset[str], int] | None


def _parse(pieces: list[bytes]) -> Parsed:
    parser = ReceivePackCommandParser(max_commands=256, max_shallow=256)
    try:
        for piece in pieces:
            parser.feed(piece)
        parser.finish()
    except PktLineError:
        return None
    assert parser.done and parser.pending_bytes == 0
    return parser.commands, parser.capabilities, parser.command_section_length


def check(data: bytes) -> bool:
    if not data:
        return False
    body = data[1:]
    whole = _parse([body])
    pieces = chunks(body, data[0])
    assert len(pieces) == 1 or _parse(pieces) == whole
    if whole is None:
        return False
    commands, caps, length = whole
    assert 4 <= length <= len(body) and body[length - 4 : length] == b"0000"
    # What follows the command section (the pack) is never read.
    assert _parse([body[:length] + b"\xff" * 8]) == whole
    lengths = {len(c.old) for c in commands} | {len(c.new) for c in commands}
    assert len(lengths) <= 1 and lengths <= {40, 64}
    for c in commands:
        assert _HEX.issuperset(c.old) and _HEX.issuperset(c.new)
        assert c.ref.startswith("refs/") and ".." not in c.ref and "@{" not in c.ref
        assert _BAD_REF_CHARS.isdisjoint(c.ref) and not c.ref.endswith(("/", "."))
    assert all(isinstance(cap, str) and cap for cap in caps)
    return bool(commands)


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
