"""The pure decision for one git request on a usable session."""

from __future__ import annotations

from airlock.core.gitdecision import Forward, Refuse, decide_git_request
from airlock.core.grants import Access, parse_grant
from airlock.core.refrules import parse_rules
from airlock.core.session import Limits, Session, create_session

HOSTS = frozenset({"github.com"})
RULES = parse_rules("agent/**")


def _session(*grants: str) -> Session:
    return create_session(
        grants=tuple(parse_grant(g, HOSTS, RULES) for g in grants),
        now=0.0,
        limits=Limits(idle_timeout=60, lifetime=600, max_requests=10, max_bytes=10),
    )


def _decide(method: str, path: str, *grants: str) -> Forward | Refuse:
    ctype = "application/x-git-receive-pack-request" if path.endswith("receive-pack") else None
    if path.endswith("upload-pack") and method == "POST":
        ctype = "application/x-git-upload-pack-request"
    return decide_git_request(method, path, ctype, _session(*grants), HOSTS)


def test_a_granted_fetch_is_forwarded_without_push_rules() -> None:
    d = _decide(
        "GET",
        "/git/github.com/acme/app/info/refs?service=git-upload-pack",
        "github.com/acme/app:write",
    )
    assert isinstance(d, Forward) and d.access is Access.WRITE and d.push_rules == ()


def test_a_push_carries_its_rules() -> None:
    d = _decide(
        "POST", "/git/github.com/Acme/App.git/git-receive-pack", "github.com/acme/app:write=ff:main"
    )
    assert isinstance(d, Forward)
    assert [str(r) for r in d.push_rules] == ["ff:main"]


def test_ungranted_is_hidden_like_missing() -> None:
    d = _decide(
        "GET",
        "/git/github.com/acme/other/info/refs?service=git-upload-pack",
        "github.com/acme/app:write",
    )
    assert isinstance(d, Refuse) and d.hidden and d.status == 404 and d.reason == "not_granted"


def test_push_on_a_read_grant_and_a_bad_path() -> None:
    d = _decide("POST", "/git/github.com/acme/app/git-receive-pack", "github.com/acme/app:read")
    assert isinstance(d, Refuse) and (d.status, d.reason) == (403, "read_only_grant")
    bad = _decide("GET", "/git/github.com/acme/../app/info/refs", "github.com/acme/app:read")
    assert isinstance(bad, Refuse) and bad.status == 400 and bad.request is None
