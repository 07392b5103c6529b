"""Tests for airlock.core.gitpath."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.gitpath import (
    Endpoint,
    GitRequest,
    RequestRefused,
    Service,
    parse_git_request,
)

HOSTS = frozenset({"github.com", "ghe.example.com"})
UP_CT = "application/x-git-upload-pack-request"
RP_CT = "application/x-git-receive-pack-request"
INFO = "/git/github.com/o/r/info/refs?service=git-upload-pack"


def parse(method: str, target: str, content_type: str | None = None) -> GitRequest:
    return parse_git_request(method, target, content_type, HOSTS)


# --- valid requests ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".git"])
@pytest.mark.parametrize("service", list(Service))
def test_info_refs_valid(suffix: str, service: Service) -> None:
    req = parse("GET", f"/git/github.com/Octo-Cat/my.repo_1{suffix}/info/refs?service={service}")
    assert req == GitRequest(
        host="github.com",
        owner="Octo-Cat",
        repo="my.repo_1",
        service=service,
        endpoint=Endpoint.INFO_REFS,
    )
    assert req.repo_path == "Octo-Cat/my.repo_1"
    assert req.repo_key == "octo-cat/my.repo_1"
    assert req.upstream_path() == "/Octo-Cat/my.repo_1.git/info/refs"
    assert req.upstream_query() == f"service={service}"
    assert req.is_write is (service is Service.RECEIVE_PACK)


@pytest.mark.parametrize("suffix", ["", ".git"])
@pytest.mark.parametrize(
    ("service", "ct"), [(Service.UPLOAD_PACK, UP_CT), (Service.RECEIVE_PACK, RP_CT)]
)
def test_rpc_valid(suffix: str, service: Service, ct: str) -> None:
    req = parse("POST", f"/git/ghe.example.com/o/r{suffix}/{service}", ct)
    assert req.host == "ghe.example.com"
    assert (req.owner, req.repo, req.service, req.endpoint) == ("o", "r", service, Endpoint.RPC)
    assert req.upstream_path() == f"/o/r.git/{service}"
    assert req.upstream_query() == ""
    assert req.is_write is (service is Service.RECEIVE_PACK)


@pytest.mark.parametrize(
    "ct",
    [UP_CT, UP_CT.upper(), "Application/X-Git-Upload-Pack-Request", f" {UP_CT}\t"],
)
def test_content_type_case_insensitive(ct: str) -> None:
    assert parse("POST", "/git/github.com/o/r/git-upload-pack", ct).service is Service.UPLOAD_PACK


def test_get_ignores_content_type() -> None:
    assert parse("GET", INFO, None).endpoint is Endpoint.INFO_REFS
    assert parse("GET", INFO, "text/plain").endpoint is Endpoint.INFO_REFS


@pytest.mark.parametrize(
    ("owner", "repo"),
    [
        ("a", "b"),
        ("a" * 39, "b" * 100),
        ("a-b-c", "-x"),
        ("info", "refs"),  # endpoint names are fine as owner/repo
        ("git", "git-upload-pack"),
        ("o", "x.gitx"),
        ("o", "x.y.z"),
        ("o", "_"),
    ],
)
def test_valid_owner_repo(owner: str, repo: str) -> None:
    req = parse("GET", f"/git/github.com/{owner}/{repo}.git/info/refs?service=git-upload-pack")
    assert (req.owner, req.repo) == (owner, repo)


# --- refused requests -------------------------------------------------------------

REFUSED: list[tuple[str, str, str | None, str]] = [
    # (method, target, content type, reason)
    ("GET", "/git/github.com/o/r/../x/info/refs?service=git-upload-pack", None, "dot_segment"),
    ("GET", "/git/github.com/o/./r/info/refs?service=git-upload-pack", None, "dot_segment"),
    (
        "GET",
        "/git/github.com/o/r/%2e%2e/info/refs?service=git-upload-pack",
        None,
        "percent_encoding",
    ),
    ("GET", "/git/github.com/o%2Fr/x/info/refs?service=git-upload-pack", None, "percent_encoding"),
    ("GET", "/git/github.com/o/r/info/refs?service=git%2dupload-pack", None, "percent_encoding"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack%00", None, "percent_encoding"),
    ("GET", "/git/github.com//o/r/info/refs?service=git-upload-pack", None, "empty_segment"),
    ("GET", "//git/github.com/o/r/info/refs?service=git-upload-pack", None, "empty_segment"),
    ("GET", "/git/github.com/o/r/info/refs/?service=git-upload-pack", None, "empty_segment"),
    ("POST", "/git/github.com/o/r/git-upload-pack/", UP_CT, "empty_segment"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack&x=1", None, "bad_query"),
    (
        "GET",
        "/git/github.com/o/r/info/refs?service=git-upload-pack&service=git-upload-pack",
        None,
        "bad_query",
    ),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack&", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?&service=git-upload-pack", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack#frag", None, "bad_char"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack;x=1", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack?", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service=", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?Service=git-upload-pack", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service=GIT-UPLOAD-PACK", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-archive", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs?", None, "bad_query"),
    ("GET", "/git/github.com/o/r/info/refs", None, "bad_query"),
    ("GET", "/git/github.com/o/r;x=1/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/r/info/refs;x?service=git-upload-pack", None, "bad_path"),
    ("GET", "/git/GitHub.com/o/r/info/refs?service=git-upload-pack", None, "bad_host"),
    ("GET", "/git/evil.com/o/r/info/refs?service=git-upload-pack", None, "unknown_host"),
    ("GET", "/git/github.com.evil.com/o/r/info/refs?service=git-upload-pack", None, "unknown_host"),
    ("GET", "/git/github.com./o/r/info/refs?service=git-upload-pack", None, "unknown_host"),
    ("GET", "/git/github.com:443/o/r/info/refs?service=git-upload-pack", None, "bad_host"),
    ("GET", "/git/x@github.com/o/r/info/refs?service=git-upload-pack", None, "bad_host"),
    ("GET", "/git/127.0.0.1/o/r/info/refs?service=git-upload-pack", None, "unknown_host"),
    ("GET", "/git/github.com\\o/r/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o/r\\..\\x/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o/r\x00/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o/r\t/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o/r /info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o/r/info/refs?service=git-upload-pack\r\n", None, "bad_char"),
    ("GET", "/git/github.com/o/r\x7f/info/refs?service=git-upload-pack", None, "bad_char"),
    # Cyrillic "i" and fullwidth "g" lookalikes: non-ASCII never gets as far as the host check.
    ("GET", "/git/g\u0456thub.com/o/r/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/\uff47ithub.com/o/r/info/refs?service=git-upload-pack", None, "bad_char"),
    ("GET", "/git/github.com/o_o/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", "/git/github.com/-o/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", "/git/github.com/o-/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", "/git/github.com/o--o/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", "/git/github.com/o.o/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", f"/git/github.com/{'a' * 40}/r/info/refs?service=git-upload-pack", None, "bad_owner"),
    ("GET", f"/git/github.com/o/{'r' * 101}/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/.git/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/..git/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/.r/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/x.git.git/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/x.GIT/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/x..y/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/x./info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/x...git/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/r:x/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("GET", "/git/github.com/o/r@x/info/refs?service=git-upload-pack", None, "bad_repo"),
    ("HEAD", INFO, None, "bad_method"),
    ("PUT", "/git/github.com/o/r/git-receive-pack", RP_CT, "bad_method"),
    ("get", INFO, None, "bad_method"),
    ("OPTIONS", "*", None, "bad_method"),
    ("POST", INFO, UP_CT, "bad_method"),
    ("GET", "/git/github.com/o/r/git-upload-pack", None, "bad_method"),
    ("POST", "/git/github.com/o/r/git-upload-pack", "text/plain", "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-upload-pack", None, "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-upload-pack", "", "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-upload-pack", RP_CT, "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-receive-pack", UP_CT, "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-upload-pack", UP_CT + "; charset=utf-8", "bad_content_type"),
    ("POST", "/git/github.com/o/r/git-upload-pack", UP_CT + ";", "bad_content_type"),
    (
        "POST",
        "/git/github.com/o/r/git-upload-pack",
        "application/x-git-upload-pac\u212a-request",  # KELVIN SIGN lowercases to 'k'
        "bad_content_type",
    ),
    ("POST", "/git/github.com/o/r/git-upload-pack?", UP_CT, "bad_query"),
    ("POST", "/git/github.com/o/r/git-upload-pack?service=git-upload-pack", UP_CT, "bad_query"),
    ("GET", "https://github.com/o/r/info/refs?service=git-upload-pack", None, "bad_path"),
    (
        "GET",
        "http://airlock/git/github.com/o/r/info/refs?service=git-upload-pack",
        None,
        "bad_path",
    ),
    ("GET", "*", None, "bad_path"),
    ("GET", f"/git/github.com/o/r/info/refs?service=git-upload-pack{'&' * 2000}", None, "bad_path"),
    ("GET", "", None, "bad_path"),
    ("GET", "git/github.com/o/r/info/refs?service=git-upload-pack", None, "bad_path"),
    ("GET", "/git/github.com/o/r/objects/info/packs", None, "bad_path"),
    ("GET", "/git/github.com/o/r/HEAD", None, "bad_path"),
    ("GET", "/git/github.com/o/r/info/refs/x?service=git-upload-pack", None, "bad_path"),
    ("GET", "/GIT/github.com/o/r/info/refs?service=git-upload-pack", None, "bad_path"),
    ("GET", "/github.com/o/r/info/refs?service=git-upload-pack", None, "bad_path"),
    ("GET", "/git/github.com/o/info/refs?service=git-upload-pack", None, "bad_path"),
    ("GET", "/git/github.com/o/r/x/info/refs?service=git-upload-pack", None, "bad_path"),
    ("POST", "/git/github.com/o/r/git-upload-archive", UP_CT, "bad_path"),
    ("POST", "/git/github.com/o/r/GIT-UPLOAD-PACK", UP_CT, "bad_path"),
    ("GET", "/git/github.com/o/r/INFO/refs?service=git-upload-pack", None, "bad_path"),
]


@pytest.mark.parametrize(("method", "target", "ct", "reason"), REFUSED)
def test_refused(method: str, target: str, ct: str | None, reason: str) -> None:
    with pytest.raises(RequestRefused) as info:
        parse(method, target, ct)
    assert info.value.reason == reason


def test_refused_message_mentions_reason() -> None:
    with pytest.raises(RequestRefused, match=r"^percent_encoding: "):
        parse("GET", "/git/github.com/o/r%2f/info/refs?service=git-upload-pack")


def test_longest_valid_target_accepted() -> None:
    host = ".".join(["h" * 63] * 3) + "." + "h" * 61
    owner, repo = "o" * 39, "r" * 100
    target = f"/git/{host}/{owner}/{repo}.git/info/refs?service=git-receive-pack"
    req = parse_git_request("GET", target, None, frozenset({host}))
    assert (req.host, req.owner, req.repo) == (host, owner, repo)


def test_empty_upstream_hosts_refuses_everything() -> None:
    with pytest.raises(RequestRefused) as info:
        parse_git_request("GET", INFO, None, frozenset())
    assert info.value.reason == "unknown_host"


# --- properties -------------------------------------------------------------------

OWNER_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
REPO_ALPHABET = OWNER_ALPHABET + "._"

owners = st.text(OWNER_ALPHABET, min_size=1, max_size=39).filter(
    lambda s: not s.startswith("-") and not s.endswith("-") and "--" not in s
)
repos = st.text(REPO_ALPHABET, min_size=1, max_size=100).filter(
    lambda s: (
        not s.startswith(".")
        and not s.endswith(".")
        and ".." not in s
        and not s.lower().endswith(".git")
    )
)

# Targets built from pieces that look like real ones, so that the parser gets
# past the early checks reasonably often.
_pieces = st.sampled_from(
    [
        "/", "git", "github.com", "GitHub.com", "evil.com", "o", "r", "r.git", ".git", ".",
        "..", "info", "refs", "info/refs", "git-upload-pack", "git-receive-pack", "?", "&",
        "=", "service", "service=git-upload-pack", "%2e", "#", ";", "\\", "\x00", " ", "-",
        "_", ":", "@", "é", "\u0131", "\u212a",
    ]
)  # fmt: skip
targets = st.one_of(
    st.text(max_size=120),
    st.lists(st.one_of(_pieces, st.text(max_size=5)), max_size=20).map("".join),
    st.lists(st.one_of(_pieces, st.text(REPO_ALPHABET, max_size=8)), max_size=12).map(
        lambda parts: "/git/github.com/" + "/".join(parts)
    ),
)
methods = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "PUT", "get", ""]), st.text(max_size=8))
content_types = st.one_of(
    st.none(), st.sampled_from([UP_CT, RP_CT, UP_CT.upper(), UP_CT + ";x=y"]), st.text(max_size=60)
)


@settings(max_examples=300)
@given(methods, targets, content_types)
def test_parse_only_raises_refused(method: str, target: str, ct: str | None) -> None:
    """(a)+(b): only RequestRefused escapes, and accepted requests are clean."""
    try:
        req = parse(method, target, ct)
    except RequestRefused as exc:
        assert exc.reason
        return
    assert req.host in HOSTS
    assert set(req.owner) <= set(OWNER_ALPHABET)
    assert set(req.repo) <= set(REPO_ALPHABET)
    path = req.upstream_path()
    assert path.startswith("/" + req.owner + "/")
    assert ".." not in path
    assert "/./" not in path
    assert "//" not in path
    assert "%" not in path
    assert "%" not in req.upstream_query()


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(HOSTS)),
    owners,
    repos,
    st.booleans(),
    st.sampled_from(list(Service)),
    st.sampled_from(list(Endpoint)),
)
def test_round_trip(
    host: str, owner: str, repo: str, dot_git: bool, service: Service, endpoint: Endpoint
) -> None:
    """(b)+(c): any valid owner/repo builds a path that parses back to the same values."""
    base = f"/git/{host}/{owner}/{repo}{'.git' if dot_git else ''}"
    if endpoint is Endpoint.INFO_REFS:
        req = parse("GET", f"{base}/info/refs?service={service}")
    else:
        ct = UP_CT if service is Service.UPLOAD_PACK else RP_CT
        req = parse("POST", f"{base}/{service}", ct)
    assert req == GitRequest(host, owner, repo, service, endpoint)
    path = req.upstream_path()
    assert path.startswith(f"/{owner}/{repo}.git/")
    assert "//" not in path
    assert ".." not in path
    assert "%" not in path
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments
    # The upstream path, re-mounted under /git/<host>, is itself accepted as the same request.
    query = req.upstream_query()
    again = parse(
        "GET" if endpoint is Endpoint.INFO_REFS else "POST",
        f"/git/{host}{path}" + (f"?{query}" if query else ""),
        UP_CT if service is Service.UPLOAD_PACK else RP_CT,
    )
    assert again == req


@settings(max_examples=300)
@given(st.text(REPO_ALPHABET + "/", min_size=1, max_size=120))
def test_accepted_paths_have_no_dot_segments(middle: str) -> None:
    """Whatever slips through, upstream paths never contain '.'/'..' segments."""
    try:
        req = parse("GET", f"/git/github.com/{middle}/info/refs?service=git-upload-pack")
    except RequestRefused:
        return
    segments = req.upstream_path().split("/")
    assert segments[0] == ""
    assert all(seg not in ("", ".", "..") for seg in segments[1:])
