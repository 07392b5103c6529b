"""Repository grants: which repositories a session may read or write."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from airlock.core.gitpath import RequestRefused, parse_git_request
from airlock.core.hostnames import InvalidHostname, normalize_hostname


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


class InvalidGrant(ValueError):
    pass


@dataclass(frozen=True)
class Grant:
    host: str
    owner: str
    repo: str
    access: Access

    @property
    def key(self) -> str:
        # GitHub treats owner and repository names case-insensitively.
        return f"{self.host}/{self.owner.lower()}/{self.repo.lower()}"

    def __str__(self) -> str:
        return f"{self.host}/{self.owner}/{self.repo}:{self.access.value}"


def parse_grant(text: str, upstream_hosts: frozenset[str]) -> Grant:
    """Parse ``HOST/OWNER/REPO:read|write``, checking names as the git proxy will."""
    target, sep, access_text = text.rpartition(":")
    if not sep:
        raise InvalidGrant(f"grant {text!r}: expected HOST/OWNER/REPO:read or :write")
    try:
        access = Access(access_text)
    except ValueError:
        raise InvalidGrant(f"grant {text!r}: access must be 'read' or 'write'") from None
    parts = target.split("/")
    if len(parts) != 3:
        raise InvalidGrant(f"grant {text!r}: expected HOST/OWNER/REPO")
    try:
        host = normalize_hostname(parts[0])
    except InvalidHostname as exc:
        raise InvalidGrant(f"grant {text!r}: {exc}") from None
    if host not in upstream_hosts:
        known = ", ".join(sorted(upstream_hosts)) or "none"
        raise InvalidGrant(f"grant {text!r}: host {host} is not a configured upstream ({known})")
    # Reuse the request validator so a grant can only name what a request can reach.
    path = f"/git/{host}/{parts[1]}/{parts[2]}/info/refs?service=git-upload-pack"
    try:
        req = parse_git_request("GET", path, None, upstream_hosts)
    except RequestRefused as exc:
        raise InvalidGrant(f"grant {text!r}: invalid owner or repository ({exc.reason})") from None
    return Grant(host=host, owner=req.owner, repo=req.repo, access=access)


def access_for(grants: tuple[Grant, ...], host: str, owner: str, repo: str) -> Access | None:
    """The strongest access the grants give to one repository, or None."""
    key = f"{host}/{owner.lower()}/{repo.lower()}"
    best: Access | None = None
    for g in grants:
        if g.key == key:
            if g.access is Access.WRITE:
                return Access.WRITE
            best = Access.READ
    return best
