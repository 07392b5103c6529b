"""The decision for one git request on a usable session: which repository, whether the
session may do this there, and with which push rules. Pure: the proxy executes and logs it.

The session's usability (revoked, expired, bound elsewhere, capped) is decided before this,
by :func:`airlock.core.session.check_usable`; a push's ref commands afterwards, by
:func:`airlock.core.pushpolicy.decide_push`.
"""

from __future__ import annotations

from dataclasses import dataclass

from airlock.core.gitpath import GitRequest, RequestRefused, parse_git_request
from airlock.core.grants import Access, rules_for
from airlock.core.refrules import RefRule
from airlock.core.session import Session

__all__ = ["Forward", "Refuse", "decide_git_request"]


@dataclass(frozen=True)
class Forward:
    """Send the request upstream (after its body, if any, has been checked)."""

    request: GitRequest
    access: Access
    push_rules: tuple[RefRule, ...]  # empty unless this is a push


@dataclass(frozen=True)
class Refuse:
    """Answer without going upstream. ``hidden``: the one answer a missing repository gets."""

    status: int
    message: str
    reason: str  # for the audit log, never for the client
    hidden: bool = False
    request: GitRequest | None = None


def decide_git_request(
    method: str,
    raw_target: str,
    content_type: str | None,
    session: Session,
    upstream_hosts: frozenset[str],
) -> Forward | Refuse:
    try:
        req = parse_git_request(method, raw_target, content_type, upstream_hosts)
    except RequestRefused as exc:
        return Refuse(400, "bad request", f"bad_request:{exc.reason}")
    access = session.access(req.host, req.owner, req.repo)
    if access is None:
        # Not granted looks exactly like missing: nothing tells the sandbox it exists.
        return Refuse(404, "repository not found", "not_granted", hidden=True, request=req)
    if req.is_write and access is not Access.WRITE:
        return Refuse(403, "this session may not push here", "read_only_grant", request=req)
    rules = rules_for(session.grants, req.host, req.owner, req.repo) if req.is_write else ()
    return Forward(req, access, rules)
