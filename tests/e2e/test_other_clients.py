"""Git clients no one here wrote, inside real sandboxes, through the real gateway.

* pygit2 (libgit2, which cannot present a TLS client certificate) clones, fetches and pushes
  with HTTP Basic: the session id and the bundle's ``git-password``, on the sandbox's own
  gateway address. The host venv's site-packages are mounted read-only (offline; the
  manylinux wheel bundles libgit2); libgit2 reads ``/run/airlock/gitconfig`` as its system
  config (``pygit2.settings.search_path``), so ``url.insteadOf`` applies.
* dulwich (pure Python) clones, fetches and pushes with the bundle's client certificate.
* ``cargo fetch`` of a git dependency from a granted repository, with cargo's default
  libgit2 fetching (not ``net.git-fetch-with-cli``): the host's cargo toolchain mounted
  read-only; ``~/.gitconfig`` includes ``/run/airlock/gitconfig`` (what a user adds), whose
  ``url.insteadOf`` and gateway-scoped credential helper cargo's libgit2 uses; run without
  the proxy variables and with ``SSL_CERT_FILE`` (see the test for why).
* The Basic secret is worthless elsewhere: from the host, from another sandbox, for a host
  session; a wrong one is refused and backs the sandbox off.
"""

from __future__ import annotations

import base64
import glob
import os
import re
import shlex
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.host.sandbox import Sandbox
from tests.e2e.conftest import E2E, Sandboxes
from tests.rawhttp import client_context, get, send_raw
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.112.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)

SITE = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pygit2").is_dir())
CLIENTS = Path(__file__).parents[1] / "clients"
REPO = "acme/other-clients"
CRATE = "acme/dep-crate"
TIMEOUT = 60


def _toolchain() -> Path | None:
    """The host's real cargo toolchain (rustup's ~/.cargo/bin/cargo is only a proxy)."""
    homes = [os.environ.get("RUSTUP_HOME", ""), str(Path.home() / ".rustup"), "/root/.rustup"]
    for home in filter(None, homes):
        for cargo in sorted(glob.glob(f"{home}/toolchains/stable-*/bin/cargo")):
            return Path(cargo).parents[1]
    return None


@pytest.fixture(scope="module")
def repos(sbx_world: World) -> dict[str, Path]:
    crate = {
        "Cargo.toml": b'[package]\nname = "dep"\nversion = "0.1.0"\nedition = "2021"\n',
        "src/lib.rs": b"pub fn answer() -> u32 {\n    42\n}\n",
    }
    return {
        REPO: sbx_world.make_repo(*REPO.split("/")),
        CRATE: sbx_world.make_repo(*CRATE.split("/"), files=crate),
    }


def _mounts() -> list[str]:
    return [f"{SITE}:/opt/hostsite:ro", f"{CLIENTS}:/opt/clients:ro"]


PY = "timeout 120 env PYTHONPATH=/opt/hostsite python3"


def _upstream_head(world: World, repo: Path) -> str:
    return world.git(None, "--git-dir", str(repo), "rev-parse", "main", check=True).stdout.strip()


def _requests(world: World, session_id: str | None) -> list[dict[str, object]]:
    return [e for e in world.audit_for(str(session_id)) if e.get("event") == "git_request"]


