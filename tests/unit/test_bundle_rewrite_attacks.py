"""Red team: the host's bundle rewrite (`airlock rotate ca`, host/bundle.refresh_bundle) run
by root over a directory someone else can write.

Who can write there: a sandbox bundle directory is owned by the sandbox's uid (10000, a uid a
host account may have too); an ``--out`` bundle lives wherever the operator put it, for
instance in the home of the user it is for, who owns the parent directory.

The attacker's moves are real file-system operations (rename, symlink) made at a moment
inside the rewrite: each test performs them from a hook on ``os.replace``, right after the
rewrite renamed one of the bundle's files into place, which is a window of several
``fsync`` calls that a process looping on rename(2) hits without trying hard. Both tests show
what a sound rewrite must not do: copy a file it was not meant to read into the bundle, or
write a file outside the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airlock.host.bundle import (
    API_CA_FILE,
    CA_BUNDLE_FILE,
    CA_FILE,
    CERT_FILE,
    GITCONFIG_FILE,
    MANIFEST_FILE,
    refresh_bundle,
)

Hook = Callable[[str, Callable[[], None]], None]
ATTACKER = 10000  # the sandbox uid
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
        MANIFEST_FILE: "",
        "session.json": '{"id": "s"}',
    }.items():
        (d / name).write_text(data)
        os.chmod(d / name, 0o444)


@pytest.fixture
def after_replace(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str, Callable[[], None]], None]]:
    """``after_replace(name, move)``: run ``move`` once, right after the rewrite renamed a
    new ``name`` into place."""
    moves: dict[str, Callable[[], None]] = {}
    real = os.replace

    def replace(src: object, dst: object, **kw: object) -> None:
        real(src, dst, **kw)  # type: ignore[arg-type]
        move = moves.pop(Path(str(dst)).name, None)
        if move is not None:
            move()

    monkeypatch.setattr(os, "replace", replace)  # bundle.py calls os.replace
    yield lambda name, move: moves.__setitem__(name, move)


def test_a_symlinked_file_swapped_for_a_regular_one_does_not_copy_its_target_into_the_bundle(
    tmp_path: Path, after_replace: Hook
) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    d = tmp_path / "bundles" / "sbx"
    _bundle(d)
    # The directory's owner (the sandbox uid) points ca-bundle.pem at a root-only file...
    (d / CA_BUNDLE_FILE).unlink()
    (d / CA_BUNDLE_FILE).symlink_to(secret)

    def swap() -> None:  # ...and, once the rewrite has read it, puts a file of its own there
        (d / CA_BUNDLE_FILE).unlink()
        (d / CA_BUNDLE_FILE).write_bytes(b"mine\n")
        if os.geteuid() == 0:
            os.chown(d / CA_BUNDLE_FILE, ATTACKER, ATTACKER)
        os.chmod(d / CA_BUNDLE_FILE, 0o644)

    after_replace(CERT_FILE, swap)
    try:
        refresh_bundle(d, **NEW)
    except Exception:  # a refusal is a pass; what matters is what was written
        pass
    got = (d / CA_BUNDLE_FILE).read_bytes() if (d / CA_BUNDLE_FILE).is_file() else b""
    assert SECRET not in got, f"the rewrite copied {secret} into the bundle: {got!r}"


def test_a_bundle_directory_swapped_for_a_symlink_does_not_redirect_the_rewrite(
    tmp_path: Path, after_replace: Hook
) -> None:
    # /etc stands in for any directory of root's that has a file of one of the bundle's names.
    etc = tmp_path / "etc"
    etc.mkdir()
    system_gitconfig = etc / GITCONFIG_FILE
    system_gitconfig.write_text("[safe]\n\tdirectory = /srv/repo\n")
    os.chmod(system_gitconfig, 0o644)
    # An --out bundle in alice's home: she owns its parent directory.
    home = tmp_path / "home" / "alice"
    d = home / "bundle"
    _bundle(d)
    evil = GITCONFIG + "[core]\n\tfsmonitor = /home/alice/run-as-root.sh\n"
    os.chmod(d / GITCONFIG_FILE, 0o644)
    (d / GITCONFIG_FILE).write_text(evil)

    def swap() -> None:  # alice renames her bundle away and points its name at /etc
        d.rename(home / "bundle.real")
        d.symlink_to(etc)

    after_replace(CA_FILE, swap)
    try:
        refresh_bundle(d, **NEW)
    except Exception:  # a refusal is a pass; what matters is what was written
        pass
    assert "fsmonitor" not in system_gitconfig.read_text(), (
        "the rewrite wrote alice's gitconfig over a file outside the bundle"
    )
