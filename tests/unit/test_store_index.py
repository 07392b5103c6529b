"""The session store's indexes (proxy-token digest, live address) and the proxy-token
authentication that uses them: the same answers as a scan of every session, at any count."""

from __future__ import annotations

import base64
import dataclasses
import random
import secrets
import time
from pathlib import Path
from typing import cast

import pytest

from airlock.core import session as lc
from airlock.core.backoff import AuthBackoff
from airlock.core.egress import parse_proxy_authorization
from airlock.core.grants import Access, Grant
from airlock.gateway.egress import AuthRefused
from airlock.gateway.server import Gateway
from airlock.gateway.store import SessionStore

G = (Grant("github.com", "acme", "repo", Access.READ),)
GW = "10.213.0.1"


def _session(token: str, *, now: float | None = None, lifetime: int = 3600) -> lc.Session:
    s = lc.create_session(
        grants=G,
        now=time.time() if now is None else now,
        limits=lc.Limits(lifetime, lifetime, 10**6, 10**12),
        require_activation=True,
    )
    return lc.with_proxy_token(s, token)


def _bound(s: lc.Session, address: str) -> lc.Session:
    return lc.activate(
        s, lc.Binding(secrets.token_hex(32), "net", address=address, gateway_address=GW)
    )


def _digest(token: str) -> str:
    return lc.hash_proxy_token(token)


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    return SessionStore(tmp_path / "s.sqlite3")


# --------------------------------------------------------------------------- the indexes


def test_put_indexes_by_token_and_live_address(store: SessionStore) -> None:
    s = _session("tok-a")
    store.put(s)
    assert [x.id for x in store.by_proxy_token(_digest("tok-a"))] == [s.id]
    assert store.by_proxy_token(_digest("tok-b")) == []
    assert not store.live_bound_to("10.213.0.2")  # pending, no binding yet
    store.put(_bound(s, "10.213.0.2"))
    assert store.live_bound_to("10.213.0.2")
    assert not store.live_bound_to("10.213.0.3")
    # The index hands out the session as it is now.
    (found,) = store.by_proxy_token(_digest("tok-a"))
    assert found.binding is not None and found.binding.address == "10.213.0.2"


def test_a_replace_with_a_changed_binding_or_token_moves_the_entries(store: SessionStore) -> None:
    s = _bound(_session("tok-a"), "10.213.0.2")
    store.put(s)
    moved = dataclasses.replace(
        s,
        binding=dataclasses.replace(s.binding, address="10.213.0.9"),  # type: ignore[type-var]
    )
    store.put(moved)
    assert not store.live_bound_to("10.213.0.2")
    assert store.live_bound_to("10.213.0.9")
    retokened = lc.with_proxy_token(moved, "tok-b")
    store.put(retokened)
    assert store.by_proxy_token(_digest("tok-a")) == []
    assert [x.id for x in store.by_proxy_token(_digest("tok-b"))] == [s.id]


def test_a_counter_put_keeps_the_entries(store: SessionStore) -> None:
    s = _bound(_session("tok-a"), "10.213.0.2")
    store.put(s)
    store.put(dataclasses.replace(s, requests=5), durable=False)
    (found,) = store.by_proxy_token(_digest("tok-a"))
    assert found.requests == 5
    assert store.live_bound_to("10.213.0.2")
    store.close()


def test_delete_removes_every_entry(store: SessionStore) -> None:
    s = _bound(_session("tok-a"), "10.213.0.2")
    store.put(s)
    store.delete(s.id)
    assert store.by_proxy_token(_digest("tok-a")) == []
    assert not store.live_bound_to("10.213.0.2")
    assert len(store) == 0
    store.delete(s.id)  # twice: nothing to do, no error


def test_a_revoked_session_stays_findable_by_token_but_not_live(store: SessionStore) -> None:
    s = _bound(_session("tok-a"), "10.213.0.2")
    store.put(s)
    store.put(lc.revoke(s, "test"))
    (found,) = store.by_proxy_token(_digest("tok-a"))
    assert found.state is lc.SessionState.REVOKED  # its token is told "session ended"
    assert not store.live_bound_to("10.213.0.2")
    # Another sandbox got the address later: live again, the revoked one still findable.
    t = _bound(_session("tok-b"), "10.213.0.2")
    store.put(t)
    assert store.live_bound_to("10.213.0.2")
    assert [x.id for x in store.by_proxy_token(_digest("tok-a"))] == [s.id]


