"""`airlock image` and `airlock demo`."""

from __future__ import annotations

import sys

import click

from airlock.cli.common import err, fail, out


@click.command()
def image() -> None:
    """Build (once, offline, from Debian packages) and import the default sandbox image."""
    from airlock.host.images import ImageBuildError, ensure_sandbox_image
    from airlock.host.sandbox import SandboxError, docker_client

    try:
        tag = ensure_sandbox_image(docker_client(), progress=lambda m: err.print(m))
    except (SandboxError, ImageBuildError) as exc:
        fail(str(exc))
    click.echo(tag)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo's directory for inspection.")
def demo(keep: bool) -> None:
    """Run the whole story on an embedded default: upstream, gateway, sandbox, clone, push,
    blocked egress, no token inside."""
    from airlock.demo import DemoError, run_demo

    try:
        ok = run_demo(out, keep=keep)
    except DemoError as exc:
        fail(str(exc))
    sys.exit(0 if ok else 1)
