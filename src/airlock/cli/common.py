"""What every command shares: the consoles, one-line failures, the config file and where it
is looked for, root-only commands, and rows printed as a table or JSON."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


# --- the config file ------------------------------------------------------------------------

CONFIG_ENV = "AIRLOCK_CONFIG"
SYSTEM_CONFIG = Path("/etc/airlock/airlock.toml")


class ConfigNotFound(Exception):
    """No config file where it was looked for; the message names every place."""


def user_config_path(env: Mapping[str, str]) -> Path | None:
    """``${XDG_CONFIG_HOME:-~/.config}/airlock/airlock.toml``; None without a usable home."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is ignored
        return Path(xdg) / "airlock" / "airlock.toml"
    home = env.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home) / ".config" / "airlock" / "airlock.toml"
    return None


def config_search(
    given: Path | None, env: Mapping[str, str], euid: int
) -> tuple[list[Path], str | None]:
    """Where to look for the config, in order, and what chose the path (None: the search).

    ``--config`` if given, else ``$AIRLOCK_CONFIG``: an explicit choice, never passed over
    for another file. Else the per-user file (for a user other than root only: root must not
    read a file a user can write, and ``sudo`` may keep the user's HOME or XDG_CONFIG_HOME),
    then ``/etc/airlock/airlock.toml``. Never the current directory: a root tool must not
    pick up a config from a directory someone else can write. Pure."""
    if given is not None:
        return [given], "--config"
    from_env = env.get(CONFIG_ENV, "")
    if from_env:
        return [Path(from_env)], f"${CONFIG_ENV}"
    user = user_config_path(env) if euid != 0 else None
    return [*([user] if user else []), SYSTEM_CONFIG], None


def resolve_config_path(
    given: Path | None,
    env: Mapping[str, str] | None = None,
    euid: int | None = None,
    exists: Callable[[Path], bool] = os.path.exists,
) -> Path:
    """The config file a command uses; ConfigNotFound with every place looked at."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    candidates, chosen_by = config_search(given, env, euid)
    if chosen_by is not None:
        path = candidates[0]
        if not exists(path):
            raise ConfigNotFound(f"config file {path} (from {chosen_by}) does not exist")
        return path
    for path in candidates:
        if exists(path):
            return path
    looked = " or ".join(str(p) for p in candidates)
    raise ConfigNotFound(
        f"no config file: --config not given, ${CONFIG_ENV} not set, and none at {looked}; "
        f"pass --config FILE or set {CONFIG_ENV}"
    )


def load(path: Path | None) -> Config:
    """The config for a command: ``path`` (from ``--config``) or the search's result."""
    try:
        found = resolve_config_path(path)
    except ConfigNotFound as exc:
        fail(str(exc), 2)
    if not os.access(found, os.R_OK):
        fail(
            f"config file {found}: permission denied for uid {os.geteuid()}; run as root or "
            "pass a config this user can read (--config FILE)",
            2,
        )
    try:
        return load_config(found)
    except ConfigError as exc:
        fail(str(exc), 2)


config_option = click.option(
    "--config",
    "config_path",
    # No checks by click (its usage errors take four lines): load() says what is wrong.
    type=click.Path(path_type=Path, readable=False),
    default=None,
    help=(
        f"The airlock configuration file (TOML). Default: ${CONFIG_ENV}, else (not for root) "
        f"~/.config/airlock/airlock.toml, else {SYSTEM_CONFIG}."
    ),
)


# --- root -----------------------------------------------------------------------------------

# What needs root, and why (the message says it).
ROOT_COMMANDS: dict[str, str] = {
    "run": "it creates Docker networks, nftables rules and a tmpfs for session keys",
    "stop": "it removes nftables rules, Docker networks and session files",
    "rm": "it removes nftables rules, Docker networks and session files",
    "supervise": "it restores nftables rules and removes networks and session files",
    "image": "debootstrap and chroot build the image as root",
}


def require_root(command: str, why: str | None = None) -> None:
    if os.geteuid() == 0:
        return
    reason = why or ROOT_COMMANDS.get(command, "it needs root")
    fail(f"airlock {command} must run as root ({reason}); run it as root, e.g. with sudo", 1)


def requires_root(command: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` behind the root check (after option parsing, so --help still works)."""

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        require_root(command)
        return callback(*args, **kwargs)

    return checked


# --- the last resort ------------------------------------------------------------------------


def last_resort_message(exc: BaseException) -> str | None:
    """One line for an error no command turned into a message; None: let it through. Pure
    apart from geteuid."""
    from airlock.host.control_client import ControlError
    from airlock.host.dockerclient import DockerUnavailable

    if isinstance(exc, ControlError | DockerUnavailable):
        return str(exc)
    if isinstance(exc, subprocess.CalledProcessError):
        argv = exc.cmd if isinstance(exc.cmd, list | tuple) else [str(exc.cmd)]
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else None
        first = (stderr or "").strip().splitlines()
        detail = f": {first[-1]}" if first else ""
        hint = "; run as root" if os.geteuid() != 0 else ""
        return f"{argv[0]} exited with {exc.returncode}{detail}{hint}"
    if isinstance(exc, PermissionError):
        what = f"{exc.filename}: " if exc.filename else ""
        return f"{what}permission denied for uid {os.geteuid()}; run as root"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or directory"
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.filename}: " if exc.filename else ""
        return f"{what}{exc.strerror}"
    return None


class AirlockGroup(click.Group):
    """The top-level group: root-only commands are checked, and an error that reaches here
    is one line and an exit code, never a traceback."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name in ROOT_COMMANDS and cmd.callback is not None:
            cmd.callback = requires_root(name, cmd.callback)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            message = last_resort_message(exc)
            if message is None:
                raise
            fail(message)


# --- rows: a table or JSON ------------------------------------------------------------------

ID_WIDTH = 12  # like docker: ids are cut to 12 characters unless --no-trunc


@dataclass(frozen=True)
class Column:
    """A table column: its header, how a row gives its cell, and whether it is an id."""

    header: str
    value: Callable[[Mapping[str, Any]], object]
    is_id: bool = False


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    return " ".join(str(value).split())  # one line per row, always


def table_lines(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], no_trunc: bool = False
) -> list[str]:
    """Plain columns like ``docker ps``: never wrapped or cut to the terminal's width (only
    ids, to ID_WIDTH, unless ``no_trunc``). Pure."""
    cells = [[c.header.upper() for c in columns]]
    for row in rows:
        line = []
        for c in columns:
            text = _cell(c.value(row))
            if c.is_id and not no_trunc:
                text = text[:ID_WIDTH]
            line.append(text)
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["   ".join(t.ljust(w) for t, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def print_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    fmt: str = "table",
    no_trunc: bool = False,
) -> None:
    """``rows`` as a table (``columns``) or, with ``fmt == "json"``, as a JSON array of the
    rows themselves, whole (``columns`` and ``no_trunc`` do not apply)."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, default=str))
        return
    for line in table_lines(rows, columns, no_trunc):
        click.echo(line)


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table, or a JSON array of the full records.",
)
no_trunc_option = click.option(
    "--no-trunc", is_flag=True, help=f"Show ids whole (the table cuts them to {ID_WIDTH})."
)


# --- clients --------------------------------------------------------------------------------


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

    return SandboxManager(config, say=lambda m: err.print(m, highlight=False, soft_wrap=True))
