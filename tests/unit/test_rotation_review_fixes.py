"""The fixes of the 2026-12-01 review of CA rotation: a rotation left prepared keeps every
bundle working and says how to go on; `rotate ca` commits only when every live session's
bundle has the new trust (or --force); prepare errors leave no half-made re-issue; the
bundle lock is held from listing the bundles (after the prepare) to the commit."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import sqlite3
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from airlock.config import parse_config
from airlock.core import rotation as core
from airlock.core import session as lc
from airlock.core.grants import Access, Grant
from airlock.gateway import rotation as gw_rotation
from airlock.gateway.audit import AuditLog
from airlock.gateway.control import ControlAPI
from airlock.gateway.pki import load_or_create_identity, make_csr, new_private_key
from airlock.gateway.store import SessionStore
from airlock.host import locks
from airlock.host import rotation as host_rotation
from airlock.host.control_client import ControlError
from tests.unit.test_rotation import _bundle

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
T0 = NOW.timestamp()
G = (Grant("github.com", "o", "r", Access.READ),)
TRUST = {"ca_pem": "OLD CA\nNEW CA\n", "pinned_pubkey": "sha256//A;sha256//B", "api_ca_pem": None}


def _live(sid: str, cert: str | None = "NEW CERT\n") -> dict[str, Any]:
    s: dict[str, Any] = {"id": sid, "state": "active", "expires_at": 4e9}
    if cert is not None:
        s["client_cert_pem"] = cert
    return s


# --- 1. a rotation left prepared ------------------------------------------------------------


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Request:
    def __init__(self, body: dict[str, Any]) -> None:
        self._body = json.dumps(body).encode()

    async def read(self) -> bytes:
        return self._body


def _control(tmp: Path) -> tuple[ControlAPI, _Clock]:
    (tmp / "token").write_text("t\n")
    os.chmod(tmp / "token", 0o600)
    text = f"""
