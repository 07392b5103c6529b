"""What a sandbox's container looks like: `docker run` options turned into a container plan.

Pure: :func:`plan_container` takes the user's :class:`RunSpec`, the image's own config (as
Docker reports it in ``Config``) and the sandbox config, and returns a :class:`ContainerPlan`
with every value the Docker API call needs. No Docker, no files: unit-testable. The parsers
of the command line's values (env files, ``--mount``, ``--tmpfs``, labels, users, sizes) are
here too, each raising :class:`SpecError` with a one-line message.

The sandbox manager adds what airlock itself owns (its mounts, its environment, its labels,
the network and the security options) and is the only place that talks to Docker.

What `docker run` would do is what a sandbox does, except:

* a root user (the image's ``USER`` empty, ``root``, ``0``, ``0:0``, ...) becomes the
  configured non-root ``uid`` (group the same), and ``HOME`` is then ``/tmp`` (writable)
  unless ``-e HOME`` is given; ``-u`` refuses root;
* ``/tmp`` is a tmpfs unless the user mounts something there;
* ``docker-init`` is PID 1 unless ``--no-init``;
* options that would break the isolation are refused (:data:`REFUSED_OPTIONS`), and so are
  environment names airlock sets itself (:func:`is_owned_env`), labels ``airlock.*``, the
  Docker socket or airlock's own state as a mount source, and mounts over airlock's paths.
"""

from __future__ import annotations

import csv
import math
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import Mount

from airlock.config import SandboxConfig
from airlock.host.gate import GATE_PATH

__all__ = [
    "AIRLOCK_TARGETS",
    "DOCKER_SOCKETS",
    "OWNED_ENV",
    "REFUSED_OPTIONS",
    "ROOT_HOME",
    "ContainerPlan",
    "RefusedOption",
    "ResolvedUser",
    "RunSpec",
    "SpecError",
    "check_bind_source",
    "check_env_names",
    "docker_host_socket",
    "is_owned_env",
    "is_root_user",
    "parse_cpus",
    "parse_env_arg",
    "parse_env_file",
    "parse_hostname",
    "parse_label",
    "parse_memory",
    "parse_mount",
    "parse_tmpfs",
    "parse_user",
    "parse_volume",
    "plan_container",
    "plan_mounts",
    "resolve_user",
]


class SpecError(ValueError):
    """A `docker run` option airlock cannot honour; the message says what to do."""


@dataclass
class RunSpec:
    image: str
    command: list[str]
    grants: list[str]
    allow_hosts: list[str] = field(default_factory=list)
    name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)  # -v [SRC:]DST[:OPTS]
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    read_only: bool | None = None
    ttl: int | None = None
    idle_timeout: int | None = None
    remove: bool = False  # --rm: the container goes when it exits
    user: str | None = None  # -u; None: the image's user (a root one becomes cfg.uid)
    workdir: str | None = None  # -w; None: the image's WORKDIR
    entrypoint: str | None = None  # --entrypoint; None: the image's, "": none
    mounts: list[str] = field(default_factory=list)  # --mount CSV, as given
    tmpfs: list[str] = field(default_factory=list)  # --tmpfs PATH[:OPTS], as given
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    memory: str | None = None  # -m; None: cfg.memory
    cpus: float | None = None  # None: cfg.cpus
    pids_limit: int | None = None  # None: cfg.pids_limit
    init: bool = True  # docker-init as PID 1: signals reach the command, zombies are reaped


@dataclass(frozen=True)
class ContainerPlan:
    """The user-visible shape of the container; airlock's own parts are added by the manager."""

    argv: list[str]  # entrypoint + command, run by the gate once the session is active
    user: str
    working_dir: str | None
    environment: dict[str, str]
    mounts: list[Mount]
    tmpfs: dict[str, str]
    labels: dict[str, str]
    hostname: str | None
    mem_limit: str
    nano_cpus: int
    pids_limit: int
    read_only: bool
    init: bool


# --- what airlock owns -------------------------------------------------------------------------

