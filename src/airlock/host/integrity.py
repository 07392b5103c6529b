"""The integrity manifest: what was installed and built, for `airlock doctor` to check.

``airlock install`` records the SHA-256 of each unit file it writes; the image builders
record each image's id (:func:`record_image`). ``airlock doctor`` compares what is on the
host with what was recorded: a unit edited after install, or an image re-tagged to other
content, is a finding.

The manifest is JSON::

    {"version": 1,
     "entries": [{"kind": "unit", "name": "airlock-gateway.service",
                  "path": "/etc/systemd/system/airlock-gateway.service", "sha256": "..."},
                 {"kind": "image", "name": "sandbox", "tag": "airlock/sandbox:...",
                  "image_id": "sha256:..."}]}

It lives at ``gateway.integrity_manifest`` (default ``/var/lib/airlock-host/integrity.json``),
written by root only, and never where the gateway can write (its state directory, control
socket directory or audit log directory, in host or container mode): a compromised gateway
that could rewrite the manifest could hide the unit or image it changed. Writes are atomic
(a temporary file renamed over it) under an exclusive lock, so two builders recording at
once both land.

The core (parse, render, add an entry, verify) is pure; :func:`record_image`,
:func:`record_units` and :func:`load_manifest` are the thin shells around the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from airlock.config import Config

__all__ = [
    "MANIFEST_VERSION",
    "Entry",
    "IntegrityError",
    "Manifest",
    "Verdict",
    "gateway_writable_dirs",
    "load_manifest",
    "manifest_path",
    "parse_manifest",
    "record_image",
    "record_units",
    "render_manifest",
    "sha256_bytes",
    "verify_images",
    "verify_units",
    "with_entries",
]

MANIFEST_VERSION = 1
Kind = Literal["unit", "image"]


class IntegrityError(Exception):
    """The manifest cannot be read, written or trusted; worded for the operator."""


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    digest: str  # units: the file's sha256 (hex); images: the image id ("sha256:...")
    location: str  # units: the installed path; images: the tag

    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    def as_json(self) -> dict[str, str]:
        if self.kind == "unit":
            return {"kind": "unit", "name": self.name, "path": self.location, "sha256": self.digest}
        return {"kind": "image", "name": self.name, "tag": self.location, "image_id": self.digest}


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def of_kind(self, kind: Kind) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


@dataclass(frozen=True)
class Verdict:
    """One checked entry: what doctor prints (``name``), whether it holds, and what to do."""

    name: str
    ok: bool
    detail: str


# --- the pure core ------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: an entry is not an object")
    kind = raw.get("kind")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise IntegrityError(f"{where}: an entry has no name")
    if kind == "unit":
        digest, location = raw.get("sha256"), raw.get("path")
    elif kind == "image":
        digest, location = raw.get("image_id"), raw.get("tag")
    else:
        raise IntegrityError(f"{where}: entry {name!r} has an unknown kind {kind!r}")
    if not isinstance(digest, str) or not digest or not isinstance(location, str):
        raise IntegrityError(f"{where}: entry {name!r} is incomplete")
    return Entry(kind, name, digest, location)


def parse_manifest(text: str, where: str = "integrity manifest") -> Manifest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise IntegrityError(f"{where}: not a version {MANIFEST_VERSION} airlock manifest")
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise IntegrityError(f"{where}: 'entries' is not a list")
    return Manifest(tuple(_entry(e, where) for e in raw))


def render_manifest(manifest: Manifest) -> str:
    entries = sorted(manifest.entries, key=Entry.key)
    body = {"version": MANIFEST_VERSION, "entries": [e.as_json() for e in entries]}
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def with_entries(manifest: Manifest, new: Iterable[Entry]) -> Manifest:
    """The manifest with ``new`` added, replacing entries of the same kind and name."""
    fresh = {e.key(): e for e in new}
    kept = [e for e in manifest.entries if e.key() not in fresh]
    return replace(manifest, entries=tuple(kept) + tuple(fresh.values()))


def verify_units(manifest: Manifest, read: Callable[[str], bytes | OSError]) -> list[Verdict]:
    """Each recorded unit file against its recorded hash (``read`` gives the file's bytes)."""
    verdicts = []
    for e in manifest.of_kind("unit"):
        got = read(e.location)
        check = f"unit:{e.name}"
        if isinstance(got, OSError):
            verdicts.append(
                Verdict(
                    check,
                    False,
                    f"{e.location}: cannot read ({got.strerror or got}); re-run `airlock install`",
                )
            )
        elif sha256_bytes(got) != e.digest:
            verdicts.append(
                Verdict(
                    check,
                    False,
                    f"{e.location} changed since `airlock install` recorded it (sha256 "
                    f"{sha256_bytes(got)[:12]}, recorded {e.digest[:12]}); review the change "
                    "(`systemctl cat`), then re-run `airlock install` to restore or re-record it",
                )
            )
        else:
            verdicts.append(Verdict(check, True, f"{e.location} matches the manifest"))
    return verdicts


def verify_images(manifest: Manifest, inspect: Callable[[str], str | None]) -> list[Verdict]:
    """Each recorded image: ``inspect(tag)`` is the id the tag names now, None if none."""
    verdicts = []
    for e in manifest.of_kind("image"):
        got = inspect(e.location)
        check = f"image:{e.name}"
        if got is None:
            verdicts.append(
                Verdict(
                    check,
                    False,
                    f"{e.location} is not in Docker; rebuild it (`airlock image`), which "
                    "records its new id",
                )
            )
        elif got != e.digest:
            verdicts.append(
                Verdict(
                    check,
                    False,
                    f"{e.location} is {got[:19]}, not the recorded {e.digest[:19]}: the tag "
                    "was pointed at other content; remove it (`docker image rm`) and rebuild "
                    "it with `airlock image`",
                )
            )
        else:
            verdicts.append(Verdict(check, True, f"{e.location} is the recorded {got[:19]}"))
    return verdicts


def _within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def gateway_writable_dirs(config: Config) -> list[Path]:
    """Where the gateway (host process or container) may write."""
    gw = config.gateway
    dirs = [gw.state_dir, gw.control_socket.parent]
    if gw.audit_log is not None:
        dirs.append(gw.audit_log.parent)
    return [Path(os.path.abspath(d)) for d in dirs]


def manifest_path(config: Config) -> Path:
    """``gateway.integrity_manifest``, refused if it is where the gateway can write."""
    path = Path(os.path.abspath(config.gateway.integrity_manifest))
    for d in gateway_writable_dirs(config):
        if _within(path, d) or _within(d, path.parent):
            raise IntegrityError(
                f"gateway.integrity_manifest {path} is inside (or contains) {d}, which the "
                "gateway can write; put it in a directory of root's own, e.g. "
                "/var/lib/airlock-host/integrity.json"
            )
    return path


# --- the shells: the file -----------------------------------------------------------------


def load_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_manifest(text, str(path))


def _checked_dir(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise IntegrityError(
            f"{directory} must be a directory owned by uid {os.geteuid()} that no one else "
            "can write (chown root: and chmod go-w it)"
        )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(directory / ".integrity.lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _update(path: Path, new: Sequence[Entry]) -> None:
    directory = path.parent
    try:
        _checked_dir(directory)
        with _locked(directory):
            current = load_manifest(path) or Manifest()
            text = render_manifest(with_entries(current, new))
            fd, tmp = tempfile.mkstemp(prefix=".integrity-", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot write the manifest ({exc})") from None


def record_image(config: Config, kind: str, tag: str, image_id: str, *, built: bool = True) -> None:
    """Record that ``tag`` (the ``kind`` image: "gateway", "sandbox", ...) is ``image_id``.

    ``built``: this process has just built it. Otherwise (the tag was there already) an
    image recorded under the same tag must still be the same one: a tag that points at
    another image now was replaced, and is not recorded as trusted again (IntegrityError).
    """
    if not kind or not tag or not image_id:
        raise IntegrityError("record_image: kind, tag and image_id must all be given")
    path = manifest_path(config)
    if not built:
        known = load_manifest(path)
        for e in known.of_kind("image") if known is not None else []:
            if e.name == kind and e.location == tag:
                if e.digest != image_id:
                    raise IntegrityError(
                        f"{tag} is image {image_id} now, but {e.digest} was recorded when it "
                        f"was built: it was replaced; remove it (docker rmi {tag}) and build "
                        "it again"
                    )
                return  # recorded already, unchanged
    _update(path, [Entry("image", kind, image_id, tag)])


def record_units(manifest: Path, files: Iterable[tuple[str, bytes]]) -> None:
    """Record the unit files ``(installed path, content)`` `airlock install` wrote.

    ``manifest`` is :func:`manifest_path` (prefixed with `install --root` when given); the
    paths recorded are where the units are on the running system, without the prefix.
    """
    entries = [Entry("unit", Path(p).name, sha256_bytes(data), p) for p, data in files]
    _update(manifest, entries)
