"""Session bundles: the files a git client needs to use a session, and nothing secret besides
its own session key (the upstream token never appears here)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CA_FILE = "ca.pem"
CERT_FILE = "client.pem"
KEY_FILE = "client.key"
GITCONFIG_FILE = "gitconfig"
# Sandbox bundles only: the git password (HTTP Basic) for libgit2 and cargo.
GIT_PASSWORD_FILE = "git-password"  # noqa: S105 (a file name)
MANIFEST_FILE = "SHA256SUMS"
# An empty directory that git's curl is given as its CA directory (``http.sslCAPath``):
# without one, curl also loads its built-in CA directory (Debian: the ~430 files of
# /etc/ssl/certs), 60-140 ms of every git command on a 2-core machine (bench/README.md),
# for certificates that must never vouch for the gateway anyway (ca.pem and the pin do).
CA_DIR = "ca.d"
# Sandbox bundles only: trust for the GitHub API's interception CA (gateway/intercept_ca.py).
API_CA_FILE = "api-ca.pem"  # the interception CA alone (NODE_EXTRA_CA_CERTS)
CA_BUNDLE_FILE = "ca-bundle.pem"  # the host's CAs plus it (SSL_CERT_FILE and the like)


@dataclass(frozen=True)
class GatewayEndpoint:
    name: str  # the name in the gateway's certificate
    address: str  # where that name points for this client
    port: int

    @property
    def base_url(self) -> str:
        return f"https://{self.name}:{self.port}"


def _q(value: str) -> str:
    # git config values: quote and escape so paths with spaces or quotes stay one value.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_gitconfig(
    *,
    endpoint: GatewayEndpoint,
    upstream_hosts: list[str],
    pinned_pubkey: str,
    ca_path: str,
    cert_path: str,
    key_path: str,
    resolve: bool,
    basic: tuple[str, str] | None = None,
    ca_dir: str | None = None,
) -> str:
    """Git configuration that sends every configured upstream through the gateway.

    Hooks, fsmonitor, credential helpers, redirects and every transport but https are off,
    so a malicious repository or a rewritten URL cannot run code or reach anywhere else.
    ``basic`` (sandbox bundles: the session id and the path of its git password file) adds
    one credential helper, for the gateway's URL only, that prints them: clients without a
    client certificate (libgit2, cargo) answer the gateway's Basic challenge with it. No
    other helper runs (``credential.helper`` stays empty). ``ca_dir`` (an empty directory)
    replaces curl's built-in CA directory for the gateway's URLs: only ``ca_path`` is trusted.
    """
    base = endpoint.base_url
    lines = []
    hosts = sorted(upstream_hosts)
    for host in hosts:
        # Host form: the rewritten URL still names the upstream (the clone's `git remote -v`
        # says github.com, so gh finds its repository), at the gateway's port and address.
        lines += [
            f'[url "https://{host}:{endpoint.port}/"]',
            f"\tinsteadOf = https://{host}/",
            f"\tinsteadOf = http://{host}/",
            f"\tinsteadOf = ssh://git@{host}/",
            f"\tinsteadOf = git@{host}:",
            f"\tinsteadOf = git://{host}/",
        ]
    for url, name in [(base, endpoint.name), *((f"https://{h}:{endpoint.port}", h) for h in hosts)]:
        lines += [
            f'[http "{url}/"]',
            f"\tsslCAInfo = {_q(ca_path)}",
            *([f"\tsslCAPath = {_q(ca_dir)}"] if ca_dir is not None else []),
            f"\tpinnedPubkey = {pinned_pubkey}",
            f"\tsslCert = {_q(cert_path)}",
            f"\tsslKey = {_q(key_path)}",
            "\tsslVerify = true",
            "\tfollowRedirects = false",
            # Straight to the gateway: never through HTTPS_PROXY (the egress proxy).
            '\tproxy = ""',
        ]
        if resolve:
            # Host bundles: neither name need be in DNS, curl is told where the gateway is.
            # (A sandbox's hosts file names both: a copied bundle points nowhere else.)
            lines.append(f"\tcurloptResolve = {name}:{endpoint.port}:{endpoint.address}")
    lines += [
        "[http]",
        "\tfollowRedirects = false",
        "[core]",
        "\thooksPath = /dev/null",
        "\tfsmonitor = false",
        "[protocol]",
        "\tallow = never",
        '[protocol "https"]',
        "\tallow = always",
        "[credential]",
        "\thelper =",
    ]
    if basic is not None:
        session_id, password_path = basic
        helper = (
            f'!f() {{ test "$1" = get || exit 0; echo username={session_id}; '
            f'echo "password=$(cat {password_path})"; }}; f'
        )
        # git matches the URL with its port; git2-rs (cargo) looks up scheme://host only.
        urls = [base, f"https://{endpoint.name}"]
        for host in hosts:
            urls += [f"https://{host}:{endpoint.port}", f"https://{host}"]
        for url in urls:
            lines += [f'[credential "{url}"]', f"\thelper = {_q(helper)}"]
    lines.append("")
    return "\n".join(lines)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_bundle(
    directory: Path,
    issued: dict[str, Any],
    key_pem: bytes,
    *,
    endpoint: GatewayEndpoint,
    mount_point: Path | None = None,
    resolve: bool = True,
    key_mode: int = 0o600,
    uid: int | None = None,
    basic: bool = False,
) -> Path:
    """Write a session bundle to ``directory`` (0700); return the gitconfig's path.

    ``mount_point`` is where the bundle will be seen by the git client (a sandbox's
    /run/airlock); paths inside the gitconfig point there. ``basic`` (sandboxes) adds the
    session's git password (``git-password``, mode ``key_mode``) and its credential helper.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    seen_at = mount_point or directory.resolve()
    files = {
        CA_FILE: (issued["ca_pem"].encode(), 0o444),
        CERT_FILE: (issued["cert_pem"].encode(), 0o444),
        KEY_FILE: (key_pem, key_mode),
    }
    if basic:
        files[GIT_PASSWORD_FILE] = (issued["git_password"].encode(), key_mode)
    config = render_gitconfig(
        endpoint=endpoint,
        upstream_hosts=list(issued["upstream_hosts"]),
        pinned_pubkey=issued["pinned_pubkey"],
        ca_path=str(seen_at / CA_FILE),
        cert_path=str(seen_at / CERT_FILE),
        key_path=str(seen_at / KEY_FILE),
        resolve=resolve,
        basic=(issued["session"]["id"], str(seen_at / GIT_PASSWORD_FILE)) if basic else None,
        ca_dir=str(seen_at / CA_DIR),
    )
    files[GITCONFIG_FILE] = (config.encode(), 0o444)
    ca_dir = directory / CA_DIR
    ca_dir.mkdir(mode=0o555, exist_ok=True)
    if ca_dir.is_symlink() or any(ca_dir.iterdir()):
        raise BundleError(f"{ca_dir}: not an empty directory; remove it and write the bundle again")
    os.chmod(ca_dir, 0o555)  # noqa: S103 (empty, read-only: nothing to read but its emptiness)
    for name, (data, mode) in files.items():
        _write(directory / name, data, mode)
    # A manifest of what was generated, so anyone can check the files were not altered.
    manifest = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, (data, _) in sorted(files.items())
    )
    _write(directory / MANIFEST_FILE, manifest.encode(), 0o444)
    _write(
        directory / "session.json",
        json.dumps({"id": issued["session"]["id"], "gateway": endpoint.base_url}).encode(),
        0o444,
    )
    if uid is not None:
        for name in [*files, MANIFEST_FILE, "session.json"]:
            os.chown(directory / name, uid, uid)
        os.chown(directory, uid, uid)
    return directory / GITCONFIG_FILE


