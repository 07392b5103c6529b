"""`airlock ps`, `stop`, `rm`, `logs`, `exec`, `supervise`: the sandboxes of this gateway.

Each acts only on sandboxes labelled with this gateway's id (see host/sandbox.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from airlock.cli.common import (
    Column,
    config_option,
    err,
    fail,
    format_option,
    load,
    no_trunc_option,
    print_rows,
    resolve_config_path,
    sandbox_manager,
)


def _manager_or_fail(config_path: Path | None) -> Any:
    from airlock.host.sandbox import SandboxError

    manager = sandbox_manager(load(config_path))
    try:
        manager.gateway_id  # noqa: B018 (Docker and the gateway answer, or one line)
        manager.client  # noqa: B018
    except SandboxError as exc:
        fail(str(exc))
    return manager


def _row(c: dict[str, Any]) -> dict[str, Any]:
    from airlock.host.sandbox import LABEL, LABEL_NAME, LABEL_SESSION

    labels = c.get("Labels") or {}
    return {
        "name": labels.get(LABEL_NAME, ""),
        "sandbox": labels.get(LABEL, ""),
        "session": labels.get(LABEL_SESSION, ""),
        "container": c.get("Id", ""),
        "state": c.get("State", ""),
        "status": c.get("Status", ""),
        "image": c.get("Image", ""),
        "created": c.get("Created", 0),
    }


_PS_COLUMNS = [
    Column("NAME", lambda r: r["name"]),
    Column("SANDBOX", lambda r: r["sandbox"]),
    Column("SESSION", lambda r: r["session"], is_id=True),
    Column("CONTAINER", lambda r: r["container"], is_id=True),
    Column("STATUS", lambda r: r["status"]),
    Column("IMAGE", lambda r: r["image"]),
]


@click.command()
@config_option
@click.option("-a", "--all", "show_all", is_flag=True, help="Also stopped sandboxes.")
@format_option
@no_trunc_option
def ps(config_path: Path | None, show_all: bool, fmt: str, no_trunc: bool) -> None:
    """List running sandboxes (all with -a)."""
    from airlock.host.sandbox import SandboxError

    manager = _manager_or_fail(config_path)
    try:
        rows = [_row(c) for c in manager.list(all=show_all)]
    except SandboxError as exc:
        fail(str(exc))
    print_rows(rows, _PS_COLUMNS, fmt, no_trunc)


@click.command()
@config_option
@click.option("-t", "--time", "timeout", default=10, show_default=True, help="Seconds to wait.")
@click.argument("names", nargs=-1, required=True)
def stop(config_path: Path | None, timeout: int, names: tuple[str, ...]) -> None:
    """Stop sandboxes: SIGTERM, then SIGKILL after --time. Their sessions are revoked; the
    containers stay (for `logs`) until `airlock rm`, unless started with --rm."""
    from airlock.host.sandbox import SandboxError

    manager = _manager_or_fail(config_path)
    for n in names:
        try:
            manager.stop(n, timeout=timeout)
        except SandboxError as exc:
            fail(str(exc))
        click.echo(n)


@click.command()
@config_option
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running sandbox.")
@click.argument("names", nargs=-1, required=True)
def rm(config_path: Path | None, force: bool, names: tuple[str, ...]) -> None:
    """Remove sandboxes: container, network, rules, session and files."""
    from airlock.host.sandbox import SandboxError

    manager = _manager_or_fail(config_path)
    for n in names:
        try:
            manager.remove(n, force=force)
        except SandboxError as exc:
            fail(str(exc))
        click.echo(n)


@click.command()
@config_option
@click.option("-f", "--follow", is_flag=True, help="Follow the output.")
@click.option("--tail", default="all", show_default=True, help="Lines from the end, or all.")
@click.argument("name")
def logs(config_path: Path | None, follow: bool, tail: str, name: str) -> None:
    """Print a sandbox's output (also after it exited, until `airlock rm`)."""
    from airlock.host.sandbox import SandboxError

    manager = _manager_or_fail(config_path)
    if tail != "all" and not tail.isdigit():
        fail(f"--tail {tail!r}: a number of lines, or all", 2)
    try:
        cid = manager.container_of(name)["Id"]
    except SandboxError as exc:
        fail(str(exc))
    # The docker CLI keeps stdout and stderr apart (the SDK's log stream mixes them); the
    # container is ours (found by its labels) and addressed by its full id.
    argv = ["docker", "logs", "--tail", tail, *(["--follow"] if follow else []), cid]
    _exec_docker(argv)


