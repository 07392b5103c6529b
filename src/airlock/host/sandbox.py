"""Sandboxes on the real Docker engine: one network, firewall and session per container.

Order of a start (each step is undone, in reverse, if a later one fails):
  1. a subnet from the pool (checked against the host's own networks),
  2. an ``--internal`` bridge network with ICC off,
  3. nftables rules for its bridge, read back and verified,
  4. the gateway listening (git + DNS) on the bridge address; in container mode
     (``gateway.mode = "container"``) the gateway's container joins the network at the
     subnet's third address first, and listens there,
  5. a session waiting for activation,
  6. the session bundle on a tmpfs,
  7. the container, created (not started) with the bundle mounted read-only,
  8. start; inspect through the Docker API; activate the session bound to what was seen;
     open the gate that holds the sandbox command until activation.

Everything a sandbox owns carries the label ``airlock.sandbox=<id>`` and its gateway's id
``airlock.owner=<gateway id>`` (network, container), or is named after those ids (rules with
the owner in their comments, the bundle directory ``bundle_dir/<gateway id>/<id>``), so
teardown and ``supervise`` find it from Docker's state alone after a crash, and two gateways
on one host never act on each other's sandboxes.

Lifecycle, as with Docker: when the container exits, its session is revoked and its bundle
(the session key) and listener go at once (:meth:`SandboxManager.release`); the container,
its logs and exit code stay until ``airlock rm`` (or ``--rm``), and its network and rules go
with the container (:meth:`SandboxManager.teardown`). Every removal step treats "already
gone" and "removal already in progress" as done, so ``run``, ``stop``, ``rm`` and
``supervise`` can race without failing each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import IPAMConfig, IPAMPool, Mount

from airlock.config import Config
from airlock.gateway.identity import GatewayIdError, read_gateway_id
from airlock.gateway.pki import key_pem, make_csr, new_private_key
from airlock.host import dockerclient, firewall
from airlock.host.bundle import GatewayEndpoint, api_environment, write_api_trust, write_bundle
from airlock.host.containerspec import (
    ContainerPlan,
    RunSpec,
    SpecError,
    plan_container,
    resolve_user,
)
from airlock.host.control_client import ControlClient, ControlError
from airlock.host.gate import GATE_PATH, GateError, check_gate_binary, gate_command
from airlock.host.hostnet import host_networks
from airlock.host.locks import host_lock
from airlock.host.netpool import PoolError, allocate_subnet, check_pool
from airlock.host.rotation import bundle_lock_name

LABEL = "airlock.sandbox"
LABEL_SESSION = "airlock.session"
LABEL_NAME = "airlock.name"
LABEL_GATEWAY = "airlock.gateway_ip"
LABEL_SANDBOX_IP = "airlock.sandbox_ip"
# "container" when the gateway is a container on the sandbox's bridge (its rules differ).
LABEL_GATEWAY_MODE = "airlock.gateway_mode"
# What the gateway's container carries (host/gateway_container.py): its configured name.
LABEL_GATEWAY_CONTAINER = "airlock.gateway-container"
# The id of the gateway a sandbox belongs to (the gateway keeps it in its state_dir and says
# it in /v1/health): `ps`, `stop`, `rm`, `supervise` and clean-up act on their own only.
LABEL_OWNER = "airlock.owner"
# Set for `--rm`: whoever sees the container exit removes it (and its network and rules).
LABEL_REMOVE = "airlock.remove"
_GATEWAY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MOUNT_POINT = Path("/run/airlock")
READY_FILE = "ready"
# Holds the sandbox command until the host has verified the container and activated its
# session, so the very first instruction already runs under the final identity and rules.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")


class SandboxError(Exception):
    """A sandbox could not be started or managed; the message says what to do."""


@dataclass
class Sandbox:
    id: str
    name: str
    network: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway_ip: ipaddress.IPv4Address
    sandbox_ip: ipaddress.IPv4Address
    session_id: str | None = None
    container_id: str | None = None
    bundle_dir: Path | None = None
    # The session's key and what the gateway issued, kept per sandbox (not on the manager)
    # so concurrent starts never mix them up.
    key: Any = field(default=None, repr=False)
    issued: dict[str, Any] = field(default_factory=dict, repr=False)
    # Seconds per start step (preflight, network, firewall, ...), for the start-time benchmark.
    timings: dict[str, float] = field(default_factory=dict, repr=False)
    claimed: Path | None = None  # the claim marker of the spare network this one uses
    uid: int | None = None  # the uid the container is meant to run as (checked after start)
    revoked: bool = False  # its session, by release_started or revoke_started
    # The gateway is a container on this network (at gateway_ip), not the host's bridge.
    bridged: bool = False


def _push_branches(grants: list[str]) -> str:
    """``agent/**,ff:main`` from ``["github.com/a/b:write=agent/**,ff:main", ...]``."""
    patterns: list[str] = []
    for g in grants:
        _, eq, rules = g.partition("=")
        for p in rules.split(",") if eq else []:
            if p not in patterns:
                patterns.append(p)
    return ",".join(patterns)


def docker_client() -> docker.DockerClient:
    try:
        return dockerclient.docker_client(timeout=60)
    except dockerclient.DockerUnavailable as exc:
        raise SandboxError(str(exc)) from None


def _ensure_tmpfs(directory: Path) -> None:
    """Session keys live on a tmpfs so they never reach a disk."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    target = str(directory.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == target and parts[2] == "tmpfs":
                return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0700,size=64m,nosuid,nodev,noexec", "tmpfs", target],
        check=True,
        capture_output=True,
    )


class SandboxManager:
    def __init__(
        self,
        config: Config,
        *,
        client: docker.DockerClient | None = None,
        control: ControlClient | None = None,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.config = config
        self._client = client
        self.control = control or ControlClient(config.gateway.control_socket)
        self.say = say
        self._gateway_id: str | None = None
        self._images: dict[str, dict[str, Any]] = {}

    @property
    def gateway_id(self) -> str:
        """The id of the gateway this manager's sandboxes belong to, as the gateway says it."""
        if self._gateway_id is None:
            try:
                health = self.control.health()
            except ControlError as exc:
                # `ps`, `logs`, `rm` and clean-up still work while the gateway is down: the
                # id is also in its state directory (root reads it; it is never created here).
                try:
                    gid = read_gateway_id(self.config.gateway.state_dir)
                except (GatewayIdError, OSError):
                    gid = None
                if gid is None:
                    raise SandboxError(f"the gateway is not available: {exc}") from None
                self._gateway_id = gid
                return gid
            gid = health.get("gateway_id")
            if not isinstance(gid, str) or not _GATEWAY_ID_RE.match(gid):
                raise SandboxError(
                    "the gateway did not give its id (an older gateway?): restart it with "
                    "this version of airlock"
                )
            # The socket must be this config's gateway: its id is in our state_dir too.
            with contextlib.suppress(GatewayIdError, OSError):
                kept = read_gateway_id(self.config.gateway.state_dir)
                if kept is not None and kept != gid:
                    raise SandboxError(
                        f"the gateway on {self.config.gateway.control_socket} says it is "
                        f"{gid}, but {self.config.gateway.state_dir} belongs to {kept}: "
                        "gateway.control_socket and gateway.state_dir name different gateways"
                    )
            self._gateway_id = gid
        return self._gateway_id

    def image_config(self, image: str) -> dict[str, Any]:
        """The image's ``Config`` (USER, WORKDIR, ENTRYPOINT, ...), asked of Docker once per
        start (the CLI's pre-check, the preflight and the plan all need it)."""
        if image not in self._images:
            self._images[image] = self.client.images.get(image).attrs.get("Config") or {}
        return self._images[image]

    @property
    def bundle_root(self) -> Path:
        return self.config.sandbox.bundle_dir / self.gateway_id

    def hold_path(self, sandbox_id: str) -> Path:
        """A lock the foreground `airlock run` holds while it waits for its container: while
        it is held, nobody else removes that container (it still reads its exit code)."""
        return self.config.sandbox.bundle_dir.parent / "holds" / self.gateway_id / sandbox_id

    @contextlib.contextmanager
    def hold(self, sandbox_id: str) -> Iterator[None]:
        path = self.hold_path(sandbox_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)

    def is_held(self, sandbox_id: str) -> bool:
        try:
            fd = os.open(self.hold_path(sandbox_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    # --- ports the sandbox may reach on its gateway address ---------------------------

    def rules_for(self, sb: Sandbox) -> firewall.SandboxRules:
        gw = self.config.gateway
        return firewall.SandboxRules(
            name=sb.id,
            bridge=sb.bridge,
            subnet=sb.subnet,
            gateway_ip=sb.gateway_ip,
            sandbox_ip=sb.sandbox_ip,
            tcp_ports=[gw.git_port, self.config.sandbox.proxy_port, gw.dns_port],
            udp_ports=[gw.dns_port],
            owner=self.gateway_id,
            bridged=sb.bridged,
        )

    # --- the gateway as a container on each sandbox network -----------------------------

    @property
    def container_mode(self) -> bool:
        return self.config.gateway.mode == "container"

    def gateway_container(self) -> str:
        """The id of this config's running gateway container (checked by its label; asked
        each time, since a long-lived supervisor outlives a re-created gateway container)."""
        name = self.config.gateway.container.name
        try:
            info = self.client.api.inspect_container(name)
        except docker.errors.NotFound:
            raise SandboxError(
                f"gateway.mode is container, but there is no container {name!r}: start the "
                "gateway first (`airlock gateway`)"
            ) from None
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL_GATEWAY_CONTAINER) != name:
            raise SandboxError(
                f"container {name!r} is not airlock's gateway (no {LABEL_GATEWAY_CONTAINER} "
                "label): refusing to connect it to a sandbox network"
            )
        if not info["State"].get("Running"):
            raise SandboxError(f"the gateway container {name!r} is not running")
        return str(info["Id"])

    def _join_gateway(self, sb: Sandbox) -> None:
        """Connect the gateway's container to the sandbox network at its fixed address."""
        cid = self.gateway_container()
        try:
            self.client.api.connect_container_to_network(
                cid, sb.network, ipv4_address=str(sb.gateway_ip)
            )
        except docker.errors.APIError as exc:
            if "already exists" not in str(exc.explanation or ""):
                raise SandboxError(
                    f"cannot connect the gateway container to {sb.network}: {exc.explanation}"
                ) from None

    def _leave_gateway(self, network: str) -> None:
        if not self.container_mode:
            return
        try:
            cid = self.gateway_container()
            self.client.api.disconnect_container_from_network(cid, network, force=True)
        except (docker.errors.NotFound, SandboxError):
            pass  # the network or the gateway container is gone: nothing is connected
        except docker.errors.APIError as exc:
            if "is not connected" not in str(exc.explanation or "") and not _already_going(exc):
                raise

    # --- start ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _pool_lock(self) -> Iterator[None]:
        # Concurrent `airlock run`s must not pick the same subnet, also those of another
        # gateway on this host: the lock is host-wide (and root's only: host/locks.py).
        with host_lock("pool.lock"):
            yield

    def _taken_subnets(self) -> list[ipaddress.IPv4Network]:
        taken = []
        for net in self.client.networks.list():
            for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    taken.append(ipaddress.IPv4Network(cfg["Subnet"]))
        return taken

    def _preflight(self, spec: RunSpec) -> None:
        try:
            check_gate_binary(self.config.sandbox.gate_binary)
        except GateError as exc:
            raise SandboxError(str(exc)) from None
        try:
            self.control.health()
        except ControlError as exc:
            raise SandboxError(f"the gateway is not available: {exc}") from None
        self.gateway_id  # noqa: B018 (the gateway says its id)
        try:
            self.image_config(spec.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"image {spec.image!r} not found locally; airlock never pulls: build or "
                "import it first (`airlock image` builds the default sandbox image)"
            ) from None
        if spec.name is not None and not _NAME_RE.match(spec.name):
            raise SandboxError(f"--name {spec.name!r}: use lowercase letters, digits, . _ -")
        if not spec.grants and not spec.allow_hosts:
            self.say("note: no --grant given; the sandbox can reach no repository")

    def start(self, spec: RunSpec, *, open_gate: bool = True) -> Sandbox:
        """Create everything and start the container; on failure leave nothing behind.

        With ``open_gate=False`` the command waits until :meth:`open_gate` (so a caller can
        attach to its output first).
        """
        t0 = time.perf_counter()
        self._preflight(spec)
        sid = secrets.token_hex(5)
        name = spec.name or f"airlock-{sid}"
        if self._find_containers(name=name):
            raise SandboxError(f"a sandbox named {name!r} already exists")
        preflight = time.perf_counter() - t0
        undo: list[Callable[[], object]] = []
        # Held from the session's certificate to its bundle on disk: a `rotate ca` (which
        # holds it from listing the bundles to its commit) sees this bundle, or issues after.
        bundles_lock = contextlib.ExitStack()
        try:
            spare = self._claim_spare(name, undo)
            sb = spare or self._create_network(sid, name, undo)
            sb.timings["preflight"] = preflight
            sb.timings["network"] = time.perf_counter() - t0 - preflight
            steps: list[tuple[str, Callable[[], object]]] = []
            if spare is None:
                steps.append(("firewall", lambda: self._apply_firewall(sb, undo)))
            steps += [
                ("listener", lambda: self._listen(sb, undo)),
                ("session", lambda: self._locked_session(sb, spec, undo, bundles_lock)),
                ("bundle", lambda: self._unlocked_bundle(sb, undo, bundles_lock)),
                ("create", lambda: self._create_container(sb, spec, undo)),
                ("claimed", lambda: _unlink(sb.claimed)),
                ("start+activate", lambda: self._start_and_activate(sb)),
            ]
            if open_gate:
                steps.append(("gate", lambda: self.open_gate(sb)))
            for label, run in steps:
                t = time.perf_counter()
                run()
                sb.timings[label] = time.perf_counter() - t
            return sb
        except BaseException:
            bundles_lock.close()
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise

    def _create_network(self, sid: str, name: str, undo: list[Callable[[], object]]) -> Sandbox:
        cfg = self.config.sandbox
        pool = ipaddress.IPv4Network(cfg.pool)
        with self._pool_lock():
            try:
                check_pool(pool, host_networks())
                subnet = allocate_subnet(pool, cfg.prefixlen, self._taken_subnets())
            except PoolError as exc:
                raise SandboxError(f"sandbox.pool: {exc}") from None
            bridged = self.container_mode
            if bridged and cfg.prefixlen > 29:
                raise SandboxError(
                    "sandbox.prefixlen: a gateway container needs an address of its own on "
                    "each sandbox network; use 29 or less"
                )
            # Docker's bridge gateway (the host's address on the bridge) is always the
            # first address; a gateway container takes the second, the sandbox the next.
            gateway_ip, sandbox_ip = (subnet[2], subnet[3]) if bridged else (subnet[1], subnet[2])
            bridge = f"al-{sid}"
            network = f"airlock-{sid}"
            try:
                self.client.networks.create(
                    network,
                    driver="bridge",
                    internal=True,
                    enable_ipv6=False,
                    ipam=IPAMConfig(
                        pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))]
                    ),
                    options={
                        "com.docker.network.bridge.name": bridge,
                        # Off: Docker drops container-to-container traffic. With a gateway
                        # container on the bridge it must pass; our rules (firewall.py,
                        # "bridged") allow the sandbox to reach its ports and nothing else.
                        "com.docker.network.bridge.enable_icc": "true" if bridged else "false",
                        "com.docker.network.bridge.enable_ip_masquerade": "false",
                    },
                    labels={
                        LABEL: sid,
                        LABEL_OWNER: self.gateway_id,
                        LABEL_NAME: name,
                        LABEL_GATEWAY: str(gateway_ip),
                        LABEL_SANDBOX_IP: str(sandbox_ip),
                        LABEL_GATEWAY_MODE: "container" if bridged else "host",
                    },
                )
            except docker.errors.APIError as exc:
                raise SandboxError(
                    f"cannot create the sandbox network: {exc.explanation}"
                ) from None
        undo.append(lambda: self._remove_network(network))
        return Sandbox(sid, name, network, bridge, subnet, gateway_ip, sandbox_ip, bridged=bridged)

    # --- spare networks: made ahead of need (by supervise), so a start skips two steps ----

    @property
    def spare_dir(self) -> Path:
        return self.config.sandbox.bundle_dir.parent / "spares" / self.gateway_id

    def spare_ids(self) -> set[str]:
        d = self.spare_dir
        return {p.name for p in d.iterdir() if "." not in p.name} if d.is_dir() else set()

    def claimed_recently(self, sandbox_id: str, within: float) -> bool:
        """A spare network a start has claimed but not yet given a container."""
        try:
            st = (self.spare_dir / f"{sandbox_id}.claimed").stat()
        except FileNotFoundError:
            return False
        return time.time() - st.st_mtime < within

    def prepare_spares(self, count: int) -> int:
        """Make networks with verified rules until ``count`` are ready; how many were made.

        A spare is a sandbox network of a new id with its rules installed and verified, and a
        marker file; a start claims one by unlinking its marker (exactly one process wins).
        The rules are verified once more after the container starts, before activation."""
        have = self.spare_ids() & {
            str((n.get("Labels") or {}).get(LABEL)) for n in self.own_networks()
        }
        made = 0
        self.spare_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(max(0, count - len(have))):
            undo: list[Callable[[], object]] = []
            try:
                sb = self._create_network(secrets.token_hex(5), "", undo)
                self._apply_firewall(sb, undo)
                (self.spare_dir / sb.id).write_text("")
                made += 1
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                raise
        return made

    def _claim_spare(self, name: str, undo: list[Callable[[], object]]) -> Sandbox | None:
        for sid in sorted(self.spare_ids()):
            claimed = self.spare_dir / f"{sid}.claimed"
            try:
                # One winner; the ".claimed" name tells `supervise` a start is using it.
                os.utime(self.spare_dir / sid)  # the claim's age starts now (rename keeps it)
                os.rename(self.spare_dir / sid, claimed)
            except FileNotFoundError:
                continue  # another start took it
            nets = self.own_networks(sid)
            if not nets:
                claimed.unlink(missing_ok=True)
                continue
            try:
                detail = self.client.api.inspect_network(nets[0]["Id"])
                sb = sandbox_from_network(sid, detail)
            except (docker.errors.APIError, KeyError, ValueError):
                self.teardown(sid, "spare network unusable")
                continue
            if sb.bridged != self.container_mode:  # made for the other gateway mode
                self.teardown(sid, "spare network of the other gateway mode")
                continue
            sb.name = name
            sb.claimed = claimed
            undo.append(partial(firewall.remove_rules, sid))
            undo.append(partial(self._remove_network, sb.network))
            return sb
        return None

    def _apply_firewall(self, sb: Sandbox, undo: list[Callable[[], object]]) -> None:
        rules = self.rules_for(sb)
        undo.append(lambda: firewall.remove_rules(sb.id))
        try:
            firewall.apply_rules(rules)
            if sb.bridged:  # the rules see traffic across the bridge only with this
                firewall.ensure_bridge_netfilter(sb.bridge)
        except firewall.FirewallError as exc:
            raise SandboxError(f"cannot install firewall rules: {exc}") from None
        if not firewall.verify_rules(rules):
            raise SandboxError("firewall rules did not verify after install; not starting")

    def _listen(self, sb: Sandbox, undo: list[Callable[[], object]]) -> None:
        address = str(sb.gateway_ip)
        if sb.bridged:
            if not self.container_mode:
                raise SandboxError("a container-mode network, but gateway.mode is host")
            undo.append(lambda: self._leave_gateway(sb.network))
            self._join_gateway(sb)
        undo.append(lambda: self.control.remove_listener(address))
        try:
            self.control.add_listener(address)
        except ControlError as exc:
            raise SandboxError(f"the gateway cannot listen on the sandbox network: {exc}") from None

    def _locked_session(
        self,
        sb: Sandbox,
        spec: RunSpec,
        undo: list[Callable[[], object]],
        lock: contextlib.ExitStack,
    ) -> None:
        lock.enter_context(host_lock(bundle_lock_name(self.gateway_id)))
        self._create_session(sb, spec, undo)

    def _unlocked_bundle(
        self, sb: Sandbox, undo: list[Callable[[], object]], lock: contextlib.ExitStack
    ) -> None:
        self._write_bundle(sb, undo)
        lock.close()

    def _create_session(self, sb: Sandbox, spec: RunSpec, undo: list[Callable[[], object]]) -> None:
        sb.key = new_private_key()
        try:
            sb.issued = self.control.create_session(
                grants=spec.grants,
                csr=make_csr(sb.key).decode(),
                ttl=spec.ttl,
                require_activation=True,
                allow_hosts=[*self.config.sandbox.allow_hosts, *spec.allow_hosts],
                labels={"sandbox": sb.id, "name": sb.name, "gateway": self.gateway_id},
                idle_timeout=spec.idle_timeout,
            )
        except ControlError as exc:
            raise SandboxError(f"the gateway refused the session: {exc}") from None
        sid = sb.issued["session"]["id"]
        sb.session_id = sid
        undo.append(lambda: self.control.revoke(sid, "sandbox start failed"))

    def _write_bundle(self, sb: Sandbox, undo: list[Callable[[], object]]) -> None:
        cfg = self.config.sandbox
        _ensure_tmpfs(cfg.bundle_dir)
        self.bundle_root.mkdir(mode=0o700, exist_ok=True)
        d = self.bundle_root / sb.id
        undo.append(lambda: shutil.rmtree(d, ignore_errors=True))
        gw = self.config.gateway
        endpoint = GatewayEndpoint(gw.public_name, str(sb.gateway_ip), gw.git_port)
        write_bundle(
            d,
            sb.issued,
            key_pem(sb.key),
            endpoint=endpoint,
            mount_point=MOUNT_POINT,
            resolve=False,  # the container's hosts file names the gateway
            key_mode=0o400,
            uid=cfg.uid,
            basic=True,  # the git password for libgit2/cargo, usable from this sandbox only
        )
        api = sb.issued.get("api") or {}
        if api.get("ca_pem"):
            write_api_trust(d, api["ca_pem"], cfg.ca_bundle, uid=cfg.uid)
        (d / "resolv.conf").write_text(
            f"nameserver {sb.gateway_ip}\noptions timeout:2 attempts:1\n"
        )
        os.chmod(d, 0o500)
        sb.bundle_dir = d

    def _environment(self, sb: Sandbox, spec: RunSpec) -> dict[str, str]:
        # The proxy token is a session credential like the client key: useless off this
        # sandbox's network. The upstream token is never in the sandbox's environment.
        token = sb.issued.get("proxy_token", "")
        proxy = f"http://airlock:{token}@{sb.gateway_ip}:{self.config.sandbox.proxy_port}"
        env = {
            "GIT_CONFIG_SYSTEM": str(MOUNT_POINT / "gitconfig"),
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "https_proxy": proxy,
            "http_proxy": proxy,
            "NO_PROXY": f"{self.config.gateway.public_name},{sb.gateway_ip}",
            "no_proxy": f"{self.config.gateway.public_name},{sb.gateway_ip}",
            "AIRLOCK_SANDBOX": sb.id,
            # What this sandbox may push, so an agent picks a branch name that is accepted:
            # the grants as the gateway holds them (HOST/OWNER/REPO:write=PATTERNS), and the
            # union of their patterns.
            "AIRLOCK_GRANTS": " ".join(sb.issued.get("session", {}).get("grants", [])),
            "AIRLOCK_PUSH_BRANCHES": _push_branches(sb.issued.get("session", {}).get("grants", [])),
        }
        api = sb.issued.get("api") or {}
        if api.get("ca_pem") and sb.issued.get("api_token"):
            trust = api_environment(MOUNT_POINT, sb.issued["api_token"], api.get("hosts", {}))
            # A CA variable the user set (-e) stays theirs: e.g. REQUESTS_CA_BUNDLE for a
            # private index, which requests prefers even to pip's --cert.
            env.update({k: v for k, v in trust.items() if k not in spec.env})
        return env

    def _mounts(self, sb: Sandbox, plan: ContainerPlan) -> list[Mount]:
        assert sb.bundle_dir is not None
        own = [
            Mount(str(MOUNT_POINT), str(sb.bundle_dir), type="bind", read_only=True),
            Mount(GATE_PATH, str(self.config.sandbox.gate_binary), type="bind", read_only=True),
            Mount(
                "/etc/resolv.conf", str(sb.bundle_dir / "resolv.conf"), type="bind", read_only=True
            ),
        ]
        return [*own, *plan.mounts]

    def _create_container(
        self, sb: Sandbox, spec: RunSpec, undo: list[Callable[[], object]]
    ) -> None:
        try:
            plan = plan_container(spec, self.image_config(spec.image), self.config.sandbox)
        except SpecError as exc:
            raise SandboxError(str(exc)) from None
        networking = self.client.api.create_networking_config(
            {sb.network: self.client.api.create_endpoint_config(ipv4_address=str(sb.sandbox_ip))}
        )
        host_config = self.client.api.create_host_config(
            network_mode=sb.network,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            pids_limit=plan.pids_limit,
            mem_limit=plan.mem_limit,
            nano_cpus=plan.nano_cpus,
            read_only=plan.read_only,
            mounts=self._mounts(sb, plan),
            # The upstream hosts too, for git clients that do not read curloptResolve
            # (libgit2): git's host-form URLs (https://github.com:PORT/...) reach the gateway.
            extra_hosts={
                **{h: str(sb.gateway_ip) for h in self.config.upstream_hosts},
                self.config.gateway.public_name: str(sb.gateway_ip),
            },
            dns=[str(sb.gateway_ip)],
            tmpfs=plan.tmpfs,
            init=plan.init,
        )
        labels = {**plan.labels, LABEL: sb.id, LABEL_SESSION: sb.session_id or ""}
        # Every airlock.* label is set here, also to "0": an image's own LABELs are inherited
        # by its containers and must not decide anything (airlock.remove=1 from an image).
        labels.update({LABEL_NAME: sb.name, LABEL_OWNER: self.gateway_id})
        labels[LABEL_REMOVE] = "1" if spec.remove else "0"
        try:
            created = self.client.api.create_container(
                spec.image,
                command=gate_command(plan.argv),
                entrypoint=[],
                user=plan.user,
                environment={**plan.environment, **self._environment(sb, spec)},
                labels=labels,
                name=sb.name,
                hostname=plan.hostname or sb.name[:63],
                host_config=host_config,
                networking_config=networking,
                stdin_open=spec.interactive,
                tty=spec.tty,
                working_dir=plan.working_dir,
            )
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot create the container: {exc.explanation}") from None
        sb.container_id = created["Id"]
        cid = created["Id"]
        undo.append(lambda: self.client.api.remove_container(cid, force=True))
        # The bundle was written for sandbox.uid; the container may run as another user (the
        # image's USER, -u): the bundle (key 0400, directory 0500) must be that user's.
        uid = self._container_uid(cid, plan.user)
        sb.uid = uid
        if uid != self.config.sandbox.uid:
            self._chown_bundle(sb, uid)

    def _image_file(self, container_id: str, path: str) -> str | None:
        """A small text file of the created container's file system (None if absent)."""
        try:
            stream, info = self.client.api.get_archive(container_id, path)
        except docker.errors.NotFound:
            return None
        limit = 4 << 20
        if int(info.get("size") or 0) > limit:
            raise SandboxError(f"the image's {path} is too large to read")
        data = b""
        for chunk in stream:
            data += chunk
            if len(data) > limit + (64 << 10):  # the file plus its tar headers
                raise SandboxError(f"the image's {path} is too large to read")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            f = tar.extractfile(member) if member is not None else None
            return f.read().decode(errors="replace") if f is not None else None

    def _container_uid(self, container_id: str, user: str) -> int:
        name, _, group = user.partition(":")
        if re.fullmatch(r"[0-9]+", name):
            uid = int(name)
            if not 0 < uid < 2**31:
                raise SandboxError(f"user {user!r}: the sandbox never runs as root")
            return uid
        passwd = self._image_file(container_id, "/etc/passwd")
        groups = self._image_file(container_id, "/etc/group") if group else None
        try:
            uid = resolve_user(user, passwd, groups).uid
        except SpecError as exc:
            raise SandboxError(str(exc)) from None
        if not 0 < uid < 2**31:
            raise SandboxError(f"user {user!r}: uid {uid} is out of range")
        # What Docker (runc) really made of the image's passwd is checked after the start,
        # in _verify, from the process itself: a parser difference fails closed.
        return uid

    def _chown_bundle(self, sb: Sandbox, uid: int) -> None:
        assert sb.bundle_dir is not None
        d = sb.bundle_dir
        for entry in os.scandir(d):
            if entry.is_file(follow_symlinks=False):
                os.chown(entry.path, uid, uid, follow_symlinks=False)
        os.chown(d, uid, uid)

    def _verify(self, sb: Sandbox) -> dict[str, Any]:
        """Inspect the container through the Docker API and check it is the one we made."""
        info: dict[str, Any] = self.client.api.inspect_container(sb.container_id)
        labels = info["Config"].get("Labels") or {}
        nets = info["NetworkSettings"]["Networks"]
        problems = []
        if info["Id"] != sb.container_id:
            problems.append("id differs")
        if labels.get(LABEL) != sb.id or labels.get(LABEL_SESSION) != sb.session_id:
            problems.append("labels differ")
        if set(nets) != {sb.network}:
            problems.append(f"networks are {sorted(nets)}")
        elif nets[sb.network].get("IPAddress") != str(sb.sandbox_ip):
            problems.append(f"address is {nets[sb.network].get('IPAddress')!r}")
        if not info["State"].get("Running"):
            problems.append(f"state is {info['State'].get('Status')}")
        if info["HostConfig"].get("CapAdd"):
            problems.append("capabilities were added")
        ids = _process_ids(int(info["State"].get("Pid") or 0))
        if ids is None:
            problems.append("its process cannot be inspected")
        elif 0 in ids or (sb.uid is not None and ids[:4] != [sb.uid] * 4):
            # The image's passwd as Docker parsed it: never root, and the uid we gave the
            # bundle to (a name Docker reads differently from us fails here, closed).
            problems.append(f"it runs as uid/gid {ids}, not {sb.uid}")
        others = self.client.api.inspect_network(sb.network).get("Containers") or {}
        gateway: set[str] = set()
        if sb.bridged:
            gateway = {self.gateway_container()}
            seen = (others.get(next(iter(gateway))) or {}).get("IPv4Address", "")
            if seen.partition("/")[0] != str(sb.gateway_ip):
                problems.append(f"the gateway container is at {seen!r}, not {sb.gateway_ip}")
        if set(others) - {sb.container_id} - gateway:
            problems.append("another container joined the sandbox network")
        if problems:
            raise SandboxError("container verification failed: " + "; ".join(problems))
        return info

    def _start_and_activate(self, sb: Sandbox) -> None:
        t = time.perf_counter()
        try:
            self.client.api.start(sb.container_id)
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot start the container: {exc.explanation}") from None
        sb.timings["docker start"] = time.perf_counter() - t
        t = time.perf_counter()
        self._verify(sb)
        sb.timings["inspect"] = time.perf_counter() - t
        t = time.perf_counter()
        # Rules could have been flushed between install and start: check once more.
        if not firewall.verify_rules(self.rules_for(sb)):
            raise SandboxError("firewall rules are missing; refusing to activate")
        if sb.bridged and not firewall.bridge_netfilter_on(sb.bridge):
            raise SandboxError("bridged traffic bypasses the firewall; refusing to activate")
        sb.timings["rules re-check"] = time.perf_counter() - t
        assert sb.session_id is not None and sb.container_id is not None
        self.control.activate(
            sb.session_id,
            container_id=sb.container_id,
            network=sb.network,
            address=str(sb.sandbox_ip),
            gateway_address=str(sb.gateway_ip),
        )

    def open_gate(self, sb: Sandbox) -> None:
        assert sb.bundle_dir is not None
        os.chmod(sb.bundle_dir, 0o700)
        (sb.bundle_dir / READY_FILE).write_text("")
        os.chmod(sb.bundle_dir / READY_FILE, 0o444)
        os.chmod(sb.bundle_dir, 0o500)

    # --- stop and clean up ---------------------------------------------------------------

    def _own(self, *labels: str) -> dict[str, Any]:
        return {"label": [f"{LABEL_OWNER}={self.gateway_id}", *labels]}

    def _find_containers(self, *, all: bool = True, **filters: str) -> list[dict[str, Any]]:
        extra = [LABEL]
        if "name" in filters:
            extra = [f"{LABEL_NAME}={filters['name']}"]
        if "sandbox" in filters:
            extra = [f"{LABEL}={filters['sandbox']}"]
        result: list[dict[str, Any]] = self.client.api.containers(
            all=all, filters=self._own(*extra)
        )
        return result

    def own_networks(self, sandbox_id: str | None = None) -> list[dict[str, Any]]:
        label = LABEL if sandbox_id is None else f"{LABEL}={sandbox_id}"
        nets: list[dict[str, Any]] = self.client.api.networks(filters=self._own(label))
        return nets

    def _remove_network(self, network: str) -> None:
        # Anything still attached (a container someone else connected) is disconnected first:
        # Docker refuses to remove a network with active endpoints. A container whose removal
        # is in progress elsewhere holds its endpoint for a moment: retry, briefly.
        for attempt in range(20):
            try:
                info = self.client.api.inspect_network(network)
                for cid in info.get("Containers") or {}:
                    with contextlib.suppress(docker.errors.NotFound):
                        self.client.api.disconnect_container_from_network(cid, network, force=True)
                self.client.api.remove_network(network)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if attempt == 19 or "active endpoints" not in str(exc.explanation):
                    raise
                time.sleep(0.1)

    def _remove_container(self, container_id: str) -> None:
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.APIError as exc:
            if not _already_going(exc):
                raise

    def _attempts(self) -> tuple[list[str], Callable[[str, Callable[[], object]], None]]:
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except (docker.errors.NotFound, FileNotFoundError):
                pass
            except docker.errors.APIError as exc:
                if not _already_going(exc):
                    errors.append(f"{what}: {exc.explanation or exc}")
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        return errors, attempt

    def release(
        self,
        sandbox_id: str,
        reason: str = "sandbox exited",
        *,
        sessions: list[dict[str, Any]] | None = None,
    ) -> bool:
        """What goes the moment a sandbox's container exits: its session (revoked), its
        bundle with the session key, and the gateway's listener on its network. The
        container, its network and rules stay. Idempotent; True if anything was released."""
        errors, attempt = self._attempts()
        did = False
        containers: list[dict[str, Any]] = []
        attempt(
            "list containers", lambda: containers.extend(self._find_containers(sandbox=sandbox_id))
        )
        if sessions is None:
            with contextlib.suppress(ControlError):
                sessions = self.control.list_sessions()
        known = sessions or []
        revoked = {s["id"] for s in known if s["state"] == "revoked"}
        session_ids = {str((c.get("Labels") or {}).get(LABEL_SESSION) or "") for c in containers}
        session_ids.update(self._sessions_of(sandbox_id, known))
        for session_id in session_ids - revoked - {""}:
            did = True
            attempt(f"revoke {session_id}", partial(self.control.revoke, session_id, reason))
        d = self.bundle_root / sandbox_id
        if d.exists():
            did = True

            def remove_bundle() -> None:
                os.chmod(d, 0o700)
                shutil.rmtree(d)

            attempt("remove bundle", remove_bundle)
        nets: list[dict[str, Any]] = []
        attempt("list networks", lambda: nets.extend(self.own_networks(sandbox_id)))
        addresses = {str((n.get("Labels") or {}).get(LABEL_GATEWAY) or "") for n in nets}
        # Also from the sessions' bindings: if the network is gone already (removed by
        # someone else first), a listener left on its address would keep the address bound
        # in the kernel and break the next network on that subnet ("address in use").
        bound = {
            str(s["binding"].get("gateway_address") or "")
            for s in known
            if s.get("labels", {}).get("sandbox") == sandbox_id and s.get("binding")
        }
        if bound - addresses:
            # ... unless the address is another sandbox's now (its subnet was reused).
            others: list[dict[str, Any]] = []
            attempt("list networks", lambda: others.extend(self.own_networks()))
            addresses |= bound - {
                str((n.get("Labels") or {}).get(LABEL_GATEWAY) or "")
                for n in others
                if (n.get("Labels") or {}).get(LABEL) != sandbox_id
            }
        for gw in sorted(addresses - {""}):
            attempt(f"remove listener {gw}", partial(self.control.remove_listener, gw))
        for n in nets:
            if (n.get("Labels") or {}).get(LABEL_GATEWAY_MODE) == "container":
                attempt(
                    f"disconnect the gateway from {n['Name']}",
                    partial(self._leave_gateway, n["Id"]),
                )
        if errors:
            raise SandboxError(f"sandbox {sandbox_id} not fully released: " + "; ".join(errors))
        return did

    def revoke_started(self, sb: Sandbox, reason: str = "sandbox exited") -> None:
        """Revoke the session of a sandbox this process started (the rest: release_started)."""
        if sb.session_id and not sb.revoked:
            with contextlib.suppress(ControlError):
                self.control.revoke(sb.session_id, reason)
                sb.revoked = True

    def release_started(self, sb: Sandbox, reason: str = "sandbox exited") -> bool:
        """:meth:`release` for a sandbox this process started: it knows the session, bundle
        and listener, so nothing is listed first. True when all of it went."""
        try:
            if sb.session_id and not sb.revoked:
                self.control.revoke(sb.session_id, reason)
            if sb.bundle_dir is not None and sb.bundle_dir.exists():
                os.chmod(sb.bundle_dir, 0o700)
                shutil.rmtree(sb.bundle_dir)
            self.control.remove_listener(str(sb.gateway_ip))
            if sb.bridged:
                self._leave_gateway(sb.network)
        except (ControlError, OSError, SandboxError, docker.errors.APIError):
            return False
        return True

    def teardown(
        self, sandbox_id: str, reason: str = "sandbox stopped", *, released: bool = False
    ) -> None:
        """Remove everything a sandbox owns. Safe to call twice, and for half-built ones.

        Every step is tried even when an earlier one fails; the session is revoked and the
        bundle (with the session key) removed first, and one error is raised at the end.
        """
        errors, attempt = self._attempts()
        try:
            if not released:  # ``released``: release_started() did all of it
                self.release(sandbox_id, reason)
        except SandboxError as exc:
            errors.append(str(exc))
        containers: list[dict[str, Any]] = []
        attempt(
            "list containers", lambda: containers.extend(self._find_containers(sandbox=sandbox_id))
        )
        for c in containers:
            attempt(f"remove container {c['Id'][:12]}", partial(self._remove_container, c["Id"]))
        nets: list[dict[str, Any]] = []
        attempt("list networks", lambda: nets.extend(self.own_networks(sandbox_id)))
        attempt("remove firewall rules", lambda: firewall.remove_rules(sandbox_id))
        for n in nets:
            attempt(f"remove network {n['Name']}", partial(self._remove_network, n["Id"]))
        # When another party's removal of the network was in progress, ours found it gone
        # while Docker was still deleting the bridge: done means the bridge is gone too.
        deadline = time.monotonic() + 3
        while Path(f"/sys/class/net/al-{sandbox_id}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        attempt("remove spare marker", (self.spare_dir / sandbox_id).unlink)
        attempt("remove claim marker", (self.spare_dir / f"{sandbox_id}.claimed").unlink)
        if errors:
            raise SandboxError(f"sandbox {sandbox_id} not fully removed: " + "; ".join(errors))

    def _sessions_of(
        self, sandbox_id: str, sessions: list[dict[str, Any]] | None = None
    ) -> list[str]:
        if sessions is None:
            try:
                sessions = self.control.list_sessions()
            except ControlError:
                return []
        return [
            s["id"]
            for s in sessions
            if s.get("labels", {}).get("sandbox") == sandbox_id and s["state"] != "revoked"
        ]

    def list(self, *, all: bool = True) -> list[dict[str, Any]]:
        return self._find_containers(all=all)

    def sandbox_id_of(self, name: str) -> str | None:
        found = self._find_containers(name=name) or self._find_containers(sandbox=name)
        if found:
            labels: dict[str, str] = found[0].get("Labels") or {}
            return labels.get(LABEL)
        nets = self.client.api.networks(filters=self._own(f"{LABEL_NAME}={name}"))
        if nets:
            return str(nets[0]["Labels"][LABEL])
        return None

    def _require(self, name: str) -> str:
        sid = self.sandbox_id_of(name)
        if sid is None:
            raise SandboxError(f"no sandbox named {name!r} (see `airlock ps -a`)")
        return sid

    def stop(self, name: str, timeout: int = 10) -> None:
        """Like `docker stop`: the container stays (with its logs and exit code) unless it was
        started with --rm; its session is revoked either way."""
        sid = self._require(name)
        remove = False
        for c in self._find_containers(sandbox=sid):
            remove = remove or (c.get("Labels") or {}).get(LABEL_REMOVE) == "1"
            try:
                self.client.api.stop(c["Id"], timeout=timeout)
            except docker.errors.APIError as exc:
                if not _already_going(exc):
                    raise SandboxError(f"cannot stop {name}: {exc.explanation}") from None
        if remove and not self.is_held(sid):
            self.teardown(sid)
        else:
            self.release(sid, "sandbox stopped")

    def remove(self, name: str, *, force: bool = False) -> None:
        """Like `docker rm`: a running sandbox needs ``force`` (it is killed first)."""
        sid = self._require(name)
        running = [c for c in self._find_containers(sandbox=sid) if c.get("State") == "running"]
        if running and not force:
            raise SandboxError(f"sandbox {name} is running: stop it first, or use rm -f")
        self.teardown(sid, "sandbox removed")

    def container_of(self, name: str) -> dict[str, Any]:
        sid = self._require(name)
        found = self._find_containers(sandbox=sid)
        if not found:
            raise SandboxError(f"sandbox {name!r} has no container")
        return found[0]

    def all_sandbox_ids(self) -> set[str]:
        ids = {(c.get("Labels") or {}).get(LABEL) for c in self._find_containers()}
        for n in self.own_networks():
            ids.add((n.get("Labels") or {}).get(LABEL))
        ids |= firewall.list_sandbox_rule_names(owner=self.gateway_id)
        if self.bundle_root.is_dir():
            ids |= {p.name for p in self.bundle_root.iterdir() if p.is_dir()}
        return {i for i in ids if i}

    def wait(self, sb: Sandbox) -> int:
        result = self.client.api.wait(sb.container_id)
        return int(result.get("StatusCode", 1))


def _process_ids(pid: int) -> list[int] | None:
    """Real, effective, saved and file-system uids, then the four gids, of a host process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
        return [int(x) for x in lines["Uid"][:4]] + [int(x) for x in lines["Gid"][:4]]
    except (OSError, KeyError, ValueError):
        return None


def _unlink(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def sandbox_from_network(sid: str, net: dict[str, Any]) -> Sandbox:
    """A sandbox's addresses as its network (inspected) records them in its labels."""
    labels = net.get("Labels") or {}
    subnet = ipaddress.IPv4Network(net["IPAM"]["Config"][0]["Subnet"])
    return Sandbox(
        id=sid,
        name=labels.get(LABEL_NAME) or sid,
        network=net["Name"],
        bridge=net["Options"]["com.docker.network.bridge.name"],
        subnet=subnet,
        gateway_ip=ipaddress.IPv4Address(labels[LABEL_GATEWAY]),
        sandbox_ip=ipaddress.IPv4Address(labels[LABEL_SANDBOX_IP]),
        bridged=labels.get(LABEL_GATEWAY_MODE) == "container",
    )


def _already_going(exc: docker.errors.APIError) -> bool:
    """Docker's answers that mean someone else is already removing it, or has."""
    if isinstance(exc, docker.errors.NotFound):
        return True
    text = str(exc.explanation or exc)
    return exc.status_code == 409 and (
        "already in progress" in text or "is not running" in text or "No such" in text
    )


def _pump(stream: Iterator[tuple[bytes | None, bytes | None]]) -> None:
    for out, err in stream:
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
        if err:
            sys.stderr.buffer.write(err)
            sys.stderr.buffer.flush()


# Set by the run agent's child (host/runagent.py): told the exit code as soon as the output is
# complete and the session revoked, before the (slower) removal of a --rm sandbox.
report_exit: Callable[[int], None] | None = None


def run_foreground(manager: SandboxManager, spec: RunSpec) -> int:
    """Start a sandbox with its streams attached, like `docker run`; its exit code is ours.

    While it waits, this process holds the sandbox's hold lock, so a `supervise` that sees the
    container exit revokes its session but leaves the container (and its exit code) to us.
    """
    sb = manager.start(spec, open_gate=False)
    attach: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    released = False
    with manager.hold(sb.id):
        try:
            if spec.interactive or spec.tty:
                # Terminal and stdin forwarding: the docker CLI does this best.
                attach = subprocess.Popen(
                    ["docker", "attach", "--sig-proxy=true", sb.container_id or ""]
                )
                time.sleep(0.5)  # the gate holds the command until the attach is in place
            else:
                # Attached here, before the gate opens (the request is made by attach()
                # itself), so the first byte of output is already on this stream.
                stream = manager.client.api.attach(
                    sb.container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
                )
                pump = threading.Thread(target=_pump, args=(stream,), daemon=True)
                pump.start()
            manager.open_gate(sb)
            try:
                code = manager.wait(sb)
            except KeyboardInterrupt:
                with contextlib.suppress(Exception):
                    manager.client.api.stop(sb.container_id, timeout=5)
                code = 130
            except docker.errors.NotFound:
                raise SandboxError(
                    f"the container of sandbox {sb.name} was removed before it exited"
                ) from None
            if report_exit is not None:
                # The run agent tells the exit code as soon as the output is complete: revoke
                # first (the moment it exited), the rest of the release after the answer.
                manager.revoke_started(sb, "sandbox exited")
            else:
                released = manager.release_started(sb, "sandbox exited")
            if pump is not None:
                pump.join(10)
            if attach is not None:
                try:
                    attach.wait(10)
                except subprocess.TimeoutExpired:
                    attach.terminate()
            if report_exit is not None:
                report_exit(code)
                released = manager.release_started(sb, "sandbox exited")
            return code
        finally:
            if spec.remove:
                try:
                    manager.teardown(sb.id, "sandbox exited", released=released)
                except SandboxError as exc:
                    # The command's exit code stays ours; `supervise` retries the removal.
                    manager.say(f"warning: {exc}")
            elif not released:
                with contextlib.suppress(SandboxError):
                    manager.release(sb.id, "sandbox exited")
