"""gateway/gitauth.py: which session a git request names, by which way in."""

from __future__ import annotations

import base64
import dataclasses

from airlock.core.backoff import AuthBackoff
from airlock.core.session import Binding, Limits, Session, create_session, with_git_secret
from airlock.gateway.gitauth import Identified, Method, Refused, identify, parse_basic

LIMITS = Limits(idle_timeout=60, lifetime=600, max_requests=10, max_bytes=10**6)
SANDBOX, GATEWAY = "10.9.0.2", "10.9.0.1"


def _session(bound: bool = True) -> Session:
    s = with_git_secret(create_session(grants=(), now=0, limits=LIMITS), "pw")
    if bound:
        binding = Binding("c" * 64, "net", SANDBOX, GATEWAY)
        s = dataclasses.replace(s, binding=binding)
    return s


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _ask(
    s: Session,
    header: str | None,
    source: str = SANDBOX,
    local: str = GATEWAY,
    backoff: AuthBackoff | None = None,
) -> Identified | Refused:
    return identify(
        None,
        header,
        source_ip=source,
        local_ip=local,
        lookup={s.id: s}.get,
        backoff=backoff,
        now=0.0,
    )


def test_parse_basic() -> None:
    assert parse_basic(_basic("u", "p:q")) == ("u", "p:q")
    for bad in (None, "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert parse_basic(bad) is None


def test_basic_only_for_the_bound_sandbox() -> None:
    s = _session()
    ok = _ask(s, _basic(s.id, "pw"))
    assert ok == Identified(s.id, Method.BASIC, None)
    challenge = _ask(s, None)
    assert isinstance(challenge, Refused) and challenge.status == 401
    assert challenge.headers["WWW-Authenticate"] == 'Basic realm="airlock"'
    host = _session(bound=False)
    cases = {
        "basic_wrong_secret": _ask(s, _basic(s.id, "nope")),
        "basic_wrong_source": _ask(s, _basic(s.id, "pw"), source="10.9.0.3"),
        "basic_wrong_network": _ask(s, _basic(s.id, "pw"), local="10.9.0.17"),
        "basic_not_sandbox_session": _ask(host, _basic(host.id, "pw")),
    }
    for reason, got in cases.items():
        assert isinstance(got, Refused) and got.status == 401 and got.reason == reason, got


def test_host_session_with_the_right_secret_is_refused() -> None:
    s = _session(bound=False)
    got = _ask(s, _basic(s.id, "pw"))
    assert isinstance(got, Refused) and got.reason == "basic_not_sandbox_session"


def test_failures_back_off_and_success_clears() -> None:
    s, backoff = _session(), AuthBackoff(threshold=3)
    for _ in range(3):
        assert isinstance(_ask(s, _basic(s.id, "x"), backoff=backoff), Refused)
    blocked = _ask(s, _basic(s.id, "pw"), backoff=backoff)
    assert isinstance(blocked, Refused) and blocked.status == 429
    assert backoff.blocked(SANDBOX, 0.0) is not None
