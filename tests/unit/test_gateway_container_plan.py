"""The gateway container's pure parts: the seccomp profile as committed, the plan's
decisions and refusals, the translated config."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from airlock.config import parse_config
from airlock.host import seccomp
from airlock.host.gateway_container import (
    GatewayContainerError,
    container_address,
    plan,
    refresh_secrets,
    toml_text,
)

TOKEN_MARK = "ghs_never_in_a_plan"


def test_the_committed_profile_is_what_the_generator_makes_of_the_committed_list() -> None:
    names = seccomp.read_list(seccomp.LIST_PATH.read_text())
    assert seccomp.PROFILE_PATH.read_text() == seccomp.render(names)
    assert len(names) == len(set(names)) and len(names) < 100


def test_the_profile_denies_by_default_and_allows_nothing_forbidden() -> None:
    p = json.loads(seccomp.gateway_profile_json())
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X32"]}
    ]
    allowed = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert not allowed & seccomp.FORBIDDEN
    for name in ("mount", "unshare", "setns", "ptrace", "bpf", "keyctl", "init_module"):
        assert name not in allowed
    (clone,) = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["valueTwo"] == 0
    (clone3,) = [r for r in p["syscalls"] if r["names"] == ["clone3"]]
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == seccomp.ENOSYS


def test_the_generator_refuses_forbidden_and_malformed_names() -> None:
    with pytest.raises(seccomp.ProfileError, match="forbidden"):
        seccomp.profile(["read", "ptrace"])
    with pytest.raises(seccomp.ProfileError, match="not syscall names"):
        seccomp.profile(["read", "rm -rf"])


def test_strace_trees_take_only_the_gateway_and_its_threads() -> None:
    logs = {
        10: 'execve("/usr/bin/python3", ["python3", "-m", "pytest"], ...) = 0\n'
        "clone(child_stack=NULL, flags=SIGCHLD) = 11\nptrace(PTRACE_TRACEME) = 0\n",
        11: 'dup2(3, 1) = 1\nexecve("/py", ["/py", "-m", "airlock.cli", "gateway"], ...) = 0\n'
        'openat(AT_FDCWD, "x", O_RDONLY) = 3\nclone3({flags=CLONE_VM}, 88) = 12\n',
        12: "futex(0x1, FUTEX_WAIT, 0) = 0\n<... epoll_wait resumed>) = 1\n",
    }
    assert seccomp.traced_tree(logs) == {"execve", "openat", "clone3", "futex", "epoll_wait"}


def _config(tmp_path: Path, gateway: str = "", extra: str = "") -> tuple[Any, dict[str, Any]]:
    text = f"""
[gateway]
mode = "container"
state_dir = "{tmp_path}/state"
control_socket = "{tmp_path}/run/gateway/control.sock"
audit_log = "{tmp_path}/log/audit.jsonl"
git_listen = "127.0.0.1:8443"
{gateway}
[gateway.container]
uid = 10001

[sandbox]
bundle_dir = "{tmp_path}/bundles"