def test_pygit2_clones_fetches_and_pushes_with_basic(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    script = f"""
    set -e
    stat -c 'password %a %u' /run/airlock/git-password
    echo "no_proxy=$NO_PROXY"
    {PY} /opt/clients/pygit2_roundtrip.py /run/airlock https://github.com/{REPO} /tmp/w
    echo ALL-OK
    """
    r = sandboxes.run(
        script, [f"{HOST}/{REPO}:write=agent/**,ff:main"], volumes=_mounts(), timeout=240
    )
    assert r.code == 0 and "ALL-OK" in r.output, r.output
    assert "password 400 10000" in r.output, r.output
    assert re.search(r"no_proxy=\S*airlock\.internal", r.output), r.output
    fetch = next(ln for ln in r.output.splitlines() if ln.startswith("OK fetch"))
    fetched, pushed = fetch.split()[2], fetch.split("pushed=")[1]
    assert fetched == pushed == _upstream_head(sbx_world, repos[REPO])
    reqs = _requests(sbx_world, r.sandbox.session_id)
    # Answered by the upstream. (libgit2 may hang up once it has read a push's report-status,
    # before the last chunk: the gateway then logs 502 upstream_error, the push landed.)
    served = [e for e in reqs if e["status"] == 200 or e.get("upstream_status") == 200]
    assert served and {e["auth"] for e in served} == {"basic"}, reqs
    assert {e["source"] for e in served} == {str(r.sandbox.sandbox_ip)}
    assert ("git-receive-pack", "rpc") in {(e["service"], e["endpoint"]) for e in served}


def test_dulwich_clones_fetches_and_pushes_with_the_client_certificate(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    script = f"""
    set -e
    {PY} /opt/clients/dulwich_roundtrip.py /run/airlock https://github.com/{REPO} /tmp/w
    echo ALL-OK
    """
    r = sandboxes.run(
        script, [f"{HOST}/{REPO}:write=agent/**,ff:main"], volumes=_mounts(), timeout=240
    )
    assert r.code == 0 and "ALL-OK" in r.output, r.output
    fetch = next(ln for ln in r.output.splitlines() if ln.startswith("OK fetch"))
    fetched, pushed = fetch.split()[2], fetch.split("pushed=")[1]
    assert fetched == pushed == _upstream_head(sbx_world, repos[REPO])
    reqs = _requests(sbx_world, r.sandbox.session_id)
    assert reqs and {e["auth"] for e in reqs} == {"mtls"}, reqs
    assert ("git-receive-pack", "rpc") in {(e["service"], e["endpoint"]) for e in reqs}


CARGO_TOML = f"""[package]
name = "consumer"
version = "0.1.0"
edition = "2021"

[dependencies]
dep = {{ git = "https://github.com/{CRATE}" }}
"""


def test_cargo_fetches_a_git_dependency_with_libgit2(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    toolchain = _toolchain()
    if toolchain is None:
        pytest.skip(
            "cargo is not installed on this machine (no ~/.rustup/toolchains/stable-*/bin/"
            "cargo): the cargo-in-a-sandbox check did not run"
        )
    script = f"""
    set -e
    export PATH=/opt/rust/bin:$PATH CARGO_HOME=/tmp/cargo-home CARGO_NET_RETRY=0
    # cargo swaps libgit2's HTTP transport for its curl one whenever a proxy or any [http]
    # setting (CARGO_HTTP_CAINFO too) is configured, and that one never answers the Basic
    # challenge (found by experiment: "got 401"). So for cargo: no proxy variables (the
    # gateway is not behind the proxy anyway), and airlock's CA through SSL_CERT_FILE.
    unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy
    export SSL_CERT_FILE=/run/airlock/ca.pem
    # What a user adds so that cargo's libgit2 reads the bundle's git config:
    printf '[include]\\n\\tpath = /run/airlock/gitconfig\\n' > "$HOME/.gitconfig"
    mkdir -p /tmp/proj/src && cd /tmp/proj
    printf '%s' {shlex.quote(CARGO_TOML)} > Cargo.toml
    echo 'pub fn f() -> u32 {{ dep::answer() }}' > src/lib.rs
    cargo --version
    timeout {TIMEOUT} cargo fetch 2>&1
    grep -A3 'name = "dep"' Cargo.lock
    echo ALL-OK
    """
    r = sandboxes.run(
        script,
        [f"{HOST}/{CRATE}:read"],
        volumes=[f"{toolchain}:/opt/rust:ro"],
        timeout=240,
    )
    assert r.code == 0 and "ALL-OK" in r.output, r.output
    head = _upstream_head(sbx_world, repos[CRATE])
    assert f"git+https://github.com/{CRATE}#{head}" in r.output, r.output
    reqs = _requests(sbx_world, r.sandbox.session_id)
    # Answered by the upstream. (libgit2 may hang up once it has read a push's report-status,
    # before the last chunk: the gateway then logs 502 upstream_error, the push landed.)
    served = [e for e in reqs if e["status"] == 200 or e.get("upstream_status") == 200]
    assert served and {e["auth"] for e in served} == {"basic"}, reqs
    assert ("git-upload-pack", "rpc") in {(e["service"], e["endpoint"]) for e in served}


# --- the secret is worthless anywhere else ----------------------------------------------------


def _password(sb: Sandbox) -> str:
    assert sb.bundle_dir is not None
    return (sb.bundle_dir / "git-password").read_text()


def _curl(port: int, repo: str, user: str, password: str) -> str:
    """Inside a sandbox: the status of one Basic info/refs request (000: refused unanswered)."""
    url = f"https://airlock.internal:{port}/git/{HOST}/{repo}/info/refs?service=git-upload-pack"
    auth = shlex.quote(f"{user}:{password}")
    return (
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 "
        f"--cacert /run/airlock/ca.pem -u {auth} '{url}' || true"
    )


@pytest.fixture
def sandbox_a(sandboxes: Sandboxes, repos: dict[str, Path]) -> Iterator[Sandbox]:
    sb = sandboxes.start("sleep 300", [f"{HOST}/{REPO}:read"])
    yield sb
    sandboxes.teardown(sb)


def test_the_basic_secret_is_refused_from_the_host(
    sandboxes: Sandboxes, sbx_world: World, sandbox_a: Sandbox
) -> None:
    assert sandbox_a.bundle_dir is not None and sandbox_a.session_id is not None
    port = sbx_world.port
    before = len(sbx_world.upstream.requests)
    auth = base64.b64encode(f"{sandbox_a.session_id}:{_password(sandbox_a)}".encode()).decode()
    payload = get(
        f"/git/{HOST}/{REPO}/info/refs?service=git-upload-pack",
        headers={"Authorization": f"Basic {auth}"},
    )
    ctx = client_context(None, sandbox_a.bundle_dir / "ca.pem")
    # From the host to the sandbox's own gateway address: the right secret, the wrong source.
    r = send_raw(ctx, port, payload, address=str(sandbox_a.gateway_ip))
    assert r.status == 401, r
    # And on the host listener, no TLS session without a client certificate at all.
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        send_raw(ctx, port, payload)
    assert len(sbx_world.upstream.requests) == before
    # Positive control: the same secret from the sandbox itself is served.
    code, out = sandboxes.exec(
        sandbox_a, _curl(port, REPO, sandbox_a.session_id, _password(sandbox_a))
    )
    assert code == 0 and out.strip() == "200", out
    reasons = [e.get("reason") for e in _requests(sbx_world, sandbox_a.session_id)]
    assert "basic_wrong_source" in reasons, reasons


def test_the_basic_secret_is_refused_from_another_sandbox_and_for_a_host_session(
    sandboxes: Sandboxes, sbx_world: World, sandbox_a: Sandbox
) -> None:
    assert sandbox_a.session_id is not None
    port = sbx_world.port
    host_session, _ = sbx_world.issue(f"{HOST}/{REPO}:read")  # no binding: a host session
    b = sandboxes.start("sleep 300", [f"{HOST}/{REPO}:read"])
    try:
        assert b.session_id is not None
        before = len(sbx_world.upstream.requests)
        script = "\n".join(
            [
                "echo a=$(" + _curl(port, REPO, sandbox_a.session_id, _password(sandbox_a)) + ")",
                "echo host=$("
                + _curl(port, REPO, host_session["session"]["id"], host_session["git_password"])
                + ")",
                "echo own=$(" + _curl(port, REPO, b.session_id, _password(b)) + ")",
            ]
        )
        code, out = sandboxes.exec(b, script)
        assert code == 0 and "a=401" in out and "host=401" in out, out
        assert "own=200" in out, out  # positive control: B's own secret works in B
        assert len(sbx_world.upstream.requests) == before + 1
    finally:
        sandboxes.teardown(b)
    reasons_a = {e.get("reason") for e in _requests(sbx_world, sandbox_a.session_id)}
    assert reasons_a & {"basic_wrong_source", "basic_wrong_network"}, reasons_a
    reasons_h = {e.get("reason") for e in _requests(sbx_world, host_session["session"]["id"])}
    assert reasons_h == {"basic_not_sandbox_session"}, reasons_h


def test_a_wrong_secret_is_refused_and_backs_off(
    sandboxes: Sandboxes, sbx_world: World, sandbox_a: Sandbox
) -> None:
    assert sandbox_a.session_id is not None
    port = sbx_world.port
    right = _password(sandbox_a)
    wrong = _curl(port, REPO, sandbox_a.session_id, "wrong-" + right)
    script = "\n".join(
        [f"echo wrong=$({wrong})" for _ in range(10)]  # limits.auth_failure_threshold
        + ["echo right=$(" + _curl(port, REPO, sandbox_a.session_id, right) + ")"]
    )
    code, out = sandboxes.exec(sandbox_a, script)
    assert code == 0 and out.count("wrong=401") == 10, out
    # Backed off: even the right secret is refused for a while (unanswered, or 429).
    assert re.search(r"right=(000|429)", out), out
    reasons = [e.get("reason") for e in _requests(sbx_world, sandbox_a.session_id)]
    assert reasons.count("basic_wrong_secret") >= 1, reasons
