"""Tests for airlock.core.hostnames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.hostnames import InvalidHostname, is_ip_literal, normalize_hostname


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("github.com", "github.com"),
        ("GitHub.COM", "github.com"),
        ("github.com.", "github.com"),
        ("API.GitHub.com.", "api.github.com"),
        ("localhost", "localhost"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("123.example", "123.example"),
        ("example.com1", "example.com1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("straße.de", "xn--strae-oqa.de"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 63] * 3) + "." + "a" * 61, ".".join(["a" * 63] * 3) + "." + "a" * 61),
    ],
)
def test_normalize_valid(raw: str, expected: str) -> None:
    assert normalize_hostname(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "..",
        "github.com..",
        ".github.com",
        "a..b",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b.com",
        " github.com",
        "github.com ",
        "github.com/",
        "github.com:443",
        "x@github.com",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4),  # 255 characters
        "foo.123",  # numeric TLD
        "foo.0x1f",  # hex TLD: URL parsers read this as IPv4
        "xn--zz.com",  # invalid punycode
        "\uff47ithub.com",  # fullwidth g: IDNA 2008 disallows, no UTS46 mapping
        "github\u3002com",  # ideographic full stop is not a separator here
        "exa\u200dmple.com",  # zero width joiner
        "a\x00b.com",
    ],
)
def test_normalize_invalid(raw: str) -> None:
    with pytest.raises(InvalidHostname):
        normalize_hostname(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "127.0.0.1",
        "127.0.0.1.",
        "127.1",
        "0x7f.1",
        "0x7F.0.0.1",
        "0177.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x",
        "999.999.999.999",
        "::1",
        "[::1]",
        "[fe80::1%25eth0]",
        "fe80::1%eth0",
        "::ffff:127.0.0.1",
        "[v1.fe]",
        "\uff11\uff12\uff17.\uff10.\uff10.\uff11",
        "127\uff0e0\uff0e0\uff0e1",
        "127\u30020\u30020\u30021",
    ],
)
def test_ip_literals(raw: str) -> None:
    assert is_ip_literal(raw)
    with pytest.raises(InvalidHostname, match="is an IP address"):
        normalize_hostname(raw)


@pytest.mark.parametrize(
    "raw",
    ["github.com", "1.2.3.4.5", "a.1", "1.a", "0xg", "", "github.com:443", "127..1", "1e3"],
)
def test_not_ip_literals(raw: str) -> None:
    assert not is_ip_literal(raw)


_LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_normalize_total(raw: str) -> None:
    """Arbitrary input yields a valid ASCII host name or InvalidHostname, nothing else."""
    try:
        out = normalize_hostname(raw)
    except InvalidHostname:
        return
    assert out.isascii()
    assert len(out) <= 253
    assert not is_ip_literal(out)
    for label in out.split("."):
        assert 1 <= len(label) <= 63
        assert set(label) <= set(_LDH)
        assert not label.startswith("-")
        assert not label.endswith("-")
    # Idempotent: the canonical form is a fixed point.
    assert normalize_hostname(out) == out


_label = st.text(alphabet=_LDH, min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-") and s[2:4] != "--"
)


@settings(max_examples=300)
@given(st.lists(_label, min_size=1, max_size=10), st.booleans(), st.booleans())
def test_normalize_ascii_names(labels: list[str], upper: bool, dot: bool) -> None:
    name = ".".join(labels)
    last = labels[-1]
    if last.isdigit() or (last.startswith("0x") and set(last[2:]) <= set("0123456789abcdef")):
        return  # numeric TLDs are rejected by design
    raw = (name.upper() if upper else name) + ("." if dot else "")
    assert normalize_hostname(raw) == name
