"""An image with systemd as PID 1, for testing airlock's units under a real systemd.

Built offline like the sandbox image (host/images.py): ``debootstrap`` of Debian's signed
packages, a few files written into the tree, ``docker import``; the tarball is cached by a
hash of the recipe. The image carries ``/opt/airlock``, a venv of Debian's ``python3.11``
whose site-packages add the checkout's ``.venv``'s, which the tests bind-mount read-only at
``CHECKOUT_MOUNT`` (and at its own path, where its editable install points), so the
checkout's airlock and its dependencies run from a path outside ``/root`` and ``/home`` (the
units' ``ProtectHome=yes`` hides those), wherever the checkout is.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import docker

from airlock.host import images

__all__ = [
    "AIRLOCK_BIN",
    "CHECKOUT_MOUNT",
    "PACKAGES",
    "ensure_systemd_image",
    "systemd_image_tag",
]

RECIPE_VERSION = 2  # 2: the checkout at CHECKOUT_MOUNT, not at a path of this machine
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3.11",
    "python3-venv",
    "git",
    "util-linux",
    "iproute2",
    "nftables",
    "ca-certificates",
    "procps",
    "acl",
)
CHECKOUT_MOUNT = Path("/opt/airlock-checkout")
VENV = "/opt/airlock"
AIRLOCK_BIN = f"{VENV}/bin/airlock"
REPOSITORY = "airlock-test/systemd"

# Units that make no sense in a container or slow its boot.
MASK = (
    "getty.target",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-firstboot.service",
)


def _key() -> str:
    blob = json.dumps(
        {"recipe": RECIPE_VERSION, "packages": sorted(PACKAGES), "mask": sorted(MASK)},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


KEY = _key()


def systemd_image_tag() -> str:
    return f"{REPOSITORY}:{KEY}"


def _customize(root: Path, log: Path, say: images.Progress) -> None:
    say("making the systemd image's venv")
    images.run_logged(
        ["chroot", str(root), "/usr/bin/python3.11", "-m", "venv", "--without-pip", VENV], log
    )
    site = root / VENV.lstrip("/") / "lib/python3.11/site-packages"
    venv_site = CHECKOUT_MOUNT / ".venv/lib/python3.11/site-packages"
    # The checkout's src first: its venv's editable install names the checkout's own path,
    # which a unit may not see (PrivateTmp=, ProtectHome=).
    src = str(CHECKOUT_MOUNT / "src")
    (site / "airlock-checkout.pth").write_text(
        f"import sys, site; sys.path.insert(0, {src!r}); site.addsitedir({str(venv_site)!r})\n"
    )
    airlock = root / AIRLOCK_BIN.lstrip("/")
    airlock.write_text(
        f"#!{VENV}/bin/python3.11\nimport sys\nfrom airlock.fastpath import main\n"
        "sys.exit(main())\n"
    )
    os.chmod(airlock, 0o755)  # noqa: S103 (a program for every user)
    for unit in MASK:
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    (root / "etc/machine-id").write_text("")
    for name in ("etc/resolv.conf", "etc/hostname", "var/log/bootstrap.log"):
        p = root / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    (root / "etc/apt/sources.list").write_text(images.NO_SOURCES)


CHANGES = [
    "ENV container=docker",
    f"LABEL org.airlock.systemd-image-key={KEY}",
    'CMD ["/sbin/init"]',
]


def ensure_systemd_image(
    client: docker.DockerClient,
    cache_dir: Path = Path("/var/cache/airlock"),
    say: images.Progress | None = None,
) -> str:
    progress: images.Progress = say or (lambda _m: None)
    tag = systemd_image_tag()
    if images.image_exists(client, tag):
        return tag
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with images.locked(cache_dir / ".systemd-image.lock"):
        if images.image_exists(client, tag):
            return tag
        tarball = cache_dir / f"systemd-rootfs-{KEY}.tar"
        digest = tarball.with_suffix(".tar.sha256")
        if not (tarball.is_file() and digest.is_file()):
            images.build_rootfs_tarball(
                cache_dir,
                tarball,
                digest,
                progress,
                images.debian_mirror(),
                packages=PACKAGES,
                customize=_customize,
            )
        images.import_rootfs(client, tarball, digest, tag, changes=CHANGES)
    return tag


if __name__ == "__main__":
    c = docker.from_env(timeout=600)
    print(ensure_systemd_image(c, say=print))
    subprocess.run(["docker", "image", "ls", REPOSITORY], check=False)
