"""`airlock demo`: the whole story on this machine, with nothing from outside.

A local upstream (git's own http-backend behind HTTPS, requiring a token, and a GitHub API
double over the same repositories), the gateway, a sandbox granted one repository, and a
decoy service the sandbox must not reach. The sandbox clones, commits and pushes through its
plain https://github.com/... URL, opens a pull request with gh (and is refused a merge),
then tries the decoy and looks for the token; while it waits, the host rotates the gateway's
CA and key (`airlock rotate ca`) under it, and it clones again once the old CA's overlap has
ended. Two more gateways stand in for two hosts on a shared store (Redis): a session revoked
through one is refused by the other at once. The demo checks each outcome from the host side
and prints a report.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from airlock.config import Config, parse_config
from airlock.demo_shared_store import (
    HOST_A,
    HOST_B,
    check_revocation_across_gateways,
    host_config,
    share_keys,
)
from airlock.gateway.server import Gateway, StartupError
from airlock.host.containerspec import RunSpec
from airlock.host.control_client import ControlError
from airlock.host.images import ImageBuildError, ensure_sandbox_image
from airlock.host.rotation import bundle_dirs, refresh, rotate_ca, wait_for_overlap_end
from airlock.host.sandbox import SandboxError, SandboxManager, docker_client
from airlock.testing.github_api import GitHubApiDouble
from airlock.testing.ports import free_port
from airlock.testing.redis_server import RedisServer
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream

T = TypeVar("T")
DEMO_REPO = "demo/hello"
MANY_REFS_REPO = "demo/many-refs"
MANY_REFS = 2000  # tags and refs/pull/N/head: git gzips the negotiation of such a clone
EXIT_CODE = 7  # the sandbox's command ends with it; `airlock run` would exit with it
ROTATION_OVERLAP = 2.0  # seconds the old CA is still accepted after `rotate ca` (demo only)

SCRIPT = r"""
set -u
[ "$(id -u)" = 10000 ] && [ "$(pwd)" = "$HOME" ] && [ "$HOME" = /home/sandbox ] \
  && git config --global user.name "demo agent" && say0=ok || say0=fail
cd /tmp
echo "RESULT image_user $say0"
say() { echo "RESULT $1 $2"; }
git clone -q https://github.com/{repo} work && say clone ok || say clone fail
cd work
echo "written inside an airlock sandbox" > from-sandbox.txt
git add from-sandbox.txt
git -c user.name=sandbox -c user.email=sandbox@airlock.invalid \
  commit -qm "commit from the sandbox"
git push -q origin HEAD:agent/demo && say push ok || say push fail
if git push -f origin HEAD:main 2>/tmp/force.txt; then say force_main pushed
elif grep -q "remote rejected.*(airlock: main is outside" /tmp/force.txt; then
  say force_main refused; else say force_main failed; fi
git ls-remote https://github.com/{other} >/dev/null 2>&1 \
  && say ungranted reached || say ungranted refused
gh pr create --title "demo" --body "opened from the sandbox" --head agent/demo --base main \
  >/tmp/pr.txt 2>&1 && grep -q "/pull/1" /tmp/pr.txt && say pr_create ok || say pr_create fail
if gh pr merge 1 --merge 2>/tmp/merge.txt; then say pr_merge merged
elif grep -q "airlock:" /tmp/merge.txt; then say pr_merge refused; else say pr_merge failed; fi
cd /tmp
git clone -q --mirror https://github.com/{many} many.git \
  && [ "$(git -C many.git for-each-ref | wc -l)" -ge {many_refs} ] \
  && say many_refs ok || say many_refs fail
cd /tmp/work
curl -s --noproxy '*' --max-time 3 -o /dev/null http://{host_ip}:{decoy_port}/ \
  && say decoy_host reached || say decoy_host blocked
curl -s --noproxy '*' --max-time 3 -o /dev/null http://{gateway_ip}:{decoy_port}/ \
  && say decoy_gateway_port reached || say decoy_gateway_port blocked
