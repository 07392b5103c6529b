"""Start-up refusals, config errors, token rotation, restart survival and secret hygiene."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.rawhttp import client_context, get, send_raw
from tests.world import HOST, TOKEN, World, run_gateway_cli


def _base_config(tmp: Path, token_mode: int = 0o600) -> Path:
    tok = tmp / "token"
    tok.write_text("ghs_abcdefghijklmnopqrstuvwxyz012345\n")
    os.chmod(tok, token_mode)
    cfg = tmp / "airlock.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "run" / "control.sock"}"
git_listen = "127.0.0.1:1"

[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
token_file = "{tok}"
""")
    return cfg


@pytest.mark.parametrize("var", ["GH_TOKEN", "GITHUB_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_PAT"])
def test_refuses_to_start_with_credential_variables(tmp_path: Path, var: str) -> None:
    r = run_gateway_cli(_base_config(tmp_path), {var: "whatever"})
    assert r.returncode == 2
    assert var in r.stderr and "refusing to start" in r.stderr
    assert "whatever" not in r.stderr
    assert not (tmp_path / "state").exists(), "nothing may be created before the checks pass"


def test_refuses_a_token_shaped_value_in_any_variable(tmp_path: Path) -> None:
    r = run_gateway_cli(_base_config(tmp_path), {"SOME_CI_VAR": "ghp_" + "a" * 36})
    assert r.returncode == 2 and "SOME_CI_VAR" in r.stderr
    assert "ghp_" not in r.stderr


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_refuses_a_token_file_readable_by_others(tmp_path: Path, mode: int) -> None:
    r = run_gateway_cli(_base_config(tmp_path, mode))
    assert r.returncode == 2
    assert "chmod 600" in r.stderr


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[gateway]\nstate_dirr = "/x"\n', "gateway.state_dirr: unknown key"),
        ('[gateway]\ngit_listen = "localhost"\n', "gateway.git_listen"),
        ('[gateway]\ngit_listen = "example.org:443"\n', "is not an IP address"),
        ('[gateway]\npublic_name = "bad_name!"\n', "gateway.public_name"),
        (
            '[[upstream]]\nhost = "github.com"\nurl = "http://github.com"\ntoken_file = "/t"\n',
            "https only",
        ),
        (
            '[[upstream]]\nhost = "git hub.com"\nurl = "https://x"\ntoken_file = "/t"\n',
            "upstream.0.host",
        ),
        (
            '[[upstream]]\nhost = "github.com"\nurl = "https://x"\n',
            "give exactly one of token_file or [upstream.app]",
        ),
        ('[sessions]\nidle_timeout = "forever"\n', "sessions.idle_timeout"),
        ("[gateway\n", "not valid TOML"),
        ("", "upstream: required"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, snippet: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(snippet)
    r = run_gateway_cli(cfg)
    assert r.returncode == 2
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_token_rotation_is_used_without_restart(world: World) -> None:
    world.make_repo("acme", "rotate")
    b = world.session(f"{HOST}/acme/rotate:read")
    url = f"https://{HOST}/acme/rotate"
    assert world.git(b, "ls-remote", url).returncode == 0
    new = "ghs_" + "R0tated" + "y" * 29
    # The upstream and the gateway read the same file: write the new token atomically.
    tmp = world.token_file.with_suffix(".new")
    tmp.write_text(new + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, world.token_file)
    try:
        assert world.git(b, "ls-remote", url).returncode == 0
        assert world.upstream.requests[-1].authorization_ok
    finally:
        tmp.write_text(TOKEN + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, world.token_file)


def test_sessions_survive_a_gateway_restart(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "restart")
    b = world.session(f"{HOST}/acme/restart:read")
    assert world.git(b, "ls-remote", f"https://{HOST}/acme/restart").returncode == 0
    used = world.control.show(b.session_id)["requests"]
    assert used >= 1
    revoked = world.session(f"{HOST}/acme/restart:read")
    world.control.revoke(revoked.session_id, "test")
    assert world.stop_gateway() == 0
    assert not world.socket.exists(), "clean shutdown removes the control socket"
    world.start_gateway()
    assert world.git(b, "ls-remote", f"https://{HOST}/acme/restart").returncode == 0
    assert world.git(revoked, "ls-remote", f"https://{HOST}/acme/restart").returncode != 0
    assert world.control.show(b.session_id)["requests"] == 2 * used


def test_upstream_token_appears_nowhere(world: World) -> None:
    """Run after the other tests of this module: scan every log, response and bundle file."""
    world.make_repo("acme", "scan")
    b = world.session(f"{HOST}/acme/scan:write")
    ctx = client_context(b.dir, world.state_dir / "ca.pem")
    bodies = []
    for target in (
        f"/git/{HOST}/acme/scan/info/refs?service=git-upload-pack",
        f"/git/{HOST}/acme/nope/info/refs?service=git-upload-pack",
        f"/git/{HOST}/acme/scan/../x",
        "/",
    ):
        r = send_raw(ctx, world.port, get(target))
        bodies.append(repr(r.headers).encode() + r.body)
    r_git = world.git(b, "ls-remote", f"https://{HOST}/acme/nope")
    places: dict[str, bytes] = {
        "audit log": world.audit_log.read_bytes(),
        "gateway stderr": world.gateway_log.read_bytes(),
        "responses": b"".join(bodies),
        "git errors": (r_git.stdout + r_git.stderr).encode(),
    }
    for path in (world.root / "bundles").rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    for path in world.state_dir.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    assert len(places) > 10
    secret = TOKEN.encode()
    import base64

    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode())
    for where, data in places.items():
        assert secret not in data, f"upstream token found in {where}"
        assert encoded not in data, f"encoded upstream credential found in {where}"
