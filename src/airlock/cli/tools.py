"""`airlock image` and `airlock demo`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from airlock.cli.common import config_option, err, fail, load, out


@click.command()
@click.option(
    "--mirror",
    metavar="URL",
    help=(
        "The Debian mirror to build from (default: $AIRLOCK_DEBIAN_MIRROR, else this "
        "machine's own mirror from its apt sources). Used only when the image is built."
    ),
)
@click.option(
    "--gateway",
    "gateway_image",
    is_flag=True,
    help="Build the gateway's container image instead (docs/gateway-container.md).",
)
@config_option
def image(mirror: str | None, gateway_image: bool, config_path: Path | None) -> None:
    """Build (once, offline, from Debian packages) and import the default sandbox image."""
    if gateway_image:
        _gateway_image(mirror, config_path)
        return
    from airlock.host.dockerclient import DockerUnavailable, docker_client
    from airlock.host.images import (
        ImageBuildError,
        check_mirror,
        ensure_sandbox_image,
        sandbox_image_tag,
    )
    from airlock.host.integrity import IntegrityError

    try:
        if mirror is not None:
            check_mirror(mirror)
        client = docker_client()
        if mirror is not None and _has_image(client, sandbox_image_tag()):
            err.print(
                f"{sandbox_image_tag()} exists; --mirror is used only when building "
                f"(docker image rm {sandbox_image_tag()} to build it again)",
                highlight=False,
                soft_wrap=True,
            )
        tag = ensure_sandbox_image(
            client,
            progress=lambda m: err.print(m, highlight=False, soft_wrap=True),
            mirror=mirror,
            config=_config_if_any(config_path),
        )
    except (DockerUnavailable, ImageBuildError, IntegrityError) as exc:
        fail(str(exc))
    click.echo(tag)


def _gateway_image(mirror: str | None, config_path: Path | None) -> None:
    from airlock.host.dockerclient import DockerUnavailable, docker_client
    from airlock.host.gateway_image import ensure_gateway_image
    from airlock.host.images import ImageBuildError
    from airlock.host.integrity import IntegrityError

    config = load(config_path)
    try:
        tag = ensure_gateway_image(
            docker_client(timeout=600),
            config,
            progress=lambda m: err.print(m, highlight=False, soft_wrap=True),
            mirror=mirror,
        )
    except (DockerUnavailable, ImageBuildError, IntegrityError) as exc:
        fail(str(exc))
    click.echo(tag)


def _config_if_any(config_path: Path | None) -> Any:
    """The config (to record the image in its integrity manifest), when there is one."""
    from airlock.cli.common import ConfigNotFound, resolve_config_path

    try:
        resolve_config_path(config_path)
    except ConfigNotFound:
        return None
    return load(config_path)


def _has_image(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


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
