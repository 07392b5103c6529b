"""`airlock rotate token`: check a new upstream token file, then swap it into token_file.

The running gateway re-reads the token file when it changes (gateway/credentials.py): the
swap is an atomic rename in the token file's own directory, so the gateway reads the whole
old token or the whole new one. Before that the new file is checked like the gateway checks
its own (a regular file, mode 0600 or stricter, owned by the current token file's owner or
root, one token without spaces), and, when a repository is named, the upstream is asked once
with it (an authenticated GET of that repository's ``info/refs``: a read, no side effects).

One function, :func:`swap_token_file`, does the swap; the container mode (the host keeps
the gateway container's copies of credential files) extends it there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import ssl
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from airlock.config import Config, UpstreamConfig
from airlock.gateway.credentials import CredentialError, parse_token

#: systemd's LoadCredential= places credentials here (read-only, per unit).
SYSTEMD_CREDENTIALS = Path("/run/credentials")
MAX_TOKEN_FILE = 64 * 1024


class TokenSwapError(Exception):
    """The swap was refused or failed; nothing was changed. The message says what to do."""


@dataclass(frozen=True)
class Swapped:
    upstream: str
    token_file: Path
    checked_upstream: bool


def choose_upstream(config: Config, host: str | None) -> UpstreamConfig:
    with_files = [u for u in config.upstream if u.token_file is not None]
    if host is not None:
        for u in config.upstream:
            if u.host == host:
                if u.token_file is None:
                    raise TokenSwapError(
                        f"upstream {host} uses a GitHub App, not a token file; nothing to rotate "
                        "here (rotate the App's private key in its key_file)"
                    )
                return u
        raise TokenSwapError(
            f"no upstream {host} in the config (have: {', '.join(sorted(config.upstream_hosts))})"
        )
    if len(with_files) == 1:
        return with_files[0]
    if not with_files:
        raise TokenSwapError("no upstream in the config has a token_file")
    names = ", ".join(u.host for u in with_files)
    raise TokenSwapError(f"several upstreams have a token file ({names}); choose one: --upstream")


def new_token_problem(st: os.stat_result, owner: int) -> str | None:
    """Why a new token file with this stat may not replace one owned by ``owner``. Pure."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (owner, 0):
        return (
            f"owned by uid {st.st_uid}; the token file's owner is uid {owner} (the gateway "
            f"must read it): chown {owner}"
        )
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others read it: chmod 600"
    if st.st_size == 0:
        return "empty"
    if st.st_size > MAX_TOKEN_FILE:
        return f"{st.st_size} bytes, too large for a token"
    return None


def read_new_token(new_file: Path, owner: int) -> bytes:
    """The new file's bytes after every local check (TokenSwapError naming the problem)."""
    try:
        fd = os.open(new_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenSwapError(f"new token file {new_file}: {exc.strerror}") from None
    try:
        problem = new_token_problem(os.fstat(fd), owner)
        if problem is not None:
            raise TokenSwapError(f"new token file {new_file}: {problem}")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    try:
        parse_token(data)
    except ValueError as exc:
        raise TokenSwapError(
            f"new token file {new_file}: {exc} (want one token, no spaces inside)"
        ) from None
    return data


def check_upstream(upstream: UpstreamConfig, token: str, repo: str, timeout: float = 10.0) -> None:
    """One authenticated read at the upstream (git's ``info/refs`` of ``repo``, OWNER/NAME):
    refused unless it answers 200. It goes to the upstream's configured url only."""
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise TokenSwapError(f"--check-repo {repo!r}: want OWNER/REPO")
    url = f"{upstream.url.rstrip('/')}/{owner}/{name.removesuffix('.git')}.git/info/refs"
    url += "?service=git-upload-pack"
    ctx = ssl.create_default_context(cafile=str(upstream.ca_file) if upstream.ca_file else None)
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {basic}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise TokenSwapError(
            f"cannot check the new token at {upstream.host}: {getattr(exc, 'reason', exc)}; "
            "nothing was changed (leave out --check-repo to swap without the check)"
        ) from None
    if status != 200:
        raise TokenSwapError(
            f"{upstream.host} refused the new token for {repo} (HTTP {status}); nothing was changed"
        )


def swap_token_file(
    config: Config, host: str | None, new_file: Path, *, check_repo: str | None = None
) -> Swapped:
    """Check ``new_file`` and atomically put its content in place of the upstream's
    token_file. Nothing is changed unless every check passed."""
    upstream = choose_upstream(config, host)
    assert upstream.token_file is not None
    target = upstream.token_file
    resolved = Path(os.path.realpath(target))
    if SYSTEMD_CREDENTIALS in resolved.parents or SYSTEMD_CREDENTIALS in target.parents:
        raise TokenSwapError(
            f"token_file {target} is a systemd credential (LoadCredential): it is read-only "
            "and the unit's own copy; replace the LoadCredential= source file with the new "
            "token and restart the unit (systemctl restart airlock-gateway); sessions "
            "survive the restart"
        )
    if target.is_symlink():
        raise TokenSwapError(
            f"token_file {target} is a symlink to {resolved}; replace the file it points to "
            "(or point token_file at a regular file) instead"
        )
    try:
        current = os.stat(target)
    except OSError as exc:
        raise TokenSwapError(f"token_file {target}: {exc.strerror}") from None
    data = read_new_token(new_file, current.st_uid)
    if check_repo is not None:
        check_upstream(upstream, parse_token(data), check_repo)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, current.st_uid, current.st_gid)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise TokenSwapError(
            f"cannot write next to token_file {target}: {exc.strerror}; nothing was changed"
        ) from None
    if config.gateway.mode == "container":
        # The gateway's container reads its own copy (host/gateway_container.py, mounted as a
        # directory): copied again, it is what the gateway uses for its next request.
        from airlock.host.gateway_container import GatewayContainerError, refresh_secrets

        try:
            refresh_secrets(config)
        except (GatewayContainerError, OSError) as exc:
            raise TokenSwapError(
                f"token_file {target} now holds the new token, but the gateway container's "
                f"copy could not be updated ({exc}); restart the gateway to use it"
            ) from None
    return Swapped(upstream.host, target, check_repo is not None)


__all__ = ["CredentialError", "Swapped", "TokenSwapError", "swap_token_file"]
