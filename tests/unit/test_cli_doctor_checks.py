"""`airlock doctor`'s judgements, each on its inputs alone."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Network
from pathlib import Path

from airlock.cli.doctor import (
    Finding,
    bundle_dir_finding,
    check_gate,
    check_pool,
    check_root,
    find_init_binary,
    init_finding,
    nft_finding,
    report_lines,
    secret_finding,
)

GW_UID = 998


def _st(mode: int, uid: int = 0, size: int = 41) -> os.stat_result:
    # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, st_atime, st_mtime, st_ctime
    return os.stat_result((mode, 1, 1, 1, uid, uid, size, 0, 0, 0))


def test_root() -> None:
    assert check_root(0).ok
    bad = check_root(1000)
    assert not bad.ok
    assert "uid 1000" in bad.detail and "sudo airlock doctor" in bad.detail


def test_nft_missing_failing_and_working() -> None:
    assert "apt-get install nftables" in nft_finding(None, None, "", "", 0).detail
    denied = nft_finding("/usr/sbin/nft", 1, "", "Operation not permitted (you must be root)\n", 5)
    assert not denied.ok
    assert "Operation not permitted" in denied.detail and "run as root" in denied.detail
    fine = nft_finding("/usr/sbin/nft", 0, "table ip nat\ntable inet airlock\n", "", 0)
    assert fine.ok and "2 tables" in fine.detail and "airlock's table present" in fine.detail


def test_a_pool_that_overlaps_a_host_route_fails_and_names_it() -> None:
    used = [IPv4Network("192.168.5.0/24"), IPv4Network("10.0.0.2/32")]
    bad = check_pool("192.168.0.0/16", 28, used)
    assert not bad.ok
    assert "192.168.5.0/24" in bad.detail and "choose another private range" in bad.detail
    good = check_pool("10.213.0.0/16", 28, used, taken=[IPv4Network("10.213.0.0/28")])
    assert good.ok and "10.213.0.16/28" in good.detail


def test_a_pool_check_that_cannot_read_the_host_fails() -> None:
    bad = check_pool("10.213.0.0/16", 28, FileNotFoundError(2, "No such file", "ip"))
    assert not bad.ok and "cannot read the host's networks" in bad.detail


def test_the_gate_binary(tmp_path: Path) -> None:
    missing = check_gate(tmp_path / "busybox")
    assert not missing.ok and "busybox-static" in missing.detail
    script = tmp_path / "sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert "statically linked" in check_gate(script).detail


def test_secret_modes_owners_and_the_gateway_user() -> None:
    token = Path("/etc/airlock/token")
    ok = secret_finding("token file", token, _st(stat.S_IFREG | 0o600), 0, None)
    assert ok.ok and ok.check == "token-file"
    loose = secret_finding("token file", token, _st(stat.S_IFREG | 0o644), 0, None)
    assert (
        not loose.ok
        and "mode 0644" in loose.detail
        and "chmod 600 /etc/airlock/token" in loose.detail
    )
    other = secret_finding("token file", token, _st(stat.S_IFREG | 0o600, uid=1234), 0, None)
    assert not other.ok and "owned by uid 1234" in other.detail
    # A gateway that drops to its user cannot read a root-owned 0600 file.
    rooted = secret_finding("App private key", token, _st(stat.S_IFREG | 0o600), GW_UID, "airlock")
    assert not rooted.ok and rooted.check == "app-key" and "chown airlock" in rooted.detail
    theirs = secret_finding(
        "token file", token, _st(stat.S_IFREG | 0o400, uid=GW_UID), GW_UID, "airlock"
    )
    assert theirs.ok
    assert not secret_finding("token file", token, _st(stat.S_IFDIR | 0o700), 0, None).ok
    assert (
        "empty"
        in secret_finding("token file", token, _st(stat.S_IFREG | 0o600, size=0), 0, None).detail
    )
    gone = secret_finding(
        "token file", token, FileNotFoundError(2, "No such file or directory"), 0, None
    )
    assert not gone.ok and "No such file" in gone.detail


def test_a_symlinked_secret_names_its_target() -> None:
    f = secret_finding(
        "token file", Path("/etc/t"), _st(stat.S_IFREG | 0o640), 0, None, resolved="/secrets/t"
    )
    assert "/etc/t (a symlink to /secrets/t)" in f.detail and "chmod 600 /secrets/t" in f.detail


def _bundle(st: os.stat_result | OSError, mounts: str = "", user: str | None = None) -> Finding:
    return bundle_dir_finding(
        Path("/run/airlock/sandboxes"),
        st,
        mounts,
        control_socket=Path("/run/airlock/control.sock"),
        state_dir=Path("/var/lib/airlock"),
        gateway_user=user,
    )


def test_the_bundle_dir() -> None:
    assert _bundle(FileNotFoundError(2, "No such file")).ok
    tmpfs = "tmpfs /run/airlock/sandboxes tmpfs rw,nosuid 0 0\n"
    on_tmpfs = _bundle(_st(stat.S_IFDIR | 0o700), tmpfs)
    assert on_tmpfs.ok and "is a tmpfs" in on_tmpfs.detail
    assert "mounts a tmpfs" in _bundle(_st(stat.S_IFDIR | 0o700)).detail
    assert not _bundle(_st(stat.S_IFREG | 0o600)).ok
    assert not _bundle(_st(stat.S_IFLNK | 0o777)).ok
    assert not _bundle(_st(stat.S_IFDIR | 0o777)).ok
    assert "uid 1000" in _bundle(_st(stat.S_IFDIR | 0o700, uid=1000)).detail
    # With gateway.user, the socket's directory is handed to that user: not with the bundles.
    shared = _bundle(_st(stat.S_IFDIR | 0o700), tmpfs, user="airlock")
    assert not shared.ok and "/run/airlock/gateway/control.sock" in shared.detail


def test_docker_init() -> None:
    present = {"/usr/libexec/docker/docker-init"}
    assert (
        find_init_binary("docker-init", present.__contains__) == "/usr/libexec/docker/docker-init"
    )
    assert find_init_binary("docker-init", set().__contains__) is None
    assert find_init_binary("/opt/tini", {"/opt/tini"}.__contains__) == "/opt/tini"
    missing = init_finding("docker-init", None, local=True)
    assert not missing.ok and "docker-init" in missing.detail
    assert init_finding("docker-init", None, local=False).ok


def test_report_lines_are_aligned_and_say_ok_or_fail() -> None:
    lines = report_lines([Finding("root", True, "fine"), Finding("docker-init", False, "bad")])
    assert lines == ["ok    root         fine", "FAIL  docker-init  bad"]
