"""Request bodies through the real gateway: what it checks is what the upstream receives.

Each refusal here is asserted twice: the client's answer, and that the upstream never saw
the request (nothing went upstream before the body was understood).
"""

from __future__ import annotations

import gzip
import ssl
import time
from pathlib import Path

import pytest

from airlock.core.pktline import DELIM, FLUSH, encode_pkt
from tests.rawhttp import RawResponse, client_context, get, send_raw
from tests.world import HOST, World

OID = "1" * 40


def _ctx(world: World, bundle_dir: Path) -> ssl.SSLContext:
    return client_context(bundle_dir, world.state_dir / "ca.pem")


def _pkts(*lines: str | bytes) -> bytes:
    out = b""
    for line in lines:
        if isinstance(line, bytes):
            out += line  # a special packet (FLUSH, DELIM) or raw bytes
        else:
            out += encode_pkt(line.encode() + b"\n")
    return out


def _post_upload_pack(
    world: World,
    bundle_dir: Path,
    repo: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    h = {"Content-Type": "application/x-git-upload-pack-request"}
    h.update(headers or {})
    payload = get(f"/git/{HOST}/{repo}/git-upload-pack", method="POST", headers=h, body=body)
    return send_raw(_ctx(world, bundle_dir), world.port, payload)


def _upstream_posts(world: World, repo: str) -> int:
    owner, name = repo.split("/")
    return sum(
        1
        for r in world.upstream.requests
        if r.method == "POST" and r.path.startswith(f"/{owner}/{name}.git/")
    )


def _audit_for_request(world: World, request_id: str) -> dict[str, object]:
    # The line is written once the answer has been sent: give the gateway a moment.
    deadline = time.monotonic() + 5
    while True:
        lines = [e for e in world.audit() if e.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(lines) == 1, lines
    return lines[0]


def _head(world: World, repo: str) -> str:
    import subprocess

    from airlock.testing.repos import git_env

    owner, name = repo.split("/")
    bare = world.repos / owner / f"{name}.git"
    return subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=bare,
        env=git_env(world.home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_gzip_body_is_inflated_checked_and_forwarded_as_checked(world: World) -> None:
    """A gzipped v0 fetch request (what git sends past 1 KiB) serves a real pack."""
    world.make_repo("bodies", "gz")
    b = world.session(f"{HOST}/bodies/gz:read")
    head = _head(world, "bodies/gz")
    body = _pkts(f"want {head} side-band-64k ofs-delta agent=git/2.39.5", FLUSH, "done")
    r = _post_upload_pack(
        world, b.dir, "bodies/gz", gzip.compress(body), {"Content-Encoding": "gzip"}
    )
    assert r.status == 200, r.body
    assert b"PACK" in r.body  # a pack: the upstream parsed the very bytes we checked
    line = _audit_for_request(world, r.headers["x-airlock-request-id"])
    assert line["inflated_bytes"] == len(body)
    assert line["reason"] == "ok"


def test_gzip_bomb_is_refused_before_the_upstream_answers(world: World) -> None:
    world.make_repo("bodies", "bomb")
    b = world.session(f"{HOST}/bodies/bomb:read")
    # 80 MiB of a valid-looking have stream, compressed to well under a megabyte: over the
    # 64 MiB cap only once inflated.
    head = _head(world, "bodies/bomb")
    one_have = encode_pkt(f"have {OID}\n".encode())
    inflated = (
        _pkts(f"want {head} ofs-delta", FLUSH)
        + one_have * (80 * 1024 * 1024 // len(one_have))
        + _pkts("done")
    )
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < 1024 * 1024
    before = _upstream_posts(world, "bodies/bomb")
    r = _post_upload_pack(world, b.dir, "bodies/bomb", bomb, {"Content-Encoding": "gzip"})
    assert r.status == 413
    assert _upstream_posts(world, "bodies/bomb") == before
    line = _audit_for_request(world, r.headers["x-airlock-request-id"])
    assert line["status"] == 413
    assert line["reason"] == "body_too_large"


_BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "not pkt-lines": (b"GET /other/repo HTTP/1.1\r\n\r\n", {}),
    "truncated pkt-line": (b"0032want " + OID.encode(), {}),
    "v0 without a want": (_pkts(f"have {OID}", "done"), {}),
    "v0 unknown line": (_pkts(f"want {OID}", "bogus x", FLUSH, "done"), {}),
    "v0 unknown capability": (_pkts(f"want {OID} evil-cap", FLUSH, "done"), {}),
    "v0 data after done": (_pkts(f"want {OID}", FLUSH, "done", "want 2"), {}),
    "v0 body with the v2 header": (
        _pkts(f"want {OID}", FLUSH, "done"),
        {"Git-Protocol": "version=2"},
    ),
    "v2 unknown command": (
        _pkts("command=object-info", "agent=git/2.39.5", DELIM, "size", f"oid {OID}", FLUSH),
        {"Git-Protocol": "version=2"},
    ),
    "v2 bundle-uri": (
        _pkts("command=bundle-uri", "agent=git/2.39.5", FLUSH),
        {"Git-Protocol": "version=2"},
    ),
    "v2 packfile-uris": (
        _pkts("command=fetch", DELIM, f"want {OID}", "packfile-uris https", "done", FLUSH),
        {"Git-Protocol": "version=2"},
    ),
    "v2 trailing bytes": (
        _pkts("command=ls-refs", DELIM, "peel", FLUSH) + b"GET / HTTP/1.1\r\n",
        {"Git-Protocol": "version=2"},
    ),
    "v2 body with the v0 header": (_pkts("command=ls-refs", DELIM, "peel", FLUSH), {}),
    "unknown Git-Protocol": (
        _pkts("command=ls-refs", DELIM, "peel", FLUSH),
        {"Git-Protocol": "version=2:evil=1"},
    ),
    "deflate encoding": (b"x\x9c\x03\x00\x00\x00\x00\x01", {"Content-Encoding": "deflate"}),
    "gzip garbage": (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}),
    "gzip with trailing data": (
        gzip.compress(_pkts(f"want {OID}", FLUSH, "done")) + b"0000",
        {"Content-Encoding": "gzip"},
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_BODIES))
def test_malformed_upload_pack_body_never_goes_upstream(world: World, case: str) -> None:
    repo = "bodies/bad"
    if not (world.repos / "bodies" / "bad.git").exists():
        world.make_repo("bodies", "bad")
    b = world.session(f"{HOST}/{repo}:read")
    body, headers = _BAD_BODIES[case]
    before = _upstream_posts(world, repo)
    r = _post_upload_pack(world, b.dir, repo, body, headers)
    assert r.status == 400, (case, r.status, r.body)
    assert r.body.startswith(b"airlock: bad request (request id ")
    assert _upstream_posts(world, repo) == before
    line = _audit_for_request(world, r.headers["x-airlock-request-id"])
    assert str(line["reason"]).startswith(("bad_body:", "bad_git_protocol:")), line


def test_encoded_push_body_is_refused(world: World) -> None:
    world.make_repo("bodies", "pushgz")
    b = world.session(f"{HOST}/bodies/pushgz:write")
    body = gzip.compress(_pkts(f"{'0' * 40} {OID} refs/heads/x\0report-status", FLUSH))
    payload = get(
        f"/git/{HOST}/bodies/pushgz/git-receive-pack",
        method="POST",
        headers={
            "Content-Type": "application/x-git-receive-pack-request",
            "Content-Encoding": "gzip",
        },
        body=body,
    )
    r = send_raw(_ctx(world, b.dir), world.port, payload)
    assert r.status == 400
    assert _upstream_posts(world, "bodies/pushgz") == 0


def test_push_commands_are_parsed_before_any_byte_goes_upstream(world: World) -> None:
    """A push whose command list is malformed after a valid first command: the upstream
    sees nothing (the valid command is not streamed ahead of the check)."""
    world.make_repo("bodies", "pushbad")
    b = world.session(f"{HOST}/bodies/pushbad:write")
    body = _pkts(
        f"{'0' * 40} {OID} refs/heads/ok\0report-status",
        f"{'0' * 40} {OID} refs/heads/../evil",
        FLUSH,
    )
    payload = get(
        f"/git/{HOST}/bodies/pushbad/git-receive-pack",
        method="POST",
        headers={"Content-Type": "application/x-git-receive-pack-request"},
        body=body,
    )
    r = send_raw(_ctx(world, b.dir), world.port, payload)
    assert r.status == 400
    assert _upstream_posts(world, "bodies/pushbad") == 0


# --- requests aiohttp's own parser refuses ---------------------------------------------

_MARKER = "EchoMarker7731"
_UNPARSABLE: dict[str, bytes] = {
    "obs-fold": (
        f"GET /git/{HOST}/a/b/info/refs?service=git-upload-pack HTTP/1.1\r\n"
        f"Host: airlock.internal\r\nX-A: one\r\n  {_MARKER}\r\n\r\n"
    ).encode(),
    "content-length and transfer-encoding": (
        f"POST /git/{HOST}/a/b/git-upload-pack HTTP/1.1\r\nHost: airlock.internal\r\n"
        f"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nX-M: {_MARKER}\r\n\r\n"
        "0\r\n\r\n"
    ).encode(),
    "control character in a header": (
        f"GET /git/{HOST}/a/b/info/refs HTTP/1.1\r\nHost: airlock.internal\r\n"
        f"X-M: {_MARKER}\x01\x7f\r\n\r\n"
    ).encode(),
    "bad request line": f"G{_MARKER}T / HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "bad chunk size": (
        f"POST /git/{HOST}/a/b/git-upload-pack HTTP/1.1\r\nHost: airlock.internal\r\n"
        f"Transfer-Encoding: chunked\r\n\r\nzz{_MARKER}\r\n"
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(_UNPARSABLE))
def test_unparsable_request_gets_the_gateways_own_answer(world: World, case: str) -> None:
    b = world.session(f"{HOST}/a/b:read")
    # One source per case: repeated denials from one source are summarised in one line.
    source = f"127.0.0.{10 + sorted(_UNPARSABLE).index(case)}"
    r = send_raw(_ctx(world, b.dir), world.port, _UNPARSABLE[case], source=source)
    assert r.status == 400, (case, r.status, r.body)
    rid = r.headers["x-airlock-request-id"]
    assert r.body == f"airlock: bad request (request id {rid})\n".encode()
    assert _MARKER.encode() not in r.body
    line = _audit_for_request(world, rid)
    assert line["status"] == 400
    assert str(line["reason"]).startswith("bad_http:")
