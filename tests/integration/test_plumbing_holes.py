"""Holes in the gateway's plumbing, each attacked against a real gateway process.

One gateway per control socket; renew racing revoke; bad resolver entries; the open
connection gauge under failed handshakes; SIGTERM with transfers in flight; secrets given
through symlinks; and three controls no other integration test would notice missing: the
upstream 401/403 -> "repository not found" mapping, the idle deadline extended only by
successful requests, and the egress proxy token bound to its sandbox's address.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.gateway.pki import make_csr, new_private_key
from airlock.testing.ports import free_port
from airlock.testing.repos import add_large_commit
from tests.integration.test_abuse_controls import _metric, _proxy_status
from tests.rawhttp import client_context, get, send_raw
from tests.world import HOST, TOKEN, World, run_gateway_cli


@pytest.fixture(scope="module")
def pw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("plumbing"))
    w.start()
    yield w
    w.stop()


def _info_refs(repo: str) -> bytes:
    return get(f"/git/{HOST}/{repo}/info/refs?service=git-upload-pack")


def _ctx(w: World, bundle_dir: Path) -> ssl.SSLContext:
    return client_context(bundle_dir, w.state_dir / "ca.pem")


def _minimal_config(tmp: Path, extra: str = "", token_file: Path | None = None) -> Path:
    """A config for a gateway of its own (own state, socket and port), for refusals."""
    if token_file is None:
        token_file = tmp / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
    cfg = tmp / "airlock.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "run" / "control.sock"}"
git_listen = "127.0.0.1:{free_port()}"
control_uids = [{os.geteuid()}]
audit_log = "{tmp / "audit.log"}"

[[upstream]]
host = "{HOST}"
url = "https://127.0.0.1:9"
token_file = "{token_file}"
{extra}
""")
    return cfg


# --------------------------------------------------------------- 1. one gateway per socket


def test_second_gateway_on_the_same_config_refuses_and_leaves_the_first_alone(
    pw: World, tmp_path: Path
) -> None:
    pw.make_repo("acme", "single")
    inode = os.lstat(pw.socket).st_ino
    r = run_gateway_cli(pw.config)
    assert r.returncode != 0
    assert f"another gateway is running on {pw.socket}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # The first gateway still owns its socket and keeps working.
    assert os.lstat(pw.socket).st_ino == inode
    assert pw.control.health()["status"] == "ok"
    b = pw.session(f"{HOST}/acme/single:read")
    assert pw.clone(b, "acme/single", tmp_path / "c").returncode == 0


# --------------------------------------------------------------- 3. renew vs revoke


