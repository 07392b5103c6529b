"""The systemd units for a configuration: rendered from airlock's package data, purely.

``render_units`` fills the templates in ``airlock/deploy/systemd`` (``@NAME@`` placeholders)
from the config, the config's path and the airlock executable, and returns the files to
write with what else `airlock install` must do (the user to create, the directories to
make). It performs no I/O besides reading the templates; `airlock install`
(cli/install.py) executes its plan.

Upstream secrets come in through systemd credentials: a ``token_file`` (or an App's
``private_key_file``) of ``/run/credentials/airlock-gateway.service/NAME`` becomes
``LoadCredential=NAME:SOURCE``; systemd copies SOURCE (root's, 0600) there for the
gateway alone at each start. SOURCE is ``/etc/airlock/credentials/NAME`` unless given.

``gateway.mode = "container"`` renders the same unit name from another template
(``airlock-gateway-container.service``): `airlock gateway` as root, the Docker client that
starts the gateway's container, after ``docker.service``. There is no system user and no
``LoadCredential=``: the container gets copies of the host-side secret files
(host/gateway_container.py), so a ``token_file`` must be a host path.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from airlock.config import Config

__all__ = [
    "CREDENTIALS_DIR",
    "CREDENTIAL_SOURCE_DIR",
    "DEFAULT_USER",
    "GATEWAY_CONTAINER_TEMPLATE",
    "GATEWAY_UNIT",
    "SUPERVISE_UNIT",
    "TARGET",
    "UNIT_DIR",
    "UnitError",
    "UnitPlan",
    "credential_names",
    "render_units",
    "templates",
]

GATEWAY_UNIT = "airlock-gateway.service"
SUPERVISE_UNIT = "airlock-supervise.service"
TARGET = "airlock.target"
UNIT_FILES = (GATEWAY_UNIT, SUPERVISE_UNIT, TARGET)
# Rendered as GATEWAY_UNIT when gateway.mode = "container".
GATEWAY_CONTAINER_TEMPLATE = "airlock-gateway-container.service"
TEMPLATE_FILES = (*UNIT_FILES, GATEWAY_CONTAINER_TEMPLATE)
# Where `airlock gateway` (container mode) writes the container's secret copies and config
# (host/gateway_container.py RUNTIME_ROOT; tests/unit/test_units.py keeps the two equal).
CONTAINER_RUNTIME_ROOT = "/run/airlock-gateway"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
CREDENTIALS_DIR = PurePosixPath("/run/credentials") / GATEWAY_UNIT
CREDENTIAL_SOURCE_DIR = PurePosixPath("/etc/airlock/credentials")
DEFAULT_USER = "airlock-gateway"
# Written by root's airlock, read by supervise (host/locks.py, agentproto.py).
SUPERVISE_DIRS = ("/run/airlock-locks", "/run/airlock-agent")
# ProtectHome=yes hides these from the gateway: airlock must not live there.
HIDDEN = ("/home", "/root", "/run/user")
# A directory install or `airlock gateway` makes and hands to the gateway (its user, or its
# container's uid) must be under one of these, and not in what belongs to another program.
GATEWAY_DIR_ROOTS = ("/var/lib", "/var/cache", "/var/log", "/var/opt", "/run", "/srv", "/opt")
RESERVED_DIRS = (
    "/var/lib/airlock-host",  # the integrity manifest
    "/var/cache/airlock",  # image builds
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/systemd",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/log/journal",
    "/run/systemd",
    "/run/credentials",
    "/run/docker",
    "/run/containerd",
    "/run/lock",
    *SUPERVISE_DIRS,
)
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Characters that a path in a unit file must not carry (quoting, specifiers, line breaks).
_UNSAFE = re.compile(r"[\s'\"\\%$;`]")


class UnitError(Exception):
    """The config or the arguments cannot make sound units; worded for the operator."""


@dataclass(frozen=True)
class UnitPlan:
    files: dict[str, str]  # file name (under UNIT_DIR) -> content
    user: str | None  # the system user to create (None in container mode: none is needed)
    # Directories `airlock install` makes for the gateway's user (0700) when systemd does
    # not (StateDirectory= and friends cover those under /var/lib, /run and /var/log).
    gateway_dirs: tuple[str, ...]
    audit_log: str | None  # a file for the gateway's user, created by install
    credentials: tuple[tuple[str, str], ...]  # (name, source)
    notes: tuple[str, ...] = field(default_factory=tuple)
    mode: str = "host"  # gateway.mode the gateway unit is for


def templates() -> dict[str, str]:
    base = importlib.resources.files("airlock") / "deploy" / "systemd"
    return {name: (base / name).read_text() for name in TEMPLATE_FILES}


def _within(path: PurePosixPath, parent: PurePosixPath) -> bool:
    return path == parent or parent in path.parents


def _abs(what: str, p: Path | str) -> PurePosixPath:
    path = PurePosixPath(p)
    if not path.is_absolute():
        raise UnitError(f"{what} {p}: give an absolute path (systemd units need one)")
    if ".." in path.parts:
        raise UnitError(f"{what} {p}: contains '..'; give the directory's own path")
    if _UNSAFE.search(str(path)):
        raise UnitError(
            f"{what} {p}: contains a space, quote, '%', '$' or other character that a unit "
            "file line would misread; choose a plain path"
        )
    return path


def _gateway_dir(what: str, path: PurePosixPath) -> None:
    """Refuse a directory to be handed to the gateway that is the host's or another's."""
    roots = [PurePosixPath(r) for r in GATEWAY_DIR_ROOTS]
    if not any(path != r and _within(path, r) for r in roots):
        raise UnitError(
            f"{what} {path}: the gateway is given this directory (made, chowned, 0700); it "
            f"must be one of its own under {', '.join(GATEWAY_DIR_ROOTS)}, e.g. /var/lib/airlock"
        )
    for reserved in RESERVED_DIRS:
        r = PurePosixPath(reserved)
        if _within(path, r) or _within(r, path):
            raise UnitError(
                f"{what} {path} overlaps {r}, which is another program's (or airlock's host "
                "side's); give the gateway a directory of its own, e.g. /var/lib/airlock"
            )


def credential_names(config: Config) -> list[tuple[str, str]]:
    """(upstream host, credential name) of each secret given as a credential path."""
    found = []
    for u in config.upstream:
        if u.token_file is not None:
            path = u.token_file
        elif u.app is not None:
            path = u.app.private_key_file
        else:
            continue
        p = PurePosixPath(path)
        if p.parent == CREDENTIALS_DIR:
            found.append((u.host, p.name))
        elif _within(p, PurePosixPath("/run/credentials")):
            raise UnitError(
                f"upstream {u.host}: {path} is not the gateway unit's credential directory; "
                f"use {CREDENTIALS_DIR}/NAME"
            )
    return found


def _directory_line(key: str, root: str, path: PurePosixPath) -> str | None:
    base = PurePosixPath(root)
    if path != base and _within(path, base):
        return f"{key}={path.relative_to(base)}"
    return None


def render_units(
    config: Config,
    config_path: Path,
    airlock: Path,
    *,
    sources: Mapping[str, str] | None = None,
    tmpl: Mapping[str, str] | None = None,
) -> UnitPlan:
    """The units for ``config`` (read from ``config_path``), run by the ``airlock``
    executable. ``sources``: credential name -> the file systemd loads it from."""
    gw = config.gateway
    exe = _abs("the airlock executable", airlock)
    cfg = _abs("the config", config_path)
    for hidden in HIDDEN:
        for what, p in (("the airlock executable", exe), ("the config", cfg)):
            if _within(p, PurePosixPath(hidden)):
                raise UnitError(
                    f"{what} {p} is under {hidden}, which the gateway unit hides "
                    "(ProtectHome=yes); install airlock (and its config) elsewhere, e.g. "
                    "/opt/airlock and /etc/airlock"
                )
    state = _abs("gateway.state_dir", gw.state_dir)
    socket = _abs("gateway.control_socket", gw.control_socket)
    socket_dir = socket.parent
    bundles = _abs("sandbox.bundle_dir", config.sandbox.bundle_dir)
    audit = _abs("gateway.audit_log", gw.audit_log) if gw.audit_log is not None else None
    if len(state.parts) < 3:
        raise UnitError(
            f"gateway.state_dir {state} is not a directory of its own; use e.g. /var/lib/airlock"
        )
    _gateway_dir("gateway.state_dir", state)
    for name, d in (("state_dir", state), ("control_socket's directory", socket_dir)):
        if _within(bundles, d) or _within(d, bundles):
            raise UnitError(
                f"gateway.{name} {d} and sandbox.bundle_dir {bundles} overlap: the gateway's "
                "user would own the sandboxes' bundles; give the gateway directories of its "
                'own, e.g. control_socket = "/run/airlock/gateway/control.sock"'
            )
    if len(socket_dir.parts) < 3:
        raise UnitError(
            f"gateway.control_socket {socket}: its directory {socket_dir} must be one of its "
            'own, e.g. control_socket = "/run/airlock/gateway/control.sock"'
        )
    _gateway_dir("gateway.control_socket's directory", socket_dir)
    t = dict(tmpl or templates())
    if gw.mode == "container":  # there the directory is the container's; checked there
        return _render_container(config, exe, cfg, state, socket, bundles, audit, sources, t)
    if audit is not None:
        _gateway_dir("gateway.audit_log", audit)  # install creates the file for the user
    user = gw.user or DEFAULT_USER
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise UnitError(f"gateway.user {user!r}: not a valid system user name")

    given = dict(sources or {})
    creds = []
    for host, name in credential_names(config):
        if not _CREDENTIAL_NAME.match(name):
            raise UnitError(f"upstream {host}: credential name {name!r} is not a plain name")
        source = given.pop(name, str(CREDENTIAL_SOURCE_DIR / name))
        _abs(f"credential {name}'s source", source)
        creds.append((name, source))
    if given:
        raise UnitError(
            f"--credential {', '.join(sorted(given))}: no upstream's token_file or "
            f"private_key_file is {CREDENTIALS_DIR}/NAME for that name"
        )
    notes = []
    if not creds:
        notes.append(
            "no upstream secret is a systemd credential: the gateway reads them where they "
            f"are; consider token_file = {CREDENTIALS_DIR}/NAME (LoadCredential=)"
        )

    directories = []
    install_dirs = []
    for key, root, path in (
        ("StateDirectory", "/var/lib", state),
        ("RuntimeDirectory", "/run", socket_dir),
    ):
        line = _directory_line(key, root, path)
        if line is None:
            install_dirs.append(str(path))
        else:
            directories.append(line)
            directories.append(f"{key}Mode=0700")
    if _directory_line("RuntimeDirectory", "/run", socket_dir) is not None:
        # Restarting the gateway keeps the socket directory (the CLI may hold its path).
        directories.append("RuntimeDirectoryPreserve=restart")
    read_write = [str(state), str(socket_dir)]
    if audit is not None:
        read_write.append(str(audit))  # the file, not its (maybe shared) directory

    common = {"@AIRLOCK@": str(exe), "@CONFIG@": str(cfg)}
    gateway = _fill(
        t[GATEWAY_UNIT],
        {
            **common,
            "@USER@": user,
            "@GROUP@": user,
            "@CONTROL_SOCKET@": str(socket),
            "@CREDENTIALS@": "\n".join(f"LoadCredential={n}:{s}" for n, s in creds)
            or "# (no LoadCredential=: no upstream secret is a credential path)",
            "@DIRECTORIES@": "\n".join(directories) or "# (directories made by airlock install)",
            "@READ_WRITE_PATHS@": " ".join(read_write),
            "@ADDRESS_FAMILIES@": "AF_UNIX AF_INET AF_INET6",
        },
    )
    return UnitPlan(
        files={
            GATEWAY_UNIT: gateway,
            SUPERVISE_UNIT: _supervise(t, common, bundles),
            TARGET: t[TARGET],
        },
        user=user,
        gateway_dirs=tuple(install_dirs),
        audit_log=str(audit) if audit is not None else None,
        credentials=tuple(creds),
        notes=tuple(notes),
    )


def _supervise(t: Mapping[str, str], common: Mapping[str, str], bundles: PurePosixPath) -> str:
    supervise_rw = [str(bundles.parent), *SUPERVISE_DIRS]
    return _fill(
        t[SUPERVISE_UNIT],
        {
            **common,
            "@BUNDLE_DIR@": str(bundles),
            "@READ_WRITE_PATHS@": " ".join(f"-{p}" for p in supervise_rw),
        },
    )


def _render_container(
    config: Config,
    exe: PurePosixPath,
    cfg: PurePosixPath,
    state: PurePosixPath,
    socket: PurePosixPath,
    bundles: PurePosixPath,
    audit: PurePosixPath | None,
    sources: Mapping[str, str] | None,
    t: Mapping[str, str],
) -> UnitPlan:
    """gateway.mode = "container": `airlock gateway` as root, Docker's client, confined."""
    gw = config.gateway
    for u in config.upstream:
        path = u.token_file or (u.app.private_key_file if u.app is not None else None)
        if path is not None and _within(PurePosixPath(path), PurePosixPath("/run/credentials")):
            raise UnitError(
                f"upstream {u.host}: {path} is a systemd credential path, but gateway.mode = "
                '"container" loads no credential: the gateway container gets a copy of the '
                "host's file; point it at that file, e.g. "
                f'token_file = "{CREDENTIAL_SOURCE_DIR}/NAME" (root\'s, mode 0600)'
            )
    if sources:
        raise UnitError(
            f'--credential {", ".join(sorted(sources))}: gateway.mode = "container" loads no '
            "systemd credential (the container gets copies of the token files); drop it"
        )
    runtime = PurePosixPath(CONTAINER_RUNTIME_ROOT)
    socket_dir = socket.parent
    read_write = [state, socket_dir, runtime]
    audit_line = "# (no audit_log: no directory for it)"
    if audit is not None:
        audit_dir = audit.parent
        if len(audit_dir.parts) < 3 or _within(bundles, audit_dir) or _within(audit_dir, bundles):
            raise UnitError(
                f"gateway.audit_log {audit}: its directory {audit_dir} is mounted into the "
                "gateway container and made writable for its unit; give the log a directory "
                'of its own, e.g. audit_log = "/var/log/airlock/audit.jsonl"'
            )
        _gateway_dir("gateway.audit_log's directory", audit_dir)
        audit_line = f"ExecStartPre=+/bin/mkdir -p -m 0755 {audit_dir}"
        read_write.append(audit_dir)
    for d in (state, socket_dir):
        if _within(d, runtime) or _within(runtime, d):
            raise UnitError(
                f"{d} and {runtime} (the container's secret copies) overlap; give the gateway's "
                "state and socket directories of their own"
            )
    common = {"@AIRLOCK@": str(exe), "@CONFIG@": str(cfg)}
    gateway = _fill(
        t[GATEWAY_CONTAINER_TEMPLATE],
        {
            **common,
            "@STATE_DIR@": str(state),
            "@SOCKET_DIR@": str(socket_dir),
            "@RUNTIME_ROOT@": str(runtime),
            "@AUDIT_DIR@": audit_line,
            "@CONTROL_SOCKET@": str(socket),
            # "-": systemd 252 sets up the namespace for "+" lines too, before they make the
            # directories; a path still missing at ExecStart= stays read-only.
            "@READ_WRITE_PATHS@": " ".join(f"-{p}" for p in read_write),
        },
    )
    if gw.container.image is not None:
        image_note = (
            f"the gateway unit starts the image {gw.container.image} and does not build or "
            "pull it: have it on this host before starting airlock.target"
        )
    else:
        image_note = (
            "the gateway unit does not build the gateway image: run `airlock image --gateway` "
            "before starting airlock.target (and again after upgrading airlock: the image's "
            "tag follows its sources)"
        )
    notes = [image_note]
    if gw.user is not None:
        notes.append(
            f"gateway.user = {gw.user!r} is not used in container mode: the gateway runs as "
            f"uid {gw.container.uid} in its container; no system user is made"
        )
    return UnitPlan(
        files={
            GATEWAY_UNIT: gateway,
            SUPERVISE_UNIT: _supervise(t, common, bundles),
            TARGET: t[TARGET],
        },
        user=None,
        gateway_dirs=(),
        audit_log=None,
        credentials=(),
        notes=tuple(notes),
        mode="container",
    )


def _fill(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise UnitError(f"unit template: no value for {', '.join(sorted(set(left)))}")
    return text
