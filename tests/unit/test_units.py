"""host/units.py: the rendered units carry the config's paths and refuse unsound configs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from airlock.config import Config, parse_config
from airlock.host import units

CRED = "/run/credentials/airlock-gateway.service/github-token"


def config(gateway: dict[str, Any] | None = None, **upstream: Any) -> Config:
    gw = {
        "state_dir": "/var/lib/airlock",
        "control_socket": "/run/airlock/gateway/control.sock",
        "user": "airlock-gw",
        "audit_log": "/var/log/airlock/audit.jsonl",
        **(gateway or {}),
    }
    up = {"host": "github.com", "url": "https://github.example.com", "token_file": CRED}
    up.update(upstream)
    return parse_config({"gateway": gw, "upstream": [up]}, Path("t.toml"))


def render(cfg: Config, **kw: Any) -> units.UnitPlan:
    return units.render_units(
        cfg, Path("/etc/airlock/airlock.toml"), Path("/opt/a/bin/airlock"), **kw
    )


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


def test_gateway_unit_has_the_paths_and_the_confinement() -> None:
    plan = render(config())
    gw = lines(plan.files[units.GATEWAY_UNIT])
    assert "ExecStart=/opt/a/bin/airlock gateway --config /etc/airlock/airlock.toml" in gw
    assert "User=airlock-gw" in gw
    assert "LoadCredential=github-token:/etc/airlock/credentials/github-token" in gw
    assert "StateDirectory=airlock" in gw and "RuntimeDirectory=airlock/gateway" in gw
    assert "ReadWritePaths=/var/lib/airlock /run/airlock/gateway /var/log/airlock/audit.jsonl" in gw
    for line in (
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "MemoryDenyWriteExecute=yes",
    ):
        assert line in gw, line
    text = plan.files[units.GATEWAY_UNIT]
    assert not re.findall(r"@[A-Z_]+@", text)
    assert plan.credentials == (("github-token", "/etc/airlock/credentials/github-token"),)
    assert plan.gateway_dirs == () and plan.audit_log == "/var/log/airlock/audit.jsonl"


def test_supervise_unit_orders_after_the_gateway_and_both_are_part_of_the_target() -> None:
    plan = render(config())
    sup = lines(plan.files[units.SUPERVISE_UNIT])
    assert {"Requires=airlock-gateway.service", "PartOf=airlock.target"} <= sup
    assert any(x.startswith("After=airlock-gateway.service") for x in sup)
    assert "PartOf=airlock.target" in lines(plan.files[units.GATEWAY_UNIT])
    assert "ExecStart=/opt/a/bin/airlock supervise --config /etc/airlock/airlock.toml" in sup
    assert any("/run/airlock/sandboxes" in x and x.startswith("ExecStartPre=+") for x in sup)
    target = lines(plan.files[units.TARGET])
    assert "Wants=airlock-gateway.service airlock-supervise.service" in target


def test_credential_sources_can_be_given_and_unknown_ones_are_refused() -> None:
    plan = render(config(), sources={"github-token": "/srv/secret/tok"})
    assert "LoadCredential=github-token:/srv/secret/tok" in plan.files[units.GATEWAY_UNIT]
    with pytest.raises(units.UnitError, match="--credential other"):
        render(config(), sources={"other": "/x"})


def test_dirs_outside_systemds_roots_are_made_by_install() -> None:
    plan = render(
        config({"state_dir": "/srv/airlock/state", "control_socket": "/srv/airlock/s/c.sock"})
    )
    assert plan.gateway_dirs == ("/srv/airlock/state", "/srv/airlock/s")
    assert "StateDirectory" not in plan.files[units.GATEWAY_UNIT].split("[Service]")[1].split(
        "ReadWritePaths"
    )[0].replace("# (directories made by airlock install)", "")


def test_a_plain_token_file_is_allowed_with_a_note() -> None:
    plan = render(config(token_file="/etc/airlock/token"))
    assert plan.credentials == () and plan.notes
    assert "LoadCredential" not in lines(plan.files[units.GATEWAY_UNIT])


@pytest.mark.parametrize(
    "cfg, exe, msg",
    [
        (config({"mode": "container"}), "/opt/a/bin/airlock", "container"),
        (config(), "/root/.venv/bin/airlock", "ProtectHome"),
        (config(), "/opt/my airlock/airlock", "plain path"),
        (config({"control_socket": "/run/airlock/control.sock"}), "/opt/a", "overlap"),
        (config({"state_dir": "/var"}), "/opt/a", "of its own"),
        (config(token_file="/run/credentials/other.service/t"), "/opt/a", "credential directory"),
    ],
)
def test_unsound_input_is_refused_with_what_to_do(cfg: Config, exe: str, msg: str) -> None:
    with pytest.raises(units.UnitError, match=msg):
        units.render_units(cfg, Path("/etc/airlock/airlock.toml"), Path(exe))


def test_templates_are_package_data() -> None:
    t = units.templates()
    assert set(t) == {units.GATEWAY_UNIT, units.SUPERVISE_UNIT, units.TARGET}
