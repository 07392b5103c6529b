"""Ref rules, the push decision and receive-pack's reports, without a network."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airlock.core.grants import Access, InvalidGrant, parse_grant, rules_for
from airlock.core.pktline import FLUSH, Data, PktLineReader, RefUpdate, encode_pkt
from airlock.core.pushpolicy import Verdict, decide_push, policy_digest, settle
from airlock.core.refrules import InvalidRefRule, RefRule, parse_rules
from airlock.core.reportstatus import (
    AdvertisementFilter,
    ReportStatusReader,
    refusal_report,
    sideband_limit,
)

Z = "0" * 40
A = "a" * 40
B = "b" * 40
HOSTS = frozenset({"github.com"})
DEFAULT = parse_rules("agent/**")


def upd(ref: str, old: str = A, new: str = B) -> RefUpdate:
    return RefUpdate(old=old, new=new, ref=ref)


# --- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "ref", "matches"),
    [
        ("agent/**", "refs/heads/agent/x", True),
        ("agent/**", "refs/heads/agent/x/y", True),
        ("agent/**", "refs/heads/agent", False),
        ("agent/**", "refs/heads/agentx/y", False),
        ("agent/**", "refs/heads/main", False),
        ("agent/**", "refs/tags/agent/x", False),
        ("docs/*", "refs/heads/docs/a", True),
        ("docs/*", "refs/heads/docs/a/b", False),
        ("feature/login", "refs/heads/feature/login", True),
        ("feature/login", "refs/heads/feature/login2", False),
        ("refs/tags/v*", "refs/tags/v1.0", True),
        ("refs/tags/v*", "refs/heads/v1.0", False),
        ("**", "refs/heads/anything/at/all", True),
        ("**", "refs/tags/x", False),
        ("a/**/z", "refs/heads/a/z", True),
        ("a/**/z", "refs/heads/a/b/c/z", True),
        ("a/**/z", "refs/heads/a/b/c/y", False),
        ("fix.1+x", "refs/heads/fix.1+x", True),
        ("fix.1+x", "refs/heads/fixa1+x", False),  # '.' is literal, not a regex dot
    ],
)
def test_pattern_matching(pattern: str, ref: str, matches: bool) -> None:
    (rule,) = parse_rules(pattern)
    assert rule.matches(ref) is matches


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a,,b",
        "a b",
        "a/../b",
        "a//b",
        "a**/b",
        ".hidden",
        "x.lock",
        "refs/*/x",
        "refs/x",
        "a\\b",
        "a:b",
        "ff:",
    ],
)
def test_bad_patterns(text: str) -> None:
    with pytest.raises(InvalidRefRule):
        parse_rules(text)


def test_rule_text_round_trips() -> None:
    rules = parse_rules("agent/**,ff:main,refs/tags/v*")
    assert [str(r) for r in rules] == ["agent/**", "ff:main", "refs/tags/v*"]
    assert parse_rules(",".join(str(r) for r in rules)) == rules
    assert rules[1] == RefRule("refs/heads/main", fast_forward=True)


def test_grants_carry_rules() -> None:
    g = parse_grant("github.com/acme/app:write", HOSTS, DEFAULT)
    assert g.rules == DEFAULT and str(g) == "github.com/acme/app:write=agent/**"
    g2 = parse_grant("github.com/acme/app:write=feature/login,ff:main", HOSTS, DEFAULT)
    assert [str(r) for r in g2.rules] == ["feature/login", "ff:main"]
    assert g2.access is Access.WRITE
    r = parse_grant("github.com/acme/app:read", HOSTS, DEFAULT)
    assert r.rules == ()
    with pytest.raises(InvalidGrant, match="write grants only"):
        parse_grant("github.com/acme/app:read=x", HOSTS, DEFAULT)
    with pytest.raises(InvalidGrant, match="ref pattern"):
        parse_grant("github.com/acme/app:write=a..b", HOSTS, DEFAULT)
    assert rules_for((g, g2, r), "github.com", "ACME", "App") == DEFAULT + g2.rules


# --- the decision -----------------------------------------------------------------------


def test_must_show_refusals_with_a_default_grant() -> None:
    cases = {
        "push to main": upd("refs/heads/main"),
        "delete another branch": upd("refs/heads/agent/theirs", new=Z),
        "a tag": upd("refs/tags/v1", old=Z),
        "mirror: refs/remotes": upd("refs/remotes/origin/main", old=Z),
        "update a branch it did not create": upd("refs/heads/agent/theirs"),
    }
    for name, u in cases.items():
        d = decide_push([u], DEFAULT, frozenset())
        assert d.refused, name
        assert d.refs[0].message.startswith("airlock: "), name


def test_own_branch_may_be_created_force_pushed_and_deleted() -> None:
    owned = frozenset({"refs/heads/agent/x"})
    assert not decide_push([upd("refs/heads/agent/x", old=Z)], DEFAULT, frozenset()).refused
    assert not decide_push([upd("refs/heads/agent/x")], DEFAULT, owned).refused
    assert not decide_push([upd("refs/heads/agent/x", new=Z)], DEFAULT, owned).refused


def test_the_message_names_the_rules() -> None:
    d = decide_push([upd("refs/heads/main")], DEFAULT, frozenset())
    assert d.refs[0].message == "airlock: main is outside this session's branches agent/**"


def test_fast_forward_rule_needs_a_proof() -> None:
    rules = parse_rules("agent/**,ff:main")
    d = decide_push([upd("refs/heads/main")], rules, frozenset())
    assert [r.verdict for r in d.refs] == [Verdict.NEEDS_FAST_FORWARD]
    assert not settle(d, {"refs/heads/main": True}).refused
    refused = settle(d, {"refs/heads/main": False})
    assert refused.refused and "not a fast-forward" in refused.refs[0].message
    # Deleting a ff: branch it did not create is still refused.
    assert decide_push([upd("refs/heads/main", new=Z)], rules, frozenset()).refused


def test_a_push_is_refused_whole() -> None:
    d = decide_push(
        [upd("refs/heads/agent/ok", old=Z), upd("refs/heads/main")], DEFAULT, frozenset()
    )
    assert [r.verdict for r in d.refs] == [Verdict.REFUSE, Verdict.REFUSE]
    assert "another ref was refused" in d.refs[0].message


def test_caps_and_push_certificates() -> None:
    many = [upd(f"refs/heads/agent/{i}", old=Z) for i in range(5)]
    assert decide_push(many, DEFAULT, frozenset(), max_refs=4).refused_whole
    assert decide_push(many, DEFAULT, frozenset(), pushes_left=0).refused_whole
    assert decide_push(many[:1], DEFAULT, frozenset(), push_certificate=True).refused_whole
    twice = [upd("refs/heads/agent/a", old=Z), upd("refs/heads/agent/a", old=Z)]
    assert decide_push(twice, DEFAULT, frozenset()).refused_whole


def test_policy_digest_changes_with_the_rules() -> None:
    one = policy_digest({"github.com/a/b": parse_rules("agent/**")})
    assert one == policy_digest({"github.com/a/b": parse_rules("agent/**")})
    assert one != policy_digest({"github.com/a/b": parse_rules("agent/**,ff:main")})


# --- property: the decision equals a straightforward reference model -----------------------

_COMPONENTS = ["agent", "main", "docs", "x", "y"]
_pattern = st.lists(st.sampled_from([*_COMPONENTS, "*", "**"]), min_size=1, max_size=3).map(
    "/".join
)
_ref = st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4).map(
    lambda parts: "refs/heads/" + "/".join(parts)
)


def _reference_match(pattern: str, ref: str) -> bool:
    """Pattern matching by recursion over components (no regular expressions)."""

    def rec(p: list[str], r: list[str]) -> bool:
        if not p:
            return not r
        if p[0] == "**":
            if len(p) == 1:
                return len(r) >= 1
            return any(rec(p[1:], r[i:]) for i in range(len(r) + 1))
        if not r:
            return False
        return fnmatch_component(p[0], r[0]) and rec(p[1:], r[1:])

    return rec(("refs/heads/" + pattern).split("/"), ref.split("/"))


def fnmatch_component(p: str, c: str) -> bool:
    return re.fullmatch(re.escape(p).replace(r"\*", ".*"), c) is not None


def _reference_verdict(
    u: RefUpdate, rules: tuple[RefRule, ...], owned: frozenset[str], proven: bool
) -> bool:
    patterns = [(str(r).removeprefix("ff:"), r.fast_forward) for r in rules]
    matching = [ff for p, ff in patterns if _reference_match(p, u.ref)]
    if not matching:
        return False
    if u.old == Z:
        return True
    if u.ref in owned:
        return True
    if u.new == Z:
        return False
    return any(matching) and proven


@given(
    patterns=st.lists(st.tuples(st.booleans(), _pattern), min_size=1, max_size=4),
    commands=st.lists(
        st.tuples(_ref, st.sampled_from([Z, A]), st.sampled_from([Z, B])), max_size=5
    ),
    owned=st.frozensets(_ref, max_size=4),
    proven=st.booleans(),
)
def test_decision_matches_the_reference_model(
    patterns: list[tuple[bool, str]],
    commands: list[tuple[str, str, str]],
    owned: frozenset[str],
    proven: bool,
) -> None:
    rules = parse_rules(",".join(("ff:" if ff else "") + p for ff, p in patterns))
    unique = {ref: (old, new) for ref, old, new in commands if not (old == Z and new == Z)}
    updates = [RefUpdate(old=o, new=n, ref=r) for r, (o, n) in unique.items()]
    d = decide_push(updates, rules, owned)
    d = settle(d, {u.ref: proven for u in updates})
    expect_ok = all(_reference_verdict(u, rules, owned, proven) for u in updates)
    assert (not d.refused) is expect_ok
    assert all(r.verdict is (Verdict.ALLOW if expect_ok else Verdict.REFUSE) for r in d.refs)


# --- receive-pack reports ----------------------------------------------------------------


def _payloads(data: bytes) -> list[bytes]:
    return [e.payload for e in PktLineReader().feed(data) if isinstance(e, Data)]


def _inner_lines(report: bytes, sideband: bool) -> tuple[list[bytes], list[bytes]]:
    packets = _payloads(report)
    if not sideband:
        return packets, []
    band1 = b"".join(p[1:] for p in packets if p[:1] == b"\1")
    band2 = [p[1:] for p in packets if p[:1] == b"\2"]
    return _payloads(band1), band2


@pytest.mark.parametrize("caps", [frozenset({"report-status", "side-band-64k"}), frozenset()])
def test_refusal_report(caps: frozenset[str]) -> None:
    limit = sideband_limit(caps)
    body = refusal_report(
        [("refs/heads/main", "airlock: no")], sideband=limit, message="airlock: request id 1"
    )
    lines, messages = _inner_lines(body, limit is not None)
    assert lines == [b"unpack ok\n", b"ng refs/heads/main airlock: no\n"]
    if limit is not None:
        assert messages == [b"airlock: request id 1\n"]


def _report(*lines: str, sideband: bool) -> bytes:
    inner = b"".join(encode_pkt(line.encode() + b"\n") for line in lines) + FLUSH
    if not sideband:
        return inner
    return (
        encode_pkt(b"\2progress\n")
        + encode_pkt(b"\1" + inner[:7])
        + encode_pkt(b"\1" + inner[7:])
        + FLUSH
    )


@pytest.mark.parametrize("sideband", [True, False])
def test_report_reader(sideband: bool) -> None:
    data = _report("unpack ok", "ok refs/heads/a", "ng refs/heads/b stale", sideband=sideband)
    r = ReportStatusReader(sideband=sideband)
    for i in range(len(data)):
        r.feed(data[i : i + 1])  # any chunking
    assert r.confirmed() == {"refs/heads/a"}


def test_report_reader_trusts_nothing_odd() -> None:
    for lines in (
        ("unpack ok", "ok refs/heads/a", "option refname refs/heads/other"),
        ("unpack failed", "ok refs/heads/a"),
    ):
        r = ReportStatusReader(sideband=False)
        r.feed(_report(*lines, sideband=False))
        assert r.confirmed() == set()
    r = ReportStatusReader(sideband=False)
    r.feed(b"zzzz")
    assert r.confirmed() == set()
    r = ReportStatusReader(sideband=False)
    r.feed(_report("unpack ok", "ok refs/heads/a", sideband=False)[:-4])  # no flush yet
    assert r.confirmed() == set()


def test_advertisement_loses_push_cert_only() -> None:
    head = encode_pkt(b"# service=git-receive-pack\n") + FLUSH
    first = encode_pkt(
        A.encode() + b" refs/heads/main\0report-status push-cert=123-abc atomic ofs-delta\n"
    )
    rest = encode_pkt(B.encode() + b" refs/heads/x\n") + FLUSH
    data = head + first + rest
    for step in (1, 5, len(data)):
        f = AdvertisementFilter()
        out = b"".join(f.feed(data[i : i + step]) for i in range(0, len(data), step))
        f.finish()
        assert b"push-cert" not in out
        assert (
            out
            == head
            + encode_pkt(A.encode() + b" refs/heads/main\0report-status atomic ofs-delta\n")
            + rest
        )
