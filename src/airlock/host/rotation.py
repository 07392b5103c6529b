"""CA rotation, host side: the gateway re-issues, the host rewrites the bundles it keeps.

The gateway cannot write sandbox bundles (in container mode it does not even see them), so
`airlock rotate ca` runs here:

1. ``prepare``: the gateway makes the next CA, server key and interception CA, and a new
   certificate for every live session's same key (it keeps each session's certificate);
2. every bundle directory under ``sandbox.bundle_dir/<gateway id>/`` (listed after the
   prepare) and each ``--out`` directory given is rewritten in place: the new certificate
   (a session the gateway kept none of keeps its own), both CAs, both server pins, both
   interception CAs, each file renamed into place (bundle.refresh_bundle);
3. a short settle time, for git processes that read the old gitconfig to finish;
4. ``commit``, only if every live session's bundle was rewritten (else, unless forced, the
   rotation is left prepared: nothing breaks, and `rotate ca` may be run again): the
   gateway shows the new server certificate from then on (a bundle pinning only the old
   key fails at once) and accepts the old CA and each session's previous certificate until
   the overlap ends (its own timer).

The caller holds :func:`bundle_lock` from step 2 to step 4, as does every other writer of
the gateway's bundles: a bundle made meanwhile would miss the new trust.

After the overlap the bundles still trust the old CA (whose key is gone): :func:`refresh`
(`airlock rotate bundles`, `airlock rotate ca --wait`, and the next `airlock rotate ca`)
writes the trust of the moment, the new CA alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.host.bundle import (
    CERT_FILE,
    BundleError,
    bundle_session_id,
    open_bundle_dir,
    refresh_bundle,
    unsafe_ancestor,
)
from airlock.host.control_client import ControlError
from airlock.host.locks import host_lock

#: A gateway id (gateway/identity.py: 16 hex characters); never a path.
_GATEWAY_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")


def bundle_lock_name(gateway_id: str) -> str:
    """The host lock (``airlock.host.locks.host_lock``) that every writer of this gateway's
    bundles holds: `rotate ca` (from listing the bundles through commit), `rotate bundles`,
    `airlock run`'s session + bundle step and supervise's post-overlap refresh."""
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise ValueError(f"{gateway_id!r}: not a gateway id")
    return f"bundles-{gateway_id}.lock"


@contextlib.contextmanager
def bundle_lock(gateway_id: str) -> Iterator[None]:
    """Hold :func:`bundle_lock_name` for the block."""
    with host_lock(bundle_lock_name(gateway_id)):
        yield


@dataclass
class RefreshReport:
    updated: list[tuple[Path, str]] = field(default_factory=list)  # (directory, session id)
    unchanged: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)  # (directory, why)
    # Live sessions with a certificate that no bundle here holds (`session create --out`
    # bundles elsewhere, or clients airlock does not know of).
    untracked: list[str] = field(default_factory=list)
    # The problems of live sessions' bundles (a subset of ``problems``): each would stop
    # working at the commit or the overlap's end. Bundles of sessions that are over (a
    # sandbox gone) are problems too, but no reason to hold back a commit.
    blocking: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every live session's bundle has the trust of the moment (a commit is safe)."""
        return not self.blocking and not self.untracked


#: A bundle's client.pem is a certificate: a few KiB.
_MAX_CERT = 64 << 10


def _live(s: dict[str, Any], now: float) -> bool:
    if s.get("state") == "revoked":
        return False
    end = float(s.get("expires_at", 0))
    if "last_used" in s and "idle_timeout" in s:
        end = min(end, float(s["last_used"]) + float(s["idle_timeout"]))
    return now < end


