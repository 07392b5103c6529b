"""The upload-pack (fetch/clone) request body, protocol v0/v1 and v2 (core/uploadpack.py).

Input: byte 0 picks the protocol version (``% 3``) and, with bit 0x80, the ``Git-Protocol``
header is taken from the first line of the rest instead; the rest is the request body.
Invariants: only UploadPackRefused escapes; an accepted request has the version asked for,
a known command, sane counts, audit fields of plain types; a v2 request ends in a flush; the
header parser gives only 0, 1 or 2.
"""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports():
    from airlock.core.uploadpack import (
        UploadPackRefused,
        UploadPackRequest,
        parse_protocol_version,
        parse_upload_pack_request,
    )

from _harness import main


def check(data: bytes) -> bool:
    if not data:
        return False
    version = data[0] % 3
    body = data[1:]
    if data[0] & 0x80:
        header, _, body = body.partition(b"\n")
        try:
            version = parse_protocol_version(header.decode("latin-1"))
        except UploadPackRefused:
            return False
        assert version in (0, 1, 2)
    try:
        request = parse_upload_pack_request(body, version)
    except UploadPackRefused as exc:
        assert str(exc)
        return False
    assert isinstance(request, UploadPackRequest)
    assert request.version == version
    assert request.command in (("fetch", "ls-refs") if version == 2 else ("fetch",))
    counts = (request.wants, request.want_refs, request.haves, request.shallow)
    assert all(n >= 0 for n in counts) and request.ref_prefixes >= 0
    if version != 2:
        assert request.wants >= 1 and request.want_refs == 0
    else:
        assert body.endswith(b"0000")
    json.dumps(request.audit_fields())
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
