"""What every command shares: the consoles, one-line failures, the config option."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from airlock.config import Config, ConfigError, load_config

# No markup in messages: they carry config keys such as "[upstream.app]" and paths verbatim.
err = Console(stderr=True, markup=False)
out = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(
        Text.assemble(("airlock:", "bold red"), " ", message), highlight=False, soft_wrap=True
    )
    sys.exit(code)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/etc/airlock/airlock.toml"),
    show_default=True,
    help="The airlock configuration file (TOML).",
)


def control_client(config: Config) -> Any:
    from airlock.host.control_client import ControlClient

    return ControlClient(config.gateway.control_socket)


def control_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from airlock.host.control_client import ControlError

    try:
        return fn(*args, **kwargs)
    except ControlError as exc:
        fail(str(exc))


def sandbox_manager(config: Config) -> Any:
    from airlock.host.sandbox import SandboxManager

    return SandboxManager(config, say=lambda m: err.print(m, highlight=False))
