"""Repository grants: which repositories a session may read or write, and which refs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from airlock.core.gitpath import RequestRefused, parse_git_request
from airlock.core.hostnames import InvalidHostname, normalize_hostname
from airlock.core.refrules import InvalidRefRule, RefRule, parse_rules


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
    rules: tuple[RefRule, ...] = ()  # write grants: the refs a push may change

    @property
    def key(self) -> str:
        # GitHub treats owner and repository names case-insensitively.
        return f"{self.host}/{self.owner.lower()}/{self.repo.lower()}"

    def __str__(self) -> str:
        text = f"{self.host}/{self.owner}/{self.repo}:{self.access.value}"
        if self.rules:
            text += "=" + ",".join(str(r) for r in self.rules)
        return text

    @staticmethod
    def from_stored(text: str) -> Grant:
        """A grant as :meth:`__str__` wrote it (already validated when it was created)."""
        head, eq, patterns = text.partition("=")
        target, _, access = head.rpartition(":")
        host, owner, repo = target.split("/")
        rules = parse_rules(patterns) if eq else ()
        return Grant(host=host, owner=owner, repo=repo, access=Access(access), rules=rules)


def parse_grant(
    text: str, upstream_hosts: frozenset[str], default_rules: tuple[RefRule, ...] = ()
) -> Grant:
    """Parse ``HOST/OWNER/REPO:read``, ``...:write`` or ``...:write=PATTERNS``, checking
    names as the git proxy will; a write grant without patterns gets ``default_rules``
    (the config's ``git.push_branches``), so every stored write grant names its rules."""
    head, eq, patterns = text.partition("=")
    target, sep, access_text = head.rpartition(":")
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
    rules: tuple[RefRule, ...] = ()
    if access is Access.WRITE:
        try:
            rules = parse_rules(patterns) if eq else default_rules
        except InvalidRefRule as exc:
            raise InvalidGrant(f"grant {text!r}: {exc}") from None
    elif eq:
        raise InvalidGrant(f"grant {text!r}: ref patterns belong to write grants only")
    return Grant(host=host, owner=req.owner, repo=req.repo, access=access, rules=rules)


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


def rules_for(grants: tuple[Grant, ...], host: str, owner: str, repo: str) -> tuple[RefRule, ...]:
    """Every ref rule the write grants give to one repository, in grant order."""
    key = f"{host}/{owner.lower()}/{repo.lower()}"
    out: list[RefRule] = []
    for g in grants:
        if g.key == key and g.access is Access.WRITE:
            out.extend(r for r in g.rules if r not in out)
    return tuple(out)
