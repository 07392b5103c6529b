"""`airlock doctor`: is this host ready for airlock? Each check, ok or FAIL and what to fix.

The checks are functions that return a :class:`Finding`; those that need the world (Docker,
nft, the control socket, the file system) take what they need as arguments, so the
judgement itself is pure and tested on its own. ``doctor`` gathers the inputs, runs the
checks and exits non-zero if any failed. It never reads a secret's content: the token file
and App key are judged from ``stat`` alone, by the gateway's own rules
(gateway/credentials.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click

from airlock.cli.common import (
    ConfigNotFound,
    config_option,
    resolve_config_path,
)
from airlock.config import Config, ConfigError, load_config

__all__ = [
    "Finding",
    "bundle_dir_finding",
    "check_docker",
    "check_gate",
    "check_gateway",
    "check_pool",
    "check_root",
    "doctor",
    "find_init_binary",
    "init_finding",
    "integrity_findings",
    "lock_finding",
    "nft_finding",
    "secret_finding",
]


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


def _ok(check: str, detail: str) -> Finding:
    return Finding(check, True, detail)


def _bad(check: str, detail: str) -> Finding:
    return Finding(check, False, detail)


# --- the checks ---------------------------------------------------------------------------


def check_root(euid: int) -> Finding:
    if euid == 0:
        return _ok("root", "running as root")
    return _bad(
        "root",
        f"running as uid {euid}: airlock run, stop, rm, supervise and image need root (Docker, "
        "nftables, the bundle tmpfs); run `sudo airlock doctor` to check as they will run",
    )


def check_config(given: Path | None) -> tuple[Finding, Config | None]:
    try:
        path = resolve_config_path(given)
    except ConfigNotFound as exc:
        return _bad("config", str(exc)), None
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _bad("config", " ".join(str(exc).split())), None
    return _ok("config", f"{path} is valid"), config


def check_docker(connect: Callable[[], Any], host: str) -> tuple[Finding, Any]:
    """``connect`` is ``dockerclient.docker_client``: a client or DockerUnavailable."""
    from airlock.host.dockerclient import DockerUnavailable

    try:
        client = connect()
        version = client.version().get("Version", "?")
    except DockerUnavailable as exc:
        return _bad("docker", str(exc)), None
    except Exception as exc:
        return _bad("docker", f"the Docker daemon at {host} failed to answer: {exc}"), None
    return _ok("docker", f"Docker {version} answers at {host}"), client


# Where dockerd looks for its init binary besides its PATH (daemon/config: the libexec dirs).
INIT_DIRS = (
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/libexec/docker",
    "/usr/libexec/docker",
    "/usr/local/lib/docker",
    "/usr/lib/docker",
)


def find_init_binary(name: str, is_executable: Callable[[str], bool]) -> str | None:
    """The path dockerd would use for ``--init`` (``name`` from ``docker info``). Pure."""
    if name.startswith("/"):
        return name if is_executable(name) else None
    for d in INIT_DIRS:
        path = f"{d}/{name}"
        if is_executable(path):
            return path
    return None


def init_finding(name: str, found: str | None, local: bool) -> Finding:
    if not local:
        return _ok("docker-init", f"the daemon is not local; cannot check its {name}")
    if found is None:
        return _bad(
            "docker-init",
            f"{name} not found (looked in the daemon's PATH and Docker's libexec "
            "directories): sandboxes started with an init process fail; install it "
            "(Debian: docker.io ships /usr/bin/docker-init) or set the daemon's init-path",
        )
    return _ok("docker-init", f"{found} (for --init)")


def nft_finding(
    path: str | None, returncode: int | None, stdout: str, stderr: str, euid: int
) -> Finding:
    """From ``nft list tables``'s outcome (None: it could not be run). Pure."""
    if path is None:
        return _bad("nftables", "nft not found: install nftables (apt-get install nftables)")
    if returncode != 0:
        first = (stderr.strip().splitlines() or ["no output"])[0]
        hint = "run as root" if euid != 0 else "check the kernel's nf_tables support"
        return _bad("nftables", f"`nft list tables` failed: {first}; {hint}")
    tables = [line.split(None, 1)[1] for line in stdout.splitlines() if line.startswith("table ")]
    mine = "airlock's table present" if "inet airlock" in tables else "airlock's table not yet made"
    return _ok("nftables", f"{path} works ({len(tables)} tables; {mine})")


