"""`airlock rotate ca|token|bundles` and `airlock revoke-all`: rotation and emergency stop.

The work is in host/rotation.py (CA, bundles) and host/token_swap.py (token file); the
gateway's part in gateway/rotation.py and gateway/control.py. See docs/operations.md,
"Rotation".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from airlock.cli.common import config_option, control_call, control_client, err, fail, load
from airlock.core.durations import parse_duration


def _say(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def rotate() -> None:
    """Rotate the gateway's CA and certificates, or an upstream token file."""


def _check_out_dirs(out_dirs: tuple[Path, ...]) -> None:
    for d in out_dirs:
        if not (d / "session.json").is_file():
            fail(f"--out {d}: not a session bundle directory (no session.json)", 2)


def _list_dirs(config: Any, gateway_id: str, out_dirs: tuple[Path, ...]) -> list[Path]:
    """The bundle directories (BundleError for an --out one root must not write to)."""
    from airlock.host.rotation import bundle_dirs

    return bundle_dirs(config.sandbox.bundle_dir / gateway_id, out_dirs)


def _dirs(config: Any, gateway_id: str, out_dirs: tuple[Path, ...]) -> list[Path]:
    from airlock.host.bundle import BundleError

    try:
        dirs = _list_dirs(config, gateway_id, out_dirs)
    except BundleError as exc:
        fail(str(exc), 2)
    # Before the gateway changes anything: a bundle that cannot be rewritten would lose its
    # access at the commit.
    blocked = [d for d in dirs if not os.access(d, os.W_OK | os.X_OK)]
    if blocked:
        fail(
            f"cannot write the bundle directory {blocked[0]} as uid {os.geteuid()} "
            f"({len(blocked)} such); run as root (sandbox bundles belong to their sandbox's user)"
        )
    return dirs


@contextlib.contextmanager
def _bundle_lock(gateway_id: str) -> Iterator[None]:
    """The host lock on this gateway's bundles (host/rotation.bundle_lock_name)."""
    from airlock.host.rotation import bundle_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(bundle_lock(gateway_id))
        except (OSError, ValueError) as exc:
            fail(f"cannot take the bundle lock: {exc}; run as root")
        yield


def _report(report: Any, *, committed: bool) -> None:
    for d, why in report.problems:
        _say(f"  not rewritten: {d}: {why}")
    if report.untracked:
        if committed:
            _say(
                f"  {len(report.untracked)} live session(s) have no bundle here (made with "
                "`airlock session create --out DIR`?); their bundles pin only the old server "
                "key and fail from now on: rewrite each at once with "
                "`airlock rotate bundles --out DIR`:"
            )
        else:
            _say(
                f"  {len(report.untracked)} live session(s) have no bundle here (made with "
                "`airlock session create --out DIR`?): give each bundle with --out DIR "
                "(`airlock rotate bundles --out DIR` rewrites it), or revoke the session:"
            )
        for sid in report.untracked:
            _say(f"    {sid}")


out_option = click.option(
    "--out",
    "out_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A bundle written by `airlock session create --out DIR` to rewrite too; repeatable.",
)


