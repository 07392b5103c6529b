"""The container plan and the parsers of `airlock run`'s values (host/containerspec.py), and
the command line around them (cli/run.py) with a stand-in manager: no Docker here."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import airlock.cli.run as cli_run
import airlock.host.sandbox as sandbox_module
from airlock.cli import main
from airlock.config import SandboxConfig
from airlock.host.containerspec import (
    AIRLOCK_TARGETS,
    DOCKER_SOCKETS,
    OWNED_ENV,
    REFUSED_OPTIONS,
    ROOT_HOME,
    ContainerPlan,
    RunSpec,
    SpecError,
    check_bind_source,
    docker_host_socket,
    is_owned_env,
    is_root_user,
    parse_cpus,
    parse_env_arg,
    parse_env_file,
    parse_hostname,
    parse_label,
    parse_memory,
    parse_mount,
    parse_tmpfs,
    parse_user,
    parse_volume,
    plan_container,
    resolve_user,
)

CFG = SandboxConfig()
NODE_IMAGE: dict[str, Any] = {"User": "node", "WorkingDir": "/workspace", "Cmd": ["bash"]}


def plan(image: dict[str, Any] | None = None, **kw: Any) -> ContainerPlan:
    kw.setdefault("command", [])
    spec = RunSpec(image="img", grants=[], **kw)
    return plan_container(spec, NODE_IMAGE if image is None else image, CFG)


# --- users and HOME ----------------------------------------------------------------------------


def test_a_named_image_user_is_passed_as_is_and_docker_sets_home() -> None:
    p = plan()
    assert p.user == "node"
    assert "HOME" not in p.environment  # Docker takes it from the image's /etc/passwd
    assert p.working_dir == "/workspace"
    assert p.argv == ["bash"]


@pytest.mark.parametrize("user", ["", "root", "0", "0:0", "root:root", "00", "root:1000", "0:g"])
def test_a_root_image_user_becomes_the_sandbox_uid_with_a_writable_home(user: str) -> None:
    p = plan({"User": user, "Cmd": ["sh"]})
    assert p.user == f"{CFG.uid}:{CFG.uid}"
    assert p.environment["HOME"] == ROOT_HOME == "/tmp"
    assert "/tmp" in p.tmpfs  # where that HOME lives


def test_an_image_without_user_key_is_root_too() -> None:
    assert plan({"Cmd": ["sh"]}).user == f"{CFG.uid}:{CFG.uid}"


def test_e_home_wins_over_the_root_replacement_home() -> None:
    p = plan({"User": "root", "Cmd": ["sh"]}, env={"HOME": "/work"})
    assert p.environment["HOME"] == "/work"


def test_u_wins_and_leaves_home_to_docker() -> None:
    p = plan({"User": "root", "Cmd": ["sh"]}, user="1000:1000")
    assert p.user == "1000:1000"
    assert "HOME" not in p.environment


@pytest.mark.parametrize("user", ["root", "0", "0:0", "root:root", "000", "", "0:1000"])
def test_u_root_is_refused_with_a_sentence(user: str) -> None:
    with pytest.raises(SpecError, match="the sandbox never runs as root"):
        parse_user(user, 10000)
    with pytest.raises(SpecError, match="never runs as root"):
        plan(user=user)


@pytest.mark.parametrize("user", ["node", "1000", "1000:1000", "node:staff", "1000:0", "app$"])
def test_u_non_root_is_accepted(user: str) -> None:
    assert parse_user(user) == user


@pytest.mark.parametrize("user", ["a:b:c", "a b", ":1000x:", "1000:", "99999999999"])
def test_u_malformed_is_refused(user: str) -> None:
    with pytest.raises(SpecError):
        parse_user(user)


_NAME = st.text(string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12)


@given(
    name=_NAME.filter(lambda n: n != "root" and not (n.isdigit() and int(n) == 0)),
    group=st.one_of(st.none(), _NAME, st.just("0"), st.just("root")),
)
def test_root_detection_is_about_the_uid_only(name: str, group: str | None) -> None:
    user = name if group is None else f"{name}:{group}"
    assert not is_root_user(user)
    for root in ("", "root", "0", "0" * (1 + len(name) % 4)):
        assert is_root_user(root if group is None else f"{root}:{group}")


@given(st.integers(min_value=1, max_value=2**31 - 1), st.integers(min_value=0, max_value=65535))
def test_any_positive_uid_is_not_root(uid: int, gid: int) -> None:
    assert not is_root_user(f"{uid}:{gid}")
    assert parse_user(f"{uid}:{gid}") == f"{uid}:{gid}"


PASSWD = """root:x:0:0:root:/root:/bin/bash
# a comment
toor:x:0:0:root again:/root:/bin/sh
node:x:1000:1000::/home/node:/bin/sh
nohome:x:1001:1001:::/bin/sh
"""
GROUP = "root:x:0:\nnode:x:1000:\nstaff:x:50:node\n"


@pytest.mark.parametrize(
    ("user", "uid", "gid", "home"),
    [
        ("node", 1000, 1000, "/home/node"),  # a name: its passwd entry
        ("node:staff", 1000, 50, "/home/node"),
        ("node:0", 1000, 0, "/home/node"),
        ("1000", 1000, 1000, "/home/node"),  # a uid in passwd: its entry's group and home
        ("01000:7", 1000, 7, "/home/node"),
        ("4242", 4242, 0, "/"),  # a uid not in passwd: gid 0 and HOME=/, as Docker does
        ("4242:4243", 4242, 4243, "/"),
        ("nohome", 1001, 1001, "/"),
    ],
)
def test_resolve_user_like_docker(user: str, uid: int, gid: int, home: str) -> None:
    r = resolve_user(user, PASSWD, GROUP)
    assert (r.uid, r.gid, r.home) == (uid, gid, home)


@pytest.mark.parametrize(
    ("user", "passwd", "needle"),
    [
        ("ghost", PASSWD, "not in the image's /etc/passwd"),
        ("node:ghosts", PASSWD, "not in the image's /etc/group"),
        ("toor", PASSWD, "uid 0 (root)"),  # a name that is root is still root
        ("root", PASSWD, "uid 0 (root)"),
        ("node", None, "not in the image's /etc/passwd"),  # no passwd file
    ],
)
def test_resolve_user_refusals(user: str, passwd: str | None, needle: str) -> None:
    with pytest.raises(SpecError, match=re.escape(needle)):
        resolve_user(user, passwd, GROUP)


# --- working directory -------------------------------------------------------------------------


def test_w_wins_over_the_image_workdir() -> None:
    assert plan(workdir="/src").working_dir == "/src"


def test_without_workdir_docker_decides() -> None:
    assert plan({"User": "node", "Cmd": ["sh"]}).working_dir is None


def test_a_relative_workdir_is_refused() -> None:
    with pytest.raises(SpecError, match="absolute"):
        plan(workdir="src")


# --- entrypoint and command --------------------------------------------------------------------

EP_IMAGE: dict[str, Any] = {"User": "node", "Entrypoint": ["/ep", "x"], "Cmd": ["default"]}


@pytest.mark.parametrize(
    ("entrypoint", "command", "argv"),
    [
        (None, [], ["/ep", "x", "default"]),  # the image's both
        (None, ["run", "it"], ["/ep", "x", "run", "it"]),  # a command replaces Cmd only
        ("/bin/echo", [], ["/bin/echo"]),  # --entrypoint drops the image's Cmd
        ("/bin/echo", ["hi"], ["/bin/echo", "hi"]),
        ("", ["sh", "-c", "true"], ["sh", "-c", "true"]),  # --entrypoint "" clears it
    ],
)
def test_entrypoint_follows_docker(
    entrypoint: str | None, command: list[str], argv: list[str]
) -> None:
    assert plan(EP_IMAGE, entrypoint=entrypoint, command=command).argv == argv


def test_entrypoint_with_spaces_is_one_word_as_in_docker() -> None:
    assert plan(EP_IMAGE, entrypoint="/bin/my tool").argv == ["/bin/my tool"]


@pytest.mark.parametrize(
    ("image", "entrypoint"), [({"User": "node"}, None), (EP_IMAGE, ""), ({"Cmd": []}, None)]
)
def test_no_command_at_all_is_refused(image: dict[str, Any], entrypoint: str | None) -> None:
    with pytest.raises(SpecError, match="give a command"):
        plan(image, entrypoint=entrypoint)


# --- environment -------------------------------------------------------------------------------


def test_e_key_value_and_key_from_the_callers_environment() -> None:
    environ = {"TOKEN": "abc", "EMPTY": ""}
    assert parse_env_arg("A=1=2", environ) == ("A", "1=2")
    assert parse_env_arg("A=", environ) == ("A", "")
    assert parse_env_arg("TOKEN", environ) == ("TOKEN", "abc")
    assert parse_env_arg("EMPTY", environ) == ("EMPTY", "")
    assert parse_env_arg("UNSET", environ) is None  # skipped, as Docker does


@pytest.mark.parametrize("arg", ["=x", "", "A B=1", "A\tB"])
def test_e_without_a_proper_name_is_refused(arg: str) -> None:
    with pytest.raises(SpecError):
        parse_env_arg(arg, {})


def test_env_file_in_dockers_format() -> None:
    text = (
        "\ufeff# comment\n"
        "A=1\n"
        "   # indented comment\n"
        "\n"
        "  B=two words  \r\n"
        'C="quoted"\n'
        "D=x=y\n"
        "PASS\n"
        "MISSING\n"
        "E=\n"
        "#F=not set\n"
    )
    pairs = parse_env_file(text.encode(), {"PASS": "through"})
    assert pairs == [
        ("A", "1"),
        ("B", "two words  "),  # the value verbatim, trailing spaces included
        ("C", '"quoted"'),  # no quote handling
        ("D", "x=y"),
        ("PASS", "through"),
        ("E", ""),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [("A B=1\n", "line 1: variable 'A B' contains whitespace"), ("ok=1\n=x\n", "line 2")],
)
def test_env_file_errors_name_the_line(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_env_file(text, {}, "--env-file f")


def test_env_file_must_be_utf8() -> None:
    with pytest.raises(SpecError, match="not UTF-8"):
        parse_env_file(b"A=\xff\n", {})


_KEY = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="=#"),
    min_size=1,
    max_size=10,
).filter(lambda k: "\ufeff" not in k and "\x85" not in k and "\xa0" not in k)
_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\n\0"), max_size=20).filter(
    lambda v: not v.endswith("\r")
)


@given(
    pairs=st.dictionaries(_KEY, _VALUE, max_size=8),
    noise=st.lists(st.sampled_from(["", "# note", "   ", "\t# x=y", "  #"]), max_size=8),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_env_file_round_trip(
    pairs: dict[str, str], noise: list[str], crlf: bool, bom: bool
) -> None:
    lines = [f"{k}={v}" for k, v in pairs.items()]
    for i, extra in enumerate(noise):  # comments and blank lines anywhere
        lines.insert((i * 7) % (len(lines) + 1), extra)
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    data = (("\ufeff" if bom else "") + text).encode()
    assert dict(parse_env_file(data, {})) == pairs
    assert parse_env_file(data, {}) == list(pairs.items())


@given(st.text(max_size=200))
def test_env_file_only_ever_raises_spec_error(text: str) -> None:
    try:
        parse_env_file(text, {"A": "1"})
    except SpecError:
        pass


@pytest.mark.parametrize("name", [*sorted(OWNED_ENV), "AIRLOCK_SANDBOX", "AIRLOCK_ANYTHING"])
def test_environment_names_airlock_owns_are_refused(name: str) -> None:
    assert is_owned_env(name)
    with pytest.raises(SpecError, match="airlock sets this variable itself"):
        plan(env={name: "x"})


@pytest.mark.parametrize("name", ["ALL_PROXY", "GIT_CONFIG_GLOBAL", "AIRLOCK", "PATH", "HOME"])
def test_other_environment_names_are_the_users(name: str) -> None:
    assert not is_owned_env(name)
    assert plan(env={name: "x"}).environment[name] == "x"


# --- labels, hostname, limits, init ------------------------------------------------------------


def test_labels() -> None:
    assert parse_label("team=infra") == ("team", "infra")
    assert parse_label("flag") == ("flag", "")
    assert plan(labels={"team": "infra"}).labels == {"team": "infra"}


@pytest.mark.parametrize("text", ["airlock.sandbox=x", "airlock.name", "AIRLOCK.x=1"])
def test_airlock_labels_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="airlock's own"):
        parse_label(text)
    with pytest.raises(SpecError, match="airlock's own"):
        plan(labels={text.partition("=")[0]: "x"})


def test_limits_default_to_the_config_and_can_be_given() -> None:
    p = plan()
    assert (p.mem_limit, p.nano_cpus, p.pids_limit) == (CFG.memory, int(CFG.cpus * 1e9), 512)
    p = plan(memory="512m", cpus=0.5, pids_limit=64)
    assert (p.mem_limit, p.nano_cpus, p.pids_limit) == (str(512 << 20), 500_000_000, 64)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512m", 512 << 20), ("2g", 2 << 30), ("1.5GiB", 3 << 29), ("7340032", 7 << 20)],
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "1x", "-1g", "1m", "", "9" * 400, "99999999999p"])
def test_bad_memory_is_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_memory(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "two"])
def test_bad_cpus_are_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_cpus(text)


@pytest.mark.parametrize("value", [0, -1])
def test_the_process_limit_stays(value: int) -> None:
    with pytest.raises(SpecError, match="always has a process limit"):
        plan(pids_limit=value)


def test_hostname() -> None:
    assert plan(hostname="dev-box.local").hostname == "dev-box.local"
    assert plan().hostname is None  # the manager names it after the sandbox
    for bad in ("-x", "a_b", "x" * 64, "a..b", ""):
        with pytest.raises(SpecError):
            parse_hostname(bad)


def test_init_is_on_unless_turned_off() -> None:
    assert plan().init is True
    assert plan(init=False).init is False


def test_read_only_defaults_to_the_config() -> None:
    assert plan().read_only is CFG.read_only_rootfs
    assert plan(read_only=True).read_only is True


# --- mounts ------------------------------------------------------------------------------------


def test_v_forms() -> None:
    m = parse_volume("/host/dir:/work")
    assert (m["Type"], m["Source"], m["Target"], m["ReadOnly"]) == (
        "bind",
        "/host/dir",
        "/work",
        False,
    )
    assert parse_volume("/h:/w:ro")["ReadOnly"] is True
    assert parse_volume("/h/./x/:/w/../c:rw")["Source"] == "/h/x"
    assert parse_volume("/h:/w/../c")["Target"] == "/c"
    v = parse_volume("cache:/root/.cache")
    assert (v["Type"], v["Source"]) == ("volume", "cache")
    anon = parse_volume("/data")
    assert (anon["Type"], anon["Source"], anon["Target"]) == ("volume", None, "/data")


@pytest.mark.parametrize("text", ["/h:w", "a:b:c:d", "/h::/w", "/h:/w:z", "/h:/w:shared", "b@d:/w"])
def test_bad_v_is_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_volume(text)


def test_mount_csv_forms() -> None:
    m = parse_mount("type=bind,source=/h,target=/w,readonly")
    assert (m["Type"], m["Source"], m["Target"], m["ReadOnly"]) == ("bind", "/h", "/w", True)
    m = parse_mount("type=bind,src=/h,dst=/w,ro=false")
    assert m["ReadOnly"] is False
    m = parse_mount('type=bind,"source=/h,with comma",destination=/w')
    assert m["Source"] == "/h,with comma"
    v = parse_mount("source=cache,target=/c")  # volume is Docker's default type
    assert (v["Type"], v["Source"]) == ("volume", "cache")
    t = parse_mount("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770")
    assert t["Type"] == "tmpfs" and t["Source"] is None
    assert t["TmpfsOptions"] == {"SizeBytes": 64 << 20, "Mode": 0o1770}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("type=bind,target=/w", "needs source"),
        ("type=bind,source=rel,target=/w", "needs source"),
        ("type=bind,source=/h", "give target"),
        ("type=npipe,source=/h,target=/w", "type=npipe is not supported"),
        ("type=bind,source=/h,target=/w,bind-propagation=rshared", "never propagate"),
        ("type=volume,source=v,target=/w,volume-driver=local", "host path"),
        ("type=volume,target=/w,volume-opt=device=/", "host path"),
        ("type=tmpfs,source=/h,target=/w", "no source"),
        ("type=bind,source=/h,target=/w,tmpfs-size=1m", "for type=tmpfs"),
        ("type=bind,source=/h,target=/w,readonly=maybe", "not true or false"),
        ("type=bind,source=/h,target=/w,colour=red", "not supported"),
        ("type=bind,source=/h,target=relative", "absolute"),
    ],
)
def test_bad_mount_is_refused(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_mount(text)


@pytest.mark.parametrize(
    "source",
    [
        *DOCKER_SOCKETS,
        "/var/run",
        "/run",
        "/",
        "/var/run/",
        "/home/me/docker.sock",
        "/run/user/1000/docker.sock",
        "/var/run/../run/docker.sock",
    ],
)
def test_the_docker_socket_is_refused_anywhere(source: str) -> None:
    specs: list[dict[str, Any]] = [
        {"volumes": [f"{source}:/x"]},
        {"mounts": [f"type=bind,source={source},target=/x"]},
    ]
    for spec in specs:
        with pytest.raises(SpecError, match="Docker socket is never given"):
            plan(**spec)


def test_airlock_state_is_refused_as_a_source() -> None:
    with pytest.raises(SpecError, match="airlock's own"):
        plan(volumes=[f"{CFG.bundle_dir}:/x"])
    with pytest.raises(SpecError, match="airlock's own"):
        check_bind_source("/var/lib", ["/var/lib/airlock"])
    check_bind_source("/var/lib/airlock-other", ["/var/lib/airlock"])  # a sibling is fine


def test_docker_host_socket() -> None:
    assert docker_host_socket("unix:///run/user/1000/docker.sock") == "/run/user/1000/docker.sock"
    assert docker_host_socket("tcp://1.2.3.4:2375") is None
    assert docker_host_socket(None) is None


@pytest.mark.parametrize(
    "target",
    [*AIRLOCK_TARGETS, "/run/airlock/x", "/.airlock-gate/busybox", "/etc/../etc/hosts", "/"],
)
def test_airlock_paths_cannot_be_mounted_over(target: str) -> None:
    specs: list[dict[str, Any]] = [
        {"volumes": [f"/h:{target}"]},
        {"mounts": [f"type=tmpfs,target={target}"]},
        {"tmpfs": [target]},
    ]
    for spec in specs:
        with pytest.raises(SpecError, match=r"airlock's own|over the container's /"):
            plan(**spec)


def test_a_mount_next_to_airlock_paths_is_fine() -> None:
    p = plan(volumes=["/h:/run/airlocked", "/h2:/etc/hosts.d"], tmpfs=["/run"])
    assert [m["Target"] for m in p.mounts] == ["/run/airlocked", "/etc/hosts.d"]


def test_the_same_target_twice_is_refused() -> None:
    with pytest.raises(SpecError, match="mounted twice"):
        plan(volumes=["/a:/w"], mounts=["type=bind,source=/b,target=/w/"])
    with pytest.raises(SpecError, match="mounted twice"):
        plan(volumes=["/a:/w"], tmpfs=["/w"])


def test_tmp_is_a_tmpfs_unless_the_user_mounts_there() -> None:
    assert "/tmp" in plan().tmpfs
    assert plan(tmpfs=["/tmp:size=1g"]).tmpfs == {"/tmp": "size=1g"}
    assert "/tmp" not in plan(volumes=["/h:/tmp"]).tmpfs
    assert set(plan(tmpfs=["/cache"]).tmpfs) == {"/tmp", "/cache"}


def test_tmpfs_options() -> None:
    assert parse_tmpfs("/run") == ("/run", "")
    assert parse_tmpfs("/x:rw,exec,size=64m,mode=1777,uid=1000") == (
        "/x",
        "rw,exec,size=64m,mode=1777,uid=1000",
    )
    for bad, needle in [
        ("/x:suid", "always nosuid,nodev"),
        ("/x:dev", "always nosuid,nodev"),
        ("/x:bind", "not a tmpfs option"),
        ("/x:size=", "not a tmpfs option"),
        ("x", "absolute"),
    ]:
        with pytest.raises(SpecError, match=needle):
            parse_tmpfs(bad)


@given(st.text(max_size=80))
def test_mount_parsers_only_ever_raise_spec_error(text: str) -> None:
    for parse in (parse_mount, parse_volume, parse_tmpfs, parse_label, parse_user):
        try:
            parse(text)
        except SpecError:
            pass


@given(st.text(max_size=60))
def test_no_parsed_mount_lands_on_airlock_paths(path: str) -> None:
    for parse in (lambda p: parse_volume(f"/h:{p}")["Target"], lambda p: parse_tmpfs(p)[0]):
        try:
            target = parse(path)
        except SpecError:
            continue
        assert target.startswith("/") and target != "/"
        for own in AIRLOCK_TARGETS:
            assert target != own and not target.startswith(own + "/")


# --- the command line, with a stand-in manager --------------------------------------------------


class FakeImage:
    def __init__(self, config: dict[str, Any]) -> None:
        self.attrs = {"Config": config}


class FakeManager:
    def __init__(self, image: dict[str, Any] | None) -> None:
        self.image = image
        self.started: list[RunSpec] = []
        manager = self

        class Images:
            def get(self, name: str) -> FakeImage:
                if manager.image is None:
                    raise docker.errors.ImageNotFound(name)
                return FakeImage(manager.image)

        class Client:
            images = Images()

        self.client = Client()

    def image_config(self, name: str) -> dict[str, Any]:
        return dict(self.client.images.get(name).attrs.get("Config") or {})

    def start(self, spec: RunSpec) -> Any:
        self.started.append(spec)

        class Sb:
            name = "airlock-fake"

        return Sb()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeManager, list[RunSpec]]:
    config = tmp_path / "airlock.toml"
    config.write_text(
        '[[upstream]]\nhost = "github.com"\nurl = "https://github.com"\ntoken_file = "/t"\n'
    )
    manager = FakeManager(dict(NODE_IMAGE))
    ran: list[RunSpec] = []

    def run_foreground(_m: Any, spec: RunSpec) -> int:
        ran.append(spec)
        return 7

    monkeypatch.setattr(cli_run, "sandbox_manager", lambda _config: manager)
    monkeypatch.setattr(sandbox_module, "run_foreground", run_foreground)

    def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        return CliRunner().invoke(
            main, ["run", "--config", str(config), *args], env=env, catch_exceptions=False
        )

    return invoke, manager, ran


@pytest.mark.parametrize("opt", REFUSED_OPTIONS, ids=lambda o: o.names[-1])
def test_each_refused_option_exits_125_with_its_sentence(
    cli: tuple[Any, FakeManager, list[RunSpec]], opt: Any
) -> None:
    invoke, manager, ran = cli
    for name in opt.names:
        args = [name, "x"] if opt.takes_value else [name]
        result = invoke(*args, "img", "true")
        assert result.exit_code == 125, result.output
        assert opt.reason in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert manager.started == [] and ran == []


@pytest.mark.parametrize(
    "name",
    [
        "-p", "--publish", "-P", "--network", "--net", "--privileged", "--cap-add", "--pid",
        "--ipc", "--uts", "--userns", "--device", "--security-opt", "--add-host", "--dns",
        "--volumes-from", "--gpus", "--cgroupns",
    ],
)  # fmt: skip
def test_the_isolation_breaking_options_are_all_refused(name: str) -> None:
    assert any(name in o.names for o in REFUSED_OPTIONS)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-u", "root"], "never runs as root"),
        (["-u", "0:0"], "never runs as root"),
        (["-e", "HTTPS_PROXY=http://x"], "airlock sets this variable itself"),
        (["-e", "AIRLOCK_SANDBOX=x"], "airlock sets this variable itself"),
        (["--label", "airlock.sandbox=x"], "airlock's own"),
        (["-v", "/var/run/docker.sock:/var/run/docker.sock"], "Docker socket"),
        (["--mount", "type=bind,src=/run,dst=/host-run"], "Docker socket"),
        (["-v", "/tmp:/etc/resolv.conf"], "airlock's own"),
        (["--tmpfs", "/run/airlock"], "airlock's own"),
        (["--ttl", "soon"], "--ttl"),
        (["--idle-timeout", "0s"], "--idle-timeout"),
        (["--cpus", "none"], "--cpus"),
        (["--env-file", "/nonexistent/env"], "--env-file /nonexistent/env"),
        (["-m", "1k"], "at least 6m"),
        (["--entrypoint", ""], "give a command"),
    ],
)
def test_cli_refusals_exit_125_before_anything_starts(
    cli: tuple[Any, FakeManager, list[RunSpec]], args: list[str], needle: str
) -> None:
    invoke, manager, ran = cli
    result = invoke(*args, "img")
    assert result.exit_code == 125, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert manager.started == [] and ran == []


def test_a_symlink_to_the_docker_socket_is_refused(
    cli: tuple[Any, FakeManager, list[RunSpec]], tmp_path: Path
) -> None:
    invoke, manager, _ = cli
    link = tmp_path / "innocent"
    link.symlink_to("/var/run/docker.sock")
    result = invoke("-v", f"{link}:/x", "img", "true")
    assert result.exit_code == 125 and "Docker socket" in result.output, result.output
    assert manager.started == []


def test_cli_builds_the_spec(cli: tuple[Any, FakeManager, list[RunSpec]], tmp_path: Path) -> None:
    invoke, _, ran = cli
    env_file = tmp_path / "env"
    env_file.write_text("# mine\nA=from-file\nB=file\nFROM_CALLER\nUNSET_HERE\n")
    result = invoke(
        *["--env-file", str(env_file), "-e", "B=flag", "-e", "CALLER", "-e", "NOT_SET"],
        *["-u", "1000:1000", "-w", "/src", "--entrypoint", "/bin/echo", "--rm"],
        *["--mount", "type=tmpfs,target=/cache", "--tmpfs", "/scratch:size=1m"],
        *["-l", "team=infra", "-h", "box", "-m", "1g", "--cpus", "1.5", "--pids-limit", "99"],
        *["--no-init", "--idle-timeout", "30m", "--ttl", "2h", "-v", "/srv:/srv:ro"],
        *["img", "hello", "-x", "--y"],
        env={"FROM_CALLER": "c1", "CALLER": "c2", "NOT_SET": None},
    )
    assert result.exit_code == 7, result.output
    (spec,) = ran
    assert spec.env == {"A": "from-file", "B": "flag", "FROM_CALLER": "c1", "CALLER": "c2"}
    assert spec.command == ["hello", "-x", "--y"]  # options after the image are the command's
    assert (spec.user, spec.workdir, spec.entrypoint, spec.remove) == (
        "1000:1000",
        "/src",
        "/bin/echo",
        True,
    )
    assert spec.mounts == ["type=tmpfs,target=/cache"] and spec.tmpfs == ["/scratch:size=1m"]
    assert (spec.labels, spec.hostname, spec.memory, spec.cpus, spec.pids_limit) == (
        {"team": "infra"},
        "box",
        "1g",
        1.5,
        99,
    )
    assert (spec.init, spec.idle_timeout, spec.ttl, spec.volumes) == (
        False,
        1800,
        7200,
        ["/srv:/srv:ro"],
    )


def test_cli_defaults(cli: tuple[Any, FakeManager, list[RunSpec]]) -> None:
    invoke, _, ran = cli
    assert invoke("img").exit_code == 7
    (spec,) = ran
    assert spec.init is True and spec.remove is False and spec.entrypoint is None
    assert spec.user is None and spec.workdir is None and spec.command == []


def test_cli_detached(
    cli: tuple[Any, FakeManager, list[RunSpec]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import airlock.host.supervisor as supervisor_module

    invoke, manager, ran = cli
    ensured: list[Path] = []

    def ensure(_manager: Any, path: Path) -> bool:
        ensured.append(path)
        return True

    monkeypatch.setattr(supervisor_module, "ensure_supervisor", ensure)
    result = invoke("-d", "img", "sleep", "9")
    assert result.exit_code == 0 and result.output.strip() == "airlock-fake"
    assert [s.command for s in manager.started] == [["sleep", "9"]] and ran == []
    # A detached sandbox gets a supervisor (for revocation at exit) with the same config.
    assert len(ensured) == 1 and ensured[0].name == "airlock.toml" and ensured[0].is_absolute()


def test_a_missing_image_is_left_to_the_manager(
    cli: tuple[Any, FakeManager, list[RunSpec]],
) -> None:
    invoke, manager, ran = cli
    manager.image = None
    assert invoke("missing:tag", "true").exit_code == 7
    assert len(ran) == 1
