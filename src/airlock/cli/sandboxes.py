"""`airlock ps`, `stop`, `supervise`: the sandboxes of this gateway."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from airlock.cli.common import config_option, err, fail, load, out, sandbox_manager


@click.command()
@config_option
def ps(config_path: Path) -> None:
    """List running sandboxes."""
    from airlock.host.sandbox import LABEL, LABEL_NAME, LABEL_SESSION, SandboxError

    try:
        rows = sandbox_manager(load(config_path)).list()
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


@click.command()
@config_option
@click.argument("names", nargs=-1, required=True)
def stop(config_path: Path, names: tuple[str, ...]) -> None:
    """Stop sandboxes and remove their network, rules, session and files."""
    from airlock.host.sandbox import SandboxError

    manager = sandbox_manager(load(config_path))
    for n in names:
        try:
            manager.stop(n)
        except SandboxError as exc:
            fail(str(exc))
        err.print(f"stopped {n}", highlight=False)


@click.command()
@config_option
@click.option("--interval", default=10.0, show_default=True, help="Seconds between reconciles.")
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
def supervise(config_path: Path, interval: float, once: bool) -> None:
    """Revoke sessions of stopped sandboxes, restore firewall rules, remove leftovers."""
    from airlock.host.sandbox import SandboxError
    from airlock.host.supervisor import Supervisor

    try:
        sup = Supervisor(
            sandbox_manager(load(config_path)), say=lambda m: err.print(m, highlight=False)
        )
        if once:
            sup.reconcile()
        else:
            sup.run(interval)
    except SandboxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