def write_api_trust(
    directory: Path, ca_pem: str, system_bundle: Path | None, uid: int | None = None
) -> None:
    """The interception CA for a sandbox, alone and appended to the host's CA bundle, so
    that clients which replace their trust (SSL_CERT_FILE, REQUESTS_CA_BUNDLE) still trust
    every other site the way the host does. No host bundle: the CA alone."""
    system = b""
    if system_bundle is not None:
        try:
            system = system_bundle.read_bytes()
        except OSError:
            system = b""
    if system and not system.endswith(b"\n"):
        system += b"\n"
    files = {
        API_CA_FILE: ca_pem.encode(),
        CA_BUNDLE_FILE: system + b"# airlock: the GitHub API interception CA\n" + ca_pem.encode(),
    }
    for name, data in files.items():
        _write(directory / name, data, 0o444)
        if uid is not None:
            os.chown(directory / name, uid, uid)


def api_environment(mount_point: Path, token: str, names: dict[str, str]) -> dict[str, str]:
    """What a sandbox's tools need for the GitHub API through airlock: the per-session
    token (GH_TOKEN; gh takes GH_ENTERPRISE_TOKEN and GH_HOST for an Enterprise host) and
    the CA bundle in each variable common tools read: OpenSSL and Go (SSL_CERT_FILE),
    Python requests and pip (REQUESTS_CA_BUNDLE), curl (CURL_CA_BUNDLE), Node
    (NODE_EXTRA_CA_CERTS, added to its own CAs), git is not touched (its gateway trust is
    its own config). ``names`` maps each API name to its upstream host."""
    bundle = str(mount_point / CA_BUNDLE_FILE)
    env = {
        "GH_TOKEN": token,
        "GITHUB_TOKEN": token,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": str(mount_point / API_CA_FILE),
        "GH_PROMPT_DISABLED": "1",
    }
    enterprise = sorted(h for h in names.values() if h != "github.com")
    if enterprise:
        env["GH_ENTERPRISE_TOKEN"] = token
        if "github.com" not in names.values() and len(enterprise) == 1:
            env["GH_HOST"] = enterprise[0]
    return env