def test_revoke_during_an_in_flight_renew_wins(pw: World) -> None:
    """The renew request is held in flight (its body half sent) while a revoke lands; when
    the body completes, the renewal must not write back the session it read earlier."""
    b = pw.session(f"{HOST}/acme/renewrace:read")
    body = json.dumps({"csr": make_csr(new_private_key()).decode()}).encode()
    head = (
        f"POST /v1/sessions/{b.session_id}/renew HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(pw.socket))
        s.sendall(head + body[:100])
        time.sleep(0.5)  # the renew handler has read the session and waits for the body
        assert pw.control.revoke(b.session_id, "race")["state"] == "revoked"
        s.sendall(body[100:])
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status == 409, reply[:300]
    after = pw.control.show(b.session_id)
    assert after["state"] == "revoked" and after["revoked_reason"] == "race"


# --------------------------------------------------------------- 4. secrets through symlinks


def test_token_file_symlink_to_a_readable_file_names_the_resolved_file(tmp_path: Path) -> None:
    real = tmp_path / "store" / "token"
    real.parent.mkdir()
    real.write_text(TOKEN + "\n")
    real.chmod(0o644)
    link = tmp_path / "token-link"
    link.symlink_to(real)
    r = run_gateway_cli(_minimal_config(tmp_path, token_file=link))
    assert r.returncode == 2, r.stderr
    assert f"chmod 600 {real}" in r.stderr, r.stderr
    assert f"chmod 600 {link}" not in r.stderr
    assert str(real) in r.stderr and "Traceback" not in r.stderr and TOKEN not in r.stderr


def test_token_file_through_a_good_symlink_is_used(tmp_path: Path) -> None:
    w = World(tmp_path)
    real = tmp_path / "secret-store" / "token"
    real.parent.mkdir(mode=0o700)
    os.replace(w.token_file, real)
    w.token_file.symlink_to(real)  # the upstream reads the token through the link as well
    w.start()
    try:
        w.make_repo("acme", "linked")
        b = w.session(f"{HOST}/acme/linked:read")
        r = w.clone(b, "acme/linked", tmp_path / "c")
        assert r.returncode == 0, r.stderr
    finally:
        w.stop()


# --------------------------------------------------------------- 6. egress.resolvers


@pytest.mark.parametrize("entry", ["not-an-ip", "1.2.3.4:99999", "1.2.3.4:x", "[::1"])
def test_bad_resolver_entry_is_a_config_error(tmp_path: Path, entry: str) -> None:
    r = run_gateway_cli(_minimal_config(tmp_path, f'\n[egress]\nresolvers = ["{entry}"]\n'))
    assert r.returncode == 2, r.stderr
    assert "egress.resolvers" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was created


# --------------------------------------------------------------- 7. open connections gauge


def test_open_connections_gauge_survives_failed_handshakes(pw: World) -> None:
    no_cert = client_context(None, pw.state_dir / "ca.pem")

    async def fail(i: int) -> None:
        # Few failures per source: under the back-off threshold, so each one reaches TLS.
        source = f"127.0.3.{i % 60 + 1}"
        try:
            r, w = await asyncio.open_connection(
                "127.0.0.1",
                pw.port,
                ssl=no_cert,
                server_hostname="airlock.internal",
                local_addr=(source, 0),
            )
            await asyncio.wait_for(r.read(1), 5)
            w.close()
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            pass

    async def attack() -> None:
        await asyncio.gather(*(fail(i) for i in range(180)))

    before = _metric(pw, "airlock_handshake_failures_total")
    asyncio.run(attack())
    time.sleep(0.5)
    assert _metric(pw, "airlock_handshake_failures_total") - before >= 150
    assert _metric(pw, "airlock_open_connections", listener="git") == 0


# --------------------------------------------------------------- 8. SIGTERM, transfers in flight


def test_sigterm_with_a_transfer_in_flight_exits_within_2s(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    w = World(tmp_path_factory.mktemp("sigterm"))
    w.start()
    try:
        bare = w.make_repo("acme", "big")
        add_large_commit(bare, 40 * 1024 * 1024, file_count=8, seed=3)
        head = subprocess.run(
            ["git", "--git-dir", str(bare), "rev-parse", "refs/heads/main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        b = w.session(f"{HOST}/acme/big:read")
        want = f"want {head}\n".encode()
        body = b"%04x" % (len(want) + 4) + want + b"0000" + b"0009done\n"
        request = get(
            f"/git/{HOST}/acme/big/git-upload-pack",
            method="POST",
            headers={"Content-Type": "application/x-git-upload-pack-request"},
            body=body,
        )
        raw = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        tls = _ctx(w, b.dir).wrap_socket(raw, server_hostname="airlock.internal")
        tls.sendall(request)
        first = tls.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        # A slow reader: the pack is tens of MB, the gateway is stuck writing to us.
        time.sleep(1.0)
        assert w.proc is not None
        proc = w.proc
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        refused_at = None
        while time.monotonic() - t0 < 2 and refused_at is None:
            try:
                socket.create_connection(("127.0.0.1", w.port), timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                refused_at = time.monotonic() - t0
        assert refused_at is not None and refused_at < 1.0, refused_at
        rc = proc.wait(10)
        elapsed = time.monotonic() - t0
        w.proc = None
        assert elapsed < 2.0, f"the gateway took {elapsed:.2f} s to exit"
        assert rc == 0
        # The transfer failed cleanly: the connection ends (no hang) short of the full pack.
        tls.settimeout(5)
        got = len(first)
        try:
            while chunk := tls.recv(1 << 20):
                got += len(chunk)
        except (OSError, ssl.SSLError):
            pass
        assert got < 40 * 1024 * 1024
        tls.close()
        assert "Traceback" not in w.gateway_log.read_text()
    finally:
        w.stop()


# --------------------------------------------------------------- 9a. upstream 401/403


def _strip_id(body: bytes) -> bytes:
    return re.sub(rb"request id [0-9a-zA-Z_-]+", b"request id X", body)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusal_of_a_granted_repo_looks_like_an_ungranted_repo(
    pw: World, status: int
) -> None:
    repo = f"acme/refused{status}"
    pw.make_repo("acme", f"refused{status}")
    pw.make_repo("acme", f"hidden{status}")
    pw.upstream.force_status(repo, status)
    try:
        b = pw.session(f"{HOST}/{repo}:read")
        ctx = _ctx(pw, b.dir)
        before = len(pw.upstream.requests)
        refused = send_raw(ctx, pw.port, _info_refs(repo))
        assert pw.upstream.requests[before].status == status  # it did reach the upstream
        ungranted = send_raw(ctx, pw.port, _info_refs(f"acme/hidden{status}"))
    finally:
        pw.upstream.force_status(repo, None)
    assert refused.status == ungranted.status == 404
    assert _strip_id(refused.body) == _strip_id(ungranted.body)
    drop = {"x-airlock-request-id", "date"}
    assert {k: v for k, v in refused.headers.items() if k not in drop} == {
        k: v for k, v in ungranted.headers.items() if k not in drop
    }


# --------------------------------------------------------------- 9b. idle deadline


@pytest.mark.parametrize("how", ["upstream_404", "upstream_500"])
def test_failed_requests_on_a_granted_repo_do_not_keep_a_session_alive(pw: World, how: str) -> None:
    pw.make_repo("acme", "alive")
    failing = f"acme/failing-{how}"
    if how == "upstream_500":
        pw.make_repo("acme", f"failing-{how}")
        pw.upstream.force_status(failing, 500)
    # acme/failing-upstream_404 does not exist upstream: granted, and answered 404 there.
    try:
        b = pw.session(f"{HOST}/{failing}:read", f"{HOST}/acme/alive:read", idle_timeout=3)
        created = pw.control.show(b.session_id)["last_used"]
        ctx = _ctx(pw, b.dir)
        statuses = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:  # past the idle timeout, busy but never successful
            statuses.append(send_raw(ctx, pw.port, _info_refs(failing)).status)
            time.sleep(0.3)
    finally:
        pw.upstream.force_status(failing, None)
    assert 200 not in statuses and statuses[0] in (404, 502), statuses
    assert pw.control.show(b.session_id)["last_used"] == created
    assert send_raw(ctx, pw.port, _info_refs("acme/alive")).status == 403
    assert pw.audit_for(b.session_id)[-1]["reason"] == "idle_timeout"


# --------------------------------------------------------------- 9c. proxy token binding


def test_proxy_token_is_bound_to_its_sandbox_address(pw: World) -> None:
    """Two sandboxes behind the SAME listener: A's token from B's address is refused."""
    listen, addr_a, addr_b = "127.0.0.60", "127.0.0.61", "127.0.0.62"
    pw.control.add_listener(listen)
    try:
        tokens = {}
        for address in (addr_a, addr_b):
            issued, _ = pw.issue(f"{HOST}/acme/x:read", require_activation=True)
            pw.control.activate(
                issued["session"]["id"],
                container_id=os.urandom(32).hex(),
                network="test",
                address=address,
                gateway_address=listen,
            )
            tokens[address] = issued["proxy_token"]
        # Each token works from its own address (authenticated, then the allowlist: 403).
        assert _proxy_status(listen, addr_a, tokens[addr_a]) == (403, "not_allowlisted")
        assert _proxy_status(listen, addr_b, tokens[addr_b]) == (403, "not_allowlisted")
        # A's token from B's address, and from an address no session is bound to.
        assert _proxy_status(listen, addr_b, tokens[addr_a])[0] == 407
        assert _proxy_status(listen, "127.0.0.63", tokens[addr_a])[0] == 407
    finally:
        pw.control.remove_listener(listen)