[gateway]
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "c.sock"}"
git_listen = "127.0.0.1:1"
[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
token_file = "{tmp / "token"}"
"""
    config = parse_config(tomllib.loads(text), tmp / "airlock.toml")
    state = tmp / "state"
    state.mkdir()
    ident = load_or_create_identity(state, ["airlock.internal"], ["127.0.0.1"], NOW)
    clock = _Clock(T0)
    api = ControlAPI(
        config,
        SessionStore(state / "sessions.sqlite3"),
        ident,
        AuditLog(tmp / "audit.log", lambda: []),
        clock,
        gateway_id="gw",
    )
    api.rotation = gw_rotation.CARotation(state, ident, None, gw_rotation.recover(state, T0))
    return api, clock


def _add_session(api: ControlAPI, sid: str) -> lc.Session:
    s = lc.create_session(grants=G, now=T0, limits=lc.Limits(10_000, 100_000, 10, 1000))
    s = dataclasses.replace(s, id=sid, expires_at=T0 + 30 * 24 * 3600, idle_timeout=40 * 86400)
    cert = api.identity.ca.issue_session(
        make_csr(new_private_key()), sid, NOW, NOW + dt.timedelta(days=30)
    )
    from airlock.gateway.pki import cert_fingerprint

    s = dataclasses.replace(
        s,
        cert_fingerprint=cert_fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        client_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )
    api.store.put(s)
    return s


def _call(handler: Any, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    resp: web.Response = asyncio.run(handler(_Request(body or {})))
    assert resp.text is not None
    return resp.status, json.loads(resp.text)


def test_a_rotation_left_prepared_keeps_the_previous_certificate_until_the_commit(
    tmp_path: Path,
) -> None:
    api, clock = _control(tmp_path)
    before = _add_session(api, "s-1")
    status, _ = _call(api.rotation_prepare, {"overlap": 60})
    assert status == 200
    s = api.store.get("s-1")
    assert s is not None and s.previous_cert_fingerprint == before.cert_fingerprint
    # `rotate ca` stopped after the prepare; days later the bundle (never rewritten) still
    # presents the previous certificate: accepted (it was refused after overlap + 24 h).
    clock.t = T0 + 3 * 24 * 3600

    def refusal(fp: str | None) -> lc.Refusal | None:
        assert s is not None
        return lc.check_usable(s, now=clock.t, source_ip="10.0.0.2", cert_fingerprint=fp)

    assert refusal(before.cert_fingerprint) is not lc.Refusal.WRONG_CERTIFICATE
    assert refusal("another") is lc.Refusal.WRONG_CERTIFICATE
    # The commit sets the real end: the end of the overlap.
    status, state = _call(api.rotation_commit)
    assert status == 200
    s = api.store.get("s-1")
    assert s is not None and s.previous_cert_until == state["overlap_until"] == clock.t + 60


def test_a_prepare_whose_store_write_fails_reissues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _clock = _control(tmp_path)
    before = _add_session(api, "s-1")

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(api.store, "flush", broken)
    status, body = _call(api.rotation_prepare, {"overlap": 60})
    assert status == 500 and "none was re-issued" in body["error"]
    # The session as it was: its certificate, no previous one.
    assert api.store.get("s-1") == before
    monkeypatch.undo()
    status, body = _call(api.rotation_prepare, {"overlap": 60})  # prepare can be repeated
    assert status == 200 and body["reissued"] == ["s-1"]


def test_a_prepare_whose_state_write_fails_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _clock = _control(tmp_path)
    before = _add_session(api, "s-1")

    def broken(_d: Path, _s: core.RotationState) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gw_rotation, "write_state", broken)
    status, body = _call(api.rotation_prepare, {"overlap": 60})
    assert status == 409 and "No space left" in body["error"]
    assert api.rotation is not None and api.rotation.next is None
    assert api.rotation.state.phase is core.Phase.IDLE
    assert not (tmp_path / "state" / "rotation" / "next").exists()
    assert api.store.get("s-1") == before


# --- 2. no commit while a live session's bundle lacks the new trust -------------------------


class _Client:
    def __init__(self, sessions: list[dict[str, Any]], fail_commit: bool = False) -> None:
        self.sessions = sessions
        self.calls: list[str] = []
        self.fail_commit = fail_commit

    def health(self) -> dict[str, Any]:
        return {"gateway_id": "gw-1"}

    def rotation_prepare(self, overlap: float) -> dict[str, Any]:
        self.calls.append("prepare")
        return {**TRUST, "reissued": [s["id"] for s in self.sessions], "not_reissued": []}

    def list_sessions(self) -> list[dict[str, Any]]:
        self.calls.append("list_sessions")
        return self.sessions

    def rotation_commit(self) -> dict[str, Any]:
        self.calls.append("commit")
        if self.fail_commit:
            raise ControlError("cannot commit the rotation: disk full", 409)
        return {"phase": "overlap", "overlap_until": 4e9}

    def rotation(self) -> dict[str, Any]:
        return {**TRUST, "phase": "overlap"}


def test_rotate_ca_does_not_commit_while_a_live_session_has_no_bundle(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _bundle(d)
    client = _Client([_live("s-1"), _live("s-2")])
    with pytest.raises(host_rotation.RotationLeftPrepared) as exc:
        host_rotation.rotate_ca(client, [d], 60, settle=0)
    assert "commit" not in client.calls
    assert exc.value.report is not None and exc.value.report.untracked == ["s-2"]
    assert "re-run `airlock rotate ca` (prepare can be repeated)" in str(exc.value)
    # --force commits anyway.
    result = host_rotation.rotate_ca(client, [d], 60, settle=0, force=True)
    assert client.calls[-1] == "commit" and result.bundles.untracked == ["s-2"]


def test_rotate_ca_does_not_commit_while_a_live_bundle_was_not_rewritten(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _bundle(d)
    os.remove(d / "client.pem")
    os.symlink("/etc/hostname", d / "client.pem")  # refused by refresh_bundle
    stale = tmp_path / "stale"
    _bundle(stale)
    (stale / "session.json").write_text(json.dumps({"id": "s-gone", "gateway": "x"}))
    client = _Client([_live("s-1")])
    with pytest.raises(host_rotation.RotationLeftPrepared) as exc:
        host_rotation.rotate_ca(client, [d, stale], 60, settle=0)
    report = exc.value.report
    assert report is not None and [p for p, _ in report.blocking] == [d]
    # A bundle of a session that is over is a problem, but no reason to hold the commit.
    assert stale in [p for p, _ in report.problems]
    assert "commit" not in client.calls


def test_a_failed_commit_says_the_rotation_is_left_prepared(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _bundle(d)
    client = _Client([_live("s-1")], fail_commit=True)
    with pytest.raises(host_rotation.RotationLeftPrepared, match=r"disk full.*left prepared"):
        host_rotation.rotate_ca(client, [d], 60, settle=0)


def test_the_bundles_are_listed_after_the_prepare(tmp_path: Path) -> None:
    d = tmp_path / "b"
    client = _Client([_live("s-1")])

    def listing() -> list[Path]:
        # A bundle made between the start of `rotate ca` and the prepare is found.
        client.calls.append("list_dirs")
        _bundle(d)
        return [d]

    result = host_rotation.rotate_ca(client, listing, 60, settle=0)
    assert client.calls == ["prepare", "list_dirs", "list_sessions", "commit"]
    assert [p for p, _ in result.bundles.updated] == [d]


def test_a_bundle_without_a_kept_certificate_refuses_a_symlinked_one(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _bundle(d)
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    os.remove(d / "client.pem")
    os.symlink(secret, d / "client.pem")
    report = host_rotation.refresh([d], [_live("s-1", cert=None)], TRUST)
    assert [p for p, _ in report.blocking] == [d]
    assert (d / "ca.pem").read_text() == "OLD CA\n"  # nothing written
    assert os.path.islink(d / "client.pem")


# --- 5. the bundle lock -----------------------------------------------------------------------


def _held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_bundle_lock_name_is_per_gateway() -> None:
    assert host_rotation.bundle_lock_name("gw-1") == "bundles-gw-1.lock"
    assert host_rotation.bundle_lock_name("a") != host_rotation.bundle_lock_name("b")
    for bad in ["../x", "a/b", "", ".", "x\n"]:
        with pytest.raises(ValueError):
            host_rotation.bundle_lock_name(bad)


@pytest.mark.parametrize("command", [["ca", "--settle", "0"], ["bundles"]])
def test_rotate_holds_the_bundle_lock_through_refresh_and_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    from airlock.cli import rotate as cli

    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setattr(locks, "LOCK_DIR", lock_dir)
    lock = lock_dir / host_rotation.bundle_lock_name("gw-1")
    root = tmp_path / "bundles"
    (root / "gw-1").mkdir(parents=True)
    _bundle(root / "gw-1" / "sb-1")
    seen: list[tuple[str, bool]] = []

    class Locked(_Client):
        def rotation_prepare(self, overlap: float) -> dict[str, Any]:
            seen.append(("prepare", _held(lock)))
            return super().rotation_prepare(overlap)

        def list_sessions(self) -> list[dict[str, Any]]:
            seen.append(("list_sessions", _held(lock)))
            return super().list_sessions()

        def rotation_commit(self) -> dict[str, Any]:
            seen.append(("commit", _held(lock)))
            return super().rotation_commit()

    client = Locked([_live("s-1")])
    monkeypatch.setattr(
        cli, "load", lambda _p: SimpleNamespace(sandbox=SimpleNamespace(bundle_dir=root))
    )
    monkeypatch.setattr(cli, "control_client", lambda _c: client)
    r = CliRunner().invoke(cli.rotate, command)
    assert r.exit_code == 0, r.output
    assert seen and all(held for _step, held in seen), seen
    assert not _held(lock)  # released at the end


def test_a_prepare_again_lifts_a_deadline_an_earlier_prepare_set(tmp_path: Path) -> None:
    # A rotation prepared by the code before the fix (its previous certificate accepted
    # until prepare + overlap + 24 h) and taken up by `rotate ca` again.
    api, _clock = _control(tmp_path)
    _add_session(api, "s-1")
    assert _call(api.rotation_prepare, {"overlap": 60})[0] == 200
    s = api.store.get("s-1")
    assert s is not None
    api.store.put(dataclasses.replace(s, previous_cert_until=T0 + 60 + 24 * 3600))
    assert _call(api.rotation_prepare, {"overlap": 60})[0] == 200
    s = api.store.get("s-1")
    assert s is not None and s.previous_cert_until == s.expires_at
