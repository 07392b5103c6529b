"""`airlock rotate ca` under a running sandbox that clones without pause (real Docker engine).

Proved here: a sandbox clones in a bounded loop while `airlock rotate ca --overlap 10s
--wait` runs (the host CLI rewrites its bundle in place through the directory bind mount,
the gateway switches its server certificate, the overlap runs out on the gateway's timer);
no clone that starts after the overlap fails; and after it the old CA and the old client
certificate are refused: a client that trusts only the old CA (and pins the old key)
cannot verify the gateway, a TLS connection presenting the old client certificate is refused
at the handshake, while the same client with the current files clones (the control).

Counts of clones before, during and after the overlap are printed (and appended to
$AIRLOCK_MEASUREMENTS when set).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E, GIT_TIMEOUT, Sandboxes, wait_until
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.192.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)
# The loop clones without pause: since bundles skip the machine's CA directory a clone takes
# ~40 ms, and 25 s of them pass the default 1,200 requests a minute. The rate limit is not
# what this module tests.
SANDBOX_EXTRA = '[limits]\nsession_requests = "100000/minute"\n'
REPO = "acme/rotating"
OVERLAP = 10  # seconds
MAX_CLONES = 2000  # the loop's bounds: this many clones, or STOP_FILE, or LOOP_LIMIT seconds
LOOP_LIMIT = 240
AFTER = 8.0  # seconds of clones after the rotation command has finished

# Inside the sandbox: keep the bundle's files as they are before the rotation (the old
# certificate and trust), then clone until told to stop; each line: OK|FAIL START END.
LOOP = f"""
mkdir -p /tmp/old && cp /run/airlock/ca.pem /run/airlock/client.pem /run/airlock/client.key \
  /run/airlock/gitconfig /tmp/old/ && touch /tmp/old/ready
end=$(( $(date +%s) + {LOOP_LIMIT} ))
i=0
while [ $i -lt {MAX_CLONES} ] && [ ! -e /tmp/stop ] && [ $(date +%s) -lt $end ]; do
  i=$((i+1))
  s=$(date +%s.%N)
  if timeout {GIT_TIMEOUT} git clone -q https://github.com/{REPO} /tmp/c 2>/tmp/err; then r=OK;
  else r=FAIL; fi
  echo "$r $s $(date +%s.%N) $(head -c 200 /tmp/err | tr '\\n' ' ')"
  rm -rf /tmp/c
