"""Request body decoding, Content-Encoding identity and gzip (core/requestbody.py).

Input: byte 0 picks the encoding and the size cap, the rest is the body as sent.
Invariants: only BodyRefused (BodyTooLarge) escapes; the result is at most the cap; identity
returns the body unchanged; an accepted gzip body is what the standard library inflates
from it, and a body the standard library reads as one whole gzip member within the cap is
accepted.
"""

from __future__ import annotations

import gzip
import zlib

import atheris

with atheris.instrument_imports():
    from airlock.core.requestbody import BodyRefused, decode_body

from _harness import main

_ENCODINGS: tuple[str | None, ...] = (None, "", "gzip", " GZip\t", "deflate", "gzip, gzip", "x")
_LIMITS = (64, 1024, 65536)


def _one_member(body: bytes, limit: int) -> bytes | None:
    """The standard library's reading of ``body`` as exactly one gzip member, or None."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return None
    if not inflater.eof or inflater.unused_data or len(out) > limit:
        return None
    return out


def check(data: bytes) -> bool:
    if not data:
        return False
    encoding = _ENCODINGS[data[0] % len(_ENCODINGS)]
    limit = _LIMITS[(data[0] >> 4) % len(_LIMITS)]
    body = data[1:]
    try:
        out = decode_body(body, encoding, limit)
    except BodyRefused as exc:
        assert str(exc)
        if encoding is not None and encoding.strip().lower() == "gzip" and len(body) <= limit:
            assert _one_member(body, limit) is None
        return False
    assert len(out) <= limit
    if not encoding:
        assert out == body
    else:
        assert out == gzip.decompress(body) == _one_member(body, limit)
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
