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
    # Ordered after both: starting the target returns once they are up, not while starting.
    after = next(x for x in target if x.startswith("After=")).split("=", 1)[1].split()
    assert {"airlock-gateway.service", "airlock-supervise.service"} <= set(after)


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
        (config(), "/root/.venv/bin/airlock", "ProtectHome"),
        (config(), "/opt/my airlock/airlock", "plain path"),
        (config({"control_socket": "/run/airlock/control.sock"}), "/opt/a", "overlap"),
        (config({"state_dir": "/var"}), "/opt/a", "of its own"),
        (config(token_file="/run/credentials/other.service/t"), "/opt/a", "credential directory"),
        (config({"state_dir": "/etc/ssh"}), "/opt/a", "one of its own under"),
        (config({"state_dir": "/var/lib/docker/x"}), "/opt/a", "another program"),
        (config({"control_socket": "/usr/local/s/c.sock"}), "/opt/a", "one of its own under"),
        (config({"audit_log": "/etc/shadow"}), "/opt/a", "one of its own under"),
        (config({"audit_log": "/var/lib/airlock-host/x"}), "/opt/a", "another program"),
        (config({"state_dir": "/srv/x/../../etc"}), "/opt/a", "'..'"),
    ],
)
def test_unsound_input_is_refused_with_what_to_do(cfg: Config, exe: str, msg: str) -> None:
    with pytest.raises(units.UnitError, match=msg):
        units.render_units(cfg, Path("/etc/airlock/airlock.toml"), Path(exe))


def test_templates_are_package_data() -> None:
    t = units.templates()
    assert set(t) == {
        units.GATEWAY_UNIT,
        units.SUPERVISE_UNIT,
        units.TARGET,
        units.GATEWAY_CONTAINER_TEMPLATE,
    }


# --- gateway.mode = "container" ------------------------------------------------------------

HOST_TOKEN = "/etc/airlock/credentials/github-token"


def container_config(gateway: dict[str, Any] | None = None, **upstream: Any) -> Config:
    return config(
        {"mode": "container", "user": None, **(gateway or {})},
        **{"token_file": HOST_TOKEN, **upstream},
    )


def service_lines(text: str) -> list[str]:
    """The [Service] section's directives (no comments), in order."""
    service = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    return [x.strip() for x in service.splitlines() if x.strip() and not x.startswith("#")]


def test_container_mode_gateway_unit_runs_the_docker_client_as_root_confined() -> None:
    plan = render(container_config())
    text = plan.files[units.GATEWAY_UNIT]
    assert not re.findall(r"@[A-Z_]+@", text)
    unit = lines(text.split("[Service]", 1)[0])
    assert {"Requires=docker.service", "PartOf=airlock.target"} <= unit
    assert any(x.startswith("After=docker.service") for x in unit)
    svc = service_lines(text)
    assert "ExecStart=/opt/a/bin/airlock gateway --config /etc/airlock/airlock.toml" in svc
    # Root: no User=, no user switch for the gateway to skip, no credential, no ambient caps.
    for key in ("User=", "Group=", "LoadCredential", "AmbientCapabilities", "Environment=",
                "StateDirectory", "RuntimeDirectory", "InaccessiblePaths"):  # fmt: skip
        assert not any(x.startswith(key) for x in svc), key
    assert svc.count("KillSignal=SIGTERM") == 1
    assert "TimeoutStopSec=60s" in svc and "KillMode=mixed" in svc
    # The directories it writes are made before the sandbox (they must exist for it)...
    assert svc[1:4] == [
        "ExecStartPre=+/bin/mkdir -p -m 0700 /var/lib/airlock /run/airlock/gateway",
        "ExecStartPre=+/bin/mkdir -p -m 0711 /run/airlock-gateway",
        "ExecStartPre=+/bin/mkdir -p -m 0755 /var/log/airlock",
    ]
    # ...and are the only writable ones.
    rw = "-/var/lib/airlock -/run/airlock/gateway -/run/airlock-gateway -/var/log/airlock"
    assert f"ReadWritePaths={rw}" in svc
    for line in (
        "CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "IPAddressDeny=any",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "PrivateIPC=yes",
        "ProtectProc=invisible",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "RestrictSUIDSGID=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "UMask=0077",
    ):
        assert line in svc, line
    # chown/chmod are needed (no ~@privileged); the bounding set keeps no network admin.
    deny = next(x for x in svc if x.startswith("SystemCallFilter=~"))
    assert "@privileged" not in deny and "@mount" in deny and "@debug" in deny
    caps = next(x for x in svc if x.startswith("CapabilityBoundingSet="))
    assert "CAP_NET_RAW" not in caps and "CAP_SYS" not in caps
    assert not any(x.startswith("PrivateNetwork") for x in svc)  # nft: the host's netns
    assert plan.mode == "container" and plan.user is None
    assert plan.credentials == () and plan.gateway_dirs == () and plan.audit_log is None
    assert any("airlock image --gateway" in n for n in plan.notes)


