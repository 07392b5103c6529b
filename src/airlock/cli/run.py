"""`airlock run`: a sandbox like `docker run`.

A thin shell: it reads env files and the caller's environment, and resolves bind sources
on this host; every value is parsed and checked by the pure functions of
:mod:`airlock.host.containerspec`. Every refusal exits 125 (Docker's own code for its
errors) with one sentence, before anything is created.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from airlock.cli.common import config_option, fail, load, resolve_config_path, sandbox_manager
from airlock.config import Config
from airlock.core.durations import parse_duration
from airlock.host.containerspec import (
    DOCKER_SOCKETS,
    REFUSED_OPTIONS,
    RunSpec,
    SpecError,
    check_bind_source,
    check_env_names,
    docker_host_socket,
    parse_cpus,
    parse_env_arg,
    parse_env_file,
    parse_label,
    parse_mount,
    parse_user,
    parse_volume,
    plan_container,
)

F = TypeVar("F", bound=Callable[..., Any])
REFUSED = 125


def _refuse(reason: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value not in (None, False, ()):
            fail(f"{'/'.join(param.opts)}: {reason}", REFUSED)

    return callback


def refused_options(f: F) -> F:
    """The `docker run` options a sandbox refuses, accepted only to say why (exit 125)."""
    for opt in reversed(REFUSED_OPTIONS):
        kw: dict[str, Any] = (
            {"multiple": True} if opt.takes_value else {"is_flag": True, "default": False}
        )
        f = click.option(
            *opt.names,
            expose_value=False,
            is_eager=True,
            hidden=True,
            callback=_refuse(opt.reason),
            **kw,
        )(f)
    return f


def _environment(env_files: tuple[Path, ...], env: tuple[str, ...]) -> dict[str, str]:
    """Env files first, then -e, later ones winning (Docker's order)."""
    result: dict[str, str] = {}
    for path in env_files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SpecError(f"--env-file {path}: {exc.strerror}") from None
        pairs = parse_env_file(data, os.environ, f"--env-file {path}")
        check_env_names((k for k, _ in pairs), f"--env-file {path}:")
        result.update(pairs)
    for arg in env:
        pair = parse_env_arg(arg, os.environ)
        if pair is not None:
            check_env_names([pair[0]])
            result[pair[0]] = pair[1]
    return result


def _check_host_paths(spec: RunSpec, config: Config) -> None:
    """Bind sources as this host resolves them (symbolic links followed) must not be, nor
    hold, the Docker socket or airlock's own state."""
    sockets: list[str | Path] = [*DOCKER_SOCKETS]
    if (s := docker_host_socket(os.environ.get("DOCKER_HOST"))) is not None:
        sockets.append(s)
    own: list[str | Path] = [
        config.gateway.control_socket,
        config.gateway.state_dir,
        config.sandbox.bundle_dir,
        *sockets,
    ]
    protected = [*own, *(os.path.realpath(str(p)) for p in own)]
    mounts = [parse_volume(v) for v in spec.volumes] + [parse_mount(m) for m in spec.mounts]
    for m in mounts:
        if m["Type"] == "bind":
            check_bind_source(os.path.realpath(m["Source"]), protected)


def _precheck(manager: Any, spec: RunSpec, config: Config) -> None:
    """The whole plan, against the image's config, before anything is created."""
    import docker.errors

    try:
        image_config = manager.image_config(spec.image)
    except docker.errors.ImageNotFound:
        return  # the manager says so, with what to do
    plan_container(spec, image_config, config.sandbox)


@click.command(context_settings={"allow_interspersed_args": False})
@config_option
@click.option("--grant", "grants", multiple=True, help="HOST/OWNER/REPO:read|write (repeatable).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Egress host (repeatable).")
@click.option("--name", help="Sandbox name (default airlock-<id>).")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the name.")
@click.option("-i", "--interactive", is_flag=True, help="Keep standard input open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal.")
@click.option("--rm", "remove", is_flag=True, help="Remove the sandbox when it exits.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE, or KEY from this environment.")
@click.option(
    "--env-file",
    "env_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of KEY=VALUE lines (Docker's format).",
)
@click.option("-u", "--user", help="NAME|UID[:GROUP|GID]; never root (default: the image's).")
@click.option("-w", "--workdir", help="Working directory (default: the image's WORKDIR).")
@click.option("--entrypoint", help='Replace the image\'s ENTRYPOINT ("" for none).')
@click.option("-v", "--volume", "volumes", multiple=True, help="[/HOST|NAME:]/CONTAINER[:ro].")
@click.option(
    "--mount", "mounts", multiple=True, help="type=bind|volume|tmpfs,source=..,target=..[,ro]."
)
@click.option("--tmpfs", multiple=True, help="/CONTAINER[:OPTIONS], a tmpfs.")
@click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE container label.")
@click.option("-h", "--hostname", help="Container host name (default: the sandbox name).")
@click.option("-m", "--memory", help="Memory limit, e.g. 4g (default from the config).")
@click.option("--cpus", help="CPUs, e.g. 1.5 (default from the config).")
@click.option("--pids-limit", type=int, help="Process limit (default from the config).")
@click.option(
    "--init/--no-init",
    default=True,
    show_default=True,
    help="docker-init as PID 1: it forwards signals and reaps zombies.",
)
@click.option("--read-only", is_flag=True, default=None, help="Read-only root file system.")
@click.option("--ttl", help="Session lifetime, e.g. 2h (default from the config).")
@click.option("--idle-timeout", help="End the session after this long idle, e.g. 30m.")
@refused_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    config_path: Path,
    grants: tuple[str, ...],
    allow_hosts: tuple[str, ...],
    name: str | None,
    detach: bool,
    interactive: bool,
    tty: bool,
    remove: bool,
    env: tuple[str, ...],
    env_files: tuple[Path, ...],
    user: str | None,
    workdir: str | None,
    entrypoint: str | None,
    volumes: tuple[str, ...],
    mounts: tuple[str, ...],
    tmpfs: tuple[str, ...],
    labels: tuple[str, ...],
    hostname: str | None,
    memory: str | None,
    cpus: str | None,
    pids_limit: int | None,
    init: bool,
    read_only: bool | None,
    ttl: str | None,
    idle_timeout: str | None,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in IMAGE in a sandbox that reaches only its grants, like `docker run`.

    The image's USER, WORKDIR, HOME and ENTRYPOINT are kept, except that a root user runs
    as the configured non-root uid with HOME=/tmp. Options that would break the isolation
    (-p, --network, --privileged, --cap-add, --device, ...) are refused.
    """
    from airlock.host.sandbox import SandboxError, run_foreground

    config = load(config_path)
    try:
        spec = RunSpec(
            image=image,
            command=list(command),
            grants=list(grants),
            allow_hosts=list(allow_hosts),
            name=name,
            env=_environment(env_files, env),
            volumes=list(volumes),
            detach=detach,
            interactive=interactive,
            tty=tty,
            read_only=read_only,
            ttl=_duration("--ttl", ttl),
            idle_timeout=_duration("--idle-timeout", idle_timeout),
            remove=remove,
            user=parse_user(user, config.sandbox.uid) if user is not None else None,
            workdir=workdir,
            entrypoint=entrypoint,
            mounts=list(mounts),
            tmpfs=list(tmpfs),
            labels=dict(parse_label(label) for label in labels),
            hostname=hostname,
            memory=memory,
            cpus=parse_cpus(cpus) if cpus is not None else None,
            pids_limit=pids_limit,
            init=init,
        )
        _check_host_paths(spec, config)
    except SpecError as exc:
        fail(str(exc), REFUSED)
    try:
        manager = sandbox_manager(config)
        _precheck(manager, spec, config)
        if detach:
            from airlock.host.supervisor import ensure_supervisor

            sb = manager.start(spec)
            # So its session is revoked the moment it exits, with or without an operator's
            # `airlock supervise` (one is started that leaves when nothing is left to watch).
            ensure_supervisor(manager, resolve_config_path(config_path).absolute())
            click.echo(sb.name)
            return
        code = run_foreground(manager, spec)
    except (SandboxError, SpecError) as exc:
        fail(str(exc), REFUSED)
    sys.exit(code)


def _duration(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise SpecError(f"{option}: {exc}") from None