#: Where airlock mounts its own files in every sandbox; nothing may be mounted over them.
AIRLOCK_TARGETS = (
    "/run/airlock",
    "/etc/resolv.conf",
    posixpath.dirname(GATE_PATH),
    "/etc/hosts",
)
#: Sockets that control the host's containers: never a mount source, nor a directory above.
DOCKER_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
)
#: Environment names the manager sets in every sandbox (its proxy, its git config, its own).
OWNED_ENV = frozenset(
    {
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "GIT_CONFIG_SYSTEM",
    }
)
#: HOME for a sandbox whose image runs as root (and so runs as cfg.uid, which has no home in
#: the image): the /tmp tmpfs, writable by any user, also with --read-only.
ROOT_HOME = "/tmp"
DEFAULT_TMPFS = {"/tmp": "rw,nosuid,nodev,size=512m"}


@dataclass(frozen=True)
class RefusedOption:
    names: tuple[str, ...]  # as click declares them: ("-p", "--publish")
    takes_value: bool
    reason: str


_NAMESPACES = "a sandbox shares no namespace with the host or another container"
#: `docker run` options a sandbox refuses, each with the reason.
REFUSED_OPTIONS: tuple[RefusedOption, ...] = (
    RefusedOption(
        ("-p", "--publish"),
        True,
        "a sandbox publishes no ports: its only network is an internal one that reaches "
        "nothing but its gateway",
    ),
    RefusedOption(
        ("-P", "--publish-all"),
        False,
        "a sandbox publishes no ports: its only network is an internal one that reaches "
        "nothing but its gateway",
    ),
    RefusedOption(
        ("--network", "--net"),
        True,
        "a sandbox has its own internal network that reaches only its gateway; it joins no "
        "other (use --grant and --allow-host for what it may reach)",
    ),
    RefusedOption(
        ("--privileged",),
        False,
        "a sandbox never runs privileged: every capability is dropped",
    ),
    RefusedOption(
        ("--cap-add",),
        True,
        "a sandbox runs with every capability dropped; none can be added",
    ),
    RefusedOption(("--pid",), True, _NAMESPACES),
    RefusedOption(("--ipc",), True, _NAMESPACES),
    RefusedOption(("--uts",), True, _NAMESPACES),
    RefusedOption(("--userns",), True, _NAMESPACES),
    RefusedOption(("--cgroupns",), True, _NAMESPACES),
    RefusedOption(("--device",), True, "a sandbox is given no host device"),
    RefusedOption(("--device-cgroup-rule",), True, "a sandbox is given no host device"),
    RefusedOption(("--gpus",), True, "a sandbox is given no host device, GPUs included"),
    RefusedOption(
        ("--security-opt",),
        True,
        "a sandbox's security options are airlock's (no-new-privileges, the default seccomp "
        "and AppArmor profiles); they cannot be changed",
    ),
    RefusedOption(
        ("--add-host",),
        True,
        "a sandbox's /etc/hosts names only its gateway; other names resolve through the "
        "gateway's DNS, which answers only for what the sandbox may reach",
    ),
    RefusedOption(
        ("--dns",),
        True,
        "a sandbox resolves names only through its gateway's DNS, which answers only for "
        "what the sandbox may reach",
    ),
    RefusedOption(
        ("--dns-search",),
        True,
        "a sandbox's DNS settings are airlock's (its gateway's resolver)",
    ),
    RefusedOption(
        ("--dns-option",),
        True,
        "a sandbox's DNS settings are airlock's (its gateway's resolver)",
    ),
    RefusedOption(
        ("--volumes-from",),
        True,
        "a sandbox takes no other container's mounts (they may hold the Docker socket or "
        "another sandbox's files); name each with -v or --mount",
    ),
    RefusedOption(
        ("--link",),
        True,
        "a sandbox reaches no other container: its network holds only itself and its gateway",
    ),
    RefusedOption(
        ("--ip", "--ip6"),
        True,
        "a sandbox's address is chosen by airlock (its network's firewall rules name it)",
    ),
    RefusedOption(
        ("--sysctl",),
        True,
        "a sandbox's kernel settings are Docker's defaults and cannot be changed",
    ),
    RefusedOption(
        ("--runtime",),
        True,
        "a sandbox runs under Docker's default runtime, which airlock verified",
    ),
    RefusedOption(
        ("--cgroup-parent",),
        True,
        "a sandbox's cgroup is Docker's, where its memory, CPU and process limits apply",
    ),
)


