"""The ``airlock`` command line."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from airlock.config import Config, ConfigError, load_config
from airlock.core.durations import parse_duration

# No markup in messages: they carry config keys such as "[upstream.app]" and paths verbatim.
err = Console(stderr=True, markup=False)
out = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(
        Text.assemble(("airlock:", "bold red"), " ", message), highlight=False, soft_wrap=True
    )
    sys.exit(code)


def _config(path: Path) -> Config:
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


@click.group()
def main() -> None:
    """airlock: sandboxes that reach exactly the GitHub repositories they were granted."""


@main.command()
@config_option
@click.option("--ready-file", type=click.Path(path_type=Path), hidden=True)
def gateway(config_path: Path, ready_file: Path | None) -> None:
    """Run the gateway in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    from airlock.gateway.server import StartupError, run_gateway
    from airlock.gateway.unixsock import SocketPathError

    config = _config(config_path)
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
    argv = priv.setpriv_argv(setpriv, account, [sys.executable, "-m", "airlock.cli", *sys.argv[1:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(setpriv, argv, {**os.environ, priv.DROPPED_ENV: "1"})  # noqa: S606 (fixed argv)


@main.group()
def session() -> None:
    """Create, list, show, renew and revoke sessions (through the control socket)."""


def _client(config: Config) -> Any:
    from airlock.host.control_client import ControlClient

    return ControlClient(config.gateway.control_socket)


def _control_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from airlock.host.control_client import ControlError

    try:
        return fn(*args, **kwargs)
    except ControlError as exc:
        fail(str(exc))


def _write_host_bundle(out_dir: Path, issued: dict[str, Any], key: Any) -> Path:
    """A bundle for a git client on the host: the gateway's name resolved to its listener."""
    from airlock.gateway.pki import key_pem
    from airlock.host.bundle import GatewayEndpoint, write_bundle

    gw = issued["gateway"]
    address = gw["address"] if gw["address"] not in ("0.0.0.0", "::") else "127.0.0.1"
    endpoint = GatewayEndpoint(name=gw["name"], address=address, port=gw["port"])
    return write_bundle(out_dir, issued, key_pem(key), endpoint=endpoint)


@session.command("create")
@config_option
@click.option(
    "--grant",
    "grants",
    multiple=True,
    required=True,
    help="HOST/OWNER/REPO:read or :write; repeat for more repositories.",
)
@click.option("--bind-ip", help="Only accept this session's requests from this source address.")
@click.option("--ttl", help="Absolute lifetime, e.g. 30m, 8h (default from the config).")
@click.option("--idle-timeout", help="Idle timeout, e.g. 15m (default from the config).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory to write the session bundle to (created 0700).",
)
def session_create(
    config_path: Path,
    grants: tuple[str, ...],
    bind_ip: str | None,
    ttl: str | None,
    idle_timeout: str | None,
    out_dir: Path,
) -> None:
    """Create a session and write its bundle (CA, client certificate and key, gitconfig)."""
    from airlock.gateway.pki import make_csr, new_private_key

    config = _config(config_path)
    try:
        ttl_s = parse_duration(ttl) if ttl else None
        idle_s = parse_duration(idle_timeout) if idle_timeout else None
    except ValueError as exc:
        fail(str(exc), 2)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} exists and is not empty; choose a new directory", 2)
    key = new_private_key()
    issued = _control_call(
        _client(config).create_session,
        grants=list(grants),
        csr=make_csr(key).decode(),
        ttl=ttl_s,
        idle_timeout=idle_s,
        bind_ip=bind_ip,
    )
    gitconfig = _write_host_bundle(out_dir, issued, key)
    sid = issued["session"]["id"]
    err.print(f"session bundle written to {out_dir}; use it with:", highlight=False)
    err.print(f"  GIT_CONFIG_GLOBAL={gitconfig} git clone https://HOST/OWNER/REPO", highlight=False)
    click.echo(sid)


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@session.command("list")
@config_option
def session_list(config_path: Path) -> None:
    """List sessions."""
    sessions = _control_call(_client(_config(config_path)).list_sessions)
    table = Table("id", "state", "grants", "expires", "requests", "bytes")
    for s in sessions:
        table.add_row(
            s["id"],
            s["state"],
            "\n".join(s["grants"]),
            _ts(s["expires_at"]),
            str(s["requests"]),
            str(s["bytes"]),
        )
    out.print(table)


@session.command("show")
@config_option
@click.argument("session_id")
def session_show(config_path: Path, session_id: str) -> None:
    """Show one session as JSON."""
    import json

    click.echo(json.dumps(_control_call(_client(_config(config_path)).show, session_id), indent=2))


@session.command("revoke")
@config_option
@click.argument("session_id")
@click.option("--reason", default="revoked by operator")
def session_revoke(config_path: Path, session_id: str, reason: str) -> None:
    """Revoke a session: its next request is refused, even on an open connection."""
    _control_call(_client(_config(config_path)).revoke, session_id, reason)
    err.print(f"revoked {session_id}", highlight=False)


@session.command("renew")
@config_option
@click.argument("session_id")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
def session_renew(config_path: Path, session_id: str, out_dir: Path) -> None:
    """Issue a new client key and certificate for a session; the old certificate stops working."""
    from airlock.gateway.pki import make_csr, new_private_key

    config = _config(config_path)
    key = new_private_key()
    issued = _control_call(_client(config).renew, session_id, make_csr(key).decode())
    _write_host_bundle(out_dir, issued, key)
    err.print(f"renewed {session_id}; new bundle in {out_dir}", highlight=False)


def _manager(config: Config) -> Any:
    from airlock.host.sandbox import SandboxManager

    return SandboxManager(config, say=lambda m: err.print(m, highlight=False))


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"-e {pair!r}: use KEY=VALUE", 2)
        env[key] = value
    return env


@main.command(context_settings={"allow_interspersed_args": False})
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
    from airlock.host.sandbox import RunSpec, SandboxError, run_foreground

    config = _config(config_path)
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
        manager = _manager(config)
        if detach:
            sb = manager.start(spec)
            click.echo(sb.name)
            return
        code = run_foreground(manager, spec)
    except SandboxError as exc:
        fail(str(exc), 125)
    sys.exit(code)


@main.command()
@config_option
def ps(config_path: Path) -> None:
    """List running sandboxes."""
    from airlock.host.sandbox import LABEL, LABEL_NAME, LABEL_SESSION, SandboxError

    try:
        rows = _manager(_config(config_path)).list()
    except SandboxError as exc:
        fail(str(exc))
    table = Table("name", "sandbox", "session", "status", "image")
    for c in rows:
        labels = c.get("Labels") or {}
        table.add_row(
            labels.get(LABEL_NAME, "?"),
            labels.get(LABEL, "?"),
            labels.get(LABEL_SESSION, "?"),
            c.get("Status", "?"),
            c.get("Image", "?"),
        )
    out.print(table)


@main.command()
@config_option
@click.argument("names", nargs=-1, required=True)
def stop(config_path: Path, names: tuple[str, ...]) -> None:
    """Stop sandboxes and remove their network, rules, session and files."""
    from airlock.host.sandbox import SandboxError

    manager = _manager(_config(config_path))
    for n in names:
        try:
            manager.stop(n)
        except SandboxError as exc:
            fail(str(exc))
        err.print(f"stopped {n}", highlight=False)


@main.command()
@config_option
@click.option("--interval", default=10.0, show_default=True, help="Seconds between reconciles.")
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
def supervise(config_path: Path, interval: float, once: bool) -> None:
    """Revoke sessions of stopped sandboxes, restore firewall rules, remove leftovers."""
    from airlock.host.sandbox import SandboxError
    from airlock.host.supervisor import Supervisor

    try:
        sup = Supervisor(
            _manager(_config(config_path)), say=lambda m: err.print(m, highlight=False)
        )
        if once:
            sup.reconcile()
        else:
            sup.run(interval)
    except SandboxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@main.command()
def image() -> None:
    """Build (once, offline, from Debian packages) and import the default sandbox image."""
    from airlock.host.images import ImageBuildError, ensure_sandbox_image
    from airlock.host.sandbox import SandboxError, docker_client

    try:
        tag = ensure_sandbox_image(docker_client(), progress=lambda m: err.print(m))
    except (SandboxError, ImageBuildError) as exc:
        fail(str(exc))
    click.echo(tag)


@main.command()
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


if __name__ == "__main__":
    main()
