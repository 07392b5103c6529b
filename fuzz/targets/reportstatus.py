"""receive-pack answers read back from the upstream (core/reportstatus.py): the status
report reader and the ref advertisement filter that takes ``push-cert`` out.

Input: byte 0 picks the chunking and side-band, the rest is what the upstream sent.
Invariants: the report reader never raises and confirms only refs the report named ``ok``,
never in a stream it did not read whole; the advertisement filter raises only PktLineError,
passes every byte it does not rewrite, any chunking gives the same output, and the
capability line it rewrote names no ``push-cert``.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from airlock.core.pktline import PktLineError
    from airlock.core.reportstatus import AdvertisementFilter, ReportStatusReader

from _harness import chunks, main


def _report(pieces: list[bytes], sideband: bool) -> set[str]:
    reader = ReportStatusReader(sideband=sideband)
    for piece in pieces:
        reader.feed(piece)
    confirmed = reader.confirmed()
    assert confirmed <= reader.ok
    if confirmed:
        assert reader.complete and reader.trusted and reader.unpack_ok
    return confirmed


def _filter(pieces: list[bytes]) -> tuple[bytes, bool] | None:
    adv = AdvertisementFilter(limit=4096)
    out = b""
    try:
        for piece in pieces:
            out += adv.feed(piece)
        adv.finish()
    except PktLineError:
        return None
    return out, adv.done


def _capability_line(out: bytes) -> bytes:
    """The payload of the first packet of ``out`` holding a NUL (the rewritten one)."""
    pos = 0
    while True:
        length = int(out[pos : pos + 4], 16)
        if length < 4:
            pos += 4
            continue
        payload = out[pos + 4 : pos + length]
        if b"\0" in payload:
            return payload
        pos += length


def check(data: bytes) -> bool:
    if not data:
        return False
    stream = data[1:]
    sideband = bool(data[0] & 0x40)
    pieces = chunks(stream, data[0])
    confirmed = _report([stream], sideband)
    assert len(pieces) == 1 or _report(pieces, sideband) == confirmed
    for ref in confirmed:
        assert ref.encode() in stream or sideband or "\ufffd" in ref
    filtered = _filter([stream])
    chunked = filtered if len(pieces) == 1 else _filter(pieces)
    if filtered is not None and chunked is not None:
        # (One feed of a long advertisement can trip the filter's limit where small feeds
        # do not: the limit bounds what one call holds, so only successes are compared.)
        # Packets after the capability line that arrive in the same read are re-encoded (an
        # upper-case hex length comes out lower case); in a later read they pass as they are.
        assert chunked[1] == filtered[1] and chunked[0].lower() == filtered[0].lower()
    if filtered is not None:
        out, done = filtered
        if not done:
            assert out.lower() == stream.lower()  # no capability line: nothing rewritten
        else:
            caps = _capability_line(out).partition(b"\0")[2].rstrip(b"\n").split(b" ")
            assert not any(c.startswith(b"push-cert") for c in caps)
    return bool(confirmed) or (filtered is not None and filtered[1])


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