[[upstream]]
host = "github.com"
url = "https://github.com"
token_file = "{tmp_path}/secrets/token"
ca_file = "{tmp_path}/ca.pem"
{extra}
"""
    raw = tomllib.loads(text)
    return parse_config(raw, tmp_path / "airlock.toml"), raw


def _plan(tmp_path: Path, **kw: Any) -> Any:
    config, raw = _config(tmp_path)
    args: dict[str, Any] = {
        "image": "airlock/gateway:test",
        "subnet": "10.251.14.0/24",
        "seccomp_profile": seccomp.gateway_profile_json(),
        "runtime_root": tmp_path / "rt",
    }
    args.update(kw)
    return plan(config, raw, **args)


def test_the_plan_confines_and_mounts_only_the_gateways_files(tmp_path: Path) -> None:
    p = _plan(tmp_path, socket_dir_entries=["control.sock", "control.sock.lock"])
    kw = p.create_kwargs()
    assert kw["read_only"] is True and kw["privileged"] is False
    assert kw["cap_drop"] == ["ALL"] and kw["cap_add"] == ["NET_BIND_SERVICE"]
    assert kw["security_opt"][0] == "no-new-privileges"
    assert kw["security_opt"][1] == "seccomp=" + seccomp.gateway_profile_json()
    assert list(kw["tmpfs"]) == ["/tmp"]
    assert p.user == "10001:10001" and p.environment == {}
    binds = kw["binds"]
    assert binds[str(tmp_path / "state")] == {"bind": "/var/lib/airlock", "mode": "rw"}
    assert binds[str(tmp_path / "run" / "gateway")]["mode"] == "rw"
    assert binds[str(tmp_path / "rt" / "airlock-gateway" / "secrets")] == {
        "bind": "/run/secrets/airlock",
        "mode": "ro",
    }
    assert binds[str(tmp_path / "rt" / "airlock-gateway" / "etc")]["mode"] == "ro"
    assert not any("docker" in src for src in binds)
    assert p.address == "10.251.14.2" and p.labels == {
        "airlock.gateway-container": "airlock-gateway"
    }
    assert kw["port_bindings"] == {"8443/tcp": [("127.0.0.1", 8443)]}
    assert kw["sysctls"] == {
        "net.ipv4.ip_unprivileged_port_start": "53",
        "net.ipv4.ip_forward": "0",
        "net.ipv4.conf.all.forwarding": "0",
        "net.ipv4.conf.default.forwarding": "0",
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv4.conf.all.arp_announce": "2",
    }
    assert [s.name for s in p.secrets] == ["upstream-0-token", "upstream-0-ca.pem"]


def test_the_translated_config_names_paths_inside_the_container(tmp_path: Path) -> None:
    p = _plan(tmp_path)
    inside = parse_config(tomllib.loads(p.config_text), Path("/etc/airlock/airlock.toml"))
    gw = inside.gateway
    assert gw.mode == "host" and gw.user is None
    assert str(gw.state_dir) == "/var/lib/airlock"
    assert str(gw.control_socket) == "/run/airlock-control/control.sock"
    assert str(gw.audit_log) == "/var/log/airlock/audit.jsonl"
    assert gw.git_listen == "10.251.14.2:8443"
    assert str(inside.upstream[0].token_file) == "/run/secrets/airlock/upstream-0-token"
    assert str(inside.upstream[0].ca_file) == "/run/secrets/airlock/upstream-0-ca.pem"


def test_a_socket_directory_shared_with_other_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayContainerError, match=r"/run/airlock/gateway/control\.sock"):
        _plan(tmp_path, socket_dir_entries=["control.sock", "sandboxes"])


def test_the_default_socket_directory_with_the_bundles_is_refused(tmp_path: Path) -> None:
    config, raw = _config(tmp_path)
    raw["gateway"]["control_socket"] = "/run/airlock/control.sock"
    raw["sandbox"]["bundle_dir"] = "/run/airlock/sandboxes"
    config = parse_config(raw, tmp_path / "x.toml")
    with pytest.raises(GatewayContainerError, match="a directory of its own"):
        plan(config, raw, image="i", subnet="10.1.0.0/24", seccomp_profile="{}")


def test_a_mount_holding_the_docker_socket_is_refused(tmp_path: Path) -> None:
    config, raw = _config(tmp_path)
    raw["gateway"]["audit_log"] = "/var/run/audit.jsonl"
    config = parse_config(raw, tmp_path / "x.toml")
    with pytest.raises(GatewayContainerError, match=r"system directory|too broad|Docker socket"):
        plan(config, raw, image="i", subnet="10.1.0.0/24", seccomp_profile="{}")


def test_small_subnets_are_refused() -> None:
    assert container_address("10.9.0.0/29") == "10.9.0.2"
    with pytest.raises(GatewayContainerError, match="/29"):
        container_address("10.9.0.0/30")


def test_toml_text_round_trips() -> None:
    data = {"a": {"b": 1, "c": [1, 2], "d": {"e": 'x"y'}}, "u": [{"h": "h1"}, {"h": "h2"}]}
    assert tomllib.loads(toml_text(data)) == data


@pytest.mark.skipif(os.geteuid() != 0, reason="hands the copies to the container's uid")
def test_refresh_secrets_copies_again_as_a_new_file(tmp_path: Path) -> None:
    config, _raw = _config(tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("ghs_old\n")
    (tmp_path / "ca.pem").write_text("ca\n")
    with pytest.raises(GatewayContainerError, match="is not running"):
        refresh_secrets(config, runtime_root=tmp_path / "rt")
    secrets = tmp_path / "rt" / "airlock-gateway" / "secrets"
    secrets.mkdir(parents=True)
    assert refresh_secrets(config, runtime_root=tmp_path / "rt") == [
        "upstream-0-token",
        "upstream-0-ca.pem",
    ]
    first = (secrets / "upstream-0-token").stat()
    (tmp_path / "secrets" / "token").write_text("ghs_new\n")
    refresh_secrets(config, runtime_root=tmp_path / "rt")
    st = (secrets / "upstream-0-token").stat()
    assert (secrets / "upstream-0-token").read_text() == "ghs_new\n"
    assert st.st_ino != first.st_ino  # renamed into place: a directory mount sees it
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o400)


def test_a_state_dir_with_files_but_no_gateway_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayContainerError, match="no gateway-id"):
        _plan(tmp_path, state_dir_entries=["mysql", "ibdata1"])
    _plan(tmp_path, state_dir_entries=["gateway-id", "sessions.sqlite3"])
    _plan(tmp_path, state_dir_entries=[])


def test_an_audit_directory_with_other_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayContainerError, match=r"holds other files \(syslog\)"):
        _plan(tmp_path, audit_dir_entries=["audit.jsonl", "syslog"])
    _plan(tmp_path, audit_dir_entries=["audit.jsonl", "audit.jsonl.1"])
