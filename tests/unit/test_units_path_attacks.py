"""Red team: config paths that `airlock install` renders into units and then makes and
hands to the gateway's user (``UnitPlan.gateway_dirs``: mkdir, chown, chmod 0700).

Line-breaking and specifier characters are refused (held: see the first test). The guard on
the state directory is "three path parts", read lexically: a path with ``..`` is counted as
written, and a system directory with three parts passes. Either way install would chown a
directory of the host's to the gateway's user (``/etc`` itself, in the first case).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from airlock.config import Config, parse_config
from airlock.host import units

CRED = "/run/credentials/airlock-gateway.service/github-token"


def config(**gateway: Any) -> Config:
    gw = {
        "state_dir": "/var/lib/airlock",
        "control_socket": "/run/airlock/gateway/control.sock",
        "user": "airlock-gw",
        **gateway,
    }
    up = {"host": "github.com", "url": "https://github.example.com", "token_file": CRED}
    return parse_config({"gateway": gw, "upstream": [up]}, Path("t.toml"))


def render(cfg: Config) -> units.UnitPlan:
    return units.render_units(cfg, Path("/etc/airlock/airlock.toml"), Path("/opt/a/bin/airlock"))


@pytest.mark.parametrize(
    "state_dir",
    [
        "/srv/airlock\nExecStartPre=/bin/sh",
        "/srv/air lock",
        "/srv/%h/airlock",
        '/srv/"airlock',
        "/srv/air;lock",
        "/srv/air\\nlock",
        "/srv/air\u2028lock",
    ],
)
def test_unit_breaking_characters_in_a_path_are_refused(state_dir: str) -> None:
    with pytest.raises(units.UnitError):
        render(config(state_dir=state_dir))


@pytest.mark.parametrize(
    "state_dir",
    ["/srv/airlock/../../etc", "/opt/x/../../etc/ssh", "/etc/ssh", "/usr/local/bin"],
)
def test_a_state_dir_that_is_a_system_directory_is_refused(state_dir: str) -> None:
    try:
        plan = render(config(state_dir=state_dir))
    except units.UnitError:
        return
    handed = [d for d in plan.gateway_dirs if PurePosixPath(d) == PurePosixPath(state_dir)]
    lines = [x for x in plan.files[units.GATEWAY_UNIT].splitlines() if state_dir in x]
    pytest.fail(
        f"install would mkdir, chown to {plan.user} and chmod 0700 {handed} "
        f"(= {Path(state_dir).resolve()}); unit lines: {lines}"
    )