# --- CA rotation: the same bundle, new certificate and trust, each file renamed into place ---

API_CA_MARKER = b"# airlock: the GitHub API interception CA\n"
_PIN_LINE = re.compile(r"^(\s*pinnedPubkey = ).*$", re.MULTILINE)


class BundleError(Exception):
    """A bundle directory cannot be refreshed; the message names it and why."""


# Every file a bundle holds is small; the largest is ca-bundle.pem (the host's CAs).
MAX_BUNDLE_FILE = 8 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_bundle_dir(directory: Path) -> int:
    """An fd of ``directory`` itself (its last component never a symlink): every read and
    write of a rewrite goes through it, so renaming the directory away or swapping its name
    for a symlink mid-rewrite redirects nothing. Anyone may own it (a sandbox bundle is its
    sandbox's uid's, whichever the image chose); each file in it must be root's or the
    directory owner's (:func:`_open_file`)."""
    try:
        fd = os.open(directory, _O_DIR)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise BundleError(f"{directory}: not a directory (a symlink?); refusing it") from None
        raise
    return fd


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _open_file(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """``name`` in the directory, opened without following a symlink or blocking on a FIFO,
    if it is a regular file of one link (a hard link to a file elsewhere is refused) owned by
    root or the directory's owner; None if absent. BundleError for anything else."""
    if not _safe_name(name):
        raise BundleError(f"{name!r}: not a file name of a bundle")
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{name}: a symlink; refusing to read or replace it") from None
        raise
    try:
        st = os.fstat(fd)
        owner = os.fstat(dir_fd).st_uid
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{name}: not a regular file; refusing to read or replace it")
        if st.st_nlink != 1:
            raise BundleError(f"{name}: has {st.st_nlink} links; refusing to read or replace it")
        if st.st_uid not in (0, owner):
            raise BundleError(f"{name}: owned by uid {st.st_uid}, not the bundle's owner")
        if st.st_size > MAX_BUNDLE_FILE:
            raise BundleError(f"{name}: {st.st_size} bytes, too large for a bundle file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_at(dir_fd: int, name: str) -> tuple[bytes, os.stat_result] | None:
    """The bytes and status of a bundle file (see :func:`_open_file`), or None if absent."""
    opened = _open_file(dir_fd, name)
    if opened is None:
        return None
    fd, st = opened
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BUNDLE_FILE:
                raise BundleError(f"{name}: too large for a bundle file")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), st


def _replace_at(dir_fd: int, name: str, data: bytes, old: os.stat_result) -> None:
    """Write ``data`` to a new name in the directory, with ``old``'s owner, group and
    permission bits, then rename it over ``name``: both names relative to the same fd."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, keeping its owner, group and mode: written
    to a new name in the same directory, then renamed over it. A container that has the
    directory bind-mounted sees the whole old file or the whole new one, never a mix."""
    dir_fd = open_bundle_dir(path.parent)
    try:
        opened = _open_file(dir_fd, path.name)
        if opened is None:
            raise BundleError(f"{path}: no such file")
        os.close(opened[0])
        _replace_at(dir_fd, path.name, data, opened[1])
    finally:
        os.close(dir_fd)


def bundle_session_id(directory: Path) -> str | None:
    """The session a bundle directory holds (its session.json), or None."""
    try:
        dir_fd = open_bundle_dir(directory)
    except (BundleError, OSError):
        return None
    try:
        got = _read_at(dir_fd, "session.json")
        raw = json.loads(got[0]) if got is not None else None
    except (BundleError, OSError, ValueError):
        return None
    finally:
        os.close(dir_fd)
    sid = raw.get("id") if isinstance(raw, dict) else None
    return sid if isinstance(sid, str) else None


def unsafe_ancestor(directory: Path, uid: int | None = None) -> str | None:
    """Why ``uid`` (default: this process's) must not rewrite a bundle at ``directory``
    (None: it may). Each directory on its real path from / down to its parent must be
    root's or ``uid``'s and writable by no one else (a sticky directory like /tmp is fine:
    no one else can rename our entries in it), or its owner could swap the bundle directory
    for another mid-rewrite, and this process would write there."""
    me = os.geteuid() if uid is None else uid
    real = Path(os.path.realpath(directory))
    for parent in reversed(real.parents):
        try:
            st = os.lstat(parent)
        except OSError as exc:
            return f"{parent}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{parent} is not a directory"
        if st.st_uid not in (0, me):
            return f"{parent} belongs to uid {st.st_uid}, who could replace {real}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by group or others, who could replace {real}"
    return None


def with_pins(gitconfig: str, pins: str) -> str:
    """The gitconfig with every ``pinnedPubkey`` set to ``pins`` (curl: ``sha256//A;sha256//B``;
    quoted, or git would read the ``;`` as the start of a comment)."""
    return _PIN_LINE.sub(lambda m: m.group(1) + _q(pins), gitconfig)


def with_api_ca(ca_bundle: bytes, api_ca_pem: str) -> bytes:
    """``ca-bundle.pem`` with its interception CA part replaced (the host's CAs kept)."""
    system, _, _ = ca_bundle.partition(API_CA_MARKER)
    return system + API_CA_MARKER + api_ca_pem.encode()


def refresh_bundle(
    directory: Path,
    *,
    cert_pem: str,
    ca_pem: str,
    pins: str,
    api_ca_pem: str | None,
) -> list[str]:
    """Rewrite a bundle for a rotated CA: the session's new certificate (its key stays), the
    CAs and server pins to trust, the API trust if the bundle has it, and the manifest.
    Returns the names of the files replaced. Certificates first, then the trust: a client
    reading between them has a new certificate (accepted) and the old trust (still served).

    Runs as root over a directory its owner (a sandbox's uid) can change at any moment: the
    directory is opened once and every file read and renamed through that fd, never by a
    symlink, a hard link, or a path followed twice (see :func:`_open_file`)."""
    dir_fd = open_bundle_dir(directory)
    try:
        return _refresh_at(dir_fd, directory, cert_pem, ca_pem, pins, api_ca_pem)
    finally:
        os.close(dir_fd)


def _refresh_at(
    dir_fd: int, directory: Path, cert_pem: str, ca_pem: str, pins: str, api_ca_pem: str | None
) -> list[str]:
    refused: list[str] = []  # files not read, so not rewritten: why

    def read(name: str) -> tuple[bytes, os.stat_result] | None:
        try:
            return _read_at(dir_fd, name)
        except BundleError as exc:
            refused.append(str(exc))
            return None

    def present(name: str) -> bool:
        try:
            os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        return True

    if not present(CERT_FILE) or not present(GITCONFIG_FILE):
        raise BundleError(f"{directory}: not a session bundle (no {CERT_FILE} or {GITCONFIG_FILE})")
    # Each file is read once, safely, before anything is written; one that cannot be (a
    # symlink, a FIFO, a hard link, someone else's) is left as it is and named at the end.
    old: dict[str, tuple[bytes, os.stat_result] | None] = {
        name: read(name) for name in (CERT_FILE, CA_FILE, GITCONFIG_FILE)
    }
    new: dict[str, bytes] = {CERT_FILE: cert_pem.encode(), CA_FILE: ca_pem.encode()}
    gitconfig = old[GITCONFIG_FILE]
    if gitconfig is not None:
        try:
            new[GITCONFIG_FILE] = with_pins(gitconfig[0].decode(), pins).encode()
        except UnicodeDecodeError:
            refused.append(f"{GITCONFIG_FILE}: not text")
    if api_ca_pem is not None and present(API_CA_FILE):
        new[API_CA_FILE] = api_ca_pem.encode()
        old[API_CA_FILE] = read(API_CA_FILE)
        if present(CA_BUNDLE_FILE):
            old[CA_BUNDLE_FILE] = ca_bundle = read(CA_BUNDLE_FILE)
            if ca_bundle is not None:
                new[CA_BUNDLE_FILE] = with_api_ca(ca_bundle[0], api_ca_pem)
    contents = {name: got[0] for name, got in old.items() if got is not None}
    changed = []
    for name, data in new.items():
        got = old.get(name)
        if got is None:
            if present(name):
                continue  # refused above
            refused.append(f"{name}: missing")
            continue
        if got[0] == data:
            continue
        _replace_at(dir_fd, name, data, got[1])
        contents[name] = data
        changed.append(name)
    manifest = read(MANIFEST_FILE) if changed and present(MANIFEST_FILE) else None
    if manifest is not None:
        names = [
            line.split("  ", 1)[1]
            for line in manifest[0].decode(errors="replace").splitlines()
            if "  " in line
        ]
        lines = []
        for n in names:
            if not _safe_name(n):
                continue  # a name with a slash is no file of this directory: dropped
            held = contents.get(n)
            if held is None and present(n):
                got = read(n)
                held = got[0] if got is not None else None
            if held is not None:
                lines.append(f"{hashlib.sha256(held).hexdigest()}  {n}\n")
        _replace_at(dir_fd, MANIFEST_FILE, "".join(lines).encode(), manifest[1])
    if refused:
        done = f"rewrote {', '.join(changed)}; " if changed else ""
        raise BundleError(f"{directory}: {done}left as they are: " + "; ".join(refused))
    return changed
