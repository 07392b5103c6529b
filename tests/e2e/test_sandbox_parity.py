"""`airlock run` behaves like `docker run`: the same image and command show the same user,
working directory and HOME under airlock as under plain `docker run`; ENTRYPOINT follows
Docker's rules; git's global config and a bind-mounted workspace are writable; a root image
runs as the sandbox uid with a writable HOME; docker-init is PID 1 so a command that ignores
SIGTERM as PID 1 stops at once; and every option that would break the isolation is refused
(exit 125, one sentence) before anything exists.

The images are built here ``FROM`` the local sandbox image (nothing is pulled) and flattened
onto ``scratch``, so they do not inherit its ``ENV HOME`` and Docker takes HOME from the
image's /etc/passwd, as it does for images such as ``node``. Plain runs use ``--network
none``; the sandboxes go through the real CLI (`python -m airlock.cli run --config ...`)
against this module's gateway. Every image and container made here is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from click.testing import CliRunner

from airlock.cli import main
from airlock.host.containerspec import REFUSED_OPTIONS, RefusedOption
from airlock.host.images import SANDBOX_UID
from airlock.host.sandbox import LABEL
from tests.e2e.conftest import E2E, TEST_LABEL, Sandboxes

pytestmark = E2E
POOL = "10.213.208.0/20"  # this module's sandbox subnets; no other module uses them
RUN_ID = uuid.uuid4().hex[:6]
NODE_UID = 1000
STOP_TIMEOUT = 10  # what `airlock stop` gives a container before SIGKILL

BASE_DOCKERFILE = """\
FROM {sandbox}
USER root
RUN groupadd -g 1000 node \\
 && useradd -m -u 1000 -g 1000 -d /home/node -s /bin/sh node \\
 && mkdir /workspace && chown node:node /workspace
"""
# Flattened: no ENV HOME from the sandbox image, so HOME comes from /etc/passwd.
NODE_DOCKERFILE = """\
FROM scratch
COPY --from={base} / /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
USER node
WORKDIR /workspace
"""
EP_DOCKERFILE = """\
FROM {node}
ENTRYPOINT ["/bin/echo", "ep"]
CMD ["default"]
"""
ROOT_DOCKERFILE = """\
FROM {node}
USER root
"""
SHOW = 'id; pwd; echo "HOME=$HOME"'
SBX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"  # the images have the sandbox image's user too


@dataclass
class Images:
    node: str  # USER node (1000), WORKDIR /workspace, no ENTRYPOINT
    ep: str  # the same with ENTRYPOINT ["/bin/echo", "ep"] and CMD ["default"]
    root: str  # the same with USER root


def _build(client: docker.DockerClient, directory: Path, dockerfile: str, tag: str) -> str:
    directory.mkdir()
    (directory / "Dockerfile").write_text(dockerfile)
    try:
        client.images.build(
            path=str(directory), tag=tag, rm=True, forcerm=True, labels={TEST_LABEL: "1"}
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(x.get("stream", x)) for x in exc.build_log)
        raise AssertionError(f"building {tag} failed: {exc}\n{log}") from None
    return tag


@pytest.fixture(scope="module")
def images(
    docker_client: docker.DockerClient,
    sandbox_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Images]:
    root = tmp_path_factory.mktemp("parity-images")
    repo = "airlock-test/parity"
    tags: list[str] = []
    try:
        for name, text in [
            ("base", BASE_DOCKERFILE.format(sandbox=sandbox_image)),
            ("node", NODE_DOCKERFILE.format(base=f"{repo}:base-{RUN_ID}")),
            ("ep", EP_DOCKERFILE.format(node=f"{repo}:node-{RUN_ID}")),
            ("root", ROOT_DOCKERFILE.format(node=f"{repo}:node-{RUN_ID}")),
        ]:
            tags.append(_build(docker_client, root / name, text, f"{repo}:{name}-{RUN_ID}"))
        yield Images(node=tags[1], ep=tags[2], root=tags[3])
    finally:
        for tag in reversed(tags):
            with contextlib.suppress(docker.errors.DockerException):
                docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def config(sandboxes: Sandboxes) -> Iterator[Path]:
    """The world's config; at the end, every sandbox this module named is torn down."""
    yield sandboxes.world.config
    for c in sandboxes.api.containers(all=True, filters={"label": [LABEL]}):
        if any(n.lstrip("/").startswith(f"parity-{RUN_ID}") for n in c.get("Names") or []):
            with contextlib.suppress(Exception):
                sandboxes.manager.teardown(c["Labels"][LABEL], "test cleanup")


_counter = iter(range(1, 10_000))


def sandbox_name() -> str:
    return f"parity-{RUN_ID}-{next(_counter)}"


