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
def gateway(config_path: Path, ready_file: Path | None) -> None:
    """Run the gateway in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    from airlock.gateway.server import StartupError, run_gateway
    from airlock.gateway.unixsock import SocketPathError

    config = load(config_path)
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
