"""The sandbox image airlock's tests and demo use, built offline from Debian's packages.

No registry is involved: ``debootstrap`` fetches signed packages from a Debian mirror into a
directory, a non-root user is added with ``chroot useradd``, the tree is tarred and handed to
``docker import``. The tarball is cached, so after ``docker image rm`` only the import runs again.

The tag is ``airlock/sandbox:<key>`` where ``<key>`` hashes everything that shapes the image
(suite, variant, package list, user, this recipe's version): change any of them and a new
image is built instead of silently reusing an old one. The mirror is only where the packages
come from (each is verified against Debian's keyring), so it is not part of the key.

The image names no host of its own: its apt sources are emptied, debootstrap's log (which
names the mirror and the build directory) is removed, and so are apt's caches, the host's
resolv.conf and hostname. Python users get a working pip: a virtual environment at
``/opt/venv`` (Debian's python3-venv, offline), owned by the sandbox user and first on PATH,
so ``pip install`` works without ``--break-system-packages`` (PEP 668 protects Debian's own
Python). A read-only root file system makes it read-only too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors

from airlock.config import Config

__all__ = [
    "IMAGE_KEY",
    "IMAGE_REPOSITORY",
    "PACKAGES",
    "SANDBOX_GID",
    "SANDBOX_HOME",
    "SANDBOX_UID",
    "SANDBOX_USER",
    "VENV",
    "ImageBuildError",
    "check_mirror",
    "debian_mirror",
    "ensure_sandbox_image",
    "sandbox_image_tag",
]

# Bump when the recipe below changes in a way the other inputs do not capture.
# 2: /opt/venv for the sandbox user on PATH; no mirror named in the image; mirror not in the key.
RECIPE_VERSION = 2

SUITE = "bookworm"
APT_SOURCES = Path("/etc/apt")


def debian_mirror(apt_dir: Path = APT_SOURCES, suite: str = "bookworm") -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (AIRLOCK_DEBIAN_MIRROR wins);
    "" when none is configured. Packages are verified against the keyring either way."""
    override = os.environ.get("AIRLOCK_DEBIAN_MIRROR")
    if override:
        return override
    candidates: list[Path] = sorted((apt_dir / "sources.list.d").glob("*.sources"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return ""


KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = (
    "git",
    "curl",
    "ca-certificates",
    "python3",
    "python3-pip",
    "python3-venv",
    "iproute2",
    "dnsutils",
    "netcat-openbsd",
    "gh",  # GitHub's CLI: pull requests through the gateway's API relay
)
SANDBOX_USER = "sandbox"
SANDBOX_UID = 10000
SANDBOX_GID = 10000
SANDBOX_HOME = "/home/sandbox"
VENV = "/opt/venv"  # the sandbox user's Python environment, first on PATH
IMAGE_REPOSITORY = "airlock/sandbox"


def _image_key() -> str:
    recipe = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(PACKAGES),
        "user": [SANDBOX_USER, SANDBOX_UID, SANDBOX_GID, SANDBOX_HOME],
        "venv": VENV,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


IMAGE_KEY = _image_key()

# Applied by `docker import`: an imported rootfs has no config at all.
_CHANGES = [
    f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"ENV VIRTUAL_ENV={VENV}",
    # pip would otherwise ask PyPI for a newer pip on every run.
    "ENV PIP_DISABLE_PIP_VERSION_CHECK=1",
    "ENV LANG=C.UTF-8",
    f"ENV HOME={SANDBOX_HOME}",
    f"USER {SANDBOX_UID}:{SANDBOX_GID}",
    f"WORKDIR {SANDBOX_HOME}",
    f"LABEL org.airlock.image-key={IMAGE_KEY}",
    'CMD ["/bin/bash"]',
]

Progress = Callable[[str], None]
#: Shapes a debootstrapped tree before it is trimmed and tarred: (root, log file, progress).
Customize = Callable[[Path, Path, Progress], None]


class ImageBuildError(RuntimeError):
    """Building or importing the sandbox image failed."""


def sandbox_image_tag() -> str:
    return f"{IMAGE_REPOSITORY}:{IMAGE_KEY}"


def check_mirror(url: str) -> str:
    """A mirror URL debootstrap can use (http, https or file, no credentials); ImageBuildError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or (
        parts.scheme != "file" and not parts.hostname
    ):
        raise ImageBuildError(
            f"mirror {url!r}: use http://HOST/PATH, https://HOST/PATH or file:///PATH"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ImageBuildError(f"mirror {url!r}: no credentials, query or fragment")
    return url.rstrip("/")


def ensure_sandbox_image(
    client: docker.DockerClient,
    *,
    cache_dir: Path = Path("/var/cache/airlock"),
    progress: Progress | None = None,
    mirror: str | None = None,
    config: Config | None = None,
) -> str:
    """Return the tag of the sandbox image, building and/or importing it first if needed.

    ``mirror`` is where debootstrap fetches from when it has to build (default: this
    machine's own Debian mirror, :func:`debian_mirror`). With ``config``, the image's id is
    recorded in its integrity manifest (host/integrity.py)."""
    existed = image_exists(client, sandbox_image_tag())
    tag = _ensure_sandbox_image(client, cache_dir=cache_dir, progress=progress, mirror=mirror)
    if config is not None:
        from airlock.host import integrity

        image_id = str(client.images.get(tag).id)
        try:
            integrity.record_image(config, "sandbox", tag, image_id, built=not existed)
        except integrity.IntegrityError as exc:
            raise ImageBuildError(str(exc)) from None
    return tag


def _ensure_sandbox_image(
    client: docker.DockerClient,
    *,
    cache_dir: Path,
    progress: Progress | None,
    mirror: str | None,
) -> str:
    say: Progress = progress or (lambda _msg: None)
    if mirror is not None:
        mirror = check_mirror(mirror)
    tag = sandbox_image_tag()
    if image_exists(client, tag):
        return tag

    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two test processes may race for the first build; the lock makes the second one wait
    # and then find the image (or at least the tarball) ready.
    with locked(cache_dir / ".sandbox-image.lock"):
        if image_exists(client, tag):
            return tag
        tarball = cache_dir / f"sandbox-rootfs-{IMAGE_KEY}.tar"
        digest_file = tarball.with_suffix(".tar.sha256")
        if not (tarball.is_file() and digest_file.is_file()):
            source = mirror or debian_mirror()
            say(
                f"building sandbox rootfs with debootstrap ({SUITE}, {len(PACKAGES)} packages, "
                f"from {source or 'no mirror'})"
            )
            _build_rootfs_tarball(cache_dir, tarball, digest_file, say, source)
        say(f"importing {tarball.name} as {tag}")
        _import(client, tarball, digest_file, tag)
    return tag


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_rootfs_tarball(
    cache_dir: Path,
    tarball: Path,
    digest_file: Path,
    say: Progress,
    mirror: str,
    *,
    packages: tuple[str, ...] = PACKAGES,
    customize: Customize | None = None,
) -> None:
    """debootstrap ``packages`` into a scratch directory under ``cache_dir``, let
    ``customize(root, log)`` shape the tree, trim it and write ``tarball`` with its sha256.
    (The sandbox image and the gateway's base image, host/gateway_image.py.)"""
    if not KEYRING.is_file():
        # debootstrap would otherwise carry on without checking signatures.
        raise ImageBuildError(f"{KEYRING} missing: install debian-archive-keyring")
    if not mirror:
        raise ImageBuildError(
            f"no Debian mirror for {SUITE} in {APT_SOURCES}'s sources: "
            "pass --mirror URL or set AIRLOCK_DEBIAN_MIRROR"
        )
    # Work inside cache_dir so the final rename is on one filesystem (atomic).
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
    try:
        root = work / "rootfs"
        log = work / "debootstrap.log"
        run_logged(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--keyring={KEYRING}",
                f"--include={','.join(packages)}",
                SUITE,
                str(root),
                mirror,
            ],
            log,
        )
        (customize or _customize_sandbox)(root, log, say)
        _trim_rootfs(root)
        say("writing rootfs tarball")
        partial = work / "rootfs.tar"
        run_logged(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--acls",
                # Docker supplies /dev, /proc and /sys at run time.
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-C",
                str(root),
                "-cf",
                str(partial),
                ".",
            ],
            log,
        )
        digest = sha256_file(partial)
        os.replace(partial, tarball)
        digest_file.write_text(f"{digest}  {tarball.name}\n")
    finally:
        remove_tree(work)


def _customize_sandbox(root: Path, log: Path, say: Progress) -> None:
    say("adding the sandbox user")
    run_logged(["chroot", str(root), "groupadd", "--gid", str(SANDBOX_GID), SANDBOX_USER], log)
    run_logged(
        [
            "chroot",
            str(root),
            "useradd",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--create-home",
            "--home-dir",
            SANDBOX_HOME,
            "--shell",
            "/bin/bash",
            SANDBOX_USER,
        ],
        log,
    )
    say(f"creating {VENV} for the sandbox user")
    run_logged(["chroot", str(root), "python3", "-m", "venv", VENV], log)
    run_logged(["chroot", str(root), "chown", "-R", f"{SANDBOX_UID}:{SANDBOX_GID}", VENV], log)


NO_SOURCES = (
    "# airlock: no apt sources; the image names no host of its own.\n"
    "# Add your own (and allow its host with --allow-host) to use apt in a sandbox.\n"
)


def _trim_rootfs(root: Path) -> None:
    # Downloaded .debs, apt lists and caches are dead weight in the image (~100 MB), and the
    # lists and caches name the mirror.
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/apt"):
        d = root / sub
        if d.is_dir():
            for entry in d.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
    # The host's resolver and name, the mirror (debootstrap's log also names the build
    # directory) must not leak into the image; Docker mounts its own resolv.conf and hostname.
    for name in ("etc/resolv.conf", "etc/hostname", "var/log/bootstrap.log"):
        p = root / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    (root / "etc/apt/sources.list").write_text(NO_SOURCES)


def import_rootfs(
    client: docker.DockerClient,
    tarball: Path,
    digest_file: Path,
    tag: str,
    changes: list[str] | None = None,
) -> None:
    """``docker import`` a tarball (checked against its recorded sha256) as ``tag``."""
    expected = digest_file.read_text().split()[0]
    if sha256_file(tarball) != expected:
        # A damaged or altered cache must not become the sandbox image; rebuild next time.
        tarball.unlink()
        digest_file.unlink()
        raise ImageBuildError(f"{tarball} does not match its recorded sha256; removed it")
    repository, _, version = tag.partition(":")
    # Pass an open file, never a path string: docker-py treats a str it cannot open as a
    # URL for the daemon to fetch.
    with open(tarball, "rb") as f:
        result: Any = client.api.import_image(
            src=f,
            repository=repository,
            tag=version,
            changes=_CHANGES if changes is None else changes,
        )
    if not image_exists(client, tag):
        raise ImageBuildError(f"docker import did not produce {tag}: {result!r}"[:2000])


# The sandbox build's steps by their old names (tests replace them).
_build_rootfs_tarball = build_rootfs_tarball
_import = import_rootfs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_logged(argv: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"{argv[0]} exited with {proc.returncode}; last output:\n" + "\n".join(tail)
        )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point.startswith(prefix):
                found.append(mount_point)
    return found


def remove_tree(path: Path) -> None:
    # A failed debootstrap can leave /proc or /sys mounted inside the target; deleting
    # through those mounts would be disastrous, so unmount them first (deepest first) and
    # let `rm --one-file-system` refuse anything still mounted.
    for mount_point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
    if path.exists():
        # If this fails the directory stays behind (named build-* under the cache dir);
        # that is better than forcing a delete through a mount.
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
