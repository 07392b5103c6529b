"""`gateway.user`: the directories handed to the gateway's user are its own, never system ones.

``privileges.prepare`` (as root) chowns the state directory with everything in it: a state_dir
of /etc/ssh or /var/lib would hand the host to a compromised gateway (red team, F5).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from airlock.config import Config, parse_config
from airlock.core.hostpaths import handed_over_problem
from airlock.gateway.privileges import Account, PrivilegeError, prepare


def _config(state_dir: str, socket: str = "/run/airlock-test-priv/gateway/control.sock") -> Config:
    return parse_config(
        {
            "gateway": {"state_dir": state_dir, "control_socket": socket},
            "upstream": [
                {"host": "github.com", "url": "https://git.example.com", "token_file": "/x"}
            ],
        },
        Path("<test>"),
    )


@pytest.mark.parametrize(
    "state_dir",
    [
        # Directories that do not exist yet: were the check gone, prepare would make them
        # (and the test see it) without touching anything that is there already.
        "/etc/airlock-test-priv-state",
        "/srv/airlock-test/../../etc/airlock-test-priv-state",  # resolves into /etc
        "/usr/local/airlock-test-priv-state",
    ],
)
@pytest.mark.skipif(os.geteuid() != 0, reason="prepare runs as root")
def test_a_system_directory_is_never_handed_to_the_gateway_user(state_dir: str) -> None:
    account = Account("nobody", 65534, 65534)
    made = Path(os.path.normpath(state_dir))
    existed = made.exists()
    try:
        with pytest.raises(PrivilegeError, match=r"system directory|shared directory"):
            prepare(_config(state_dir), account)
        if existed:
            assert made.stat().st_uid != 65534
        else:
            assert not made.exists(), f"{made} was created"
    finally:
        if not existed and made.exists():
            shutil.rmtree(made, ignore_errors=True)
        shutil.rmtree("/run/airlock-test-priv", ignore_errors=True)


@pytest.mark.parametrize(
    "path",
    ["/", "/var/lib", "/var/log", "/etc", "/etc/ssh", "/usr/local", "/var/lib/docker/x", "/run"],
)
def test_system_and_shared_directories_are_refused(path: str) -> None:
    assert handed_over_problem(Path(path), "state_dir", "/var/lib/airlock") is not None


@pytest.mark.parametrize(
    "path", ["/srv/airlock/../../etc", "relative/state", "/var/lib/airlock/../../.."]
)
def test_paths_that_are_not_written_out_are_refused(path: str) -> None:
    assert "normal absolute path" in str(handed_over_problem(Path(path), "state_dir", "x"))


@pytest.mark.parametrize("path", ["/var/lib/airlock", "/run/airlock/gateway", "/srv/gw/state"])
def test_a_directory_of_its_own_is_fine(path: str) -> None:
    assert handed_over_problem(Path(path), "state_dir", "x") is None