def is_owned_env(name: str) -> bool:
    """An environment name airlock sets itself in every sandbox."""
    return name in OWNED_ENV or name.startswith("AIRLOCK_")


def check_env_names(env: Iterable[str], source: str = "-e") -> None:
    """Refuse names airlock owns: a user value would be silently replaced by airlock's."""
    for name in env:
        if is_owned_env(name):
            raise SpecError(
                f"{source} {name}: airlock sets this variable itself in every sandbox "
                "(its egress proxy, git config and sandbox facts); leave it out"
            )


# --- environment -----------------------------------------------------------------------------

# Go's unicode.IsSpace, which Docker's env-file reader trims from the start of each line.
_GO_SPACES = frozenset("\t\n\v\f\r \x85\xa0")


def _is_go_space(c: str) -> bool:
    return c in _GO_SPACES or unicodedata.category(c) in ("Zs", "Zl", "Zp")


def _check_env_key(key: str, where: str) -> None:
    if not key:
        raise SpecError(f"{where}: the variable has no name; use KEY=VALUE or KEY")
    if " " in key or "\t" in key:
        raise SpecError(f"{where}: variable {key!r} contains whitespace")
    if "\0" in key:
        raise SpecError(f"{where}: variable {key!r} contains a NUL character")


def parse_env_arg(arg: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``-e KEY=VALUE``, or ``-e KEY`` with the value of the caller's ``KEY`` (None when the
    caller has no ``KEY``: Docker skips it)."""
    key, sep, value = arg.partition("=")
    _check_env_key(key, f"-e {arg!r}")
    if "\0" in value:
        raise SpecError(f"-e {key}: the value contains a NUL character")
    if sep:
        return key, value
    if key in environ:
        return key, environ[key]
    return None


def parse_env_file(
    data: str | bytes, environ: Mapping[str, str], name: str = "--env-file"
) -> list[tuple[str, str]]:
    """Docker's env-file format: one ``KEY=VALUE`` a line, the value taken verbatim (no quotes,
    no trimming); blank lines and lines starting with ``#`` skipped (after leading
    whitespace); a bare ``KEY`` takes the caller's value, or is skipped when it has none."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"{name}: not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        if number == 1:
            raw = raw.removeprefix("\ufeff")
        raw = raw.removesuffix("\r")
        i = 0
        while i < len(raw) and _is_go_space(raw[i]):
            i += 1
        line = raw[i:]
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        where = f"{name} line {number}"
        _check_env_key(key, where)
        if "\0" in value:
            raise SpecError(f"{where}: the value of {key} contains a NUL character")
        if sep:
            pairs.append((key, value))
        elif key in environ:
            pairs.append((key, environ[key]))
    return pairs


# --- users -----------------------------------------------------------------------------------

_MAX_ID = 2**31 - 1  # runc's limit for a uid or gid
_USER_RE = re.compile(r"[^:\s]*(:[^:\s]+)?")


def is_root_user(user: str | None) -> bool:
    """True when Docker would run ``user`` (an image's USER or a ``-u``) as uid 0: empty,
    ``root`` or a uid of 0, with any group."""
    name = (user or "").strip().partition(":")[0]
    return name in ("", "root") or (name.isascii() and name.isdigit() and int(name) == 0)


