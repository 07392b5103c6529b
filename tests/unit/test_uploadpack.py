"""The upload-pack request validator and the body decoder, without a network."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airlock.core.pktline import DELIM, FLUSH, encode_pkt
from airlock.core.requestbody import BodyRefused, BodyTooLarge, decode_body
from airlock.core.uploadpack import (
    UploadPackRefused,
    parse_protocol_version,
    parse_upload_pack_request,
)

A = "a" * 40
B = "b" * 40
S256 = "c" * 64


def pkts(*lines: str | bytes) -> bytes:
    out = b""
    for line in lines:
        out += line if isinstance(line, bytes) else encode_pkt(line.encode() + b"\n")
    return out


# --- bodies git 2.39 sends (shapes taken from its traces: GIT_TRACE_PACKET) ---------------

V0_CLONE = pkts(
    f"want {A} multi_ack_detailed no-done side-band-64k thin-pack ofs-delta deepen-since "
    "deepen-not agent=git/2.39.5",
    f"want {B}",
    FLUSH,
    "done",
)
V0_SHALLOW_FIRST_ROUND = pkts(
    f"want {A} multi_ack_detailed side-band-64k thin-pack ofs-delta shallow agent=git/2.39.5",
    "deepen 1",
    FLUSH,
)
V0_FETCH_ROUND = pkts(f"want {A} multi_ack_detailed", f"shallow {B}", FLUSH, f"have {B}", FLUSH)
V0_FILTER = pkts(f"want {A} ofs-delta filter", "filter blob:none", FLUSH, "done")
V2_LS_REFS = pkts(
    "command=ls-refs",
    "agent=git/2.39.5",
    "object-format=sha1",
    DELIM,
    "peel",
    "symrefs",
    "unborn",
    "ref-prefix HEAD",
    "ref-prefix refs/heads/",
    "ref-prefix refs/tags/",
    FLUSH,
)
V2_FETCH = pkts(
    "command=fetch",
    "agent=git/2.39.5",
    "object-format=sha1",
    DELIM,
    "thin-pack",
    "no-progress",
    "ofs-delta",
    "deepen 1",
    "deepen-relative",
    f"shallow {B}",
    "filter tree:0",
    f"want {A}",
    "want-ref refs/heads/main",
    f"have {B}",
    "done",
    FLUSH,
)


def test_v0_clone() -> None:
    r = parse_upload_pack_request(V0_CLONE, 0)
    assert (r.command, r.wants, r.haves, r.done) == ("fetch", 2, 0, True)
    assert "agent" in r.capabilities


def test_v0_shallow_first_round_ends_after_the_want_list() -> None:
    r = parse_upload_pack_request(V0_SHALLOW_FIRST_ROUND, 1)
    assert r.deepen == "1" and not r.done


def test_v0_negotiation_round_without_done() -> None:
    r = parse_upload_pack_request(V0_FETCH_ROUND, 0)
    assert (r.shallow, r.haves, r.done) == (1, 1, False)


def test_v0_filter_needs_the_filter_capability() -> None:
    assert parse_upload_pack_request(V0_FILTER, 0).filter == "blob:none"
    with pytest.raises(UploadPackRefused):
        parse_upload_pack_request(pkts(f"want {A}", "filter blob:none", FLUSH, "done"), 0)


def test_v2_ls_refs_and_fetch() -> None:
    ls = parse_upload_pack_request(V2_LS_REFS, 2)
    assert (ls.command, ls.ref_prefixes) == ("ls-refs", 3)
    fetch = parse_upload_pack_request(V2_FETCH, 2)
    assert (fetch.wants, fetch.want_refs, fetch.haves, fetch.done) == (1, 1, 1, True)
    assert fetch.filter == "tree:0"


def test_v2_command_without_arguments() -> None:
    assert parse_upload_pack_request(pkts("command=ls-refs", FLUSH), 2).command == "ls-refs"


def test_sha256_object_format() -> None:
    body = pkts("command=fetch", "object-format=sha256", DELIM, f"want {S256}", "done", FLUSH)
    assert parse_upload_pack_request(body, 2).wants == 1
    mixed = pkts("command=fetch", "object-format=sha256", DELIM, f"want {A}", "done", FLUSH)
    with pytest.raises(UploadPackRefused, match="object-format"):
        parse_upload_pack_request(mixed, 2)
    with pytest.raises(UploadPackRefused, match="different hash"):
        parse_upload_pack_request(pkts(f"want {A}", f"want {S256}", FLUSH, "done"), 0)


def test_lines_without_lf_are_accepted_as_git_does() -> None:
    body = encode_pkt(f"want {A}".encode()) + FLUSH + encode_pkt(b"done")
    assert parse_upload_pack_request(body, 0).done


REFUSED_V0 = {
    "empty": b"",
    "flush only": FLUSH,
    "have first": pkts(f"have {A}", FLUSH, "done"),
    "uppercase oid": pkts(f"want {A.upper()}", FLUSH, "done"),
    "short oid": pkts("want abc", FLUSH, "done"),
    "caps on second want": pkts(f"want {A}", f"want {B} ofs-delta", FLUSH, "done"),
    "unknown capability": pkts(f"want {A} evil", FLUSH, "done"),
    "unknown valued capability": pkts(f"want {A} evil=1", FLUSH, "done"),
    "unknown line": pkts(f"want {A}", "command=fetch", FLUSH, "done"),
    "deepen zero": pkts(f"want {A}", "deepen 0", FLUSH),
    "deepen not a number": pkts(f"want {A}", "deepen -1", FLUSH),
    "deepen-not bad ref": pkts(f"want {A} deepen-not", "deepen-not a..b", FLUSH),
    "data after done": pkts(f"want {A}", FLUSH, "done", f"have {A}"),
    "no end": pkts(f"want {A}", FLUSH, f"have {A}"),
    "want after the want list": pkts(f"want {A}", FLUSH, f"want {B}", "done"),
    "delim": pkts(f"want {A}", DELIM, FLUSH, "done"),
    "response end": pkts(f"want {A}", FLUSH) + b"0002",
    "truncated packet": pkts(f"want {A}", FLUSH)[:-2],
    "control character": pkts(f"want {A} agent=x\x01", FLUSH, "done"),
    "not ascii": pkts(f"want {A} agent=\u00e9", FLUSH, "done"),
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(REFUSED_V0))
def test_v0_refusals(case: str) -> None:
    with pytest.raises(UploadPackRefused):
        parse_upload_pack_request(REFUSED_V0[case], 0)


REFUSED_V2 = {
    "v0 body": V0_CLONE,
    "no command": pkts("agent=git/2.39.5", DELIM, "peel", FLUSH),
    "object-info": pkts("command=object-info", DELIM, "size", f"oid {A}", FLUSH),
    "bundle-uri": pkts("command=bundle-uri", FLUSH),
    "unknown command": pkts("command=push", FLUSH),
    "unknown capability": pkts("command=fetch", "evil=1", DELIM, f"want {A}", FLUSH),
    "bare capability": pkts("command=fetch", "agent", DELIM, f"want {A}", FLUSH),
    "packfile-uris": pkts("command=fetch", DELIM, f"want {A}", "packfile-uris https", FLUSH),
    "unknown fetch argument": pkts("command=fetch", DELIM, "evil", FLUSH),
    "unknown ls-refs argument": pkts("command=ls-refs", DELIM, f"want {A}", FLUSH),
    "fetch argument to ls-refs": pkts("command=ls-refs", DELIM, "done", FLUSH),
    "bad want-ref": pkts("command=fetch", DELIM, "want-ref refs/heads/a..b", FLUSH),
    "bad filter": pkts("command=fetch", DELIM, f"want {A}", "filter blob none", FLUSH),
    "no flush": pkts("command=ls-refs", DELIM, "peel"),
    "second delim": pkts("command=fetch", DELIM, f"want {A}", DELIM, "done", FLUSH),
    "trailing request": pkts("command=ls-refs", DELIM, "peel", FLUSH, "command=fetch", FLUSH),
    "trailing bytes": pkts("command=ls-refs", FLUSH) + b"x",
    "unsupported object format": pkts("command=fetch", "object-format=md5", DELIM, FLUSH),
}


@pytest.mark.parametrize("case", sorted(REFUSED_V2))
def test_v2_refusals(case: str) -> None:
    with pytest.raises(UploadPackRefused):
        parse_upload_pack_request(REFUSED_V2[case], 2)


@pytest.mark.parametrize(
    ("header", "version"),
    [(None, 0), ("", 0), ("version=0", 0), ("version=1", 1), ("version=2", 2)],
)
def test_protocol_versions(header: str | None, version: int) -> None:
    assert parse_protocol_version(header) == version


@pytest.mark.parametrize(
    "header", ["version=3", "version=2:version=1", "version=2:evil=1", "v2", "version=2 "]
)
def test_protocol_version_refusals(header: str) -> None:
    with pytest.raises(UploadPackRefused):
        parse_protocol_version(header)


_oid = st.text("0123456789abcdef", min_size=40, max_size=40)


@given(
    wants=st.lists(_oid, min_size=1, max_size=30),
    haves=st.lists(_oid, max_size=30),
    done=st.booleans(),
)
def test_any_v0_request_of_git_shape_is_accepted(
    wants: list[str], haves: list[str], done: bool
) -> None:
    lines: list[str | bytes] = [f"want {wants[0]} ofs-delta side-band-64k agent=git/2.39.5"]
    lines += [f"want {w}" for w in wants[1:]]
    lines += [FLUSH, *(f"have {h}" for h in haves), "done" if done else FLUSH]
    r = parse_upload_pack_request(pkts(*lines), 0)
    assert (r.wants, r.haves, r.done) == (len(wants), len(haves), done)


@given(st.binary(max_size=400), st.sampled_from([0, 1, 2]))
def test_arbitrary_bytes_are_accepted_or_refused_never_crash(data: bytes, version: int) -> None:
    try:
        parse_upload_pack_request(data, version)
    except UploadPackRefused:
        pass


@given(st.lists(st.sampled_from([*REFUSED_V2.values(), V2_FETCH, V2_LS_REFS]), max_size=3))
def test_a_concatenation_of_v2_requests_is_refused(parts: list[bytes]) -> None:
    """One POST carries one command: two requests back to back are never forwarded."""
    if len(parts) < 2:
        return
    with pytest.raises(UploadPackRefused):
        parse_upload_pack_request(b"".join(parts), 2)


# --- decode_body -----------------------------------------------------------------------


def test_identity_and_gzip() -> None:
    assert decode_body(b"abc", None, 10) == b"abc"
    assert decode_body(gzip.compress(b"abc"), "gzip", 100) == b"abc"
    assert decode_body(gzip.compress(b"abc"), "GZIP", 100) == b"abc"


def test_gzip_bomb_is_too_large_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, "gzip", 1024 * 1024)


def test_exactly_at_the_limit_is_accepted() -> None:
    assert len(decode_body(gzip.compress(b"x" * 1000), "gzip", 1000)) == 1000
    with pytest.raises(BodyTooLarge):
        decode_body(gzip.compress(b"x" * 1001), "gzip", 1000)
    with pytest.raises(BodyTooLarge):
        decode_body(b"x" * 1001, None, 1000)


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"abc", "deflate"),
        (b"abc", "br"),
        (b"abc", "gzip, gzip"),
        (b"not gzip", "gzip"),
        (gzip.compress(b"abc")[:-4], "gzip"),  # truncated trailer
        (gzip.compress(b"abc") + b"x", "gzip"),  # trailing bytes
        (gzip.compress(b"abc") + gzip.compress(b"def"), "gzip"),  # a second member
        (zlib.compress(b"abc"), "gzip"),  # zlib, not gzip
    ],
)
def test_refused_encodings(data: bytes, encoding: str) -> None:
    with pytest.raises(BodyRefused):
        decode_body(data, encoding, 1000)


@given(st.binary(max_size=2000))
def test_gzip_round_trip(data: bytes) -> None:
    assert decode_body(gzip.compress(data), "gzip", 2000) == data
