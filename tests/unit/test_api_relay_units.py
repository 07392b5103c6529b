"""The API relay's small pure parts: tokens from headers, what counts as an opened pull
request, the error shape, and the bound on its per-session caches."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from airlock.config import UpstreamConfig
from airlock.core import session as lifecycle
from airlock.core.session import Limits
from airlock.gateway.api import relay as relay_mod
from airlock.gateway.api.relay import ApiRelay, RelayLimits, _bearer, created_pull, error_body
from airlock.gateway.intercept_ca import InterceptAuthority
from airlock.gateway.store import SessionStore


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("token abc", "abc"),
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic " + base64.b64encode(b"x-access-token:abc").decode(), "abc"),
        ("Basic " + base64.b64encode(b"user:").decode(), None),
        ("Basic !!!", None),
        ("token a b", None),
        ("token", None),
        ("Digest abc", None),
    ],
)
def test_the_token_of_an_authorization_header(header: str, token: str | None) -> None:
    assert _bearer(header) == token


def test_only_an_answer_that_says_so_makes_a_pull_request_opened() -> None:
    ok_graphql = {"data": {"createPullRequest": {"pullRequest": {"id": "PR_x"}}}}
    refused_graphql = {
        "data": {"createPullRequest": None},
        "errors": [{"message": "A pull request already exists for octo:agent/x."}],
    }
    assert created_pull(json.dumps(ok_graphql).encode(), graphql=True)
    assert not created_pull(json.dumps(refused_graphql).encode(), graphql=True)
    partial = {**ok_graphql, "errors": [{"message": "x"}]}
    assert not created_pull(json.dumps(partial).encode(), graphql=True)
    assert not created_pull(b"not json", graphql=True)
    assert not created_pull(b"[]", graphql=True)
    assert created_pull(json.dumps({"number": 3, "node_id": "PR_y"}).encode(), graphql=False)
    assert not created_pull(json.dumps({"message": "Validation Failed"}).encode(), graphql=False)


def test_errors_look_like_githubs_and_name_the_request() -> None:
    body = json.loads(error_body("airlock: no", 403, "e-1-2"))
    assert body["message"] == "airlock: no (request e-1-2)"
    assert body["status"] == "403" and body["documentation_url"].startswith("https://")


def test_the_per_session_caches_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path / "s.sqlite3")
    upstream = UpstreamConfig(
        host="github.com", url="https://git.example.com", token_file=Path("/x")
    )
    r = ApiRelay(
        [upstream],
        {},
        store,
        InterceptAuthority(tmp_path / "ca", ["api.github.com"]),
        lambda *a, **k: None,
        RelayLimits(handshake_timeout=1, idle_timeout=1, max_header_bytes=1024, max_headers=10),
    )
    monkeypatch.setattr(relay_mod, "CACHE_SESSIONS", 2)
    limits = Limits(idle_timeout=60, lifetime=600, max_requests=10, max_bytes=10)
    live = lifecycle.create_session(grants=(), now=0.0, limits=limits)
    ended = lifecycle.revoke(lifecycle.create_session(grants=(), now=0.0, limits=limits), "x")
    store.put(live)
    store.put(ended)
    for sid in (live.id, ended.id, "s-gone"):
        r._repo_ids[(sid, "github.com/o/r")] = "R_1"
        r._create_locks[sid] = asyncio.Lock()
    r._prune()
    assert set(r._create_locks) == {live.id}
    assert set(r._repo_ids) == {(live.id, "github.com/o/r")}
    store.close()
