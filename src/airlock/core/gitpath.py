"""Validation of git smart-HTTP requests arriving at the gateway.

Accepted shapes (and nothing else)::

    GET  /git/<host>/<owner>/<repo>[.git]/info/refs?service=git-upload-pack
    GET  /git/<host>/<owner>/<repo>[.git]/info/refs?service=git-receive-pack
    POST /git/<host>/<owner>/<repo>[.git]/git-upload-pack
    POST /git/<host>/<owner>/<repo>[.git]/git-receive-pack

The parser works on the raw request-target and never decodes it: anything a
downstream component could interpret differently from us (percent-escapes,
dot segments, backslashes, empty segments...) is refused instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Endpoint",
    "GitRequest",
    "Reason",
    "RequestRefused",
    "Service",
    "host_form_target",
    "parse_git_request",
]

# The longest valid target is ~450 characters (253-char host, 39-char owner,
# 104-char repo segment); anything far beyond that is not worth scanning.
MAX_TARGET_LENGTH = 1024
OWNER_MAX_LENGTH = 39
REPO_MAX_LENGTH = 100

_OWNER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_REPO_CHARS = _OWNER_CHARS | frozenset("._")
# Upstream hosts are configured already normalized (see hostnames.py), so a
# request host must be spelled exactly that way: lowercase LDH and dots only.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
# '#' never reaches a server from a conforming client; '\\' is a path separator
# to some normalizers. Everything outside printable ASCII (controls, space,
# DEL, non-ASCII) is also refused, see _check_chars.
_FORBIDDEN_CHARS = frozenset("\\#")
# Printable ASCII but the forbidden ones: a target of only these passes _check_chars at C
# speed; any other is walked character by character to name the first bad one.
_TARGET_CHARS = re.compile(r"[\x21\x22\x24-\x5b\x5d-\x7e]*")


class Service(StrEnum):
    """git smart-HTTP service."""

    UPLOAD_PACK = "git-upload-pack"
    RECEIVE_PACK = "git-receive-pack"


class Endpoint(StrEnum):
    """Which of the two smart-HTTP endpoints a request targets."""

    INFO_REFS = "info/refs"
    RPC = "rpc"


_SERVICE_NAMES = frozenset(s.value for s in Service)
_RPC_CONTENT_TYPES = {
    Service.UPLOAD_PACK: "application/x-git-upload-pack-request",
    Service.RECEIVE_PACK: "application/x-git-receive-pack-request",
}


class Reason(StrEnum):
    """Machine-readable reason codes carried by :class:`RequestRefused`."""

    BAD_METHOD = "bad_method"
    BAD_PATH = "bad_path"
    BAD_CHAR = "bad_char"
    PERCENT_ENCODING = "percent_encoding"
    DOT_SEGMENT = "dot_segment"
    EMPTY_SEGMENT = "empty_segment"
    BAD_QUERY = "bad_query"
    BAD_CONTENT_TYPE = "bad_content_type"
    BAD_HOST = "bad_host"
    UNKNOWN_HOST = "unknown_host"
    BAD_OWNER = "bad_owner"
    BAD_REPO = "bad_repo"


class RequestRefused(Exception):
    """The request is not an acceptable git smart-HTTP request.

    ``reason`` is a short machine-readable code (a :class:`Reason`, which is a
    ``str``); the message is human-readable detail.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: str = reason
        self.detail = detail


@dataclass(frozen=True)
class GitRequest:
    """A validated git smart-HTTP request.

    ``owner`` and ``repo`` keep the case the client used; GitHub treats them
    case-insensitively, so compare grants against :attr:`repo_key`.
    """

    host: str
    owner: str
    repo: str  # without any ".git" suffix
    service: Service
    endpoint: Endpoint

    @property
    def repo_path(self) -> str:
        """``owner/repo`` as sent by the client."""
        return f"{self.owner}/{self.repo}"

    @property
    def repo_key(self) -> str:
        """Lowercased ``owner/repo``, for case-insensitive grant lookups."""
        return self.repo_path.lower()

    @property
    def is_write(self) -> bool:
        """True for pushes (git-receive-pack), on either endpoint."""
        return self.service is Service.RECEIVE_PACK

    def upstream_path(self) -> str:
        """The path to request upstream, always with a ``.git`` suffix."""
        base = f"/{self.owner}/{self.repo}.git"
        if self.endpoint is Endpoint.INFO_REFS:
            return f"{base}/info/refs"
        return f"{base}/{self.service}"

    def upstream_query(self) -> str:
        """The query string (without '?') to send upstream; empty for RPC."""
        if self.endpoint is Endpoint.INFO_REFS:
            return f"service={self.service}"
        return ""


