"""Upstream credentials: read from files only, re-read when the file changes.

An upstream has one :class:`UpstreamCredential`: a token file (:class:`FileCredential`, the
same token for every session) or a GitHub App (gateway/github_app.py, a token per session,
owner and access level). The git proxy asks it for the token of each request.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from airlock.core.redact import GITHUB_TOKEN_RE
from airlock.core.session import Session


class CredentialError(Exception):
    pass


# Variables through which tools hand out GitHub credentials; their presence means a token
# may already be in the environment of every child process, which airlock refuses.
_CREDENTIAL_VAR = re.compile(
    r"^(GH|GITHUB|GH_ENTERPRISE|GITHUB_ENTERPRISE|GHE)(_[A-Z0-9]+)*_(TOKEN|PAT|PASSWORD|SECRET|KEY)$"
    r"|^(GH|GITHUB)_(TOKEN|PAT)(_[A-Z0-9]+)*$"
)


def credential_variables(env: Mapping[str, str]) -> list[str]:
    """Names of environment variables that carry (or look like they carry) a GitHub token."""
    found = []
    for name, value in env.items():
        if _CREDENTIAL_VAR.match(name.upper()) or GITHUB_TOKEN_RE.search(value):
            found.append(name)
    return sorted(found)


def check_token_file(path: Path, what: str = "token file") -> None:
    try:
        st = os.stat(path)
    except PermissionError:
        raise CredentialError(_unreadable(what, path)) from None
    except OSError as exc:
        raise CredentialError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"{what} {path}: not a regular file")
    if st.st_mode & 0o077:
        raise CredentialError(
            f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
            f"read it; run: chmod 600 {path}"
        )


def _unreadable(what: str, path: Path) -> str:
    # Typically a gateway running as gateway.user with a root-owned secret.
    return (
        f"{what} {path}: not readable by the gateway (uid {os.geteuid()}); "
        f"make the gateway's user its owner: chown <gateway user> {path}; chmod 600 {path}"
    )


class UpstreamCredential(Protocol):
    async def token(self, session: Session, owner: str, repo: str) -> str:
        """The token for one request of ``session`` on ``owner/repo``; CredentialError if none."""
        ...

    def secrets(self) -> list[str]:
        """Every token currently held, for the log redactor."""
        ...

    async def sweep(self, live: set[str]) -> None:
        """Give up what is held for sessions not in ``live`` (ended sessions)."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Cached:
    key: tuple[int, int, int, int]
    token: str


class TokenFile:
    """A token read from a file; a change (rotation) is used by the next request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: _Cached | None = None

    def get(self) -> str:
        st = os.stat(self.path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._cached is None or self._cached.key != key:
            check_token_file(self.path)
            try:
                token = self.path.read_text(encoding="utf-8").strip()
            except PermissionError:
                raise CredentialError(_unreadable("token file", self.path)) from None
            if not token or any(c.isspace() for c in token):
                raise CredentialError(f"token file {self.path}: empty or malformed token")
            self._cached = _Cached(key, token)
        return self._cached.token

    @property
    def current(self) -> str | None:
        return self._cached.token if self._cached else None


class FileCredential:
    """The token file's token, for every session alike."""

    def __init__(self, path: Path) -> None:
        self.file = TokenFile(path)

    def check(self) -> None:
        try:
            self.file.get()
        except PermissionError:
            raise CredentialError(_unreadable("token file", self.file.path)) from None
        except OSError as exc:
            raise CredentialError(f"token file {self.file.path}: {exc.strerror}") from None

    async def token(self, session: Session, owner: str, repo: str) -> str:
        return self.file.get()

    def secrets(self) -> list[str]:
        return [self.file.current] if self.file.current else []

    async def sweep(self, live: set[str]) -> None:
        return None

    async def close(self) -> None:
        return None
