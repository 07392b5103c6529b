"""`airlock run`: a sandbox like `docker run`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from airlock.cli.common import config_option, fail, load, sandbox_manager
from airlock.core.durations import parse_duration


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"-e {pair!r}: use KEY=VALUE", 2)
        env[key] = value
    return env


@click.command(context_settings={"allow_interspersed_args": False})
@config_option
@click.option("--grant", "grants", multiple=True, help="HOST/OWNER/REPO:read|write (repeatable).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Egress host (repeatable).")
@click.option("--name", help="Sandbox name (default airlock-<id>).")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the name.")
@click.option("-i", "--interactive", is_flag=True, help="Keep standard input open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("-v", "--volume", "volumes", multiple=True, help="/HOST:/CONTAINER[:ro].")
@click.option("--read-only", is_flag=True, default=None, help="Read-only root file system.")
@click.option("--ttl", help="Session lifetime, e.g. 2h (default from the config).")
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
    env: tuple[str, ...],
    volumes: tuple[str, ...],
    read_only: bool | None,
    ttl: str | None,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in IMAGE in a sandbox that reaches only its grants, like `docker run`."""
    from airlock.host.containerspec import RunSpec
    from airlock.host.sandbox import SandboxError, run_foreground

    config = load(config_path)
    try:
        ttl_s = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        fail(str(exc), 2)
    spec = RunSpec(
        image=image,
        command=list(command),
        grants=list(grants),
        allow_hosts=list(allow_hosts),
        name=name,
        env=_parse_env(env),
        volumes=list(volumes),
        detach=detach,
        interactive=interactive,
        tty=tty,
        read_only=read_only,
        ttl=ttl_s,
    )
    try:
        manager = sandbox_manager(config)
        if detach:
            sb = manager.start(spec)
            click.echo(sb.name)
            return
        code = run_foreground(manager, spec)
    except SandboxError as exc:
        fail(str(exc), 125)
    sys.exit(code)
