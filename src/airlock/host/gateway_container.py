"""The gateway as a hardened container (``gateway.mode = "container"``).

:func:`plan` is pure: from the config (and what the shell found: the network's subnet, the
control socket directory's entries, the seccomp profile) it decides everything about the
container: image, user, read-only root, tmpfs, capabilities, security options, mounts,
network, published port, labels, and the translated config the gateway reads inside. It
refuses (:class:`GatewayContainerError`) what would hand the container more than the
gateway's own files. :class:`GatewayContainer` executes a plan with the Docker SDK.

Inside, the gateway sees:

- ``/var/lib/airlock``: ``gateway.state_dir`` (rw, owned by ``gateway.container.uid``);
- ``/run/airlock-control``: the control socket's directory (rw; it must hold nothing but the
  socket and its lock);
- ``/var/log/airlock``: the audit log's directory (rw), when ``gateway.audit_log`` is set;
- ``/run/secrets/airlock``: copies of the credential files (token files, App keys, CA
  files), each owned by the container's uid with mode 0400, in a root-owned directory of
  their own on the host (``/run/airlock-gateway/<name>/secrets``), mounted read-only as a
  directory, so :func:`refresh_secrets` (a rotation) is seen at once;
- ``/etc/airlock``: the translated config (read-only): the user's TOML with these paths,
  ``git_listen`` on the container's own address and ``mode = "host"`` (inside, it *is*
  the gateway process).

Nothing else: no Docker socket, no host directory but these, no credential in its
environment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.config import Config, parse_config
from airlock.core.hostpaths import handed_over_problem
from airlock.host import firewall

__all__ = [
    "CONFIG_DIR",
    "LABEL",
    "RUNTIME_ROOT",
    "ContainerPlan",
    "GatewayContainer",
    "GatewayContainerError",
    "Mount",
    "SecretCopy",
    "container_address",
    "plan",
    "refresh_secrets",
    "toml_text",
]

LABEL = "airlock.gateway-container"
RUNTIME_ROOT = Path("/run/airlock-gateway")  # <name>/secrets, <name>/etc on the host
STATE_INSIDE = "/var/lib/airlock"
SOCKET_DIR_INSIDE = "/run/airlock-control"
AUDIT_DIR_INSIDE = "/var/log/airlock"
SECRETS_INSIDE = "/run/secrets/airlock"
CONFIG_DIR = "/etc/airlock"
CONFIG_FILE = "airlock.toml"
DOCKER_SOCKETS = (Path("/var/run/docker.sock"), Path("/run/docker.sock"))
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=16m,mode=1777"}
PIDS_LIMIT = 256
HEALTH_TIMEOUT = 30.0


class GatewayContainerError(Exception):
    """The container cannot be planned or run; the message says what to change."""


@dataclass(frozen=True)
class Mount:
    source: str  # on the host
    target: str  # in the container
    read_only: bool


@dataclass(frozen=True)
class SecretCopy:
    source: Path  # the user's file
    name: str  # its name in the secrets directory (and under SECRETS_INSIDE)


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    user: str  # "uid:gid"
    uid: int
    network: str
    subnet: str
    address: str
    mounts: tuple[Mount, ...]
    secrets: tuple[SecretCopy, ...]
    runtime_dir: Path  # host: <RUNTIME_ROOT>/<name>
    config_text: str  # the translated config, written to runtime_dir/etc/airlock.toml
    ports: dict[str, tuple[str, int]]
    sysctls: dict[str, str]
    labels: dict[str, str]
    security_opt: tuple[str, ...]
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ("NET_BIND_SERVICE",)
    read_only: bool = True
    tmpfs: dict[str, str] = field(default_factory=lambda: dict(TMPFS))
    environment: dict[str, str] = field(default_factory=dict)
    pids_limit: int = PIDS_LIMIT

    @property
    def secrets_dir(self) -> Path:
        return self.runtime_dir / "secrets"

    @property
    def etc_dir(self) -> Path:
        return self.runtime_dir / "etc"

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments of ``client.api.create_host_config`` (the shell adds the network)."""
        return {
            "binds": {
                m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
                for m in self.mounts
            },
            "read_only": self.read_only,
            "tmpfs": dict(self.tmpfs),
            "cap_drop": list(self.cap_drop),
            "cap_add": list(self.cap_add),
            "security_opt": list(self.security_opt),
            "port_bindings": {k: [v] for k, v in self.ports.items()},
            "sysctls": dict(self.sysctls),
            "pids_limit": self.pids_limit,
            "network_mode": self.network,
            "init": False,
            "privileged": False,
            "ipc_mode": "private",
        }