def check_pool(
    pool: str,
    prefixlen: int,
    used: Sequence[IPv4Network] | Exception,
    taken: Iterable[IPv4Network] | None = None,
) -> Finding:
    """sandbox.pool against the host's addresses, routes and resolvers (``used``, from
    hostnet.host_networks, or the error reading them) and Docker's networks. Pure."""
    from airlock.host.netpool import PoolError, allocate_subnet
    from airlock.host.netpool import check_pool as netpool_check

    if isinstance(used, Exception):
        return _bad("pool", f"cannot read the host's networks (ip -j addr/route): {used}")
    net = IPv4Network(pool)
    try:
        netpool_check(net, used)
        first = allocate_subnet(net, prefixlen, taken or ())
    except PoolError as exc:
        return _bad("pool", f"sandbox.pool: {exc}; choose another private range")
    return _ok(
        "pool",
        f"{net} overlaps no host address, route or resolver; next sandbox network {first}",
    )


def check_gate(path: Path) -> Finding:
    from airlock.host.gate import GateError, check_gate_binary

    try:
        check_gate_binary(path)
    except GateError as exc:
        return _bad("gate", str(exc))
    return _ok("gate", f"{path} is a static executable")


def check_gateway(health: Callable[[], dict[str, Any]], socket: Path) -> Finding:
    from airlock.host.control_client import ControlError

    try:
        answer = health()
    except ControlError as exc:
        return _bad("gateway", str(exc))
    return _ok("gateway", f"answers on {socket} ({answer.get('sessions', '?')} sessions)")