def airlock(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`airlock run --config CONFIG ARGS...` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_sandbox(config: Path, *args: str) -> str:
    """Run to the end with --rm; the command's standard output."""
    result = airlock(config, "--rm", "--name", sandbox_name(), *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def docker_run(*args: str) -> str:
    """Plain `docker run` of the same image and command, with no network."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--label", f"{TEST_LABEL}=1", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# --- the same as docker run -------------------------------------------------------------------


def test_id_pwd_and_home_are_those_of_docker_run(config: Path, images: Images) -> None:
    plain = docker_run(images.node, "sh", "-c", SHOW)
    assert plain.splitlines() == [
        "uid=1000(node) gid=1000(node) groups=1000(node)",
        "/workspace",
        "HOME=/home/node",
    ]
    sandboxed = in_sandbox(config, images.node, "sh", "-c", SHOW)
    print(f"docker run:  {plain!r}\nairlock run: {sandboxed!r}")
    assert sandboxed == plain


@pytest.mark.parametrize(
    "user",
    [SBX_USER, "4242:4243"],
)
def test_u_and_w_are_those_of_docker_run(config: Path, images: Images, user: str) -> None:
    args = ["-u", user, "-w", "/tmp", images.node, "sh", "-c", SHOW]
    plain = docker_run(*args)
    uid = user.partition(":")[0]
    assert plain.splitlines()[0].startswith(f"uid={uid}") and plain.splitlines()[1] == "/tmp"
    assert in_sandbox(config, *args) == plain


@pytest.mark.parametrize(
    ("flags", "command", "expected"),
    [
        ([], [], "ep default"),  # the image's ENTRYPOINT and CMD
        ([], ["given"], "ep given"),  # a command replaces CMD only
        (["--entrypoint", "/bin/echo"], [], ""),  # --entrypoint drops the image's CMD
        (["--entrypoint", "/bin/echo"], ["hi"], "hi"),
        (["--entrypoint", ""], ["echo", "plain"], "plain"),  # "" clears the ENTRYPOINT
    ],
)
def test_entrypoint_is_that_of_docker_run(
    config: Path, images: Images, flags: list[str], command: list[str], expected: str
) -> None:
    args = ["-u", SBX_USER, *flags, images.ep, *command]  # the same user on both sides
    plain = docker_run(*args)
    assert plain == f"{expected}\n"
    assert in_sandbox(config, *args) == plain


@pytest.mark.parametrize("image", ["root", "node"])
def test_git_global_config_works(config: Path, images: Images, image: str) -> None:
    script = "git config --global user.name x && git config --global --get user.name"
    assert in_sandbox(config, getattr(images, image), "sh", "-c", script) == "x\n"


# --- root images ------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True])
def test_a_root_image_runs_as_the_sandbox_uid_with_a_writable_home(
    config: Path, images: Images, read_only: bool
) -> None:
    script = f'{SHOW}; touch "$HOME/.probe" && echo HOME-WRITABLE'
    plain = docker_run(images.root, "sh", "-c", script)
    assert plain.splitlines()[0].startswith("uid=0(root)")  # what airlock never does
    flags = ["--read-only"] if read_only else []
    out = in_sandbox(config, *flags, images.root, "sh", "-c", script).splitlines()
    uid, gid = out[0].split()[:2]
    assert (uid.partition("(")[0], gid.partition("(")[0]) == (
        f"uid={SANDBOX_UID}",
        f"gid={SANDBOX_UID}",
    ), out
    assert out[1:] == ["/workspace", "HOME=/tmp", "HOME-WRITABLE"], out


def test_e_home_wins_in_a_root_image(config: Path, images: Images) -> None:
    out = in_sandbox(config, "-e", "HOME=/workspace/h", images.root, "sh", "-c", "echo $HOME")
    assert out == "/workspace/h\n"


# --- a mounted workspace ----------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A host directory owned by a host user (4242 here), mode 0755, as a checkout is."""
    d = tmp_path / "checkout"
    d.mkdir()
    (d / "README").write_text("hello\n")
    for p in (d, d / "README"):
        os.chown(p, 4242, 4242)
    d.chmod(0o755)
    yield d


WRITE = "touch new-file && echo WROTE; id -u"


def test_a_bind_mounted_workspace_is_writable_with_u(
    config: Path, images: Images, workspace: Path
) -> None:
    # Control: another user (the sandbox uid) cannot write the host user's directory.
    out = airlock(config, "--rm", "-v", f"{workspace}:/workspace", images.root, "sh", "-c", WRITE)
    assert "WROTE" not in out.stdout and "Permission denied" in out.stderr, out
    # As `-u $(id -u):$(id -g)` of the directory's owner: writable, and the file is theirs.
    out2 = in_sandbox(
        config, "-u", "4242:4242", "--mount", f"type=bind,source={workspace},target=/workspace",
        images.node, "sh", "-c", f"{WRITE}; cat README",
    )  # fmt: skip
    assert out2.splitlines() == ["WROTE", "4242", "hello"]
    st = (workspace / "new-file").stat()
    assert (st.st_uid, st.st_gid) == (4242, 4242)


def test_a_workspace_chowned_to_the_sandbox_uid_is_writable_from_a_root_image(
    config: Path, images: Images, workspace: Path
) -> None:
    for p in (workspace, workspace / "README"):
        os.chown(p, SANDBOX_UID, SANDBOX_UID)
    out = in_sandbox(config, "-v", f"{workspace}:/workspace", images.root, "sh", "-c", WRITE)
    assert out.splitlines() == ["WROTE", str(SANDBOX_UID)]
    assert (workspace / "new-file").stat().st_uid == SANDBOX_UID


# --- every plan field reaches the container ---------------------------------------------------


def test_the_options_reach_the_container(
    config: Path, images: Images, sandboxes: Sandboxes, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# team settings\nFROM_FILE=file value\nPASSED\nNOT_SET_ANYWHERE\n")
    name = sandbox_name()
    os.environ["PASSED"] = "from the caller"
    try:
        result = airlock(
            config, "-d", "--rm", "--name", name, "--env-file", str(env_file), "-e", "PASSED",
            "-e", "GIVEN=1", "-l", "team=infra", "-h", "devbox", "-m", "256m", "--cpus", "0.5",
            "--pids-limit", "77", "--tmpfs", "/scratch:size=8m", "--mount",
            "type=tmpfs,target=/cache,tmpfs-size=4m", "-w", "/scratch", "--idle-timeout", "7m",
            images.root, "sleep", "300",
        )  # fmt: skip
    finally:
        del os.environ["PASSED"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name
    info = sandboxes.api.inspect_container(name)
    sid = info["Config"]["Labels"][LABEL]
    try:
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert env["FROM_FILE"] == "file value" and env["PASSED"] == "from the caller"
        assert env["GIVEN"] == "1" and "NOT_SET_ANYWHERE" not in env
        assert info["Config"]["Labels"]["team"] == "infra"
        assert info["Config"]["Hostname"] == "devbox"
        assert info["Config"]["User"] == SBX_USER  # the image's root, replaced
        assert info["Config"]["WorkingDir"] == "/scratch"
        host = info["HostConfig"]
        assert host["Memory"] == 256 << 20
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 77
        assert host["Init"] is True
        assert host["Tmpfs"]["/scratch"] == "size=8m" and "/tmp" in host["Tmpfs"]
        cache = [m for m in host["Mounts"] if m["Target"] == "/cache"]
        assert cache and cache[0]["TmpfsOptions"]["SizeBytes"] == 4 << 20
        session = sandboxes.world.control.show(info["Config"]["Labels"]["airlock.session"])
        print(f"session: {session}")
        if "idle_timeout" in session:
            assert session["idle_timeout"] == 420
        code, out = exec_in(sandboxes, name, "hostname; tr '\\0' ' ' < /proc/1/cmdline")
        assert code == 0 and out.splitlines()[0] == "devbox", out
        assert "docker-init" in out, out  # PID 1 is docker-init
    finally:
        sandboxes.manager.teardown(sid, "test finished")
    assert sandboxes.leftovers(sid) == []


def exec_in(sandboxes: Sandboxes, container: str, script: str) -> tuple[int, str]:
    """``script`` in the running container as its own user (``docker exec``)."""
    api = sandboxes.api
    exec_id = api.exec_create(container, ["/bin/sh", "-c", script])
    out: bytes = api.exec_start(exec_id)
    code = api.exec_inspect(exec_id)["ExitCode"]
    return int(code if code is not None else -1), out.decode(errors="replace")


# --- docker stop with init --------------------------------------------------------------------


def _timed_stop(config: Path, sandboxes: Sandboxes, image: str, init: str, script: str) -> float:
    name = sandbox_name()
    result = airlock(config, "-d", "--rm", init, "--name", name, image, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    sid = sandboxes.manager.sandbox_id_of(name)
    assert sid is not None
    try:
        time.sleep(1)  # the gate has opened and the command runs
        assert sandboxes.api.inspect_container(name)["State"]["Running"]
        t0 = time.monotonic()
        sandboxes.manager.stop(name, timeout=STOP_TIMEOUT)  # what `airlock stop NAME` does
        elapsed = time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            sandboxes.manager.teardown(sid, "test finished")
    assert sandboxes.leftovers(sid) == []
    return elapsed


def test_stop_is_quick_with_init(config: Path, images: Images, sandboxes: Sandboxes) -> None:
    """A command that is PID 1 gets no default signal action, so SIGTERM does nothing and
    `docker stop` waits its full timeout; with docker-init as PID 1 the command is not PID 1
    and SIGTERM ends it. A command that *explicitly* ignores SIGTERM (trap "" TERM) ignores
    it whatever PID 1 is: that one still waits the timeout, measured here too."""
    pid1 = "exec sleep 100"  # sleep itself is PID 1 without init
    trap = 'trap "" TERM; sleep 100'
    timings = {
        "init, exec sleep": _timed_stop(config, sandboxes, images.root, "--init", pid1),
        "no-init, exec sleep": _timed_stop(config, sandboxes, images.root, "--no-init", pid1),
        "init, trap '' TERM": _timed_stop(config, sandboxes, images.root, "--init", trap),
    }
    for what, seconds in timings.items():
        print(f"airlock stop ({what}): {seconds:.2f} s")
    assert timings["init, exec sleep"] < 5
    assert timings["no-init, exec sleep"] >= STOP_TIMEOUT - 1  # the control: it is init
    assert timings["init, trap '' TERM"] < STOP_TIMEOUT + 5  # bounded by the stop timeout


# --- refusals: exit 125, one sentence, nothing created ----------------------------------------


def _state(sandboxes: Sandboxes, images: Images) -> tuple[set[str], set[str], int]:
    """What a start would have made: a container of this module's image or of this gateway,
    a network of this gateway, a session at it (other modules may run beside this one)."""
    api, manager = sandboxes.api, sandboxes.manager
    containers = {c["Id"] for c in api.containers(all=True, filters={"ancestor": images.node})}
    containers |= {c["Id"] for c in manager.list()}
    networks = {n["Id"] for n in manager.own_networks()}
    return containers, networks, len(sandboxes.world.control.list_sessions())


def _refused_cases() -> list[Any]:
    cases = []
    for opt in REFUSED_OPTIONS:
        for name in opt.names:
            cases.append(pytest.param(opt, name, id=name))
    return cases


@pytest.mark.parametrize(("opt", "name"), _refused_cases())
def test_each_refused_option_exits_125_and_leaves_nothing(
    config: Path, images: Images, sandboxes: Sandboxes, opt: RefusedOption, name: str
) -> None:
    before = _state(sandboxes, images)
    args = [name, "host"] if opt.takes_value else [name]
    # In-process (fast) with the real manager: had the option been accepted, a sandbox would
    # have been started for real.
    result = CliRunner().invoke(
        main, ["run", "--config", str(config), "--rm", *args, images.node, "true"]
    )
    assert result.exit_code == 125, result.output
    assert opt.reason in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert _state(sandboxes, images) == before


OTHER_REFUSALS = [
    (["-u", "root"], "the sandbox never runs as root"),
    (["-u", "0:0"], "the sandbox never runs as root"),
    (["-e", "HTTPS_PROXY=http://elsewhere:3128"], "airlock sets this variable itself"),
    (["-e", "AIRLOCK_GRANTS=everything"], "airlock sets this variable itself"),
    (["--label", "airlock.sandbox=x"], "airlock's own"),
    (["-v", "/var/run/docker.sock:/var/run/docker.sock"], "the Docker socket is never given"),
    (["--mount", "type=bind,source=/run,target=/r"], "the Docker socket is never given"),
    (["-v", "/:/host:ro"], "the Docker socket is never given"),
    (["-v", "/tmp:/run/airlock"], "airlock's own"),
    (["--mount", "type=tmpfs,target=/.airlock-gate"], "airlock's own"),
    (["--tmpfs", "/etc/hosts"], "airlock's own"),
    (["-v", "/tmp:/etc/resolv.conf:ro"], "airlock's own"),
    (["--entrypoint", ""], "give a command"),  # needs the image's config: checked up front
]


@pytest.mark.parametrize(("args", "needle"), OTHER_REFUSALS, ids=lambda a: " ".join(a))
def test_other_refusals_exit_125_and_leave_nothing(
    config: Path, images: Images, sandboxes: Sandboxes, args: list[str], needle: str
) -> None:
    before = _state(sandboxes, images)
    result = CliRunner().invoke(main, ["run", "--config", str(config), *args, images.node])
    assert result.exit_code == 125, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert _state(sandboxes, images) == before


@pytest.mark.parametrize(
    "args",
    [
        ["-p", "8080:80"],
        ["--network=host"],
        ["--privileged"],
        ["-v", "/var/run/docker.sock:/s"],
        ["-u", "root"],
    ],
    ids=shlex.join,
)
def test_the_real_command_refuses_without_a_traceback(
    config: Path, images: Images, sandboxes: Sandboxes, args: list[str]
) -> None:
    before = _state(sandboxes, images)
    result = airlock(config, *args, images.node, "true")
    print(result.stderr)
    assert result.returncode == 125
    assert result.stderr.startswith("airlock: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert _state(sandboxes, images) == before
