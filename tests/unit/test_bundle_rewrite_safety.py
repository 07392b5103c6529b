"""The bundle rewrite (host/bundle.refresh_bundle) over a directory its owner controls:
each way to make root read or write a file outside the bundle, tried for real.

See tests/unit/test_bundle_rewrite_attacks.py for the red team's mid-rewrite swaps; these
are the static forms (set up before the rewrite) and the ``--out`` path check.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from airlock.host.bundle import (
    API_CA_FILE,
    CA_BUNDLE_FILE,
    CA_FILE,
    CERT_FILE,
    GITCONFIG_FILE,
    MANIFEST_FILE,
    BundleError,
    refresh_bundle,
    unsafe_ancestor,
)
from airlock.host.rotation import bundle_dirs

SECRET = b"root-only: this must never reach a bundle\n"
GITCONFIG = '[http]\n\tpinnedPubkey = "sha256//old"\n'
NEW = {
    "cert_pem": "NEW CERT\n",
    "ca_pem": "NEW CA\n",
    "pins": "sha256//new",
    "api_ca_pem": "NEW API\n",
}


def _bundle(d: Path) -> None:
    d.mkdir(parents=True)
    for name, data in {
        CERT_FILE: "OLD CERT\n",
        CA_FILE: "OLD CA\n",
        GITCONFIG_FILE: GITCONFIG,
        API_CA_FILE: "OLD API\n",
        CA_BUNDLE_FILE: "system\n# airlock: the GitHub API interception CA\nOLD API\n",
        MANIFEST_FILE: f"x  {CERT_FILE}\nx  {CA_FILE}\n",
        "session.json": '{"id": "s"}',
    }.items():
        (d / name).write_text(data)
        os.chmod(d / name, 0o444)


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    return secret


def _all_bytes(d: Path) -> bytes:
    return b"".join(p.read_bytes() for p in d.iterdir() if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("name", [GITCONFIG_FILE, CA_BUNDLE_FILE, CA_FILE, MANIFEST_FILE])
def test_a_symlinked_bundle_file_is_neither_read_nor_written_through(
    tmp_path: Path, name: str
) -> None:
    secret = _secret(tmp_path)
    d = tmp_path / "sbx"
    _bundle(d)
    (d / name).unlink()
    (d / name).symlink_to(secret)
    with pytest.raises(BundleError, match=name):
        refresh_bundle(d, **NEW)
    assert secret.read_bytes() == SECRET  # not written through the link
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert SECRET not in _all_bytes(d)  # not copied into the bundle
    assert (d / name).is_symlink()  # left as it is
    # What could be read safely was rewritten; the certificate goes first.
    assert (d / CERT_FILE).read_text() == "NEW CERT\n"


def test_a_hard_link_to_a_root_only_file_is_refused(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    d = tmp_path / "sbx"
    _bundle(d)
    (d / CA_BUNDLE_FILE).unlink()
    os.link(secret, d / CA_BUNDLE_FILE)
    with pytest.raises(BundleError, match="links"):
        refresh_bundle(d, **NEW)
    assert secret.read_bytes() == SECRET
    assert SECRET not in b"".join(
        p.read_bytes() for p in d.iterdir() if p.name != CA_BUNDLE_FILE and p.is_file()
    )


def test_a_fifo_does_not_block_the_rewrite(tmp_path: Path) -> None:
    d = tmp_path / "sbx"
    _bundle(d)
    (d / GITCONFIG_FILE).unlink()
    os.mkfifo(d / GITCONFIG_FILE)
    with pytest.raises(BundleError, match="not a regular file"):
        refresh_bundle(d, **NEW)  # returns at once (O_NONBLOCK), no writer needed


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    d = tmp_path / "sbx"
    _bundle(d)
    os.chown(d, 10000, 10000)
    os.chown(d / GITCONFIG_FILE, 20000, 20000)  # neither root's nor the directory owner's
    with pytest.raises(BundleError, match="owned by uid 20000"):
        refresh_bundle(d, **NEW)
    assert (d / GITCONFIG_FILE).read_text() == GITCONFIG


def test_the_directory_itself_may_not_be_a_symlink(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    _bundle(etc)
    (tmp_path / "link").symlink_to(etc)
    with pytest.raises(BundleError, match="symlink"):
        refresh_bundle(tmp_path / "link", **NEW)
    assert (etc / CERT_FILE).read_text() == "OLD CERT\n"


def test_a_manifest_naming_a_path_outside_the_bundle_does_not_read_it(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    d = tmp_path / "sbx"
    _bundle(d)
    (d / MANIFEST_FILE).chmod(0o644)
    (d / MANIFEST_FILE).write_text(f"x  {CERT_FILE}\nx  ../shadow\nx  {secret}\n")
    refresh_bundle(d, **NEW)
    sums = (d / MANIFEST_FILE).read_text()
    cert_sum = hashlib.sha256(NEW["cert_pem"].encode()).hexdigest()
    assert sums == f"{cert_sum}  {CERT_FILE}\n"
    assert hashlib.sha256(SECRET).hexdigest() not in sums


def test_a_sound_bundle_is_rewritten_whole_and_keeps_owner_and_mode(tmp_path: Path) -> None:
    d = tmp_path / "sbx"
    _bundle(d)
    if os.geteuid() == 0:  # a sandbox bundle: the directory and files are the sandbox uid's
        for p in [d, *d.iterdir()]:
            os.chown(p, 10000, 10000)
    changed = refresh_bundle(d, **NEW)
    assert set(changed) == {CERT_FILE, CA_FILE, GITCONFIG_FILE, API_CA_FILE, CA_BUNDLE_FILE}
    assert (d / CA_BUNDLE_FILE).read_text().startswith("system\n")
    assert '"sha256//new"' in (d / GITCONFIG_FILE).read_text()
    for p in d.iterdir():
        st = p.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (10000, 10000)
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# --- --out directories: the path from / ----------------------------------------------------------


def test_unsafe_ancestor(tmp_path: Path) -> None:
    d = tmp_path / "a" / "bundle"
    d.mkdir(parents=True)
    assert unsafe_ancestor(d) is None  # pytest's directories are ours, /tmp is sticky
    (tmp_path / "a").chmod(0o777)
    assert "writable by group or others" in (unsafe_ancestor(d) or "")
    (tmp_path / "a").chmod(0o1777)
    assert unsafe_ancestor(d) is None
    (tmp_path / "a").chmod(0o755)
    # Someone else's directory above it (the uid argument stands in for another user).
    if os.geteuid() != 0:
        assert "belongs to uid" in (unsafe_ancestor(d, uid=os.geteuid() + 1) or "")
    # The bundle directory itself may be anyone's: it is opened once, never followed again.
    if os.geteuid() == 0:
        os.chown(d, 10000, 10000)
        assert unsafe_ancestor(d) is None
        os.chown(tmp_path / "a", 10000, 10000)
        assert "belongs to uid 10000" in (unsafe_ancestor(d) or "")


def test_unsafe_ancestor_checks_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home").chmod(0o777)
    _bundle(tmp_path / "home" / "bundle")
    (tmp_path / "safe").symlink_to(tmp_path / "home" / "bundle")
    assert "writable by group or others" in (unsafe_ancestor(tmp_path / "safe") or "")


def test_bundle_dirs_refuses_an_out_directory_under_someone_elses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _bundle(home / "bundle")
    home.chmod(0o777)
    with pytest.raises(BundleError, match=r"--out .*bundle: .*writable by group or others"):
        bundle_dirs(tmp_path / "none", [home / "bundle"])
    home.chmod(0o700)
    (tmp_path / "alias").symlink_to(home / "bundle")
    assert bundle_dirs(tmp_path / "none", [tmp_path / "alias"]) == [(home / "bundle").resolve()]
