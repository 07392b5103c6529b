"""pkt-line framing (core/pktline.py): the incremental reader, section_end and encode_pkt.

Input: byte 0 picks the chunking, the rest is a pkt-line stream as a client sends it.
Invariants: only PktLineError escapes; any chunking gives the same packets and the same
verdict as one feed; re-encoding the packets gives back exactly the bytes consumed; every
payload round-trips through encode_pkt; section_end agrees with the reader.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from airlock.core.pktline import (
        DELIM,
        FLUSH,
        MAX_PAYLOAD_LENGTH,
        RESPONSE_END,
        Data,
        Delim,
        Flush,
        PktEvent,
        PktLineError,
        PktLineReader,
        encode_pkt,
        section_end,
    )

from _harness import chunks, main


def _encode(event: PktEvent) -> bytes:
    if isinstance(event, Data):
        return encode_pkt(event.payload)
    if isinstance(event, Flush):
        return FLUSH
    return DELIM if isinstance(event, Delim) else RESPONSE_END


def _read(pieces: list[bytes]) -> tuple[list[PktEvent], int, str | None]:
    """Events, pending bytes at the end, and the error (None when the stream was whole)."""
    reader = PktLineReader(max_packets=4096)
    events: list[PktEvent] = []
    try:
        for piece in pieces:
            events += reader.feed(piece)
        pending = reader.pending_bytes
        reader.finish()
    except PktLineError as exc:
        return events, reader.pending_bytes, str(exc) or "error"
    return events, pending, None


def check(data: bytes) -> bool:
    if not data:
        return False
    stream = data[1:]
    whole, pending, error = _read([stream])
    pieces = chunks(stream, data[0])
    chunked, chunked_error = (whole, error) if len(pieces) == 1 else _read(pieces)[::2]
    assert (error is None) == (chunked_error is None), (error, chunked_error)
    if error is None:
        assert chunked == whole
    else:
        # A chunked reader may fail before it has seen the packets a whole feed returned
        # with its error; it never returns packets the whole stream did not contain.
        assert whole[: len(chunked)] == chunked or not whole
    # Re-encoded, the packets are the bytes consumed (the reader accepts upper-case hex in a
    # length, encode_pkt writes lower case).
    pos = 0
    for event in whole:
        frame = _encode(event)
        assert stream[pos : pos + 4].lower() == frame[:4]
        assert stream[pos + 4 : pos + len(frame)] == frame[4:]
        pos += len(frame)
    if error is None or error.startswith("stream ended inside"):
        assert pos + pending == len(stream)
    for event in whole[:4]:
        if isinstance(event, Data):
            assert len(event.payload) <= MAX_PAYLOAD_LENGTH
            again, _, err = _read([encode_pkt(event.payload)])
            assert err is None and again == [event]
    try:
        end = section_end(stream)
    except PktLineError:
        end = -1
    if end is not None and end >= 0:
        section, _, err = _read([stream[:end]])
        assert err is None and isinstance(section[-1], Flush)
        assert all(isinstance(e, Data) for e in section[:-1])
    return error is None


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