def secret_finding(
    what: str,
    path: Path,
    st: os.stat_result | OSError,
    gateway_uid: int,
    gateway_user: str | None,
    *,
    resolved: str | None = None,
) -> Finding:
    """A token file or App key, judged from ``stat`` (of the file a symlink leads to) as the
    gateway judges it (SecretFile): a regular file, owned by the gateway's user or root,
    mode 0600 or stricter; and, for a gateway that drops to ``gateway.user``, owned by that
    user (mode 0600 leaves no one else able to read it). Pure."""
    name = str(path) if resolved in (None, str(path)) else f"{path} (a symlink to {resolved})"
    target = resolved or str(path)
    check = "token-file" if what == "token file" else "app-key"
    if isinstance(st, OSError):
        if isinstance(st, PermissionError):
            return _bad(check, f"{what} {name}: cannot check it as uid {os.geteuid()}; run as root")
        return _bad(check, f"{what} {name}: {st.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return _bad(check, f"{what} {name}: not a regular file")
    user = gateway_user or f"uid {gateway_uid}"
    if st.st_uid not in (gateway_uid, 0):
        return _bad(
            check,
            f"{what} {name}: owned by uid {st.st_uid}, neither the gateway's user ({user}) "
            f"nor root; run: chown {gateway_user or gateway_uid} {target}",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return _bad(
            check,
            f"{what} {name}: mode {mode:04o} lets group or others read it; run: chmod 600 {target}",
        )
    if gateway_uid != 0 and st.st_uid != gateway_uid:
        return _bad(
            check,
            f"{what} {name}: owned by root with mode {mode:04o}: the gateway's user {user} "
            f"cannot read it; run: chown {gateway_user or gateway_uid} {target}",
        )
    if st.st_size == 0:
        return _bad(check, f"{what} {name}: empty")
    return _ok(check, f"{name}: mode {mode:04o}, owned by uid {st.st_uid}")


def _mount_type(mounts: str, target: str) -> str | None:
    found = None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].encode().decode("unicode_escape") == target:
            found = parts[2]  # the last mount on a point is the one seen
    return found


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def bundle_dir_finding(
    path: Path,
    st: os.stat_result | OSError,
    mounts: str,
    *,
    control_socket: Path,
    state_dir: Path,
    gateway_user: str | None,
) -> Finding:
    """sandbox.bundle_dir: where session keys are written, on a tmpfs ``airlock run``
    mounts when the directory is not one already. ``st`` is its lstat. Pure."""
    check = "bundle-dir"
    if gateway_user is not None and (
        _within(path, control_socket.parent) or _within(path, state_dir)
    ):
        return _bad(
            check,
            f"sandbox.bundle_dir {path} is inside the gateway's socket directory or state_dir, "
            f"which are handed to gateway.user {gateway_user!r}; give the socket a directory "
            'of its own, e.g. control_socket = "/run/airlock/gateway/control.sock"',
        )
    if isinstance(st, FileNotFoundError):
        return _ok(check, f"{path} not there yet; airlock run creates it and mounts a tmpfs")
    if isinstance(st, OSError):
        return _bad(check, f"sandbox.bundle_dir {path}: {st.strerror}; run as root")
    if stat.S_ISLNK(st.st_mode):
        return _bad(check, f"sandbox.bundle_dir {path} is a symlink; name a real directory")
    if not stat.S_ISDIR(st.st_mode):
        return _bad(check, f"sandbox.bundle_dir {path} is not a directory")
    if st.st_uid != 0:
        return _bad(check, f"sandbox.bundle_dir {path} is owned by uid {st.st_uid}; chown root")
    if st.st_mode & 0o022:
        return _bad(
            check, f"sandbox.bundle_dir {path} is writable by group or others; chmod 700 {path}"
        )
    fstype = _mount_type(mounts, str(path))
    if fstype == "tmpfs":
        return _ok(check, f"{path} is a tmpfs (session keys stay in memory)")
    return _ok(check, f"{path} is a directory; airlock run mounts a tmpfs on it")


def lock_finding(path: Path, text: str | OSError | None) -> Finding:
    """requirements.lock: every requirement pinned (``==``) with at least one ``--hash``,
    so ``pip install --require-hashes`` installs exactly what was reviewed. ``text`` is
    None when there is no lock file beside this airlock (installed from a wheel). Pure."""
    check = "lock-file"
    if text is None:
        return _ok(check, "no requirements.lock beside this airlock (a wheel): nothing to check")
    if isinstance(text, OSError):
        return _bad(check, f"{path}: cannot read ({text.strerror})")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip():
            logical.append(line.strip())
    if pending.strip():
        logical.append(pending.strip())
    allowed_options = ("--index-url", "--extra-index-url", "--find-links", "-i ", "-f ")
    bad: list[str] = []
    pinned = 0
    for line in logical:
        if line.startswith("-"):
            if not line.startswith(allowed_options):
                bad.append(line.split()[0] + " " + (line.split()[1] if " " in line else ""))
            continue
        requirement = line.split("--hash", 1)[0].strip()
        if "--hash=sha256:" not in line or "==" not in requirement:
            bad.append(requirement.split(";")[0].strip() or line)
        else:
            pinned += 1
    if bad:
        shown = ", ".join(b.strip() for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return _bad(
            check,
            f"{path}: {len(bad)} requirement(s) not pinned with ==VERSION and --hash "
            f"({shown}); regenerate it: pip-compile --generate-hashes",
        )
    if pinned == 0:
        return _bad(check, f"{path}: no requirements in it; regenerate it with pip-compile")
    return _ok(check, f"{path}: all {pinned} requirements pinned by hash")


def integrity_findings(
    manifest_path: Path,
    manifest: Any,
    read: Callable[[str], bytes | OSError],
    inspect: Callable[[str], str | None] | None,
) -> list[Finding]:
    """The integrity manifest's units and images (host/integrity.py) against the host.
    ``manifest`` is a Manifest, None when none was written yet, or the IntegrityError
    reading it raised; ``inspect`` is None when Docker cannot be asked. Pure."""
    from airlock.host.integrity import IntegrityError, Manifest, verify_images, verify_units

    if isinstance(manifest, IntegrityError):
        return [_bad("integrity", f"{manifest}; re-run `airlock install` to rewrite it")]
    if manifest is None:
        return [
            _ok(
                "integrity",
                f"no manifest at {manifest_path} yet (`airlock install` and `airlock image` "
                "write it); nothing recorded to check",
            )
        ]
    assert isinstance(manifest, Manifest)
    found = [_ok("integrity", f"{manifest_path}: {len(manifest.entries)} entries")]
    found += [Finding(v.name, v.ok, v.detail) for v in verify_units(manifest, read)]
    if manifest.of_kind("image"):
        if inspect is None:
            found.append(_bad("images", "Docker does not answer: cannot check recorded images"))
        else:
            found += [Finding(v.name, v.ok, v.detail) for v in verify_images(manifest, inspect)]
    return found


# --- gathering the inputs -----------------------------------------------------------------


def _stat(path: Path, follow: bool = True) -> os.stat_result | OSError:
    try:
        return os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return exc


def _run_nft() -> Finding:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if path is None:
        return nft_finding(None, None, "", "", os.geteuid())
    try:
        proc = subprocess.run(
            [path, "list", "tables"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return nft_finding(path, -1, "", str(exc), os.geteuid())
    return nft_finding(path, proc.returncode, proc.stdout, proc.stderr, os.geteuid())


def _taken_subnets(client: Any) -> list[IPv4Network]:
    taken = []
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                taken.append(IPv4Network(cfg["Subnet"]))
            except (ValueError, KeyError, TypeError):
                continue
    return taken


def _secrets(config: Config) -> list[Finding]:
    user = config.gateway.user
    if user is not None:
        try:
            gateway_uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            return [
                _bad(
                    "gateway-user",
                    f"gateway.user: no user {user!r}; create one: useradd --system "
                    f"--no-create-home --shell /usr/sbin/nologin {user}",
                )
            ]
    else:
        gateway_uid = os.geteuid()  # the gateway runs as whoever starts it
    found = []
    for u in config.upstream:
        if u.token_file is not None:
            what, path = "token file", u.token_file
        else:
            assert u.app is not None
            what, path = "App private key", u.app.private_key_file
        resolved = os.path.realpath(path)
        found.append(
            secret_finding(
                what,
                path,
                _stat(path),
                gateway_uid,
                user,
                resolved=resolved if resolved != os.path.abspath(path) else None,
            )
        )
    return found


def _read_bytes(path: str) -> bytes | OSError:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return exc


def _image_id(client: Any, tag: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _integrity(config: Config, client: Any) -> list[Finding]:
    from airlock.host.integrity import IntegrityError, load_manifest, manifest_path

    try:
        path = manifest_path(config)
    except IntegrityError as exc:
        return [_bad("integrity", str(exc))]
    manifest: Any
    try:
        manifest = load_manifest(path)
    except IntegrityError as exc:
        manifest = exc
    inspect = (lambda tag: _image_id(client, tag)) if client is not None else None
    return integrity_findings(path, manifest, _read_bytes, inspect)


def _lock() -> Finding:
    import airlock

    path = Path(airlock.__file__).resolve().parents[2] / "requirements.lock"
    try:
        text: str | OSError | None = path.read_text()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        text = exc
    return lock_finding(path, text)


def run_checks(given: Path | None) -> list[Finding]:
    from airlock.host import dockerclient
    from airlock.host.control_client import ControlClient
    from airlock.host.hostnet import host_networks

    findings = [check_root(os.geteuid())]
    config_found, config = check_config(given)
    findings.append(config_found)
    host = dockerclient.docker_host()
    docker_found, client = check_docker(lambda: dockerclient.docker_client(timeout=15), host)
    findings.append(docker_found)
    if client is not None:
        try:
            init_name = str(client.info().get("InitBinary") or "docker-init")
        except Exception:
            init_name = "docker-init"
        local = dockerclient.unix_socket_path(host) is not None
        found = find_init_binary(init_name, lambda p: os.path.isfile(p) and os.access(p, os.X_OK))
        findings.append(init_finding(init_name, found, local))
    findings.append(_run_nft())
    findings.append(_lock())
    if config is None:
        return findings
    findings.extend(_integrity(config, client))
    sb = config.sandbox
    try:
        used: list[IPv4Network] | Exception = host_networks()
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        used = exc
    taken = _taken_subnets(client) if client is not None else None
    findings.append(check_pool(sb.pool, sb.prefixlen, used, taken))
    findings.append(check_gate(sb.gate_binary))
    socket = config.gateway.control_socket
    findings.append(check_gateway(ControlClient(socket, timeout=10).health, socket))
    findings.extend(_secrets(config))
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        mounts = ""
    findings.append(
        bundle_dir_finding(
            Path(os.path.abspath(sb.bundle_dir)),
            _stat(sb.bundle_dir, follow=False),
            mounts,
            control_socket=config.gateway.control_socket,
            state_dir=config.gateway.state_dir,
            gateway_user=config.gateway.user,
        )
    )
    return findings


def report_lines(findings: Sequence[Finding]) -> list[str]:
    width = max(len(f.check) for f in findings)
    return [f"{'ok' if f.ok else 'FAIL':<4}  {f.check:<{width}}  {f.detail}" for f in findings]


@click.command()
@config_option
def doctor(config_path: Path | None) -> None:
    """Check this host for airlock: root, Docker, nftables, the sandbox pool, the gate
    binary, the gateway, the upstream secrets' modes, the bundle directory, docker-init."""
    findings = run_checks(config_path)
    for line in report_lines(findings):
        click.echo(line)
    failed = [f for f in findings if not f.ok]
    if failed:
        click.echo(
            f"airlock doctor: {len(failed)} of {len(findings)} checks failed "
            f"({', '.join(f.check for f in failed)})",
            err=True,
        )
        sys.exit(1)
    click.echo(f"airlock doctor: all {len(findings)} checks passed", err=True)