def parse_user(text: str, uid: int | None = None) -> str:
    """``-u NAME|UID[:GROUP|GID]``; root is refused. ``uid`` is named in the message."""
    if not _USER_RE.fullmatch(text):
        raise SpecError(f"-u {text!r}: use NAME|UID[:GROUP|GID], e.g. 1000:1000")
    if is_root_user(text):
        default = f" (uid {uid} when that is root)" if uid is not None else ""
        raise SpecError(
            f"-u {text!r}: the sandbox never runs as root; give a non-root user such as "
            f"1000:1000, or leave -u out for the image's user{default}"
        )
    for part in text.split(":"):
        if part.isascii() and part.isdigit() and int(part) > _MAX_ID:
            raise SpecError(f"-u {text!r}: {part} is out of range (at most {_MAX_ID})")
    return text


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    home: str  # what Docker sets HOME to when the environment has none


def _db(text: str | None, fields: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            parts = line.split(":")
            if len(parts) >= fields:
                rows.append(parts)
    return rows


_DIGITS = re.compile(r"[0-9]+")


def resolve_user(user: str, passwd: str | None, group: str | None) -> ResolvedUser:
    """The uid, gid and home Docker (runc) gives ``user`` in an image with these
    /etc/passwd and /etc/group texts (None: the file is absent). A name must exist; a uid
    that is not in passwd gets gid 0 and home /, as in Docker. Root is refused, also when a
    name turns out to be uid 0."""
    name, _, grp = user.partition(":")
    users = _db(passwd, 7)
    entry: list[str] | None = None
    numeric = name.isascii() and name.isdigit()
    for row in users:
        if (row[2].isdigit() and int(row[2]) == int(name)) if numeric else row[0] == name:
            entry = row
            break
    if entry is None and not numeric:
        raise SpecError(f"user {name!r} is not in the image's /etc/passwd")
    # Plain ASCII digits only: Python's int() takes "1_000", " 1000" or full-width digits,
    # which Docker's parser turns into uid 0.
    if entry is not None and not (_DIGITS.fullmatch(entry[2]) and _DIGITS.fullmatch(entry[3])):
        raise SpecError(f"user {name!r}: the image's /etc/passwd entry is malformed")
    uid = int(name) if entry is None else int(entry[2])
    gid = 0 if entry is None else int(entry[3])
    home = entry[5] if entry is not None and entry[5] else "/"
    if grp:
        if grp.isascii() and grp.isdigit():
            gid = int(grp)
        else:
            found = [row for row in _db(group, 3) if row[0] == grp]
            if not found or not found[0][2].isdigit():
                raise SpecError(f"group {grp!r} is not in the image's /etc/group")
            gid = int(found[0][2])
    if uid == 0:
        raise SpecError(
            f"user {user!r} is uid 0 (root) in the image's /etc/passwd: the sandbox never "
            "runs as root; give -u with a non-root user"
        )
    return ResolvedUser(uid, gid, home)


# --- sizes and limits ------------------------------------------------------------------------

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_MIN_MEMORY = 6 << 20  # Docker's own minimum


def _size(text: str, what: str) -> int:
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise SpecError(f"{what} {text!r}: use a size such as 512m or 2g")
    n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not n < 2**63:
        raise SpecError(f"{what} {text!r}: too large")
    return int(n)


def parse_memory(text: str) -> int:
    """``-m 512m``/``2g``/bytes (binary units, as Docker reads them) -> bytes."""
    n = _size(text, "-m")
    if n < _MIN_MEMORY:
        raise SpecError(f"-m {text!r}: a sandbox needs at least 6m of memory")
    return n


def parse_cpus(text: str) -> float:
    try:
        cpus = float(text)
    except ValueError:
        raise SpecError(f"--cpus {text!r}: use a number of CPUs such as 1.5") from None
    if not math.isfinite(cpus) or cpus < 0.01:
        raise SpecError(f"--cpus {text!r}: use at least 0.01 CPUs")
    return cpus


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


def parse_hostname(text: str) -> str:
    if len(text) > 63 or not _HOSTNAME_RE.fullmatch(text):
        raise SpecError(
            f"--hostname {text!r}: use letters, digits and - (dot-separated), at most 63 characters"
        )
    return text


def parse_label(text: str) -> tuple[str, str]:
    """``--label KEY=VALUE`` (``KEY`` alone: an empty value, as Docker does)."""
    key, _, value = text.partition("=")
    if not key or key != key.strip():
        raise SpecError(f"--label {text!r}: use KEY=VALUE")
    _check_label_key(key)
    return key, value


def _check_label_key(key: str) -> None:
    if key.lower().startswith("airlock."):
        raise SpecError(
            f"--label {key}: keys starting with airlock. are airlock's own (it finds and "
            "cleans up its sandboxes by them)"
        )


# --- mounts ----------------------------------------------------------------------------------

_VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+")


def _clean(path: str) -> str:
    """An absolute path as Docker cleans it (``filepath.Clean``)."""
    return "/" + posixpath.normpath(path).lstrip("/") if path.startswith("/") else path


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _target(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise SpecError(f"{what}: the container path {path!r} must be absolute")
    target = _clean(path)
    if target == "/":
        raise SpecError(f"{what}: nothing can be mounted over the container's /")
    for own in AIRLOCK_TARGETS:
        if _within(target, own):
            raise SpecError(
                f"{what}: {own} is airlock's own (its session bundle, gate, DNS and hosts "
                "files); mount somewhere else"
            )
    return target


def check_bind_source(path: str, airlock_paths: Iterable[str | Path] = ()) -> None:
    """Refuse a host path that is, or holds, the Docker socket or airlock's own state."""
    source = _clean(path)
    if "docker.sock" in posixpath.basename(source) or any(
        _within(s, source) for s in DOCKER_SOCKETS
    ):
        raise SpecError(f"{path}: the Docker socket is never given to a sandbox, nor what holds it")
    for own in airlock_paths:
        if _within(_clean(str(own)), source):
            raise SpecError(f"{path}: holds airlock's own {own}; it is never given to a sandbox")


def docker_host_socket(docker_host: str | None) -> str | None:
    """The socket path of a ``unix://`` DOCKER_HOST, else None."""
    if docker_host and docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://") or None
    return None


_VOLUME_MODES_IGNORED = {"consistent", "cached", "delegated", "rprivate", "private"}


def parse_volume(text: str) -> Mount:
    """``-v /HOST:/CONTAINER[:ro]``, ``-v NAME:/CONTAINER[:ro]`` or ``-v /CONTAINER``
    (an anonymous volume), as Docker reads them on Linux."""
    what = f"-v {text!r}"
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise SpecError(f"{what}: use /HOST/PATH:/CONTAINER/PATH[:ro] or NAME:/CONTAINER/PATH")
    source: str | None = None
    if len(parts) == 1:
        dst = parts[0]
    else:
        source, dst = parts[0], parts[1]
    read_only, no_copy = False, False
    for mode in parts[2].split(",") if len(parts) == 3 else []:
        if mode in ("ro", "rw"):
            read_only = mode == "ro"
        elif mode == "nocopy" and not (source or "").startswith("/"):
            no_copy = True
        elif mode in ("z", "Z"):
            raise SpecError(f"{what}: SELinux relabelling ({mode}) is not supported")
        elif mode not in _VOLUME_MODES_IGNORED:
            raise SpecError(f"{what}: {mode!r} is not supported; use ro or rw")
    target = _target(dst, what)
    if source is not None and source.startswith("/"):
        check_bind_source(source)
        return Mount(target, _clean(source), type="bind", read_only=read_only)
    if source is not None and not _VOLUME_NAME_RE.fullmatch(source):
        raise SpecError(
            f"{what}: {source!r} is neither an absolute host path nor a volume name "
            "(letters, digits, _ . -)"
        )
    return Mount(target, source, type="volume", read_only=read_only, no_copy=no_copy)


def _parse_bool(value: str, what: str) -> bool:
    # Go's strconv.ParseBool, which Docker uses for readonly=...
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise SpecError(f"{what}: {value!r} is not true or false")


_MOUNT_REFUSED = {
    "volume-driver": "a volume driver can mount any host path",
    "volume-opt": "volume driver options can mount any host path",
    "bind-propagation": "mounts never propagate between the host and a sandbox",
}


def parse_mount(text: str) -> Mount:
    """``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,tmpfs-size=...]``,
    Docker's CSV syntax (``src``, ``dst``/``destination`` and ``ro`` too)."""
    what = f"--mount {text!r}"
    try:
        rows = list(csv.reader([text]))
    except csv.Error as exc:
        raise SpecError(f"{what}: {exc}") from None
    kind = "volume"  # Docker's default
    source: str | None = None
    target: str | None = None
    read_only = False
    no_copy = False
    size: int | None = None
    mode: int | None = None
    labels: dict[str, str] = {}
    for item in rows[0] if rows else []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if key in _MOUNT_REFUSED:
            raise SpecError(f"{what}: {key} is refused: {_MOUNT_REFUSED[key]}")
        if not sep and key in ("readonly", "ro", "volume-nocopy"):
            value = "true"
        elif not sep:
            raise SpecError(f"{what}: {item!r} is not KEY=VALUE")
        if key == "type":
            kind = value
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "dst", "destination"):
            target = value
        elif key in ("readonly", "ro"):
            read_only = _parse_bool(value, what)
        elif key == "volume-nocopy":
            no_copy = _parse_bool(value, what)
        elif key == "volume-label":
            k, _, v = value.partition("=")
            labels[k] = v
        elif key == "tmpfs-size":
            size = _size(value, f"{what}: tmpfs-size")
        elif key == "tmpfs-mode":
            try:
                mode = int(value, 8)
            except ValueError:
                raise SpecError(f"{what}: tmpfs-mode {value!r} is not octal") from None
        elif key == "consistency":
            pass  # no meaning on Linux
        else:
            raise SpecError(f"{what}: {key!r} is not supported")
    if kind not in ("bind", "volume", "tmpfs"):
        raise SpecError(f"{what}: type={kind} is not supported; use bind, volume or tmpfs")
    if not target:
        raise SpecError(f"{what}: give target=/CONTAINER/PATH")
    dst = _target(target, what)
    if (size is not None or mode is not None) and kind != "tmpfs":
        raise SpecError(f"{what}: tmpfs-size and tmpfs-mode are for type=tmpfs")
    if (labels or no_copy) and kind != "volume":
        raise SpecError(f"{what}: volume-label and volume-nocopy are for type=volume")
    if kind == "bind":
        if not source or not source.startswith("/"):
            raise SpecError(f"{what}: a bind mount needs source=/ABSOLUTE/HOST/PATH")
        check_bind_source(source)
        return Mount(dst, _clean(source), type="bind", read_only=read_only)
    if kind == "tmpfs":
        if source:
            raise SpecError(f"{what}: a tmpfs mount has no source")
        return Mount(dst, None, type="tmpfs", read_only=read_only, tmpfs_size=size, tmpfs_mode=mode)
    if source and not _VOLUME_NAME_RE.fullmatch(source):
        raise SpecError(f"{what}: {source!r} is not a volume name (letters, digits, _ . -)")
    return Mount(
        dst,
        source or None,
        type="volume",
        read_only=read_only,
        no_copy=no_copy,
        labels=labels or None,
    )


_TMPFS_FLAGS = {
    "rw", "ro", "exec", "noexec", "nosuid", "nodev", "sync", "async", "dirsync", "atime",
    "noatime", "relatime", "norelatime", "strictatime", "nostrictatime", "diratime",
    "nodiratime", "tmpcopyup", "notmpcopyup",
}  # fmt: skip
_TMPFS_VALUES = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"}


def parse_tmpfs(text: str) -> tuple[str, str]:
    """``--tmpfs /PATH[:OPTS]`` -> (path, options); ``suid`` and ``dev`` are refused."""
    path, _, opts = text.partition(":")
    what = f"--tmpfs {text!r}"
    target = _target(path, what)
    for opt in opts.split(",") if opts else []:
        key, sep, value = opt.partition("=")
        if not sep and key in ("suid", "dev"):
            raise SpecError(f"{what}: a sandbox's tmpfs is always nosuid,nodev")
        if (sep and key in _TMPFS_VALUES and value) or (not sep and key in _TMPFS_FLAGS):
            continue
        raise SpecError(f"{what}: {opt!r} is not a tmpfs option")
    return target, opts


def plan_mounts(spec: RunSpec) -> tuple[list[Mount], dict[str, str]]:
    """Every -v, --mount and --tmpfs of ``spec``, checked; each target at most once."""
    mounts = [parse_volume(v) for v in spec.volumes] + [parse_mount(m) for m in spec.mounts]
    tmpfs_list = [parse_tmpfs(t) for t in spec.tmpfs]
    seen: set[str] = set()
    for target in [m["Target"] for m in mounts] + [t for t, _ in tmpfs_list]:
        if target in seen:
            raise SpecError(f"{target}: mounted twice; give one -v, --mount or --tmpfs for it")
        seen.add(target)
    return mounts, dict(tmpfs_list)


# --- the plan --------------------------------------------------------------------------------


def _argv(spec: RunSpec, image_config: Mapping[str, Any]) -> list[str]:
    """Docker's rules: --entrypoint replaces the image's and drops its Cmd (``""``: no
    entrypoint); a command replaces the image's Cmd."""
    if spec.entrypoint is None:
        entrypoint = list(image_config.get("Entrypoint") or [])
        command = spec.command or list(image_config.get("Cmd") or [])
    else:
        entrypoint = [spec.entrypoint] if spec.entrypoint else []
        command = list(spec.command)
    argv = [*entrypoint, *command]
    if not argv:
        raise SpecError(
            f"{spec.image}: the image has no ENTRYPOINT or CMD; give a command (e.g. sh)"
        )
    return argv


def plan_container(
    spec: RunSpec, image_config: Mapping[str, Any], cfg: SandboxConfig
) -> ContainerPlan:
    check_env_names(spec.env)
    for key in spec.labels:
        _check_label_key(key)
    environment = dict(spec.env)
    if spec.user is not None:
        user = parse_user(spec.user, cfg.uid)
    elif is_root_user(image_config.get("User")):
        user = f"{cfg.uid}:{cfg.uid}"
        # cfg.uid has no home in the image (Docker would say HOME=/): give it a writable one.
        environment.setdefault("HOME", ROOT_HOME)
    else:
        user = str(image_config["User"])  # a name is resolved by Docker in the image
    working_dir = spec.workdir or image_config.get("WorkingDir") or None
    if working_dir is not None and not str(working_dir).startswith("/"):
        raise SpecError(f"-w {working_dir!r}: the working directory must be an absolute path")
    mounts, tmpfs = plan_mounts(spec)
    for m in mounts:
        if m["Type"] == "bind":
            check_bind_source(m["Source"], [cfg.bundle_dir])
    targets = {m["Target"] for m in mounts} | set(tmpfs)
    for path, opts in DEFAULT_TMPFS.items():
        if not any(_within(path, t) for t in targets):
            tmpfs = {path: opts, **tmpfs}
    return ContainerPlan(
        argv=_argv(spec, image_config),
        user=user,
        working_dir=working_dir,
        environment=environment,
        mounts=mounts,
        tmpfs=tmpfs,
        labels=dict(spec.labels),
        hostname=parse_hostname(spec.hostname) if spec.hostname is not None else None,
        mem_limit=str(parse_memory(spec.memory)) if spec.memory is not None else cfg.memory,
        nano_cpus=_nano_cpus(spec.cpus, cfg),
        pids_limit=_pids_limit(spec.pids_limit, cfg),
        read_only=cfg.read_only_rootfs if spec.read_only is None else spec.read_only,
        init=spec.init,
    )


def _nano_cpus(value: float | None, cfg: SandboxConfig) -> int:
    cpus = cfg.cpus if value is None else parse_cpus(str(value))
    return round(cpus * 1e9)


def _pids_limit(value: int | None, cfg: SandboxConfig) -> int:
    if value is None:
        return cfg.pids_limit
    if value <= 0:
        raise SpecError(
            f"--pids-limit {value}: a sandbox always has a process limit; give a positive number"
        )
    return value
