"""The ClientHello / SNI checks of a CONNECT tunnel (core/tlshello.py HelloGuard, and
core/egress.py extract_sni / client_hello_sni).

Input: byte 0 picks the chunking and whether the guard refuses ECH; the rest is what the
client sends into the tunnel (and, read as the server's side, what a server might answer).
Invariants: nothing raises; a refusal has a documented rule; any chunking gives the guard
the same verdict; extract_sni's verdict on a prefix, once it is not NEED_MORE, is its
verdict on the whole stream (the proxy calls it as bytes arrive); a FOUND name is ASCII,
and a guard for that very name does not refuse the first ClientHello as a mismatch.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from airlock.core.egress import SniStatus, extract_sni, same_host
    from airlock.core.tlshello import HelloGuard, HelloRefusal

from _harness import chunks, main

_RULES = frozenset({"sni_mismatch", "no_sni", "ech", "not_tls", "too_many_client_hellos"})
_HOST = "github.com"


def _guard(pieces: list[bytes], host: str, refuse_ech: bool) -> HelloRefusal | None:
    guard = HelloGuard(host, refuse_ech=refuse_ech)
    for piece in pieces:
        refusal = guard.client(piece)
        if refusal is not None:
            assert refusal.rule in _RULES, refusal
            return refusal
    return None


def check(data: bytes) -> bool:
    if not data:
        return False
    stream = data[1:]
    refuse_ech = not data[0] & 0x40
    whole = _guard([stream], _HOST, refuse_ech)
    pieces = chunks(stream, data[0])
    chunked = whole if len(pieces) == 1 else _guard(pieces, _HOST, refuse_ech)
    if whole is None or chunked is None:
        assert whole is chunked, (whole, chunked)
    elif whole.rule != chunked.rule:
        # Bytes that are not TLS after a ClientHello: read in one piece, the guard refuses
        # the stream as not TLS; in pieces, it first judges the ClientHello. Refused either way.
        assert "not_tls" in (whole.rule, chunked.rule), (whole, chunked)
    server = HelloGuard(_HOST)
    for piece in pieces:
        server.server(piece)
    result = extract_sni(stream)
    cut = data[0] * len(stream) // 256  # a fuzzer-chosen prefix
    early = extract_sni(stream[:cut])
    if early.status is not SniStatus.NEED_MORE:
        assert early == result, (cut, early, result)
    if result.status is SniStatus.FOUND:
        assert result.name is not None and result.name.isascii()
        if same_host(result.name, result.name):  # a valid host name
            own = _guard([stream], result.name, False)
            assert own is None or own.rule != "sni_mismatch" or own.detail.startswith("second")
    return whole is None and result.status is SniStatus.FOUND


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
