"""`airlock install`: write the systemd units for this config (host/units.py renders them).

It writes ``airlock-gateway.service``, ``airlock-supervise.service`` and ``airlock.target``
to ``ROOT/etc/systemd/system``, creates the gateway's system user and the directories
systemd does not make, records the units' hashes in the integrity manifest
(host/integrity.py) and runs ``systemctl daemon-reload``. ``--dry-run`` prints all of it
and changes nothing.

In container mode (``gateway.mode = "container"``) the gateway unit runs `airlock gateway`
as root, which starts the gateway's container: no user is created and no credential is
loaded; the gateway image must have been built (`airlock image --gateway`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePath

import click

from airlock.cli.common import config_option, fail, load, resolve_config_path


def _airlock_executable() -> Path:
    """The airlock command this is: argv[0] when it is one, else the one on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "airlock" and argv0.is_file():
        return Path(os.path.abspath(argv0))
    found = shutil.which("airlock")
    if found is None:
        fail("cannot find the airlock executable; pass --airlock PATH", 2)
    return Path(os.path.abspath(found))


def _prefixed(root: Path, path: str | PurePath) -> Path:
    return root / str(path).lstrip("/")


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _user_exists(root: Path, user: str) -> bool:
    if root == Path("/"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return False
        return True
    try:
        lines = _prefixed(root, "/etc/passwd").read_text().splitlines()
    except FileNotFoundError:
        return False
    return any(line.split(":", 1)[0] == user for line in lines)


def _ids(root: Path, user: str) -> tuple[int, int]:
    if root == Path("/"):
        pw = pwd.getpwnam(user)
        return pw.pw_uid, pw.pw_gid
    for line in _prefixed(root, "/etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise KeyError(user)


_MODE_SUMMARY = {
    "host": "the gateway runs as a host process under its own system user",
    "container": "the gateway unit runs `airlock gateway` as root, which starts the "
    "gateway's hardened container through Docker (no system user, no LoadCredential)",
}


@click.command()
@config_option
@click.option(
    "--root",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Install under this directory (an image or chroot being prepared).",
)
@click.option(
    "--airlock",
    "airlock_exe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The airlock executable the units run (default: this one).",
)
@click.option(
    "--credential",
    "credentials",
    multiple=True,
    metavar="NAME=PATH",
    help="Load the credential NAME from PATH (default /etc/airlock/credentials/NAME).",
)
@click.option("--no-reload", is_flag=True, help="Do not run systemctl daemon-reload.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; change nothing.")
def install(
    config_path: Path | None,
    root: Path,
    airlock_exe: Path | None,
    credentials: tuple[str, ...],
    no_reload: bool,
    dry_run: bool,
) -> None:
    """Install the systemd units that run the gateway and the supervisor for this config."""
    from airlock.host import integrity, units

    config = load(config_path)
    found = resolve_config_path(config_path)
    sources: dict[str, str] = {}
    for item in credentials:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            fail(f"--credential {item!r}: give NAME=PATH", 2)
        sources[name] = path
    exe = airlock_exe if airlock_exe is not None else _airlock_executable()
    try:
        plan = units.render_units(
            config, Path(os.path.abspath(found)), Path(os.path.abspath(exe)), sources=sources
        )
        manifest = _prefixed(root, integrity.manifest_path(config))
    except (units.UnitError, integrity.IntegrityError) as exc:
        fail(str(exc), 2)
    if not _prefixed(root, exe).is_file() or not os.access(_prefixed(root, exe), os.X_OK):
        fail(f"the airlock executable {exe} does not exist or is not executable", 2)
    missing = [(n, s) for n, s in plan.credentials if not _prefixed(root, s).is_file()]
    if missing and not dry_run:
        fail(
            "credential source missing: "
            + "; ".join(f"{n} from {s}" for n, s in missing)
            + " (put the secret there, root-owned and mode 0600, or pass --credential NAME=PATH)",
            2,
        )
    unit_dir = _prefixed(root, units.UNIT_DIR)
    user_needed = plan.user is not None and not _user_exists(root, plan.user)
    useradd = [
        "useradd",
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
    ]
    if root != Path("/"):
        useradd += ["--root", str(root)]
    useradd.append(plan.user or "-")

    if dry_run:
        click.echo(f"# gateway.mode = {plan.mode}: " + _MODE_SUMMARY[plan.mode])
        for name, content in plan.files.items():
            click.echo(f"# --- would write {unit_dir / name}")
            click.echo(content, nl=not content.endswith("\n"))
        if user_needed:
            click.echo(f"# would run: {' '.join(useradd)}")
        for d in plan.gateway_dirs:
            click.echo(f"# would make {_prefixed(root, d)} (0700, {plan.user}'s)")
        if plan.audit_log:
            click.echo(f"# would create {_prefixed(root, plan.audit_log)} (0600, {plan.user}'s)")
        for n, s in missing:
            click.echo(f"# credential {n}: its source {s} does not exist yet")
        click.echo(f"# would record the units in {manifest}")
        if not no_reload:
            click.echo("# would run: systemctl daemon-reload")
        for note in plan.notes:
            click.echo(f"# note: {note}")
        return

    if os.geteuid() != 0:
        fail("airlock install writes system units and creates a user: run it as root", 2)
    try:
        if plan.user is not None and user_needed:
            try:
                r = subprocess.run(useradd, capture_output=True, text=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                fail(f"useradd {plan.user}: {exc}; create the user yourself and re-run", 1)
            if r.returncode != 0:
                fail(f"useradd {plan.user} failed: {r.stderr.strip() or r.returncode}", 1)
        uid, gid = _ids(root, plan.user) if plan.user is not None else (0, 0)
        for d in plan.gateway_dirs:
            p = _prefixed(root, d)
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Opened without following a symlink (the path was checked as written, not as
            # it resolves): the directory itself is handed over, never where a link points.
            try:
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as exc:
                fail(f"{p}: {exc.strerror} (a symlink? give the gateway a real directory)", 2)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        if plan.audit_log:
            p = _prefixed(root, plan.audit_log)
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
        written = []
        for name, content in plan.files.items():
            _write(unit_dir / name, content)
            written.append((str(units.UNIT_DIR / name), content.encode()))
            click.echo(f"wrote {unit_dir / name}")
        integrity.record_units(manifest, written)
        click.echo(f"recorded the units in {manifest}")
    except (OSError, integrity.IntegrityError) as exc:
        fail(f"install failed: {exc}", 1)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if not no_reload:
        try:
            r = subprocess.run(
                ["systemctl", "daemon-reload"], capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            fail(f"systemctl daemon-reload: {exc}; the units are written, reload systemd", 1)
        if r.returncode != 0:
            fail(f"systemctl daemon-reload failed: {r.stderr.strip() or r.returncode}", 1)
    click.echo("start with: systemctl enable --now airlock.target")