def _bundle_cert(directory: Path) -> str:
    """The certificate a bundle holds now (for a session the gateway has no certificate of:
    it keeps it while its trust is rewritten). Read as bundle.refresh_bundle reads: through
    the directory's fd, no symlink, no FIFO, one link, root's or the directory owner's."""
    dir_fd = open_bundle_dir(directory)
    try:
        try:
            fd = os.open(
                CERT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except FileNotFoundError:
            raise BundleError(f"{directory}: no {CERT_FILE}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{CERT_FILE}: a symlink; refusing to read it") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise BundleError(f"{CERT_FILE}: not a regular file of one link; refusing it")
            if st.st_uid not in (0, os.fstat(dir_fd).st_uid):
                raise BundleError(f"{CERT_FILE}: owned by uid {st.st_uid}, not the bundle's owner")
            data = os.read(fd, _MAX_CERT + 1)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    if len(data) > _MAX_CERT:
        raise BundleError(f"{CERT_FILE}: too large for a certificate")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BundleError(f"{CERT_FILE}: not text") from None


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
    """Write each bundle's session certificate and ``trust`` (GET /v1/rotation) into it.

    A session the gateway keeps no certificate of (made before it kept them) keeps the one
    its bundle holds, and still gets the trust: after the commit the gateway shows the new
    server certificate, which a bundle pinning only the old key refuses at once."""
    by_id = {s["id"]: s for s in sessions}
    report = RefreshReport()
    seen: set[str] = set()
    now = time.time()
    for d in dirs:
        sid = bundle_session_id(d)
        if sid is None:
            report.problems.append((d, "no session.json: not a session bundle"))
            continue
        s = by_id.get(sid)
        if s is None or not _live(s, now):
            report.problems.append((d, f"session {sid} is not live at this gateway"))
            continue
        seen.add(sid)
        try:
            cert = s.get("client_cert_pem") or _bundle_cert(d)
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
            report.blocking.append((d, why))
            continue
        (report.updated if changed else report.unchanged).append((d, sid))
    for s in sessions:
        if _live(s, now) and s["id"] not in seen:
            report.untracked.append(s["id"])
    return report


@dataclass
class CARotationResult:
    prepared: dict[str, Any]
    committed: dict[str, Any]
    bundles: RefreshReport


#: What to do after any failure past the prepare (the gateway keeps the prepared rotation:
#: the old CA still current, every previous certificate accepted, no deadline).
LEFT_PREPARED = (
    "the rotation is left prepared: re-run `airlock rotate ca` (prepare can be repeated)"
)


class RotationLeftPrepared(ControlError):
    """`rotate ca` stopped after the prepare and did not commit. A ControlError, so that
    callers which handle the gateway's refusals handle this too."""

    def __init__(self, why: str, report: RefreshReport | None = None) -> None:
        super().__init__(f"{why}; {LEFT_PREPARED}")
        self.report = report


def commit_refusal(report: RefreshReport) -> str | None:
    """Why the rewritten bundles do not allow a commit (without --force), or None."""
    parts = []
    if report.blocking:
        parts.append(f"{len(report.blocking)} live session bundle(s) could not be rewritten")
    if report.untracked:
        parts.append(f"{len(report.untracked)} live session(s) have no bundle here")
    if not parts:
        return None
    return (
        " and ".join(parts) + "; at the commit they would stop working (the gateway shows the "
        "new server certificate, which their bundles do not pin): not committed. Fix them or "
        "give their bundles with --out, or commit anyway with --force"
    )


def rotate_ca(
    client: Any,
    dirs: Iterable[Path] | Callable[[], Iterable[Path]],
    overlap: float,
    *,
    settle: float = 2.0,
    force: bool = False,
    say: Callable[[str], None] = lambda _m: None,
    sleep: Callable[[float], None] = time.sleep,
) -> CARotationResult:
    """Prepare, rewrite the bundles, settle, commit. ``dirs`` (a callable: called after the
    prepare, so a bundle made meanwhile is found; the caller holds :func:`bundle_lock`).

    ControlError from the prepare (nothing to take up, or the gateway says what it kept);
    RotationLeftPrepared for anything after it: bundles that were not all rewritten (unless
    ``force``), a refused commit, an interruption."""
    prepared = client.rotation_prepare(overlap)
    say(f"prepared: {len(prepared['reissued'])} session certificate(s) re-issued")
    report: RefreshReport | None = None
    try:
        listed = list(dirs() if callable(dirs) else dirs)
        report = refresh(listed, client.list_sessions(), prepared)
        say(f"bundles rewritten: {len(report.updated) + len(report.unchanged)}")
        refusal = commit_refusal(report)
        if refusal is not None and not force:
            raise RotationLeftPrepared(refusal, report)
        sleep(settle)
        committed = client.rotation_commit()
    except RotationLeftPrepared:
        raise
    except (ControlError, BundleError, OSError) as exc:
        raise RotationLeftPrepared(str(exc), report) from None
    except KeyboardInterrupt:
        raise RotationLeftPrepared("interrupted", report) from None
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
