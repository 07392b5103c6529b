"""`gateway.user`: started as root, the gateway runs as an unprivileged user with
CAP_NET_BIND_SERVICE only, and still does its job (git, control socket, port-53 listeners)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import DNSRecord

from airlock.gateway.privileges import CAP_NET_BIND_SERVICE, capabilities
from tests.world import HOST, World, run_gateway_cli, system_user, unprivileged_world

USER = "airlock-gw-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture(scope="module")
def account() -> pwd.struct_passwd:
    return system_user(USER)


@pytest.fixture(scope="module")
def uw(account: pwd.struct_passwd) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="airlock-unpriv-"))
    w = unprivileged_world(root, account)
    w.start()
    yield w
    w.stop()
    shutil.rmtree(root, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_gateway_process_is_unprivileged(uw: World, account: pwd.struct_passwd) -> None:
    assert uw.proc is not None
    status = _status(uw.proc.pid)
    assert status["Uid"].split() == [str(account.pw_uid)] * 4
    assert status["Gid"].split() == [str(account.pw_gid)] * 4
    assert status["Groups"].strip() == ""
    assert status["NoNewPrivs"].strip() == "1"
    caps = capabilities(Path(f"/proc/{uw.proc.pid}/status").read_text())
    only_bind = 1 << CAP_NET_BIND_SERVICE
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == only_bind
    # The files it created are its own, and still private.
    db = uw.state_dir / "sessions.sqlite3"
    assert db.stat().st_uid == account.pw_uid
    assert (uw.state_dir.stat().st_mode & 0o777) == 0o700
    assert uw.socket.stat().st_uid == account.pw_uid


def test_unprivileged_gateway_serves_git_and_the_root_cli(uw: World, tmp_path: Path) -> None:
    uw.make_repo("acme", "unpriv")
    b = uw.session(f"{HOST}/acme/unpriv:write")  # root talks to the control socket
    r = uw.clone(b, "acme/unpriv", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert uw.control.revoke(b.session_id, "done")["state"] == "revoked"


def test_unprivileged_gateway_binds_port_53_on_a_new_address(uw: World) -> None:
    """What it keeps the capability for: listeners on sandbox networks, DNS on port 53."""
    address = "127.0.0.77"
    uw.control.call("POST", "/v1/listeners", {"address": address})
    try:
        query = DNSRecord.question("airlock.internal", "A")
        reply = DNSRecord.parse(query.send(address, 53, timeout=5))
        assert [str(rr.rdata) for rr in reply.rr] == [address]
    finally:
        uw.control.call("POST", "/v1/listeners/remove", {"address": address})


def _config(tmp: Path, user: str, socket: Path, token_owner: int = 0) -> Path:
    tok = tmp / "token"
    tok.write_text("ghs_abcdefghijklmnopqrstuvwxyz012345\n")
    os.chmod(tok, 0o600)
    os.chown(tok, token_owner, -1)
    cfg = tmp / "airlock.toml"
    cfg.write_text(f"""
[gateway]
user = "{user}"
state_dir = "{tmp / "state"}"
control_socket = "{socket}"
git_listen = "127.0.0.1:1"

[sandbox]
bundle_dir = "{tmp / "run" / "sandboxes"}"

[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
token_file = "{tok}"
""")
    return cfg


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="airlock-unpriv-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_refuses_an_unknown_user(open_tmp: Path) -> None:
    r = run_gateway_cli(_config(open_tmp, "no-such-user-here", open_tmp / "gw" / "c.sock"))
    assert r.returncode == 2 and "no user 'no-such-user-here'" in r.stderr
    assert not (open_tmp / "state").exists()


def test_refuses_root_as_the_user(open_tmp: Path) -> None:
    r = run_gateway_cli(_config(open_tmp, "root", open_tmp / "gw" / "c.sock"))
    assert r.returncode == 2 and "is root" in r.stderr


def test_refuses_a_socket_directory_shared_with_sandbox_bundles(
    open_tmp: Path, account: pwd.struct_passwd
) -> None:
    r = run_gateway_cli(_config(open_tmp, USER, open_tmp / "run" / "control.sock"))
    assert r.returncode == 2
    assert "give the socket a directory of its own" in r.stderr
    assert not (open_tmp / "run").exists() or (open_tmp / "run").stat().st_uid == 0


def test_a_root_owned_token_file_is_a_clear_error(
    open_tmp: Path, account: pwd.struct_passwd
) -> None:
    r = run_gateway_cli(_config(open_tmp, USER, open_tmp / "gw" / "c.sock", token_owner=0))
    assert r.returncode == 2
    assert "not readable by the gateway" in r.stderr and "chown" in r.stderr
    assert "ghs_" not in r.stderr


def test_refuses_to_start_unprivileged_by_hand(open_tmp: Path, account: pwd.struct_passwd) -> None:
    """Started by someone else than root with gateway.user set: a clear refusal."""
    cfg = _config(open_tmp, USER, open_tmp / "gw" / "c.sock", token_owner=account.pw_uid)
    r = subprocess.run(
        [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            sys.executable,
            "-m",
            "airlock.cli",
            "gateway",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))},
    )
    assert r.returncode == 2 and "start the gateway as root" in r.stderr