def test_container_mode_keeps_the_supervisor_and_the_target() -> None:
    host, container = render(config()), render(container_config())
    assert container.files[units.SUPERVISE_UNIT] == host.files[units.SUPERVISE_UNIT]
    assert container.files[units.TARGET] == host.files[units.TARGET]
    sup = lines(container.files[units.SUPERVISE_UNIT])
    assert "Requires=airlock-gateway.service" in sup
    assert any(x.startswith("After=airlock-gateway.service") for x in sup)
    assert set(container.files) == {units.GATEWAY_UNIT, units.SUPERVISE_UNIT, units.TARGET}


def test_container_mode_without_audit_log_and_with_an_image_and_a_user() -> None:
    plan = render(
        container_config({"audit_log": None, "user": "gw", "container": {"image": "x/gw:1"}})
    )
    svc = service_lines(plan.files[units.GATEWAY_UNIT])
    assert "ReadWritePaths=-/var/lib/airlock -/run/airlock/gateway -/run/airlock-gateway" in svc
    assert not any("/var/log" in x for x in svc)
    assert any("x/gw:1" in n for n in plan.notes)
    assert any("gateway.user = 'gw' is not used" in n for n in plan.notes)


def test_container_runtime_root_is_the_gateway_containers() -> None:
    from airlock.host import gateway_container

    assert units.CONTAINER_RUNTIME_ROOT == str(gateway_container.RUNTIME_ROOT)


@pytest.mark.parametrize(
    "cfg, kw, msg",
    [
        (container_config(token_file=CRED), {}, "loads no credential"),
        (container_config(), {"sources": {"github-token": "/x"}}, "--credential github-token"),
        (container_config({"audit_log": "/var/audit.jsonl"}), {}, "a directory of its own"),
        (
            container_config({"audit_log": "/run/airlock/sandboxes/a.jsonl"}),
            {},
            "a directory of its own",
        ),
        (container_config({"state_dir": "/run/airlock-gateway/s"}), {}, "overlap"),
        (container_config({"control_socket": "/run/airlock/control.sock"}), {}, "overlap"),
        (container_config({"state_dir": "/var/lib/my state"}), {}, "plain path"),
        (container_config({"audit_log": "/etc/ssh/audit.jsonl"}), {}, "one of its own under"),
        (container_config({"audit_log": "/run/systemd/x/a.jsonl"}), {}, "another program"),
        (container_config({"state_dir": "/srv/a/../../etc"}), {}, "'..'"),
    ],
)
def test_container_mode_refuses_unsound_input(cfg: Config, kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(units.UnitError, match=msg):
        render(cfg, **kw)


def test_container_mode_refuses_a_home_install() -> None:
    with pytest.raises(units.UnitError, match="ProtectHome"):
        units.render_units(
            container_config(), Path("/etc/airlock/airlock.toml"), Path("/home/u/bin/airlock")
        )
