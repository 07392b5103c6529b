"""Rotation against a real gateway process: `airlock rotate ca`, `rotate token`, `revoke-all`.

Real TLS and real git through the gateway to git's http-backend upstream, on loopback only.
Each test that rotates the CA gets its own World (a rotation changes the gateway for good).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.world import HOST, TOKEN, Bundle, World

OVERLAP = 5  # seconds: long enough for the checks inside it, short enough to wait out


@pytest.fixture
def rworld(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.start()
    yield w
    w.stop()


def airlock(world: World, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", *args, "--config", str(world.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def snapshot(bundle: Bundle, dest: Path) -> Bundle:
    """A copy of a bundle as it is now (the old certificate, the old trust), pointing at
    itself: what a client that kept the old files has."""
    shutil.copytree(bundle.dir, dest)
    cfg = (dest / "gitconfig").read_text().replace(str(bundle.dir.resolve()), str(dest.resolve()))
    (dest / "gitconfig").write_text(cfg)
    return Bundle(bundle.session_id, dest)


def mixed(old: Bundle, new: Bundle, dest: Path) -> Bundle:
    """The old client certificate with the new trust (CAs and pins): isolates what the
    gateway accepts of the old certificate from what the client trusts."""
    b = snapshot(new, dest)
    shutil.copy(old.dir / "client.pem", dest / "client.pem")
    return b


def clone_ok(world: World, bundle: Bundle, repo: str, dest: Path) -> bool:
    shutil.rmtree(dest, ignore_errors=True)
    return world.clone(bundle, repo, dest).returncode == 0


def raw_context(bundle: Bundle) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle.dir / "ca.pem"))
    ctx.load_cert_chain(bundle.dir / "client.pem", bundle.dir / "client.key")
    return ctx


def info_refs(conn: http.client.HTTPSConnection, repo: str) -> int:
    conn.request(
        "GET",
        f"/{repo}.git/info/refs?service=git-upload-pack",
        headers={"Host": f"{HOST}:1"},
    )
    resp = conn.getresponse()
    resp.read()
    return resp.status


def rotation_state(world: World) -> dict[str, object]:
    state: dict[str, object] = world.control.rotation()
    return state


def wait_overlap_end(world: World, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while rotation_state(world)["phase"] != "idle":
        assert time.monotonic() < deadline, "the overlap did not end"
        time.sleep(0.2)


def test_rotate_ca_keeps_the_session_and_ends_the_old_ca(rworld: World, tmp_path: Path) -> None:
    w = rworld
    w.make_repo("acme", "rot")
    b = w.session(f"{HOST}/acme/rot:read")
    old = snapshot(b, tmp_path / "old")
    old_ca = x509.load_pem_x509_certificate((b.dir / "ca.pem").read_bytes())
    assert clone_ok(w, b, "acme/rot", tmp_path / "c0")

    r = airlock(w, "rotate", "ca", "--overlap", f"{OVERLAP}s", "--settle", "0", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    assert "rotated" in r.stderr and r.stdout.strip() == "1"
    state = rotation_state(w)
    assert state["phase"] == "overlap"

    # The bundle was rewritten in place: the same key, a new certificate, both CAs.
    new_cert = x509.load_pem_x509_certificate((b.dir / "client.pem").read_bytes())
    old_cert = x509.load_pem_x509_certificate((old.dir / "client.pem").read_bytes())
    assert new_cert.public_key() == old_cert.public_key() and new_cert != old_cert
    trusted = x509.load_pem_x509_certificates((b.dir / "ca.pem").read_bytes())
    assert old_ca in trusted and len(trusted) == 2
    new_ca = next(c for c in trusted if c != old_ca)
    new_cert.verify_directly_issued_by(new_ca)
    assert (b.dir / "gitconfig").read_text().count(";sha256//") >= 1  # both server pins
    sums = (b.dir / "SHA256SUMS").read_text()
    assert hashlib.sha256((b.dir / "client.pem").read_bytes()).hexdigest() in sums

    # During the overlap: the rewritten bundle works; the old certificate too (new trust).
    both = mixed(old, b, tmp_path / "mixed")
    assert clone_ok(w, b, "acme/rot", tmp_path / "c1")
    assert clone_ok(w, both, "acme/rot", tmp_path / "c2")
    # A client that trusts only the old CA cannot verify the gateway any more.
    r_old = w.clone(old, "acme/rot", tmp_path / "c3")
    assert r_old.returncode != 0
    # A connection with the old certificate opened during the overlap, kept alive.
    conn = http.client.HTTPSConnection("127.0.0.1", w.port, context=raw_context(both), timeout=10)
    conn._context.check_hostname = False  # type: ignore[attr-defined]
    assert info_refs(conn, "acme/rot") == 200

    wait_overlap_end(w)
    # After it: the same open connection (its handshake long done) is refused per request:
    # the session's previous certificate is over (the fingerprint check, not TLS).
    assert info_refs(conn, "acme/rot") == 403
    conn.close()
    # A new connection with the old certificate: the old CA is refused at the handshake
    # (not a request answered 403: the TLS layer no longer trusts it).
    fresh = http.client.HTTPSConnection("127.0.0.1", w.port, context=raw_context(both), timeout=10)
    fresh._context.check_hostname = False  # type: ignore[attr-defined]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        info_refs(fresh, "acme/rot")
    fresh.close()
    r_mixed = w.clone(both, "acme/rot", tmp_path / "c4")
    assert r_mixed.returncode != 0
    assert clone_ok(w, b, "acme/rot", tmp_path / "c5")
    # The old keys are gone; the bundles get the new CA alone.
    assert not (w.state_dir / "rotation").exists() or not any((w.state_dir / "rotation").iterdir())
    r = airlock(w, "rotate", "bundles", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    assert len(x509.load_pem_x509_certificates((b.dir / "ca.pem").read_bytes())) == 1
    assert clone_ok(w, b, "acme/rot", tmp_path / "c6")
    events = [e["event"] for e in w.audit()]
    for step in ("ca_rotation_prepared", "ca_rotation_committed", "ca_rotation_finished"):
        assert step in events


def test_a_restart_during_the_overlap_keeps_it(rworld: World, tmp_path: Path) -> None:
    w = rworld
    w.make_repo("acme", "restart")
    b = w.session(f"{HOST}/acme/restart:read")
    old = snapshot(b, tmp_path / "old")
    r = airlock(w, "rotate", "ca", "--overlap", "8s", "--settle", "0", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    both = mixed(old, b, tmp_path / "mixed")
    w.stop_gateway()
    w.start_gateway()
    # Still inside the overlap after the restart: the old certificate is accepted.
    assert rotation_state(w)["phase"] == "overlap"
    assert clone_ok(w, both, "acme/restart", tmp_path / "c1")
    assert clone_ok(w, b, "acme/restart", tmp_path / "c2")
    wait_overlap_end(w)
    assert not clone_ok(w, both, "acme/restart", tmp_path / "c3")
    assert clone_ok(w, b, "acme/restart", tmp_path / "c4")


def test_an_overlap_that_ends_while_the_gateway_is_down_ends_at_start(
    rworld: World, tmp_path: Path
) -> None:
    w = rworld
    w.make_repo("acme", "down")
    b = w.session(f"{HOST}/acme/down:read")
    old = snapshot(b, tmp_path / "old")
    r = airlock(w, "rotate", "ca", "--overlap", "2s", "--settle", "0", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    both = mixed(old, b, tmp_path / "mixed")
    w.stop_gateway()
    time.sleep(2.5)
    w.start_gateway()
    assert rotation_state(w)["phase"] == "idle"
    assert not clone_ok(w, both, "acme/down", tmp_path / "c1")
    assert clone_ok(w, b, "acme/down", tmp_path / "c2")


def test_rotate_ca_during_an_overlap_is_refused(rworld: World, tmp_path: Path) -> None:
    w = rworld
    r = airlock(w, "rotate", "ca", "--overlap", "30s", "--settle", "0")
    assert r.returncode == 0, r.stderr
    r = airlock(w, "rotate", "ca", "--overlap", "30s", "--settle", "0")
    assert r.returncode == 1
    assert "overlap is still running" in r.stderr and "Traceback" not in r.stderr
    r = airlock(w, "rotate", "ca", "--overlap", "soon")
    assert r.returncode == 2 and "--overlap" in r.stderr


def test_rotate_ca_names_the_sessions_it_has_no_bundle_for(rworld: World, tmp_path: Path) -> None:
    w = rworld
    w.make_repo("acme", "untracked")
    b = w.session(f"{HOST}/acme/untracked:read")
    # Its bundle is nowhere rotate ca looks: not committed (it would fail at the commit).
    r = airlock(w, "rotate", "ca", "--overlap", "30s", "--settle", "0")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert b.session_id in r.stderr and "--out DIR" in r.stderr and "--force" in r.stderr
    assert "the rotation is left prepared: re-run `airlock rotate ca`" in r.stderr
    assert rotation_state(w)["phase"] == "prepared"
    # Left prepared, the bundle that was not rewritten keeps working (no deadline).
    assert clone_ok(w, b, "acme/untracked", tmp_path / "c0")
    # Re-run with its bundle: prepared again (the same next CA), rewritten, committed.
    r = airlock(w, "rotate", "ca", "--overlap", "30s", "--settle", "0", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    assert rotation_state(w)["phase"] == "overlap"
    assert clone_ok(w, b, "acme/untracked", tmp_path / "c1")


def test_rotate_ca_force_commits_and_says_the_untracked_bundle_fails_now(
    rworld: World, tmp_path: Path
) -> None:
    w = rworld
    w.make_repo("acme", "forced")
    b = w.session(f"{HOST}/acme/forced:read")
    r = airlock(w, "rotate", "ca", "--overlap", "30s", "--settle", "0", "--force")
    assert r.returncode == 0, r.stderr
    assert b.session_id in r.stderr and "fail from now on" in r.stderr
    # True: the bundle pins only the old server key, the gateway shows the new one.
    assert not clone_ok(w, b, "acme/forced", tmp_path / "c0")
    # ... and `rotate bundles --out` brings that bundle over.
    r = airlock(w, "rotate", "bundles", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    assert clone_ok(w, b, "acme/forced", tmp_path / "c1")


# --- rotate token -----------------------------------------------------------------------------


def _token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


def test_rotate_token_swaps_and_the_next_clone_uses_it(world: World, tmp_path: Path) -> None:
    w = world
    w.make_repo("acme", "tok")
    b = w.session(f"{HOST}/acme/tok:read")
    new = "ghs_" + "N3wT0ken" + "z" * 28
    accepted = _token_file(tmp_path / "upstream-accepts", new)
    w.upstream.token_file = accepted  # from now on the upstream accepts only the new token
    try:
        assert not clone_ok(w, b, "acme/tok", tmp_path / "c0")  # the gateway's old token
        bad = _token_file(tmp_path / "wrong", "ghs_" + "Wr0ng" + "q" * 31)
        r = airlock(w, "rotate", "token", str(bad), "--check-repo", "acme/tok")
        assert r.returncode == 1 and "refused the new token" in r.stderr
        assert w.token_file.read_text().strip() == TOKEN  # nothing changed
        new_file = _token_file(tmp_path / "new-token", new)
        r = airlock(w, "rotate", "token", str(new_file), "--check-repo", "acme/tok")
        assert r.returncode == 0, r.stderr
        assert w.token_file.read_text().strip() == new
        assert os.stat(w.token_file).st_mode & 0o777 == 0o600
        assert clone_ok(w, b, "acme/tok", tmp_path / "c1")
        assert w.upstream.requests[-1].authorization_ok
        assert any(e["event"] == "token_file_reloaded" for e in w.audit())
        assert new not in w.audit_log.read_text()
    finally:
        w.upstream.token_file = w.token_file
        _token_file(w.token_file, TOKEN)


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("ghs_" + "a" * 36, 0o644, "chmod 600"),
        ("", 0o600, "empty"),
        ("two tokens", 0o600, "malformed"),
    ],
    # Not the content: a token-shaped test id in PYTEST_CURRENT_TEST stops the gateway.
    ids=["mode-0644", "empty", "two-words"],
)
def test_rotate_token_refuses_a_bad_file(
    world: World, tmp_path: Path, content: str, mode: int, message: str
) -> None:
    f = tmp_path / "bad"
    f.write_text(content)
    os.chmod(f, mode)
    r = airlock(world, "rotate", "token", str(f))
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert world.token_file.read_text().strip() == TOKEN


def test_rotate_token_refuses_a_missing_file(world: World, tmp_path: Path) -> None:
    r = airlock(world, "rotate", "token", str(tmp_path / "nope"))
    assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr


# --- revoke-all -------------------------------------------------------------------------------


def test_revoke_all_ends_every_session_at_once(world: World, tmp_path: Path) -> None:
    w = world
    w.make_repo("acme", "all")
    a = w.session(f"{HOST}/acme/all:read")
    b = w.session(f"{HOST}/acme/all:read")
    assert clone_ok(w, a, "acme/all", tmp_path / "a0")
    live = sum(1 for s in w.control.list_sessions() if s["state"] != "revoked")
    r = airlock(w, "revoke-all", "--reason", "incident 42")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(live) and f"revoked {live}" in r.stderr
    for bundle, dest in ((a, "a1"), (b, "b1")):
        res = w.git(bundle, "clone", f"https://{HOST}/acme/all", str(tmp_path / dest))
        assert res.returncode != 0 and "revoked" in res.stderr
    assert all(s["state"] == "revoked" for s in w.control.list_sessions())
    ev = [e for e in w.audit() if e["event"] == "sessions_revoked_all"]
    assert ev and ev[-1]["revoked"] == live and ev[-1]["reason"] == "incident 42"
    r = airlock(w, "revoke-all")
    assert r.returncode == 0 and r.stdout.strip() == "0"


# --- the API interception CA rotates too ------------------------------------------------------


def test_rotate_ca_rotates_the_api_interception_ca(tmp_path: Path) -> None:
    import dataclasses

    from airlock.testing.ports import free_port
    from tests.integration.test_api_relay import LISTEN, LOOP, OWNER, PROXY_PORT, make_sandbox
    from tests.world import ApiWorld

    (tmp_path / "w").mkdir()
    w = ApiWorld(
        tmp_path / "w",
        gateway_extra=f"dns_port = {free_port()}\n",
        config_extra=f"[sandbox]\nproxy_port = {PROXY_PORT}\n",
    )
    w.start()
    try:
        w.control.add_listener(LISTEN)
        w.make_repo(OWNER, "apirot")
        sb = make_sandbox(w, tmp_path, LOOP, f"{HOST}/{OWNER}/apirot:read")
        assert sb.curl("GET", f"/repos/{OWNER}/apirot")[0] == 200
        old_dir = tmp_path / "old-api"
        shutil.copytree(sb.bundle.dir, old_dir)
        old_sb = dataclasses.replace(sb, bundle=Bundle(sb.session_id, old_dir))
        r = airlock(
            w, "rotate", "ca", "--overlap", "4s", "--settle", "0", "--out", str(sb.bundle.dir)
        )
        assert r.returncode == 0, r.stderr
        assert (
            len(x509.load_pem_x509_certificates((sb.bundle.dir / "api-ca.pem").read_bytes())) == 2
        )
        # The new interception CA serves already; the rewritten bundle trusts it.
        assert sb.curl("GET", f"/repos/{OWNER}/apirot")[0] == 200
        # A client with the old interception CA alone cannot verify the API any more.
        assert old_sb.curl("GET", f"/repos/{OWNER}/apirot")[0] == 0
        wait_overlap_end(w)
        r = airlock(w, "rotate", "bundles", "--out", str(sb.bundle.dir))
        assert r.returncode == 0, r.stderr
        assert (
            len(x509.load_pem_x509_certificates((sb.bundle.dir / "api-ca.pem").read_bytes())) == 1
        )
        assert sb.curl("GET", f"/repos/{OWNER}/apirot")[0] == 200
    finally:
        w.stop()
