"""CA rotation, host side: the gateway re-issues, the host rewrites the bundles it keeps.

The gateway cannot write sandbox bundles (in container mode it does not even see them), so
`airlock rotate ca` runs here:

1. ``prepare``: the gateway makes the next CA, server key and interception CA, and a new
   certificate for every live session's same key (it keeps each session's certificate);
2. every bundle directory under ``sandbox.bundle_dir/<gateway id>/`` (and each ``--out``
   directory given) is rewritten in place: the new certificate, both CAs, both server pins,
   both interception CAs, each file renamed into place (bundle.refresh_bundle);
3. a short settle time, for git processes that read the old gitconfig to finish;
4. ``commit``: the gateway shows the new server certificate from then on and accepts the
   old CA and each session's previous certificate until the overlap ends (its own timer).

After the overlap the bundles still trust the old CA (whose key is gone): :func:`refresh`
(`airlock rotate bundles`, `airlock rotate ca --wait`, and the next `airlock rotate ca`)
writes the trust of the moment, the new CA alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.host.bundle import BundleError, bundle_session_id, refresh_bundle, unsafe_ancestor


def bundle_lock_name(gateway_id: str) -> str:
    """The host lock (``airlock.host.locks.host_lock``) that every writer of this gateway's
    bundles holds: `rotate ca` (from listing the bundles through commit), `rotate bundles`,
    `airlock run`'s session + bundle step and supervise's post-overlap refresh."""
    return f"bundles-{gateway_id}.lock"


@dataclass
class RefreshReport:
    updated: list[tuple[Path, str]] = field(default_factory=list)  # (directory, session id)
    unchanged: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)  # (directory, why)
    # Live sessions with a certificate that no bundle here holds (`session create --out`
    # bundles elsewhere, or clients airlock does not know of).
    untracked: list[str] = field(default_factory=list)


def bundle_dirs(bundle_root: Path, extra: Iterable[Path] = ()) -> list[Path]:
    """Sandbox bundle directories of one gateway, then the extra (``--out``) ones, each by
    its real path. BundleError for an extra one that a user other than root could swap for
    another directory (it or a directory above it is theirs): root would write there."""
    found: list[Path] = []
    if bundle_root.is_dir():
        found = sorted(p for p in bundle_root.iterdir() if p.is_dir() and not p.is_symlink())
    out: list[Path] = []
    for d in extra:
        why = unsafe_ancestor(d)
        if why is not None:
            raise BundleError(
                f"--out {d}: {why}; move the bundle under a directory only root can write "
                "(or rewrite it as its owner)"
            )
        out.append(Path(os.path.realpath(d)))
    return [*found, *out]


def refresh(
    dirs: Iterable[Path], sessions: list[dict[str, Any]], trust: dict[str, Any]
) -> RefreshReport:
    """Write each bundle's session certificate and ``trust`` (GET /v1/rotation) into it."""
    by_id = {s["id"]: s for s in sessions}
    report = RefreshReport()
    seen: set[str] = set()
    for d in dirs:
        sid = bundle_session_id(d)
        if sid is None:
            report.problems.append((d, "no session.json: not a session bundle"))
            continue
        s = by_id.get(sid)
        if s is None or s.get("state") == "revoked":
            report.problems.append((d, f"session {sid} is not live at this gateway"))
            continue
        cert = s.get("client_cert_pem")
        if not cert:
            report.problems.append((d, f"session {sid} has no re-issued certificate"))
            continue
        seen.add(sid)
        try:
            changed = refresh_bundle(
                d,
                cert_pem=cert,
                ca_pem=trust["ca_pem"],
                pins=trust["pinned_pubkey"],
                api_ca_pem=trust.get("api_ca_pem"),
            )
        except (BundleError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            report.problems.append((d, why))
            continue
        (report.updated if changed else report.unchanged).append((d, sid))
    now = time.time()
    for s in sessions:
        live = s.get("state") != "revoked" and s.get("expires_at", 0) > now
        if live and s.get("client_cert_pem") and s["id"] not in seen:
            report.untracked.append(s["id"])
    return report


@dataclass
class CARotationResult:
    prepared: dict[str, Any]
    committed: dict[str, Any]
    bundles: RefreshReport


def rotate_ca(
    client: Any,
    dirs: list[Path],
    overlap: float,
    *,
    settle: float = 2.0,
    say: Callable[[str], None] = lambda _m: None,
    sleep: Callable[[float], None] = time.sleep,
) -> CARotationResult:
    """Prepare, rewrite the bundles, settle, commit (ControlError from the gateway)."""
    prepared = client.rotation_prepare(overlap)
    say(f"prepared: {len(prepared['reissued'])} session certificate(s) re-issued")
    report = refresh(dirs, client.list_sessions(), prepared)
    say(f"bundles rewritten: {len(report.updated) + len(report.unchanged)}")
    sleep(settle)
    committed = client.rotation_commit()
    return CARotationResult(prepared, committed, report)


def wait_for_overlap_end(
    client: Any,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    limit: float = 8 * 24 * 3600.0,
) -> dict[str, Any]:
    """Until the gateway says the overlap is over (bounded by ``limit`` seconds)."""
    deadline = clock() + limit
    while True:
        state: dict[str, Any] = client.rotation()
        until = state.get("overlap_until")
        if state.get("phase") != "overlap" or until is None:
            return state
        if clock() > deadline:
            return state
        sleep(min(max(0.2, until - clock() + 0.2), 30.0))