def _exec_docker(argv: list[str]) -> None:
    sys.stdout.flush()
    try:
        os.execvp("docker", argv)  # noqa: S606 (fixed program, argv list)
    except OSError as exc:
        fail(f"cannot run the docker CLI: {exc.strerror}", 125)


@click.command(context_settings={"allow_interspersed_args": False})
@config_option
@click.option("-i", "--interactive", is_flag=True, help="Keep standard input open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal.")
@click.option("-u", "--user", help="UID[:GID] or a user of the image (never root).")
@click.option("-w", "--workdir", help="Working directory inside the sandbox.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE, or KEY from this shell.")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    config_path: Path | None,
    interactive: bool,
    tty: bool,
    user: str | None,
    workdir: str | None,
    env: tuple[str, ...],
    name: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a running sandbox, as its user, with its network and limits."""
    from airlock.host.sandbox import SandboxError

    if user is not None and not re.fullmatch(r"[0-9]+(:[0-9]+)?", user):
        fail("-u: give a numeric UID[:GID] (a name could be root in the image)", 125)
    if user is not None and int(user.split(":")[0]) == 0:
        fail("-u: a sandbox never runs anything as root", 125)
    manager = _manager_or_fail(config_path)
    try:
        container = manager.container_of(name)
    except SandboxError as exc:
        fail(str(exc), 125)
    if container.get("State") != "running":
        fail(f"sandbox {name} is not running ({container.get('Status')})", 125)
    # The docker CLI does terminals, signals and stdin best; the container is ours (checked
    # by its labels above) and is addressed by its full id, so no name can be swapped in.
    argv = ["docker", "exec"]
    argv += ["-i"] if interactive else []
    argv += ["-t"] if tty else []
    argv += ["-u", user] if user else []
    argv += ["-w", workdir] if workdir else []
    for e in env:
        argv += ["-e", e]
    argv += [container["Id"], *command]
    _exec_docker(argv)


exec_.name = "exec"


@click.command()
@config_option
@click.option("--interval", default=10.0, show_default=True, help="Seconds between reconciles.")
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
@click.option(
    "--until-idle",
    is_flag=True,
    hidden=True,
    help="Exit when no sandbox of this gateway is left (started by `run -d`).",
)
@click.option(
    "--no-agent", is_flag=True, help="Do not start the run agent (a faster `airlock run`)."
)
def supervise(
    config_path: Path | None, interval: float, once: bool, until_idle: bool, no_agent: bool
) -> None:
    """Revoke sessions of exited sandboxes, restore firewall rules, remove leftovers: for
    this gateway's sandboxes only."""
    from airlock.host.sandbox import SandboxError
    from airlock.host.supervisor import Supervisor, supervisor_lock

    manager = _manager_or_fail(config_path)
    sup = Supervisor(manager, say=lambda m: err.print(m, highlight=False))
    agent: subprocess.Popen[bytes] | None = None
    try:
        if once:
            sup.reconcile()
            return
        with supervisor_lock(manager, until_idle=until_idle):
            if not until_idle and not no_agent:
                agent = _start_agent(resolve_config_path(config_path).absolute())
            sup.run(interval, until_idle=until_idle)
    except SandboxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(5)


def _start_agent(config_path: Path) -> subprocess.Popen[bytes]:
    """The run agent beside the supervisor (host/runagent.py): `airlock run` without the
    import time. Its output goes to the supervisor's stderr."""
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "airlock.cli", "agent", "--config", str(config_path)],
        stdin=subprocess.DEVNULL,
        cwd="/",  # with -P: nothing from the caller's directory is imported (root)
    )


@click.command(hidden=True)
@config_option
def agent(config_path: Path | None) -> None:
    """Serve `airlock run` requests for this config (started by `airlock supervise`)."""
    import signal

    from airlock.host.runagent import serve

    path = resolve_config_path(config_path).absolute()
    load(path)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        serve(path, stop=lambda: stopping)
    except OSError as exc:
        fail(f"the run agent cannot listen: {exc}")
    except KeyboardInterrupt:
        pass