done
echo DONE
sleep 300  # (bounded) for the checks after the loop; the teardown ends it
"""


@pytest.fixture(scope="module", autouse=True)
def repo(sbx_world: World) -> Path:
    return sbx_world.make_repo(*REPO.split("/"))


def _airlock(world: World, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "airlock.cli", *args, "--config", str(world.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _handshake_with(cert: Path, key: Path, ca: Path, address: str, port: int) -> str:
    """Present ``cert`` to the gateway and send one request: what happened, in a word."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((address, port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="airlock.internal") as s,
        ):
            s.sendall(
                f"GET /{REPO}.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                f"Host: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            data = s.recv(200)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return f"refused ({type(exc).__name__}: {exc})"
    if not data:
        return "refused (closed without an answer)"
    return "answered " + data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_clones_keep_working_through_a_ca_rotation(sandboxes: Sandboxes, tmp_path: Path) -> None:
    world = sandboxes.world
    sb = sandboxes.start(LOOP, [f"{HOST}/{REPO}:read"])
    stats_out = ""
    try:
        assert wait_until(lambda: "OK " in sandboxes.logs(sb), 60), sandboxes.logs(sb)
        time.sleep(4)  # some clones before
        # The sandbox's bundle as the host holds it, before: for the host-side TLS checks.
        assert sb.bundle_dir is not None
        before = Path(tempfile.mkdtemp(dir=tmp_path))
        for name in ("ca.pem", "client.pem", "client.key"):
            (before / name).write_bytes((sb.bundle_dir / name).read_bytes())
        t_rotate = time.time()
        proc = _airlock(world, "rotate", "ca", "--overlap", f"{OVERLAP}s", "--wait")
        assert wait_until(lambda: world.control.rotation()["phase"] == "overlap", 30)
        overlap_until = float(world.control.rotation()["overlap_until"])
        _out, err = proc.communicate(timeout=OVERLAP + 60)
        print(f"[rotation] airlock rotate ca: {err.strip()}")
        assert proc.returncode == 0, err
        assert world.control.rotation()["phase"] == "idle"
        time.sleep(AFTER)
        code, _ = sandboxes.exec(sb, "touch /tmp/stop")
        assert code == 0
        assert wait_until(lambda: "DONE" in sandboxes.logs(sb), GIT_TIMEOUT + 10)

        lines = [
            ln.split(" ", 3) for ln in sandboxes.logs(sb).splitlines() if ln[:3] in ("OK ", "FAI")
        ]
        counts: dict[str, dict[str, int]] = {
            p: {"OK": 0, "FAIL": 0} for p in ("before", "during", "after")
        }
        failures: list[str] = []
        for result, start, _end, *rest in lines:
            t = float(start)
            phase = "before" if t < t_rotate else "during" if t < overlap_until else "after"
            counts[phase][result] += 1
            if result == "FAIL":
                failures.append(f"{phase} at {t - t_rotate:+.2f}s: {' '.join(rest)}")
        stats_out = json.dumps({"clones": counts, "overlap": OVERLAP})
        print(f"\n[rotation] clones {stats_out}")
        for failure in failures:
            print(f"[rotation] failed clone {failure}")
        assert counts["before"]["OK"] > 0 and counts["during"]["OK"] > 0
        assert counts["after"]["OK"] > 0
        assert counts["after"]["FAIL"] == 0, failures

        # After the overlap, inside the sandbox: the old files are refused, the current work.
        # (The current client certificate: the old one would be refused by the gateway at
        # the same handshake, and which refusal the client reports first is a race.)
        old_trust = (
            "sed 's#/run/airlock/ca.pem#/tmp/old/ca.pem#g' /tmp/old/gitconfig "
            "> /tmp/old-trust.cfg && "
            f"GIT_CONFIG_SYSTEM=/tmp/old-trust.cfg timeout {GIT_TIMEOUT} "
            f"git clone -q https://github.com/{REPO} /tmp/o1 2>&1; echo rc=$?"
        )
        _, text = sandboxes.exec(sb, old_trust)
        print(f"[rotation] old CA only: {text.strip()}")
        assert "rc=0" not in text
        assert "certificate" in text.lower() or "pinned" in text.lower()
        old_cert = (
            "sed 's#/run/airlock/client.pem#/tmp/old/client.pem#g' /run/airlock/gitconfig "
            "> /tmp/old-cert.cfg && "
            f"GIT_CONFIG_SYSTEM=/tmp/old-cert.cfg GIT_TERMINAL_PROMPT=0 timeout {GIT_TIMEOUT} "
            f"git -c credential.helper= clone -q https://github.com/{REPO} /tmp/o2 2>&1; "
            "echo rc=$?"
        )
        _, text = sandboxes.exec(sb, old_cert)
        print(f"[rotation] old client certificate: {text.strip()}")
        assert "rc=0" not in text
        assert "remote: airlock" not in text  # refused at the handshake, no request answered
        current = (
            f"timeout {GIT_TIMEOUT} git clone -q https://github.com/{REPO} /tmp/o3; echo rc=$?"
        )
        _, text = sandboxes.exec(sb, current)
        assert "rc=0" in text, text  # the control: the same client with the current files

        # From the host, on the gateway's listener: the old client certificate is refused at
        # the handshake; the current one answers. The old CA cannot verify the gateway.
        now_dir = sb.bundle_dir
        refused = _handshake_with(
            before / "client.pem",
            before / "client.key",
            now_dir / "ca.pem",
            "127.0.0.1",
            world.port,
        )
        print(f"[rotation] host, old client certificate: {refused}")
        assert refused.startswith("refused")
        answered = _handshake_with(
            now_dir / "client.pem",
            now_dir / "client.key",
            now_dir / "ca.pem",
            "127.0.0.1",
            world.port,
        )
        assert answered.startswith("answered"), answered
        unverified = _handshake_with(
            now_dir / "client.pem",
            now_dir / "client.key",
            before / "ca.pem",
            "127.0.0.1",
            world.port,
        )
        print(f"[rotation] host, old CA only: {unverified}")
        assert "CERTIFICATE_VERIFY_FAILED" in unverified
    finally:
        sandboxes.teardown(sb)
    measurements = os.environ.get("AIRLOCK_MEASUREMENTS")
    if measurements and stats_out:
        with open(measurements, "a") as f:
            f.write(json.dumps({"test": "sandbox_rotation", **json.loads(stats_out)}) + "\n")


def test_supervise_leaves_bundles_trusting_the_new_ca_alone_after_the_overlap(
    sandboxes: Sandboxes,
) -> None:
    """`airlock rotate ca` without --wait leaves the old CA in the bundles (its overlap);
    once the gateway says the overlap is over, a supervise pass writes the new CA alone, and
    the sandbox still clones."""
    from airlock.config import load_config
    from airlock.host.rotation import bundle_dirs, rotate_ca, wait_for_overlap_end
    from airlock.host.sandbox import SandboxManager
    from airlock.host.supervisor import Supervisor

    world = sandboxes.world
    sb = sandboxes.start("sleep 120", [f"{HOST}/{REPO}:read"])
    try:
        manager = SandboxManager(load_config(world.config), client=sandboxes.client)
        ca_file = manager.bundle_root / sb.id / "ca.pem"
        rotate_ca(world.control, bundle_dirs(manager.bundle_root), 1.0, settle=0.1)
        assert ca_file.read_text().count("BEGIN CERTIFICATE") == 2  # old and new
        state = wait_for_overlap_end(world.control, limit=30)
        assert state["phase"] == "idle"
        said: list[str] = []
        Supervisor(manager, say=said.append).reconcile()
        assert ca_file.read_text().count("BEGIN CERTIFICATE") == 1, said
        assert ca_file.read_text().strip() == str(state["ca_pem"]).strip()
        assert any("trust the current CA only" in s for s in said), said
        code, out = sandboxes.exec(
            sb,
            f"timeout {GIT_TIMEOUT} git clone -q https://github.com/{REPO} /tmp/after && echo OK",
        )
        assert code == 0 and "OK" in out, out
    finally:
        sandboxes.teardown(sb)
