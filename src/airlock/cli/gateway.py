"""`airlock gateway`: the gateway in the foreground, dropping to its user when configured."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from airlock.cli.common import config_option, fail, load
from airlock.config import Config


@click.command()
@config_option
@click.option("--ready-file", type=click.Path(path_type=Path), hidden=True)
@click.option(
    "--container",
    "as_container",
    is_flag=True,
    help='Run it as its hardened container (what gateway.mode = "container" does).',
)
def gateway(config_path: Path, ready_file: Path | None, as_container: bool) -> None:
    """Run the gateway in the foreground (SIGTERM or Ctrl-C stops it cleanly).

    In container mode (gateway.mode = "container" or --container) it starts the gateway's
    container, follows its logs, and stops and removes it on SIGTERM (docs/gateway-container.md).
    """
    from airlock.gateway.server import StartupError, run_gateway
    from airlock.gateway.unixsock import SocketPathError

    config = load(config_path)
    if as_container or config.gateway.mode == "container":
        _run_container(config, config_path, ready_file)
        return
    if config.gateway.user is not None:
        _drop_privileges(config)
    try:
        asyncio.run(run_gateway(config, ready_file))
    except (StartupError, SocketPathError) as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        pass


def _drop_privileges(config: Config) -> None:
    """Re-execute as ``gateway.user`` (once); refuse to go on as root afterwards."""
    import os

    from airlock.gateway import privileges as priv

    user = config.gateway.user
    assert user is not None
    if os.environ.get(priv.DROPPED_ENV) == "1":
        if os.geteuid() == 0:
            fail("gateway.user: still root after the privilege drop; refusing to run", 2)
        return
    if os.geteuid() != 0:
        fail(f"gateway.user = {user!r}: start the gateway as root; it drops to {user} itself", 2)
    try:
        setpriv = priv.find_setpriv()
        account = priv.lookup(user)
        priv.prepare(config, account)
        priv.check_can_run(setpriv, account, sys.executable)
    except (priv.PrivilegeError, OSError) as exc:
        fail(str(exc), 2)
    argv = priv.setpriv_argv(
        setpriv, account, [sys.executable, "-P", "-m", "airlock.cli", *sys.argv[1:]]
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(setpriv, argv, {**os.environ, priv.DROPPED_ENV: "1"})  # noqa: S606 (fixed argv)


def _run_container(config: Config, config_path: Path | None, ready_file: Path | None) -> None:
    """The gateway's container in the foreground: start, wait for /v1/health, follow its
    logs; SIGTERM/SIGINT stop and remove it. Exits with the container's exit code."""
    import os
    import signal
    import threading
    import tomllib

    from airlock.cli.common import err, resolve_config_path
    from airlock.host.dockerclient import DockerUnavailable, docker_client
    from airlock.host.gateway_container import GatewayContainer, GatewayContainerError
    from airlock.host.images import ImageBuildError

    if os.geteuid() != 0:
        fail("the gateway container is started by root (it prepares the files it mounts)", 2)
    raw = tomllib.loads(resolve_config_path(config_path).read_text())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gc = GatewayContainer(
            config, raw, docker_client(), say=lambda m: err.print(m, highlight=False)
        )
        gc.start()
    except (DockerUnavailable, GatewayContainerError, ImageBuildError, OSError) as exc:
        fail(str(exc), 2)
    if ready_file is not None:
        ready_file.write_text("ready\n")

    def write(chunk: bytes) -> None:
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()

    try:
        code = gc.follow(stop, write)
    finally:
        gc.stop()
    sys.exit(0 if stop.is_set() else code)