@rotate.command("ca")
@config_option
@click.option(
    "--overlap",
    default="10m",
    show_default=True,
    help="How long the old CA and certificates stay accepted after the switch.",
)
@click.option(
    "--settle",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Seconds between rewriting bundles and the switch (git processes that read the "
    "old config finish).",
)
@click.option("--wait", is_flag=True, help="Wait for the overlap's end, then refresh bundles.")
@click.option(
    "--force",
    is_flag=True,
    help="Commit even if some live session's bundle was not rewritten (it fails at once).",
)
@out_option
def rotate_ca(
    config_path: Path | None,
    overlap: str,
    settle: float,
    wait: bool,
    force: bool,
    out_dirs: tuple[Path, ...],
) -> None:
    """New gateway CA, server key and certificate, and interception CA; running sandboxes
    keep working (their bundles are rewritten in place)."""
    from airlock.host.control_client import ControlError
    from airlock.host.rotation import RotationLeftPrepared, refresh, rotate_ca, wait_for_overlap_end

    try:
        seconds = parse_duration(overlap)
    except ValueError as exc:
        fail(f"--overlap: {exc}", 2)
    config = load(config_path)
    client = control_client(config)
    gateway_id = control_call(client.health)["gateway_id"]
    _check_out_dirs(out_dirs)
    # From listing the bundles (after the prepare) to the commit no bundle may be made or
    # rewritten by another airlock process: one made meanwhile would miss the new trust.
    with _bundle_lock(gateway_id):
        _dirs(config, gateway_id, out_dirs)
        try:
            result = rotate_ca(
                client,
                lambda: _list_dirs(config, gateway_id, out_dirs),
                float(seconds),
                settle=settle,
                force=force,
                say=_say,
            )
        except RotationLeftPrepared as exc:
            if exc.report is not None:
                _report(exc.report, committed=False)
            fail(str(exc))
        except ControlError as exc:
            fail(str(exc))
    state = result.committed
    bundles = result.bundles
    _say(
        f"rotated: new CA and server certificate in use; {len(bundles.updated)} bundle(s) "
        f"rewritten; the old CA is accepted until {_ts(state.get('overlap_until'))}"
    )
    if result.prepared.get("not_reissued"):
        _say(
            "  sessions the gateway could not re-issue (made before it kept certificates) "
            "keep their old certificate: they lose access when the overlap ends; start them "
            "anew: " + ", ".join(result.prepared["not_reissued"])
        )
    _report(bundles, committed=True)
    if wait:
        _say("waiting for the overlap to end ...")
        try:
            trust = wait_for_overlap_end(client)
            with _bundle_lock(gateway_id):
                report = refresh(_dirs(config, gateway_id, out_dirs), client.list_sessions(), trust)
        except ControlError as exc:
            fail(str(exc))
        _say(f"overlap over; {len(report.updated)} bundle(s) now trust the new CA only")
        _report(report, committed=True)
    else:
        _say(
            "after the overlap, `airlock rotate bundles` (or the next rotation) drops the old "
            "CA from the bundles"
        )
    click.echo(f"{len(bundles.updated)}")


@rotate.command("bundles")
@config_option
@out_option
def rotate_bundles(config_path: Path | None, out_dirs: tuple[Path, ...]) -> None:
    """Rewrite every bundle with its session's current certificate and the trust of the
    moment (after an overlap: the new CA alone)."""
    from airlock.host.rotation import refresh

    config = load(config_path)
    client = control_client(config)
    gateway_id = control_call(client.health)["gateway_id"]
    _check_out_dirs(out_dirs)
    with _bundle_lock(gateway_id):
        dirs = _dirs(config, gateway_id, out_dirs)
        trust = control_call(client.rotation)
        report = refresh(dirs, control_call(client.list_sessions), trust)
    _say(f"{len(report.updated)} bundle(s) rewritten, {len(report.unchanged)} already current")
    _report(report, committed=trust.get("phase") != "prepared")
    if report.problems:
        raise SystemExit(1)


@rotate.command("token")
@config_option
@click.argument("new_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--upstream", "host", help="The upstream host (needed with several token files).")
@click.option(
    "--check-repo",
    metavar="OWNER/REPO",
    help="Ask the upstream with the new token first (a read of this repository's refs).",
)
def rotate_token(
    config_path: Path | None, new_file: Path, host: str | None, check_repo: str | None
) -> None:
    """Check NEW_FILE and swap it atomically into the upstream's token_file; the running
    gateway uses it for the next request."""
    from airlock.host.token_swap import TokenSwapError, swap_token_file

    config = load(config_path)
    try:
        swapped = swap_token_file(config, host, new_file, check_repo=check_repo)
    except TokenSwapError as exc:
        fail(str(exc))
    checked = " (accepted by the upstream)" if swapped.checked_upstream else ""
    _say(
        f"upstream {swapped.upstream}: new token{checked} in {swapped.token_file}; the gateway "
        f"uses it from its next request. {new_file} is a copy: delete it when done."
    )


@click.command("revoke-all")
@config_option
@click.option("--reason", default="revoked by operator (revoke-all)", show_default=True)
def revoke_all(config_path: Path | None, reason: str) -> None:
    """Revoke every session of this gateway at once: sandboxes keep running but lose all
    access (git, API, egress) from their next request."""
    if not reason.strip() or len(reason) > 200:
        fail("--reason: give 1 to 200 characters", 2)
    client = control_client(load(config_path))
    n = control_call(client.revoke_all, reason)
    _say(f"revoked {n} session(s)")
    click.echo(str(n))
