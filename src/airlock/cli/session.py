"""`airlock session ...`: sessions for git clients on the host, through the control socket."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from airlock.cli.common import (
    Column,
    config_option,
    control_call,
    control_client,
    err,
    fail,
    format_option,
    load,
    no_trunc_option,
    print_rows,
)
from airlock.core.durations import parse_duration


@click.group()
def session() -> None:
    """Create, list, show, renew and revoke sessions (through the control socket)."""


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
    config_path: Path | None,
    grants: tuple[str, ...],
    bind_ip: str | None,
    ttl: str | None,
    idle_timeout: str | None,
    out_dir: Path,
) -> None:
    """Create a session and write its bundle (CA, client certificate and key, gitconfig)."""
    from airlock.gateway.pki import make_csr, new_private_key

    config = load(config_path)
    try:
        ttl_s = parse_duration(ttl) if ttl else None
        idle_s = parse_duration(idle_timeout) if idle_timeout else None
    except ValueError as exc:
        fail(str(exc), 2)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} exists and is not empty; choose a new directory", 2)
    key = new_private_key()
    issued = control_call(
        control_client(config).create_session,
        grants=list(grants),
        csr=make_csr(key).decode(),
        ttl=ttl_s,
        idle_timeout=idle_s,
        bind_ip=bind_ip,
    )
    gitconfig = _write_host_bundle(out_dir, issued, key)
    sid = issued["session"]["id"]
    err.print(f"session bundle written to {out_dir}; use it with:", highlight=False, soft_wrap=True)
    err.print(
        f"  GIT_CONFIG_GLOBAL={gitconfig} git clone https://HOST/OWNER/REPO",
        highlight=False,
        soft_wrap=True,
    )
    click.echo(sid)


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


SESSION_COLUMNS = (
    Column("session id", lambda s: s["id"], is_id=True),
    Column("state", lambda s: s["state"]),
    Column("grants", lambda s: s["grants"]),
    Column("expires", lambda s: _ts(s["expires_at"])),
    Column("requests", lambda s: s["requests"]),
    Column("bytes", lambda s: s["bytes"]),
    Column("served by", lambda s: s.get("served_by") or "-"),
)


@session.command("list")
@config_option
@format_option
@no_trunc_option
def session_list(config_path: Path | None, fmt: str, no_trunc: bool) -> None:
    """List sessions: a table (ids cut to 12 characters unless --no-trunc), or JSON."""
    sessions = control_call(control_client(load(config_path)).list_sessions)
    print_rows(sessions, SESSION_COLUMNS, fmt, no_trunc)


def resolve_session_id(client: Any, given: str) -> str:
    """A whole session id from an id or a unique prefix of one (as the table shows them)."""
    if len(given) >= 34:  # "s-" and 32 hex digits: a whole id, asked for as it is
        return given
    ids = [s["id"] for s in control_call(client.list_sessions)]
    if given in ids:
        return given
    matches = [i for i in ids if i.startswith(given)]
    if not matches:
        fail(f"no session {given!r}; `airlock session list` shows them")
    if len(matches) > 1:
        fail(f"{given!r} matches {len(matches)} sessions; give more of the id")
    return str(matches[0])


@session.command("show")
@config_option
@click.argument("session_id")
def session_show(config_path: Path | None, session_id: str) -> None:
    """Show one session as JSON."""
    import json

    client = control_client(load(config_path))
    session_id = resolve_session_id(client, session_id)
    click.echo(json.dumps(control_call(client.show, session_id), indent=2))


@session.command("revoke")
@config_option
@click.argument("session_id")
@click.option("--reason", default="revoked by operator")
def session_revoke(config_path: Path | None, session_id: str, reason: str) -> None:
    """Revoke a session: its next request is refused, even on an open connection."""
    client = control_client(load(config_path))
    session_id = resolve_session_id(client, session_id)
    control_call(client.revoke, session_id, reason)
    err.print(f"revoked {session_id}", highlight=False, soft_wrap=True)


@session.command("renew")
@config_option
@click.argument("session_id")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
def session_renew(config_path: Path | None, session_id: str, out_dir: Path) -> None:
    """Issue a new client key and certificate for a session; the old certificate stops working."""
    from airlock.gateway.pki import make_csr, new_private_key

    client = control_client(load(config_path))
    session_id = resolve_session_id(client, session_id)
    key = new_private_key()
    issued = control_call(client.renew, session_id, make_csr(key).decode())
    _write_host_bundle(out_dir, issued, key)
    err.print(f"renewed {session_id}; new bundle in {out_dir}", highlight=False, soft_wrap=True)
