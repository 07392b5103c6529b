"""The gateway's id: a random name for one gateway state directory, kept across restarts.

The host side labels every sandbox it starts with the id of the gateway that holds its
session (it reads it from ``GET /v1/health``), so it can tell its own sandboxes from those of
another gateway on the same machine, and sandboxes left by an earlier state directory from
live ones.

The id is 16 lowercase hex characters in ``STATE_DIR/gateway-id`` (mode 0644, one line).
It is created at most once: the content is written to a temporary file that is then
hard-linked into place, and ``link`` fails when the name exists, so two gateways starting
at once on the same state directory agree on one id and nobody ever reads a half-written
file. A file with anything else in it is a startup error, never replaced: a changed id
would orphan every sandbox labelled with the old one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

__all__ = ["GATEWAY_ID_FILE", "GatewayIdError", "load_or_create_gateway_id", "read_gateway_id"]

GATEWAY_ID_FILE = "gateway-id"
_ID = re.compile(r"[0-9a-f]{16}")
_MAX_READ = 256


class GatewayIdError(Exception):
    """The id file exists but cannot be used; the message says which file and why."""


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a symlink is refused, not followed
        try:
            raw = os.read(fd, _MAX_READ)
        finally:
            os.close(fd)
    except OSError as exc:
        raise GatewayIdError(f"{path}: cannot read the gateway id: {exc.strerror or exc}") from None
    text = raw.decode("ascii", "replace")
    value = text[:-1] if text.endswith("\n") else text
    if not _ID.fullmatch(value):
        raise GatewayIdError(
            f"{path}: not a gateway id (want 16 lowercase hex characters on one line); "
            "restore the file or, if no sandbox of this gateway exists any more, delete it"
        )
    return value


def read_gateway_id(state_dir: Path) -> str | None:
    """The id in ``state_dir/gateway-id``, or None when there is none yet (never creates it):
    for the host side when the gateway itself does not answer."""
    path = state_dir / GATEWAY_ID_FILE
    return _read(path) if os.path.lexists(path) else None


def load_or_create_gateway_id(state_dir: Path) -> str:
    """The id kept in ``state_dir/gateway-id``, created (atomically, once) when missing."""
    path = state_dir / GATEWAY_ID_FILE
    if os.path.lexists(path):
        return _read(path)
    value = secrets.token_hex(8)
    tmp = state_dir / f".{GATEWAY_ID_FILE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            os.write(fd, (value + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another start created it first: use theirs
        except FileExistsError:
            return _read(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return value
