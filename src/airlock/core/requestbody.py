"""Request bodies as the gateway checks them: decoded once, bounded, then forwarded as is.

git gzips a fetch negotiation body larger than 1 KiB (``Content-Encoding: gzip``). The
gateway inflates it here, with the inflated size capped, parses what came out, and sends the
upstream exactly those inflated bytes without a ``Content-Encoding`` header: what was
checked is what the upstream reads (docs/design-notes.md, "Request bodies").
"""

from __future__ import annotations

import zlib

__all__ = ["BodyRefused", "BodyTooLarge", "decode_body"]


class BodyRefused(ValueError):
    """The body's encoding is not one the gateway accepts, or the encoded data is broken."""


class BodyTooLarge(BodyRefused):
    """The body, decoded, is larger than the cap (a gzip bomb among others)."""


def decode_body(data: bytes, encoding: str | None, limit: int) -> bytes:
    """The body's bytes after ``Content-Encoding``, at most ``limit`` of them.

    Only identity and a single gzip member are accepted; trailing bytes after the gzip
    stream, a truncated stream and any other encoding are refused.
    """
    if len(data) > limit:
        raise BodyTooLarge(f"body of more than {limit} bytes")
    if encoding is None or encoding == "":
        return data
    if encoding.strip().lower() != "gzip":
        raise BodyRefused(f"content encoding {encoding[:32]!r} is not accepted")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BodyRefused(f"bad gzip data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise BodyRefused("gzip stream is truncated")
    if inflater.unused_data:
        raise BodyRefused("data after the end of the gzip stream")
    return out
