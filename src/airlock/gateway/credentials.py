"""Upstream credentials: read from files only, re-read when the file changes.

An upstream has one :class:`UpstreamCredential`: a token file (:class:`FileCredential`, the
same token for every session) or a GitHub App (gateway/github_app.py, a token per session,
owner and access level). The git proxy asks it for the token of each request.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from airlock.core.redact import GITHUB_TOKEN_RE
from airlock.core.session import Session


class CredentialError(Exception):
    pass


T = TypeVar("T")


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


class SecretFile(Generic[T]):
    """A secret kept in a file: a regular file no one else may read, never an environment
    variable. It is parsed once per version of the file, so a rotated file (replaced or
    rewritten) is used by the next caller without a restart.

    A symlink is followed (secrets are often links into a mounted secret store); what is
    checked is the file it resolves to, which messages name: its owner must be the
    gateway's user or root, its mode 0600 or stricter. The checks and the read are made on
    one open file, so the file checked is the file read."""

    def __init__(
        self,
        path: Path,
        what: str,
        parse: Callable[[bytes], T],
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.what = what  # "token file", "App private key": how messages name it
        self._parse = parse  # raises ValueError with what is wrong with the content
        self._cached: tuple[tuple[int, int, int, int, int], T] | None = None
        self._on_reload = on_reload  # called when a new version replaced a loaded one

    def _name(self) -> str:
        """How messages name the file: the path, and where it leads if it is a symlink."""
        resolved = os.path.realpath(self.path)
        if resolved == os.path.abspath(self.path):
            return str(self.path)
        return f"{self.path} (a symlink to {resolved})"

    def _target(self) -> str:
        """The file a command in a message must act on: the symlink's resolved target."""
        return os.path.realpath(self.path)

    def _fail(self, exc: OSError) -> CredentialError:
        if isinstance(exc, PermissionError):
            return CredentialError(_unreadable(self.what, Path(self._target())))
        return CredentialError(f"{self.what} {self._name()}: {exc.strerror}")

    def get(self) -> T:
        if self._cached is not None:
            # The version loaded is still the file's: one stat, not open + fstat + close (it
            # is asked on every request). Any change (content, mode, owner, a replacement)
            # moves ctime or the inode, and the file is opened, checked and read again.
            try:
                st = os.stat(self.path)
            except OSError:
                pass  # the open below says what is wrong
            else:
                version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if version == self._cached[0]:
                    return self._cached[1]
        try:
            # O_NONBLOCK: a FIFO put in the secret's place must not hang the gateway.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise self._fail(exc) from None
        try:
            st = os.fstat(fd)
            version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._cached is None or self._cached[0] != version:
                self._check(st)
                try:
                    data = _read_all(fd)
                except OSError as exc:
                    raise self._fail(exc) from None
                try:
                    reloaded = self._cached is not None
                    self._cached = (version, self._parse(data))
                except ValueError as exc:
                    raise CredentialError(f"{self.what} {self._name()}: {exc}") from None
                if reloaded and self._on_reload is not None:
                    self._on_reload()
        finally:
            os.close(fd)
        return self._cached[1]

    def _check(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"{self.what} {self._name()}: not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise CredentialError(
                f"{self.what} {self._name()}: owned by uid {st.st_uid}, neither the gateway's "
                f"user (uid {os.geteuid()}) nor root; run: chown <gateway user> {self._target()}"
            )
        if st.st_mode & 0o077:
            raise CredentialError(
                f"{self.what} {self._name()}: mode {stat.S_IMODE(st.st_mode):04o} lets group "
                f"or others read it; run: chmod 600 {self._target()}"
            )

    @property
    def current(self) -> T | None:
        return self._cached[1] if self._cached else None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_token(data: bytes) -> str:
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or any(c.isspace() for c in token):
        raise ValueError("empty or malformed token")
    return token


class FileCredential:
    """The token file's token, for every session alike. ``log`` gets a
    ``token_file_reloaded`` event when a replaced file is first used (a rotation)."""

    def __init__(
        self, path: Path, log: Callable[..., None] | None = None, host: str | None = None
    ) -> None:
        def reloaded() -> None:
            if log is not None:
                log("token_file_reloaded", upstream=host, path=str(path))

        self.file = SecretFile(path, "token file", parse_token, reloaded)

    def check(self) -> None:
        self.file.get()

    async def token(self, session: Session, owner: str, repo: str) -> str:
        return self.file.get()

    def secrets(self) -> list[str]:
        return [self.file.current] if self.file.current else []

    async def sweep(self, live: set[str]) -> None:
        return None

    async def close(self) -> None:
        return None
