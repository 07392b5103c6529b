"""What goes to the upstream and what its answers become, without a network."""

from __future__ import annotations

import base64

import pytest

from airlock.core.gitpath import GitRequest, parse_git_request
from airlock.core.gitrecord import GitRecord
from airlock.core.upstream import judge_upstream_answer, upstream_headers

HOSTS = frozenset({"github.com"})


def _req(service: str, rpc: bool) -> GitRequest:
    if rpc:
        return parse_git_request(
            "POST",
            f"/git/github.com/acme/app/{service}",
            f"application/x-{service}-request",
            HOSTS,
        )
    return parse_git_request(
        "GET", f"/git/github.com/acme/app/info/refs?service={service}", None, HOSTS
    )


def test_headers_carry_the_gateways_credential_and_little_else() -> None:
    fetch = _req("git-upload-pack", rpc=True)
    client = {
        "User-Agent": "git/2.39.5",
        "Authorization": "Basic stolen",
        "Cookie": "x",
        "Git-Protocol": "version=2:evil=1",
        "Accept": "application/x-git-upload-pack-result",
    }
    h = upstream_headers(fetch, "POST", "T0KEN", client, protocol_version=2, content_length=9)
    assert h["Authorization"] == "Basic " + base64.b64encode(b"x-access-token:T0KEN").decode()
    assert h["Git-Protocol"] == "version=2"  # the checked form, not the client's
    assert "Cookie" not in h and "Content-Length" not in h  # aiohttp frames the checked body
    assert h["Accept-Encoding"] == "gzip"
    push = _req("git-receive-pack", rpc=True)
    ph = upstream_headers(
        push, "POST", "T", {"User-Agent": "curl/8"}, protocol_version=2, content_length=5
    )
    assert "Git-Protocol" not in ph and "Accept-Encoding" not in ph
    assert ph["User-Agent"] == "git/airlock" and ph["Content-Length"] == "5"


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {"Content-Type": "application/x-git-upload-pack-result"}, None),
        (401, {}, (404, "upstream_401")),
        (403, {}, (404, "upstream_403")),
        (404, {}, (404, "upstream_404")),
        (301, {"Location": "https://elsewhere.example.com/"}, (502, "upstream_redirect")),
        (429, {"Retry-After": "soon"}, (429, "upstream_rate_limited")),
        (500, {}, (502, "upstream_status_500")),
        (200, {"Content-Type": "text/html"}, (502, "upstream_bad_content_type")),
    ],
)
def test_answers(status: int, headers: dict[str, str], expected: tuple[int, str] | None) -> None:
    a = judge_upstream_answer(_req("git-upload-pack", rpc=True), status, headers)
    assert (a.status, a.reason) == expected if a is not None else expected is None
    if status in (401, 403, 404):
        assert a is not None and a.hidden
    if status == 429:
        assert a is not None and a.retry_after == "60"


def test_an_encoded_push_answer_is_refused() -> None:
    push = _req("git-receive-pack", rpc=False)
    ok = {"Content-Type": "application/x-git-receive-pack-advertisement"}
    assert judge_upstream_answer(push, 200, ok) is None
    a = judge_upstream_answer(push, 200, {**ok, "Content-Encoding": "gzip"})
    assert a is not None and a.reason == "upstream_encoded_push_answer"


def test_the_record_writes_what_was_set() -> None:
    r = GitRecord(service="git-upload-pack", upstream_status=200)
    assert r.audit_fields() == {
        "session": None,
        "service": "git-upload-pack",
        "status": None,
        "reason": None,
        "upstream_status": 200,
    }