def test_the_indexes_are_rebuilt_from_disk(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    store = SessionStore(db)
    a = _bound(_session("tok-a"), "10.213.0.2")
    b = lc.revoke(_bound(_session("tok-b"), "10.213.0.3"), "test")
    store.put(a)
    store.put(b)
    store.close()
    again = SessionStore(db)
    assert [x.id for x in again.by_proxy_token(_digest("tok-a"))] == [a.id]
    assert [x.id for x in again.by_proxy_token(_digest("tok-b"))] == [b.id]
    assert again.live_bound_to("10.213.0.2")
    assert not again.live_bound_to("10.213.0.3")
    assert len(again) == 2
    again.close()


# ----------------------------------------------- authentication: the same as the old scan


class _Shell:
    """What ``Gateway._authenticate_proxy`` uses of the gateway."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.proxy_backoff = AuthBackoff(threshold=10**9)


def _header(token: str) -> str:
    return "Basic " + base64.b64encode(f"airlock:{token}".encode()).decode()


def _scan(
    sessions: list[lc.Session], header: str, source_ip: str, local_ip: str
) -> lc.Session | AuthRefused:
    """The authentication as it was before the indexes: every session looked at."""
    return _scan_candidates(
        [s for s in sessions if s.binding is not None and s.binding.address == source_ip],
        header,
        source_ip,
        local_ip,
    )


def _scan_candidates(
    candidates: list[lc.Session], header: str, source_ip: str, local_ip: str
) -> lc.Session | AuthRefused:
    token = parse_proxy_authorization(header)
    assert token is not None
    for s in candidates:
        if not lc.proxy_token_matches(s, token):
            continue
        refusal = lc.check_usable(
            s,
            now=time.time(),
            source_ip=source_ip,
            cert_fingerprint=s.cert_fingerprint,
            local_ip=local_ip,
        )
        if refusal is not None:
            return AuthRefused(refusal.value, s.id, lc.ended_as(refusal))
        return s
    if any(s.state is not lc.SessionState.REVOKED for s in candidates):
        return AuthRefused("wrong_token")
    return AuthRefused("unknown_source")


def _authenticate(store: SessionStore, header: str, source: str, local: str = GW) -> object:
    return Gateway._authenticate_proxy(cast(Gateway, _Shell(store)), header, source, local)


def test_authentication_answers(store: SessionStore) -> None:
    live = _bound(_session("tok-live"), "10.213.0.2")
    ended = lc.revoke(_bound(_session("tok-ended"), "10.213.0.3"), "test")
    expired = _bound(_session("tok-old", now=time.time() - 7200), "10.213.0.4")
    for s in (live, ended, expired):
        store.put(s)
    assert _authenticate(store, _header("tok-live"), "10.213.0.2") == live
    assert _authenticate(store, _header("tok-live"), "10.213.0.2", "10.9.9.9") == AuthRefused(
        "wrong_network", live.id, None
    )
    assert _authenticate(store, _header("nope"), "10.213.0.2") == AuthRefused("wrong_token")
    # A session's token from another address is not that session's: unknown there.
    assert _authenticate(store, _header("tok-live"), "10.213.0.5") == AuthRefused("unknown_source")
    assert _authenticate(store, _header("tok-ended"), "10.213.0.3") == AuthRefused(
        "revoked", ended.id, "revoked"
    )
    # Only revoked sessions at the address: a wrong token there is an unknown source.
    assert _authenticate(store, _header("nope"), "10.213.0.3") == AuthRefused("unknown_source")
    assert _authenticate(store, _header("tok-old"), "10.213.0.4") == AuthRefused(
        "expired", expired.id, "expired"
    )
    assert _authenticate(store, "Bearer x", "10.213.0.2") == AuthRefused("no_proxy_credentials")


def test_many_sessions_answer_as_the_scan_did(store: SessionStore) -> None:
    """3,000 sessions, addresses reused (ended sandboxes' addresses given out again), every
    state: for every session's token from its own, another and an unused address, and for
    wrong tokens, the index gives what the scan of every session gave."""
    rng = random.Random(15)
    addresses = [f"10.213.{i // 250}.{i % 250 + 2}" for i in range(600)]
    tokens: list[str] = []
    for i in range(3_000):
        token = f"tok-{i}"
        s = _session(token, now=time.time() - (7200 if i % 7 == 0 else 0))
        if i % 5:
            s = _bound(s, rng.choice(addresses))
        if i % 3 == 0:
            s = lc.revoke(s, "test")
        store.put(s)
        if i % 2:
            store.put(s)  # put again unchanged: one entry still
        tokens.append(token)
    # Some sessions move (a rebinding) and some are deleted, after the fact.
    all_sessions = list(store)
    for s in rng.sample(all_sessions, 100):
        if s.binding is not None:
            store.put(
                dataclasses.replace(
                    s, binding=dataclasses.replace(s.binding, address=rng.choice(addresses))
                ),
                durable=False,
            )
    for s in rng.sample(all_sessions, 100):
        store.delete(s.id)
    sessions = list(store)
    assert len(store) == len(sessions) == 2_900
    token_of = {_digest(t): t for t in tokens}  # the store keeps only the digests
    cases = []
    for s in rng.sample(sessions, 1000):
        assert s.proxy_token_sha256 is not None
        token = token_of[s.proxy_token_sha256]
        own = s.binding.address if s.binding is not None else rng.choice(addresses)
        cases += [(token, own), (token, rng.choice(addresses)), (token, "10.99.0.1")]
    cases += [(f"wrong-{i}", rng.choice(addresses)) for i in range(500)]
    # The scan's filter, done once (the same sessions in the same order as each scan's).
    bound: dict[str, list[lc.Session]] = {}
    for s in sessions:
        if s.binding is not None:
            bound.setdefault(s.binding.address, []).append(s)
    for token, source in cases:
        header = _header(token)
        want = _scan_candidates(bound.get(source, []), header, source, GW)
        assert _authenticate(store, header, source) == want, (token, source)
    store.close()