def _check_chars(raw_target: str) -> None:
    if "%" in raw_target:
        # Never decode: a decoded "%2e%2e" or "%2f" would change the path shape.
        raise RequestRefused(Reason.PERCENT_ENCODING, "percent-encoded characters are not accepted")
    if _TARGET_CHARS.fullmatch(raw_target):
        return
    for ch in raw_target:
        if not "\x21" <= ch <= "\x7e" or ch in _FORBIDDEN_CHARS:
            raise RequestRefused(Reason.BAD_CHAR, f"forbidden character {ch!r} in request target")


def _check_host(host: str, upstream_hosts: frozenset[str]) -> None:
    if not _HOST_CHARS.issuperset(host):
        # Catches uppercase, ports ("github.com:443") and userinfo ("x@github.com").
        raise RequestRefused(Reason.BAD_HOST, f"host {host!r} is not a lowercase host name")
    if host not in upstream_hosts:
        raise RequestRefused(Reason.UNKNOWN_HOST, f"host {host!r} is not an upstream host")


def _check_owner(owner: str) -> None:
    """GitHub user/org name rules."""
    if not 1 <= len(owner) <= OWNER_MAX_LENGTH:
        raise RequestRefused(Reason.BAD_OWNER, f"owner must be 1-{OWNER_MAX_LENGTH} characters")
    if not _OWNER_CHARS.issuperset(owner):
        raise RequestRefused(Reason.BAD_OWNER, "owner may only contain letters, digits and '-'")
    if owner.startswith("-") or owner.endswith("-") or "--" in owner:
        raise RequestRefused(Reason.BAD_OWNER, "owner must not start/end with '-' or contain '--'")


def _strip_repo(segment: str) -> str:
    """Validate a repository segment and return the name without ``.git``."""
    repo = segment.removesuffix(".git")
    if not 1 <= len(repo) <= REPO_MAX_LENGTH:
        raise RequestRefused(
            Reason.BAD_REPO, f"repository name must be 1-{REPO_MAX_LENGTH} characters"
        )
    if not _REPO_CHARS.issuperset(repo):
        raise RequestRefused(Reason.BAD_REPO, "repository name may only contain [A-Za-z0-9._-]")
    # Leading '.' also covers "." and ".."; a second ".git" (any case) would make
    # "x.git" and "x.git.git" ambiguous about which repository is meant.
    if repo.startswith("."):
        raise RequestRefused(Reason.BAD_REPO, "repository name must not start with '.'")
    if repo.lower().endswith(".git"):
        raise RequestRefused(Reason.BAD_REPO, "repository name must not end with '.git'")
    # Keeps the invariant "no '..' anywhere in an upstream path" (a trailing '.'
    # would give "x..git"), so naive substring checks downstream stay correct.
    if ".." in repo or repo.endswith("."):
        raise RequestRefused(
            Reason.BAD_REPO, "repository name must not contain '..' or end with '.'"
        )
    return repo


def _parse_info_refs_query(query: str | None) -> Service:
    if query is None:
        raise RequestRefused(Reason.BAD_QUERY, "info/refs requires ?service=")
    pairs = query.split("&")
    if len(pairs) != 1:
        raise RequestRefused(Reason.BAD_QUERY, "info/refs takes exactly one query parameter")
    key, eq, value = pairs[0].partition("=")
    if key != "service" or not eq:
        raise RequestRefused(Reason.BAD_QUERY, "info/refs takes only the 'service' parameter")
    try:
        return Service(value)
    except ValueError:
        raise RequestRefused(Reason.BAD_QUERY, f"unknown service {value!r}") from None