[ "$(dig +short +time=2 +tries=1 @$GW airlock.internal)" = "$GW" ] \
  && say dns_gateway answered || say dns_gateway silent
dig +time=2 +tries=1 @$GW decoy.example.org | grep -q "status: REFUSED" \
  && say dns_outside refused || say dns_outside answered
code=$(curl -s -o /tmp/dl.txt -w '%{http_code}' --cacert /decoy-ca.pem \
  https://downloads.demo.test:{https_port}/hello.txt)
[ "$code" = 200 ] && grep -q allowlisted /tmp/dl.txt \
  && say proxy_allowed ok || say proxy_allowed fail
curl -s -o /dev/null -D /tmp/h.txt --cacert /decoy-ca.pem \
  https://elsewhere.demo.test:{https_port}/hello.txt
grep -qi "x-airlock-refused: not_allowlisted" /tmp/h.txt \
  && say proxy_other refused || say proxy_other not-refused
if env | grep -q -- "{token}"; then say token_env found; else say token_env absent; fi
if grep -rqs -- "{token}" /run/airlock /etc /home /tmp 2>/dev/null; then
  say token_files found; else say token_files absent; fi
echo "RESULT rotation waiting"
i=0; while [ ! -e /signal/rotated ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
cd /tmp && git clone -q https://github.com/{repo} after-rotation \
  && say clone_after_rotation ok || say clone_after_rotation fail
exit {exit_code}
"""


class DemoError(Exception):
    pass


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Decoy(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Decoy.hits.append(self.client_address[0])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"decoy\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _host_address() -> str:
    """The host's own primary address (the source of its default route), for the decoy."""
    from airlock.host.hostnet import _ip_json

    for route in _ip_json(["-4", "route", "show", "default"]):
        dev = route.get("dev")
        for link in _ip_json(["-4", "addr", "show", "dev", str(dev)]):
            for a in link.get("addr_info", []):
                return str(a["local"])
    return "127.0.0.1"


def run_demo(console: Console, keep: bool = False) -> bool:
    if os.geteuid() != 0:
        raise DemoError("the demo creates networks and firewall rules: run it as root")
    root = Path(tempfile.mkdtemp(prefix="airlock-demo-"))
    os.chmod(root, 0o700)
    loop = _Loop()
    gateway: Gateway | None = None
    host_a: Gateway | None = None
    host_b: Gateway | None = None
    redis: RedisServer | None = None
    upstream: GitUpstream | None = None
    api: GitHubApiDouble | None = None
    decoy: http.server.ThreadingHTTPServer | None = None
    downloads: _Downloads | None = None
    try:
        console.rule("[bold]airlock demo")
        with console.status("sandbox image (built once from Debian packages, then cached)"):
            try:
                image = ensure_sandbox_image(docker_client(), progress=console.log)
            except (SandboxError, ImageBuildError) as exc:
                raise DemoError(str(exc)) from None
        console.log(f"sandbox image: {image}")

        token = "ghs_demo" + os.urandom(16).hex()  # shaped like a GitHub App token
        secrets_dir = root / "secrets"
        secrets_dir.mkdir(mode=0o700)
        token_file = secrets_dir / "github_token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        tls = make_test_ca_and_server_cert(root / "upstream-tls", ["localhost"], ["127.0.0.1"])
        repos = root / "upstream"
        bare = create_bare_repo(repos, *DEMO_REPO.split("/"))
        create_bare_repo(repos, "demo", "private")
        _add_many_refs(create_bare_repo(repos, *MANY_REFS_REPO.split("/")), root, MANY_REFS)
        main_before = _rev(bare, root, "main")
        upstream = GitUpstream(repos, token_file, tls)
        loop.run(upstream.start())
        console.log(f"upstream: git http-backend at {upstream.url}, token required")
        api = GitHubApiDouble(tls, repos_root=repos, token_file=token_file)
        loop.run(api.start())
        console.log(f"upstream API: a GitHub API double at {api.url}, same repositories and token")

        downloads = _Downloads(root / "downloads-tls")
        console.log(f"allowlisted host: downloads.demo.test -> HTTPS on 127.0.0.1:{downloads.port}")
        config = _config(root, upstream.url, api.url, token_file, tls.ca_cert, downloads.port)
        try:
            gateway = Gateway(config)
            loop.run(gateway.start())
        except StartupError as exc:
            raise DemoError(str(exc)) from None
        console.log(f"gateway: git proxy on {config.gateway.git_listen}, control socket ready")

        redis = RedisServer(root / "redis")
        try:
            redis.start()
        except RuntimeError as exc:
            raise DemoError(f"the shared store: {exc}") from None
        config_a = host_config(config, root, HOST_A, redis.url)
        config_b = host_config(config, root, HOST_B, redis.url)
        try:
            host_a = Gateway(config_a)
            loop.run(host_a.start())
            share_keys(config_a, config_b)
            host_b = Gateway(config_b)
            loop.run(host_b.start())
        except StartupError as exc:
            raise DemoError(str(exc)) from None
        console.log(
            f"two more hosts' gateways on a shared store (redis-server on {redis.url}): "
            f"{HOST_A} on {config_a.gateway.git_listen}, {HOST_B} on {config_b.gateway.git_listen}"
        )

        decoy_port = free_port("0.0.0.0")
        decoy = http.server.ThreadingHTTPServer(("0.0.0.0", decoy_port), _Decoy)
        threading.Thread(target=decoy.serve_forever, daemon=True).start()
        host_ip = _host_address()
        console.log(f"decoy: HTTP on {host_ip}:{decoy_port} (not allowlisted)")

        manager = SandboxManager(config, say=console.log)
        signal_dir = root / "signal"  # the host tells the sandbox "rotated" with a file here
        signal_dir.mkdir(mode=0o755)
        spec = RunSpec(
            image=image,
            command=["sh", "-c", ""],
            grants=[f"github.com/{DEMO_REPO}:write", f"github.com/{MANY_REFS_REPO}:read"],
            allow_hosts=["downloads.demo.test"],
            volumes=[f"{downloads.ca}:/decoy-ca.pem:ro", f"{signal_dir}:/signal:ro"],
        )
        # The subnet is only known once the network exists; the script asks the bundle.
        spec.command = [
            "sh",
            "-c",
            "GW=$(awk '/nameserver/{print $2}' /etc/resolv.conf); "
            + _fill(
                SCRIPT,
                gateway_ip="$GW",
                repo=DEMO_REPO,
                other="demo/private",
                many=MANY_REFS_REPO,
                many_refs=str(MANY_REFS),
                host_ip=host_ip,
                decoy_port=str(decoy_port),
                https_port=str(downloads.port),
                token=token,
                exit_code=str(EXIT_CODE),
            ),
        ]
        with console.status("sandbox: clone, commit, push, then try to get out"):
            try:
                sb = manager.start(spec)
            except SandboxError as exc:
                raise DemoError(str(exc)) from None
            try:
                rotated = _rotate_when_ready(manager, sb.container_id or "", signal_dir, console)
                code = manager.wait(sb)
                # As `airlock run` does at exit: the session goes now, the container stays.
                manager.release(sb.id, "sandbox exited")
                revoked_at_exit = manager.control.show(str(sb.session_id))["state"] == "revoked"
                kept = manager.client.api.inspect_container(sb.container_id)["State"]
                kept_exit = kept.get("ExitCode") == EXIT_CODE and not kept.get("Running")
                logs = manager.client.api.logs(sb.container_id).decode(errors="replace")
            finally:
                manager.teardown(sb.id, "demo finished")
            gone = not manager.all_sandbox_ids() & {sb.id}
        console.log(f"sandbox {sb.name} exited with {code}; `airlock rm` removed all of it")

        results = dict(
            line.split()[1:3] for line in logs.splitlines() if line.startswith("RESULT ")
        )
        shared = check_revocation_across_gateways(config_a, config_b, DEMO_REPO, root)
        pushed = _upstream_has_file(bare, root)
        pulls = api.pulls(*DEMO_REPO.split("/"))
        pulls_opened = len(pulls)
        merged = any(p.merged for p in pulls)
        main_after = _rev(bare, root, "main")
        host_reaches_decoy = _host_reaches(host_ip, decoy_port)
        sandbox_hits = [h for h in _Decoy.hits if h != host_ip and not h.startswith("127.")]
        checks = [
            (
                "runs as the image's user in its WORKDIR, git config --global works",
                results.get("image_user") == "ok",
            ),
            ("clone github.com/demo/hello", results.get("clone") == "ok"),
            (
                "push a new branch agent/demo (seen in the upstream)",
                results.get("push") == "ok" and pushed,
            ),
            (
                "force-push to main refused, git shows why; main unchanged",
                results.get("force_main") == "refused" and main_after == main_before,
            ),
            ("ungranted repository refused", results.get("ungranted") == "refused"),
            (
                "gh pr create opens a pull request from agent/demo (no real token inside)",
                results.get("pr_create") == "ok" and pulls_opened == 1,
            ),
            (
                "gh pr merge refused by the gateway, gh shows why; nothing merged",
                results.get("pr_merge") == "refused" and not merged,
            ),
            (
                f"mirror clone of a repository with {MANY_REFS} refs",
                results.get("many_refs") == "ok",
            ),
            (
                "decoy on the host address unreachable",
                results.get("decoy_host") == "blocked" and not sandbox_hits,
            ),
            (
                "decoy on the gateway address unreachable",
                results.get("decoy_gateway_port") == "blocked",
            ),
            ("outside names get no DNS answer", results.get("dns_outside") == "refused"),
            (
                "(control) the gateway's DNS answers its own name",
                results.get("dns_gateway") == "answered",
            ),
            ("no upstream token in the environment", results.get("token_env") == "absent"),
            ("no upstream token in any file", results.get("token_files") == "absent"),
            ("allowlisted host downloads through the proxy", results.get("proxy_allowed") == "ok"),
            ("other host refused by the proxy (403)", results.get("proxy_other") == "refused"),
            ("(control) the host itself reaches the decoy", host_reaches_decoy),
            (f"the command's exit code ({EXIT_CODE}) is the sandbox's", code == EXIT_CODE),
            (
                "session revoked the moment it exited; container and exit code kept",
                revoked_at_exit and kept_exit,
            ),
            ("rm leaves no network, rules, bundle or container", gone),
            (
                "CA and gateway key rotated under the running sandbox; after the old CA's "
                "overlap it clones again",
                rotated and results.get("clone_after_rotation") == "ok",
            ),
            (
                f"shared store: {HOST_B}'s gateway lists a session of {HOST_A}'s, served by "
                f"{HOST_A}",
                shared.listed_elsewhere,
            ),
            (
                f"shared store: revoked through {HOST_B}, refused by {HOST_A} at once",
                shared.served_before and shared.refused_after,
            ),
        ]
        table = Table("check", "result", title="airlock demo report")
        for name, ok in checks:
            table.add_row(name, "[green]pass" if ok else "[red]FAIL")
        console.print(table)
        ok = all(ok for _, ok in checks)
        console.print("[bold green]all checks passed" if ok else "[bold red]some checks failed")
        if not ok:
            console.print(logs)
        return ok
    finally:
        if downloads is not None:
            downloads.close()
        if decoy is not None:
            decoy.shutdown()
        for g in (host_b, host_a, gateway):
            if g is not None:
                loop.run(g.stop())
        if redis is not None:
            redis.stop()
        if api is not None:
            loop.run(api.stop())
        if upstream is not None:
            loop.run(upstream.stop())
        loop.close()
        if keep:
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _rotate_when_ready(
    manager: SandboxManager, container_id: str, signal_dir: Path, console: Console
) -> bool:
    """When the sandbox says it waits: `airlock rotate ca` (prepare, its bundle rewritten in
    place, commit), the overlap waited out, its bundle left trusting the new CA alone; then
    the file that lets it clone again. True when all of that happened."""
    api = manager.client.api
    deadline = time.monotonic() + 300
    while b"RESULT rotation waiting" not in api.logs(container_id):
        if time.monotonic() > deadline or not api.inspect_container(container_id)["State"].get(
            "Running"
        ):
            return False
        time.sleep(0.2)
    dirs = bundle_dirs(manager.bundle_root)
    try:
        result = rotate_ca(manager.control, dirs, ROTATION_OVERLAP, settle=0.5)
        state = wait_for_overlap_end(manager.control, limit=60)
        after = refresh(dirs, manager.control.list_sessions(), state)
    except ControlError as exc:
        console.log(f"rotation failed: {exc}")
        return False
    finally:
        (signal_dir / "rotated").write_text("")
    console.log(
        f"rotated the CA: {len(result.bundles.updated)} bundle(s) rewritten in place; "
        f"overlap over, {len(after.updated)} now trust the new CA only"
    )
    return (
        bool(result.bundles.updated)
        and not result.bundles.problems
        and state.get("phase") != "overlap"
        and not after.problems
    )


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


class _Downloads:
    """An HTTPS server on loopback standing in for an allowlisted download host."""

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"fetched from an allowlisted host through the egress proxy\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    def __init__(self, directory: Path) -> None:
        import ssl

        tls = make_test_ca_and_server_cert(
            directory, ["downloads.demo.test", "elsewhere.demo.test"], []
        )
        self.ca = tls.ca_cert
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.server_cert, tls.server_key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _config(
    root: Path,
    upstream_url: str,
    api_url: str,
    token_file: Path,
    ca: Path,
    https_port: int,
) -> Config:
    data: dict[str, Any] = {
        "gateway": {
            "state_dir": str(root / "state"),
            "control_socket": str(root / "run" / "control.sock"),
            "git_listen": f"127.0.0.1:{free_port()}",
            "audit_log": str(root / "audit.log"),
        },
        "upstream": [
            {
                "host": "github.com",
                "url": upstream_url,
                "token_file": str(token_file),
                "ca_file": str(ca),
                # Sandboxes use api.github.com; the gateway relays what their grants allow.
                "api": {"url": api_url},
            }
        ],
        # Demo-only: both names point at the loopback decoy, which the proxy may dial
        # (allow_private); a real configuration resolves names through DNS instead.
        "egress": {
            "connect_ports": [443, https_port],
            "static": [
                {"name": name, "addresses": ["127.0.0.1"], "allow_private": True}
                for name in ("downloads.demo.test", "elsewhere.demo.test")
            ],
        },
    }
    return parse_config(data, Path("<demo>"))


def _upstream_has_file(bare: Path, root: Path) -> bool:
    import subprocess

    r = subprocess.run(
        ["git", "--git-dir", str(bare), "show", "agent/demo:from-sandbox.txt"],
        capture_output=True,
        text=True,
        env=git_env(root),
        check=False,
    )
    return r.returncode == 0 and "airlock sandbox" in r.stdout


def _rev(bare: Path, root: Path, ref: str) -> str:
    import subprocess

    return subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", ref],
        capture_output=True,
        text=True,
        env=git_env(root),
        check=False,
    ).stdout.strip()


def _add_many_refs(bare: Path, root: Path, count: int) -> None:
    """Half lightweight tags, half pull-request heads, all at ``main``."""
    import subprocess

    env = git_env(root)
    head = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", "main"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    half = count // 2
    updates = "".join(
        f"create refs/tags/v{i}.0 {head}\ncreate refs/pull/{i}/head {head}\n" for i in range(half)
    )
    subprocess.run(
        ["git", "--git-dir", str(bare), "update-ref", "--stdin"],
        input=updates,
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )


def _host_reaches(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/")
    except OSError:
        return False