# --- pure parts ---------------------------------------------------------------------------------


def container_address(subnet: str) -> str:
    """The gateway's fixed address on its own network: the subnet's second host address
    (the first is Docker's bridge on the host)."""
    net = ipaddress.IPv4Network(subnet)
    if net.num_addresses < 8:
        raise GatewayContainerError(f"gateway.container.subnet {subnet}: use a /29 or larger")
    return str(net.network_address + 2)


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise GatewayContainerError(f"config value {v!r}: cannot be copied into the container's config")


def toml_text(data: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document for ``data`` (what tomllib gives back; datetimes aside)."""
    lines: list[str] = []
    tables: list[str] = []
    for k, v in data.items():
        path = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if isinstance(v, dict):
            tables.append(f"[{path}]\n" + toml_text(v, path))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                tables.append(f"[[{path}]]\n" + toml_text(item, path))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    body = "\n".join(lines) + ("\n" if lines else "")
    return body + "".join("\n" + t for t in tables)


def _state_dir_problem(state: Path, entries: Iterable[str] | None) -> str | None:
    # The shell hands every file in it to the container's uid: it must be the gateway's.
    names = set(entries or ())
    if names and "gateway-id" not in names:
        shown = ", ".join(sorted(names)[:5])
        return (
            f"gateway.state_dir {state} holds files ({shown}) but no gateway-id: it is not a "
            "gateway's state directory, and every file in it would be handed to the "
            "container's uid. Use an empty or new directory, e.g. /var/lib/airlock"
        )
    return None


def _audit_dir_problem(audit_log: Path, entries: Iterable[str] | None) -> str | None:
    others = sorted(n for n in (entries or ()) if not n.startswith(audit_log.name))
    if others:
        shown = ", ".join(others[:5])
        return (
            f"gateway.audit_log: its directory {audit_log.parent} holds other files ({shown}) "
            "that the container would get read-write; give the log a directory of its own, "
            'e.g. audit_log = "/var/log/airlock/audit.jsonl"'
        )
    return None


def _socket_dir_problem(socket: Path, entries: Iterable[str]) -> str | None:
    allowed = {socket.name, socket.name + ".lock"}
    extra = sorted(set(entries) - allowed)
    if not extra:
        return None
    shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
    return (
        f"gateway.control_socket: its directory {socket.parent} holds more than the gateway's "
        f"socket and lock ({shown}); the container would get all of it. Give the socket a "
        'directory of its own, e.g. control_socket = "/run/airlock/gateway/control.sock"'
    )


def plan(
    config: Config,
    raw: Mapping[str, Any],
    *,
    image: str,
    subnet: str,
    seccomp_profile: str,
    socket_dir_entries: Iterable[str] = (),
    state_dir_entries: Iterable[str] | None = None,
    audit_dir_entries: Iterable[str] | None = None,
    runtime_root: Path = RUNTIME_ROOT,
) -> ContainerPlan:
    """Everything about the gateway's container; GatewayContainerError for what cannot be.

    The ``*_entries`` are what the shell found in those directories (None: not looked)."""
    gw = config.gateway
    cc = gw.container
    address = container_address(subnet)
    state = gw.state_dir.resolve()
    socket_dir = gw.control_socket.parent.resolve()
    bundles = config.sandbox.bundle_dir.resolve()
    if len(state.parts) < 3 or _within(bundles, state):
        raise GatewayContainerError(
            f"gateway.state_dir {state} is not a directory of its own (the container would get "
            "more than the gateway's state); use e.g. /var/lib/airlock"
        )
    if _within(bundles, socket_dir) or len(socket_dir.parts) < 3:
        raise GatewayContainerError(
            f"gateway.control_socket: its directory {socket_dir} also holds sandbox bundles or "
            "system files; give it a directory of its own, e.g. control_socket = "
            '"/run/airlock/gateway/control.sock"'
        )
    audit_dir = gw.audit_log.parent.resolve() if gw.audit_log is not None else None
    problems = [
        handed_over_problem(state, "gateway.state_dir", "/var/lib/airlock"),
        _state_dir_problem(state, state_dir_entries),
        handed_over_problem(
            socket_dir, "gateway.control_socket", "/run/airlock/gateway/control.sock"
        ),
        _socket_dir_problem(gw.control_socket, socket_dir_entries),
    ]
    if gw.audit_log is not None and audit_dir is not None:
        problems.append(
            handed_over_problem(audit_dir, "gateway.audit_log", "/var/log/airlock/audit.jsonl")
        )
        problems.append(_audit_dir_problem(gw.audit_log, audit_dir_entries))
    for problem in problems:
        if problem:
            raise GatewayContainerError(problem)
    mounts = [
        Mount(str(state), STATE_INSIDE, read_only=False),
        Mount(str(socket_dir), SOCKET_DIR_INSIDE, read_only=False),
    ]
    new_raw: dict[str, Any] = json.loads(json.dumps(raw))  # a deep copy of plain data
    g = new_raw.setdefault("gateway", {})
    g["mode"] = "host"  # inside the container it is the gateway process itself
    g.pop("container", None)
    g.pop("user", None)  # the container already runs as its uid
    g["state_dir"] = STATE_INSIDE
    g["control_socket"] = f"{SOCKET_DIR_INSIDE}/{gw.control_socket.name}"
    g["git_listen"] = f"{address}:{gw.git_port}"
    if gw.audit_log is not None and audit_dir is not None:
        mounts.append(Mount(str(audit_dir), AUDIT_DIR_INSIDE, read_only=False))
        g["audit_log"] = f"{AUDIT_DIR_INSIDE}/{gw.audit_log.name}"
    secrets: list[SecretCopy] = []

    def secret(path: Path, name: str) -> str:
        secrets.append(SecretCopy(path, name))
        return f"{SECRETS_INSIDE}/{name}"

    for i, (u, ru) in enumerate(zip(config.upstream, new_raw.get("upstream", []), strict=True)):
        if u.token_file is not None:
            ru["token_file"] = secret(u.token_file, f"upstream-{i}-token")
        if u.ca_file is not None:
            ru["ca_file"] = secret(u.ca_file, f"upstream-{i}-ca.pem")
        if u.app is not None:
            ru["app"]["private_key_file"] = secret(u.app.private_key_file, f"upstream-{i}-app.pem")
            if u.app.ca_file is not None:
                ru["app"]["ca_file"] = secret(u.app.ca_file, f"upstream-{i}-app-ca.pem")
        if u.api is not None and u.api.ca_file is not None:
            ru.setdefault("api", {})["ca_file"] = secret(u.api.ca_file, f"upstream-{i}-api-ca.pem")
    runtime_dir = runtime_root / cc.name
    mounts.append(Mount(str(runtime_dir / "secrets"), SECRETS_INSIDE, read_only=True))
    mounts.append(Mount(str(runtime_dir / "etc"), CONFIG_DIR, read_only=True))
    for m in mounts:
        src = Path(m.source)
        for sock in DOCKER_SOCKETS:
            if _within(sock, src) or _within(src, sock):
                raise GatewayContainerError(
                    f"{m.source} would put the Docker socket ({sock}) into the gateway's "
                    "container; choose another directory"
                )
    text = toml_text(new_raw)
    try:
        parse_config(tomllib.loads(text), Path(f"{CONFIG_DIR}/{CONFIG_FILE}"))
    except Exception as exc:  # the translation itself is wrong: a bug, but say what
        raise GatewayContainerError(f"the container's config does not load: {exc}") from None
    ports = sorted({gw.dns_port, gw.git_port, config.sandbox.proxy_port})
    # The container sits on every sandbox network and on its own: it must not route between
    # them (its namespace inherits the host's forwarding=1). The host's bridged rules stop a
    # sandbox using it as a router anyway; this is the second layer. ARP answers only for
    # the address asked on the interface asked, so no sandbox learns its other addresses.
    sysctls = {
        "net.ipv4.ip_forward": "0",
        "net.ipv4.conf.all.forwarding": "0",
        "net.ipv4.conf.default.forwarding": "0",
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv4.conf.all.arp_announce": "2",
    }
    if ports[0] < 1024:
        # Docker gives a non-root process no effective capability (NET_BIND_SERVICE stays in
        # the bounding set only), so the container's own network namespace lets it bind the
        # DNS port instead; this reaches no other namespace.
        sysctls["net.ipv4.ip_unprivileged_port_start"] = str(ports[0])
    return ContainerPlan(
        name=cc.name,
        image=image,
        user=f"{cc.uid}:{cc.uid}",
        uid=cc.uid,
        network=cc.network,
        subnet=subnet,
        address=address,
        mounts=tuple(mounts),
        secrets=tuple(secrets),
        runtime_dir=runtime_dir,
        config_text=text,
        ports={f"{gw.git_port}/tcp": (cc.publish_address, gw.git_port)},
        sysctls=sysctls,
        labels={LABEL: cc.name},
        security_opt=("no-new-privileges", f"seccomp={seccomp_profile}"),
    )


# --- the shell ----------------------------------------------------------------------------------


def _write_secret(dest_dir: Path, copy: SecretCopy, uid: int) -> None:
    try:
        data = copy.source.read_bytes()
    except OSError as exc:
        raise GatewayContainerError(f"{copy.source}: cannot read ({exc.strerror})") from None
    # A name of its own per write: a rotation and a start copying at once never share one.
    tmp = dest_dir / f".{copy.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        try:
            os.write(fd, data)
            os.fchown(fd, uid, uid)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        os.replace(tmp, dest_dir / copy.name)  # a new file: the mounted directory sees it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_runtime(p: ContainerPlan) -> None:
    for d, mode in ((p.runtime_dir.parent, 0o711), (p.runtime_dir, 0o711)):
        if d.is_symlink():
            raise GatewayContainerError(f"{d} is a symlink; refusing to use it")
        d.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chown(d, 0, 0)
        os.chmod(d, mode)
    for d in (p.secrets_dir, p.etc_dir):
        d.mkdir(mode=0o711, exist_ok=True)
        os.chown(d, 0, 0)
        os.chmod(d, 0o711)  # noqa: S103 (traversal only; the files are 0400)
    for c in p.secrets:
        _write_secret(p.secrets_dir, c, p.uid)
    cfg = p.etc_dir / CONFIG_FILE
    tmp = p.etc_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(p.config_text)
    os.chmod(tmp, 0o444)
    os.replace(tmp, cfg)


def refresh_secrets(config: Config, runtime_root: Path = RUNTIME_ROOT) -> list[str]:
    """Copy every credential file again into the running container's secrets directory
    (after a rotation); the gateway uses a changed file for its next request. The names
    copied."""
    p = plan(
        config,
        _dump(config),
        image="-",
        subnet="10.0.0.0/29",
        seccomp_profile="{}",
        runtime_root=runtime_root,
    )
    if not p.secrets_dir.is_dir():
        raise GatewayContainerError(
            f"{p.secrets_dir} does not exist: the gateway container {p.name} is not running"
        )
    for c in p.secrets:
        _write_secret(p.secrets_dir, c, p.uid)
    return [c.name for c in p.secrets]


def _dump(config: Config) -> dict[str, Any]:
    data: Any = json.loads(config.model_dump_json(exclude_none=True))
    return dict(data)


def _entries(d: Path) -> list[str] | None:
    """The names in ``d`` (None when it is not a directory yet)."""
    try:
        return sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return None


Say = Callable[[str], None]


class GatewayContainer:
    """Creates, starts, stops and reports the gateway's container (Docker SDK)."""

    def __init__(
        self,
        config: Config,
        raw: Mapping[str, Any],
        client: Any,
        *,
        image: str | None = None,
        runtime_root: Path = RUNTIME_ROOT,
        say: Say | None = None,
    ) -> None:
        self.config = config
        self.raw = raw
        self.client = client
        self.image = image
        self.runtime_root = runtime_root
        self.say: Say = say or (lambda _m: None)
        self.name = config.gateway.container.name

    # -- network

    def _network(self) -> tuple[Any, bool]:
        """The gateway's network (created when missing) and whether it was created now."""
        import docker.errors

        cc = self.config.gateway.container
        try:
            net = self.client.networks.get(cc.network)
        except docker.errors.NotFound:
            net = None
        if net is not None:
            configs = (net.attrs.get("IPAM") or {}).get("Config") or []
            subnets = [c.get("Subnet") for c in configs if c.get("Subnet")]
            if not subnets:
                raise GatewayContainerError(
                    f"network {cc.network} exists without a subnet of its own; remove it "
                    "(docker network rm) or name another in gateway.container.network"
                )
            if cc.subnet is not None and cc.subnet not in subnets:
                raise GatewayContainerError(
                    f"network {cc.network} exists with subnet {subnets[0]}, not "
                    f"gateway.container.subnet {cc.subnet}; remove it or change the config"
                )
            if (net.attrs.get("Driver") != "bridge") or net.attrs.get("Internal"):
                raise GatewayContainerError(
                    f"network {cc.network} is not a NAT'd bridge (it must reach the upstreams)"
                )
            return net, False
        import docker.types

        labels = {LABEL: self.name}
        subnet = cc.subnet
        try:
            if subnet is None:
                # Docker picks a free subnet; a fixed address needs it configured, so the
                # network is made again with the one Docker chose.
                probe = self.client.networks.create(cc.network, driver="bridge", labels=labels)
                subnet = probe.attrs["IPAM"]["Config"][0]["Subnet"]
                probe.remove()
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
            net = self.client.networks.create(
                cc.network, driver="bridge", ipam=ipam, labels=labels, check_duplicate=True
            )
        except docker.errors.APIError as exc:
            raise GatewayContainerError(
                f"cannot create network {cc.network} ({exc.explanation or exc}); set "
                "gateway.container.subnet to a free IPv4 network"
            ) from None
        net.reload()
        return net, True

    @staticmethod
    def _subnet_of(net: Any) -> str:
        configs = (net.attrs.get("IPAM") or {}).get("Config") or []
        return str(configs[0]["Subnet"])

    # -- lifecycle

    def _existing(self) -> Any | None:
        import docker.errors

        try:
            c = self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return None
        if (c.labels or {}).get(LABEL) != self.name:
            raise GatewayContainerError(
                f"a container named {self.name} exists and is not airlock's gateway; remove it "
                "or set gateway.container.name"
            )
        return c

    def make_plan(self, subnet: str) -> ContainerPlan:
        from airlock.host.gateway_image import gateway_image_tag
        from airlock.host.seccomp import gateway_profile_json

        gw = self.config.gateway
        image = self.image or gateway_image_tag(self.config)
        audit_dir = gw.audit_log.parent if gw.audit_log is not None else None
        return plan(
            self.config,
            self.raw,
            image=image,
            subnet=subnet,
            seccomp_profile=gateway_profile_json(),
            socket_dir_entries=_entries(gw.control_socket.parent) or (),
            state_dir_entries=_entries(gw.state_dir),
            audit_dir_entries=_entries(audit_dir) if audit_dir is not None else None,
            runtime_root=self.runtime_root,
        )

    def start(self) -> ContainerPlan:
        """Create and start the container, then wait for /v1/health; on any failure nothing
        of this start is left behind."""
        import docker.errors

        from airlock.gateway import privileges as priv

        old = self._existing()
        if old is not None:
            old.reload()
            if old.status in ("running", "restarting", "paused"):
                raise GatewayContainerError(
                    f"the gateway container {self.name} is already running "
                    f"(docker stop {self.name}, or stop its `airlock gateway`)"
                )
            old.remove(force=True)
        # Before anything is created: the plan's refusals, and the image.
        cc = self.config.gateway.container
        self.make_plan(cc.subnet or "10.0.0.0/29")
        image = self.image or self.make_plan(cc.subnet or "10.0.0.0/29").image
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise GatewayContainerError(
                f"image {image} is not here; build it with: airlock image --gateway"
            ) from None
        net, created = self._network()
        container = None
        p: ContainerPlan | None = None
        try:
            p = self.make_plan(self._subnet_of(net))
            self._close_host(net, p)
            account = priv.Account(name=f"uid {p.uid}", uid=p.uid, gid=p.uid)
            audit = self.config.gateway.audit_log
            if audit is not None:
                audit.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            try:
                priv.prepare(self.config, account)
            except priv.PrivilegeError as exc:
                raise GatewayContainerError(str(exc).replace("gateway.user: ", "")) from None
            _write_runtime(p)
            container = self._create(p)
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise GatewayContainerError(
                    f"docker could not start the gateway container: {exc.explanation or exc}"
                ) from None
            self.say(f"started {p.name} ({p.image}) at {p.address} on {p.network}")
            self.wait_healthy(container)
        except BaseException:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
            if p is not None:
                shutil.rmtree(p.runtime_dir, ignore_errors=True)
            with contextlib.suppress(Exception):
                firewall.remove_gateway_rules(self.name)
            if created:
                with contextlib.suppress(Exception):
                    net.remove()
            raise
        return p

    def _create(self, p: ContainerPlan) -> Any:
        import docker.errors

        api = self.client.api
        host_config = api.create_host_config(**p.create_kwargs())
        networking = api.create_networking_config(
            {p.network: api.create_endpoint_config(ipv4_address=p.address)}
        )
        try:
            created = api.create_container(
                p.image,
                name=p.name,
                user=p.user,
                environment=dict(p.environment),
                labels=dict(p.labels),
                host_config=host_config,
                networking_config=networking,
                ports=[int(k.split("/")[0]) for k in p.ports],
                detach=True,
            )
        except docker.errors.APIError as exc:
            raise GatewayContainerError(
                f"docker refused the gateway container: {exc.explanation or exc}"
            ) from None
        return self.client.containers.get(created["Id"])

    def wait_healthy(self, container: Any, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
        from airlock.host.control_client import ControlClient, ControlError

        client = ControlClient(self.config.gateway.control_socket, timeout=2.0)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            container.reload()
            if container.status in ("exited", "dead"):
                logs = container.logs(tail=15).decode(errors="replace").strip()
                raise GatewayContainerError(
                    f"the gateway container {self.name} exited with "
                    f"{container.attrs['State'].get('ExitCode')}:\n{logs}"
                )
            try:
                return client.health()
            except (ControlError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise GatewayContainerError(
            f"the gateway container {self.name} did not answer /v1/health within "
            f"{timeout:.0f} s ({last})"
        )

    def stop(self, timeout: int = 10) -> bool:
        """Stop and remove the container and its runtime files (False: none was there)."""
        import docker.errors

        c = self._existing()
        p_dir = self.runtime_root / self.name
        if c is not None:
            with contextlib.suppress(Exception):
                c.stop(timeout=timeout)
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        # Also when the container is gone already: its copies, rules and network go too.
        shutil.rmtree(p_dir, ignore_errors=True)
        firewall.remove_gateway_rules(self.name)
        self._remove_network_if_unused()
        return c is not None

    def _close_host(self, net: Any, p: ContainerPlan) -> None:
        """The host's firewall for the gateway's own network: nothing of the host answers
        the gateway but its published port and gateway.container.host_ports (verified)."""
        options = net.attrs.get("Options") or {}
        bridge = options.get("com.docker.network.bridge.name") or f"br-{net.id[:12]}"
        gateway_ip = (net.attrs.get("IPAM") or {}).get("Config", [{}])[0].get("Gateway")
        if not gateway_ip:
            gateway_ip = str(ipaddress.IPv4Network(self._subnet_of(net))[1])
        try:
            rules = firewall.GatewayNetRules(
                name=p.name,
                bridge=bridge,
                host_ip=ipaddress.IPv4Address(gateway_ip.split("/")[0]),
                host_ports=list(self.config.gateway.container.host_ports),
            )
        except ValueError as exc:
            raise GatewayContainerError(
                f"network {p.network}: {exc}; let airlock make the gateway's network"
            ) from None
        try:
            firewall.apply_gateway_rules(rules)
        except firewall.FirewallError as exc:
            raise GatewayContainerError(
                f"cannot install the gateway network's rules: {exc}"
            ) from None
        if not firewall.verify_gateway_rules(rules):
            raise GatewayContainerError("the gateway network's rules did not verify; not starting")

    def _remove_network_if_unused(self) -> None:
        import docker.errors

        cc = self.config.gateway.container
        try:
            net = self.client.networks.get(cc.network)
        except docker.errors.NotFound:
            return
        net.reload()
        if (net.attrs.get("Labels") or {}).get(LABEL) == self.name and not net.attrs.get(
            "Containers"
        ):
            with contextlib.suppress(docker.errors.APIError):
                net.remove()

    def status(self) -> dict[str, Any]:
        c = self._existing()
        if c is None:
            return {"name": self.name, "status": "absent"}
        c.reload()
        nets = c.attrs["NetworkSettings"]["Networks"]
        out: dict[str, Any] = {
            "name": self.name,
            "status": c.status,
            "image": c.attrs["Config"]["Image"],
            "addresses": {n: v.get("IPAddress") for n, v in nets.items()},
        }
        if c.status == "running":
            from airlock.host.control_client import ControlClient, ControlError

            try:
                out["health"] = ControlClient(self.config.gateway.control_socket, 2.0).health()
            except ControlError as exc:
                out["health"] = {"error": str(exc)}
        return out

    def follow(self, container_stop: threading.Event, write: Callable[[bytes], None]) -> int:
        """Copy the container's logs to ``write`` until it exits or ``container_stop`` is
        set (then stop it); the container's exit code."""
        c = self._existing()
        if c is None:
            raise GatewayContainerError(f"the gateway container {self.name} is not there")

        def pump() -> None:
            with contextlib.suppress(Exception):
                for chunk in c.logs(stream=True, follow=True):
                    write(chunk)

        import docker.errors

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            while not container_stop.wait(0.5):
                c.reload()
                if c.status in ("exited", "dead"):
                    break
            if container_stop.is_set():
                with contextlib.suppress(docker.errors.APIError):
                    c.stop(timeout=10)
            c.reload()
        except docker.errors.NotFound:
            self.say(f"the gateway container {self.name} was removed from under us")
            return 1
        except docker.errors.APIError as exc:
            self.say(f"lost the gateway container {self.name}: {exc.explanation or exc}")
            return 1
        finally:
            t.join(2)
        return int(c.attrs["State"].get("ExitCode") or 0)