def _check_content_type(content_type: str | None, service: Service) -> None:
    expected = _RPC_CONTENT_TYPES[service]
    if content_type is None:
        raise RequestRefused(Reason.BAD_CONTENT_TYPE, f"missing Content-Type, expected {expected}")
    value = content_type.strip(" \t")
    # isascii() first: str.lower() maps e.g. KELVIN SIGN to 'k'.
    if not value.isascii() or value.lower() != expected:
        raise RequestRefused(Reason.BAD_CONTENT_TYPE, f"Content-Type must be exactly {expected}")


def parse_git_request(
    method: str,
    raw_target: str,
    content_type: str | None,
    upstream_hosts: frozenset[str],
) -> GitRequest:
    """Validate a smart-HTTP request and return what it asks for.

    Args:
        method: the HTTP method, case-sensitive ("GET"/"POST").
        raw_target: the request-target exactly as received, never decoded.
        content_type: the Content-Type header value, or None if absent. Only
            checked for POST.
        upstream_hosts: allowed hosts, already normalized (lowercase ASCII).

    Raises:
        RequestRefused: with a ``reason`` code, for anything but the four
            accepted request shapes.
    """
    if method not in ("GET", "POST"):
        raise RequestRefused(Reason.BAD_METHOD, f"method {method[:16]!r} not allowed")
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise RequestRefused(Reason.BAD_PATH, "request target too long")
    _check_chars(raw_target)

    path, qmark, query_str = raw_target.partition("?")
    query = query_str if qmark else None
    if not path.startswith("/"):
        # Absolute-form ("https://...") and asterisk-form targets.
        raise RequestRefused(Reason.BAD_PATH, "request target must be an origin-form path")

    segments = path[1:].split("/")
    for seg in segments:
        if seg == "":
            raise RequestRefused(Reason.EMPTY_SEGMENT, "empty path segment")
        if seg in (".", ".."):
            raise RequestRefused(Reason.DOT_SEGMENT, "dot segment in path")

    # Positions are fixed by the segment count, so an owner or repository
    # called "info" or "refs" cannot be confused with the endpoint.
    if len(segments) == 6 and segments[0] == "git" and segments[4:] == ["info", "refs"]:
        endpoint = Endpoint.INFO_REFS
    elif len(segments) == 5 and segments[0] == "git" and segments[4] in _SERVICE_NAMES:
        endpoint = Endpoint.RPC
    else:
        raise RequestRefused(Reason.BAD_PATH, "not a git smart-HTTP path")
    host, owner, repo_segment = segments[1], segments[2], segments[3]

    _check_host(host, upstream_hosts)
    _check_owner(owner)
    repo = _strip_repo(repo_segment)

    if endpoint is Endpoint.INFO_REFS:
        if method != "GET":
            raise RequestRefused(Reason.BAD_METHOD, "info/refs requires GET")
        service = _parse_info_refs_query(query)
    else:
        if method != "POST":
            raise RequestRefused(Reason.BAD_METHOD, f"{segments[4]} requires POST")
        if query is not None:
            raise RequestRefused(Reason.BAD_QUERY, "RPC endpoints take no query string")
        service = Service(segments[4])
        _check_content_type(content_type, service)

    return GitRequest(host=host, owner=owner, repo=repo, service=service, endpoint=endpoint)


def host_form_target(
    raw_target: str, host_header: str | None, upstream_hosts: frozenset[str]
) -> str:
    """The ``/git/<host>/...`` target for a request in host form.

    Sandboxes reach the git proxy as ``https://<upstream host>:<port>/<owner>/<repo>`` (so a
    clone's remote names github.com, which tools such as ``gh`` need to find the repository):
    the upstream is the ``Host`` header's name, which must be a configured upstream host
    spelled exactly (lowercase, no trailing dot). A target already in ``/git/`` form, or a
    Host that names no upstream, is returned unchanged for :func:`parse_git_request` to judge.
    """
    if raw_target.startswith("/git/") or not raw_target.startswith("/") or host_header is None:
        return raw_target
    name, sep, port = host_header.rpartition(":")
    if not sep or not port.isdigit():
        name = host_header
    if name in upstream_hosts:
        return f"/git/{name}{raw_target}"
    return raw_target
