"""Tests for airlock.core.egress (and the pure DNS counters in airlock.gateway.dns_stats)."""

from __future__ import annotations

import base64
import ipaddress
import ssl
import struct

import pytest
from dnslib import QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.dnspolicy import answer
from airlock.core.egress import (
    DOH_DOMAINS,
    DOH_HOSTS,
    MAX_CLIENT_HELLO_BYTES,
    AllowEntry,
    AllowList,
    InvalidAllowEntry,
    SniResult,
    SniStatus,
    TargetRefused,
    classify_address,
    extract_sni,
    is_doh_request,
    is_known_doh_host,
    parse_absolute_url,
    parse_allow_entry,
    parse_connect_target,
    parse_proxy_authorization,
    same_host,
)
from airlock.core.hostnames import normalize_hostname
from airlock.gateway.dns_stats import DenialCounter, QueryRateLimiter, is_refused_reply

# ------------------------------------------------------------------------------ allowlist


@pytest.mark.parametrize(
    ("raw", "name", "wildcard"),
    [
        ("pkgs.example.com", "pkgs.example.com", False),
        ("PKGS.EXAMPLE.COM.", "pkgs.example.com", False),
        ("  files.pkgfiles.example.net ", "files.pkgfiles.example.net", False),
        ("*.pkgfiles.example.net", "pkgfiles.example.net", True),
        ("*.Example.COM.", "example.com", True),
        ("bücher.example", "xn--bcher-kva.example", False),
        ("*.bücher.example", "xn--bcher-kva.example", True),
    ],
)
def test_parse_allow_entry(raw: str, name: str, wildcard: bool) -> None:
    assert parse_allow_entry(raw) == AllowEntry(name=name, wildcard=wildcard)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "*",
        "*.",
        "*.com",  # a wildcard over a whole TLD
        "**.example.com",
        "a.*.example.com",
        "foo*.example.com",
        "*example.com",
        "10.0.0.1",
        "127.1",
        "[::1]",
        "::1",
        "*.10.0.0.1",
        "exa mple.com",
        "-bad.example",
        "a..b",
        "user@example.com",
        "example.com:443",
    ],
)
def test_parse_allow_entry_refuses(raw: str) -> None:
    with pytest.raises(InvalidAllowEntry):
        parse_allow_entry(raw)


def test_allowlist_exact_and_wildcard() -> None:
    allow = AllowList.parse(["pkgs.example.com", "*.pkgfiles.example.net", "Bücher.example"])
    assert allow.decide("pkgs.example.com") == (True, "exact")
    assert allow.decide("PKGS.Example.COM.") == (True, "exact")
    assert allow.decide("files.pkgfiles.example.net") == (True, "wildcard")
    assert allow.decide("a.b.c.pkgfiles.example.net") == (True, "wildcard")
    # A wildcard covers sub-domains only, never its own apex.
    assert allow.decide("pkgfiles.example.net") == (False, "not_allowlisted")
    assert allow.decide("xn--bcher-kva.example") == (True, "exact")
    assert allow.decide("BÜCHER.example") == (True, "exact")
    assert allow.decide("www.pkgs.example.com") == (False, "not_allowlisted")
    assert allow.decide("evilpkgfiles.example.net") == (False, "not_allowlisted")
    assert allow.decide("pkgs.example.com.evil.test") == (False, "not_allowlisted")
    assert allow.decide("10.0.0.1") == (False, "ip_literal")
    assert allow.decide("0x7f.1") == (False, "ip_literal")
    assert allow.decide("[::1]") == (False, "ip_literal")
    assert allow.decide("a..b") == (False, "invalid_host")
    assert allow.decide("") == (False, "invalid_host")


def test_allowlist_lenient_skips_bad_entries() -> None:
    allow, bad = AllowList.lenient(["pkgs.example.com", "10.0.0.1", "*.com", "ok.test"])
    assert bad == ["10.0.0.1", "*.com"]
    assert [str(e) for e in allow.entries] == ["pkgs.example.com", "ok.test"]
    with pytest.raises(InvalidAllowEntry):
        AllowList.parse(["pkgs.example.com", "*.com"])


def test_empty_allowlist_allows_nothing() -> None:
    assert AllowList([]).decide("pkgs.example.com") == (False, "not_allowlisted")


# ------------------------------------------------------------------------------ DoH list


def test_doh_list_is_substantial_and_normalised() -> None:
    assert len(DOH_HOSTS) >= 30
    for name in DOH_HOSTS | DOH_DOMAINS:
        assert normalize_hostname(name) == name
    for name in (
        "dns.google",
        "cloudflare-dns.com",
        "one.one.one.one",
        "mozilla.cloudflare-dns.com",
        "dns.quad9.net",
        "doh.opendns.com",
        "dns.adguard.com",
        "doh.cleanbrowsing.org",
        "dns.nextdns.io",
    ):
        assert is_known_doh_host(name)
    assert is_known_doh_host("abc123.cloudflare-gateway.com")
    assert is_known_doh_host("profile.dns.nextdns.io")
    assert not is_known_doh_host("google.com")
    assert not is_known_doh_host("pkgs.example.com")


@pytest.mark.parametrize(
    ("wildcard", "host"),
    [
        ("*.dns.google", "dns64.dns.google"),
        ("*.cloudflare-dns.com", "mozilla.cloudflare-dns.com"),
        ("*.one.one", "one.one.one.one"),
        ("*.quad9.net", "dns.quad9.net"),
        ("*.opendns.com", "doh.opendns.com"),
        ("*.adguard.com", "dns.adguard.com"),
        ("*.cleanbrowsing.org", "doh.cleanbrowsing.org"),
        ("*.nextdns.io", "dns.nextdns.io"),
        ("*.cloudflare-gateway.com", "x1y2.cloudflare-gateway.com"),
    ],
)
def test_doh_hosts_refused_through_wildcards(wildcard: str, host: str) -> None:
    allow = AllowList.parse([wildcard])
    assert allow.decide(host) == (False, "doh")
    assert allow.decide(host.upper() + ".") == (False, "doh")


def test_exact_entry_overrides_doh_with_warning() -> None:
    allow = AllowList.parse(["*.cloudflare-dns.com", "mozilla.cloudflare-dns.com"])
    d = allow.decide("Mozilla.Cloudflare-DNS.com.")
    assert d == (True, "doh_override")
    assert d.warning
    assert allow.decide("chrome.cloudflare-dns.com") == (False, "doh")
    assert not allow.decide("www.cloudflare-dns.com").warning
    # Even a TLD-wide wildcard (refused by the parser, possible in code) never opens DoH.
    wide = AllowList([AllowEntry("google", wildcard=True)])
    assert wide.decide("dns.google") == (False, "doh")
    allowed, rule = wide.decide("mail.google")
    assert (allowed, rule) == (True, "wildcard")


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        # IPv4
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("169.254.0.1", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.0.170", "reserved"),
        ("198.18.0.1", "reserved"),
        ("192.88.99.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        # IPv6
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("febf::1", "link_local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "ipv4_mapped"),
        ("::ffff:10.0.0.1", "ipv4_mapped"),
        ("::ffff:169.254.169.254", "ipv4_mapped"),
        ("::ffff:8.8.8.8", "ipv4_mapped"),
        ("::ffff:0:a00:1", "ipv4_translated"),
        ("64:ff9b::a9fe:a9fe", "nat64"),
        ("64:ff9b::808:808", "nat64"),
        ("64:ff9b:1::1", "nat64"),
        ("2002:a9fe:a9fe::1", "6to4"),
        ("2002:808:808::1", "6to4"),
        ("2001:0:4136:e378::1", "teredo"),
        ("2001::1", "teredo"),
        ("::10.0.0.1", "ipv4_compatible"),
        ("::8.8.8.8", "ipv4_compatible"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("100::1", "reserved"),
        ("2001:10::1", "reserved"),
        ("4000::1", "reserved"),  # outside 2000::/3
        ("::2", "ipv4_compatible"),
        ("not-an-ip", "invalid"),
    ],
)
def test_classify_address_refuses(ip: str, reason: str) -> None:
    assert classify_address(ip) == reason
    if ip != "not-an-ip":
        assert classify_address(ipaddress.ip_address(ip.split("%")[0])) == reason


@pytest.mark.parametrize(
    "ip", ["93.184.215.14", "151.101.0.223", "1.1.1.1", "2606:4700::1111", "2a04:4e42::223"]
)
def test_classify_address_allows_public_unicast(ip: str) -> None:
    assert classify_address(ip) is None


def test_classify_address_refuses_the_gateways_own_addresses() -> None:
    own = ["93.184.215.14", ipaddress.ip_address("2a04:4e42::1"), "garbage"]
    assert classify_address("93.184.215.14", own) == "gateway_address"
    assert classify_address("2a04:4e42::1", own) == "gateway_address"
    assert classify_address("93.184.215.15", own) is None
    # Own addresses are checked first, so a private one names the more specific reason.
    assert classify_address("10.213.0.1", ["10.213.0.1"]) == "gateway_address"


@given(st.ip_addresses())
def test_classify_address_never_raises_and_refuses_all_non_global(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    reason = classify_address(ip)
    if not ip.is_global:
        assert reason is not None
    if reason is None:
        assert ip.is_global


# ------------------------------------------------------------------------------ targets


def test_parse_connect_target() -> None:
    t = parse_connect_target("Pkgs.Example.com.:443")
    assert (t.host, t.port) == ("pkgs.example.com", 443)
    t = parse_connect_target("bücher.example:8443")
    assert (t.host, t.port) == ("xn--bcher-kva.example", 8443)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:443",
        "10.0.0.1:443",
        "127.1:443",
        "0x7f.0.0.1:443",
        "0177.0.0.1:443",
        "2130706433:443",
        "0x7f000001:443",
        "169.254.169.254.:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "[fe80::1%25eth0]:443",
        "::1",
        "::1:443",
        "1.1.1.1:443",
        "\uff11\uff12\uff17.\uff10.\uff10.\uff11:443",  # fullwidth digits
        "127\u30020\u30020\u30021:443",  # ideographic full stops
    ],
)
def test_parse_connect_target_refuses_ip_literals(target: str) -> None:
    with pytest.raises(TargetRefused) as exc:
        parse_connect_target(target)
    assert exc.value.rule == "ip_literal"


@pytest.mark.parametrize(
    "target",
    [
        "",
        "pkgs.example.com",
        "pkgs.example.com:",
        "pkgs.example.com:0",
        "pkgs.example.com:65536",
        "pkgs.example.com:99999",
        "pkgs.example.com:+443",
        "pkgs.example.com:-1",
        "pkgs.example.com:0443",
        "pkgs.example.com:44a",
        "pkgs.example.com:443 ",
        "pkgs.example.com:\u0664\u0664\u0663",  # Arabic-Indic digits
        "pkgs.example.com:\uff14\uff14\uff13",  # fullwidth digits
        ":443",
        "user@pkgs.example.com:443",
        "pkgs..example.com:443",
        "pkgs.example.com/x:443",
        "pypi_org.test:443",
        "a" * 64 + ".test:443",
    ],
)
def test_parse_connect_target_refuses_bad_targets(target: str) -> None:
    with pytest.raises(TargetRefused) as exc:
        parse_connect_target(target)
    assert exc.value.rule == "bad_target"


@given(st.text(max_size=80))
def test_parse_connect_target_only_raises_target_refused(target: str) -> None:
    try:
        t = parse_connect_target(target)
    except TargetRefused as exc:
        assert exc.rule in ("ip_literal", "bad_target")
    else:
        assert 0 < t.port < 65536
        assert normalize_hostname(t.host) == t.host


def test_parse_absolute_url() -> None:
    t = parse_absolute_url("http://Deb.Example.ORG/debian/dists?x=1#frag")
    assert (t.host, t.port, t.path, t.authority) == (
        "deb.example.org",
        80,
        "/debian/dists?x=1",
        "deb.example.org",
    )
    t = parse_absolute_url("HTTP://mirror.test:8080")
    assert (t.host, t.port, t.path, t.authority) == ("mirror.test", 8080, "/", "mirror.test:8080")
    t = parse_absolute_url("http://mirror.test?q")
    assert t.path == "/?q"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://pkgs.example.com/", "bad_target"),
        ("ftp://pkgs.example.com/", "bad_target"),
        ("/relative", "bad_target"),
        ("pkgs.example.com/x", "bad_target"),
        ("http://user:pw@pkgs.example.com/", "bad_target"),
        ("http:///x", "bad_target"),
        ("http://pkgs.example.com:0/", "bad_target"),
        ("http://127.0.0.1/", "ip_literal"),
        ("http://2130706433/", "ip_literal"),
        ("http://[::1]/", "ip_literal"),
        ("http://[::1]:80/", "ip_literal"),
        ("http://0x7f.1:80/", "ip_literal"),
    ],
)
def test_parse_absolute_url_refuses(url: str, rule: str) -> None:
    with pytest.raises(TargetRefused) as exc:
        parse_absolute_url(url)
    assert exc.value.rule == rule


def test_same_host() -> None:
    assert same_host("Pkgs.Example.com.", "pkgs.example.com")
    assert same_host("bücher.example", "xn--bcher-kva.example")
    assert not same_host("pkgs.example.com", "pkgs.example.com.evil")
    assert not same_host("", "")
    assert not same_host("127.0.0.1", "127.0.0.1")


def test_parse_proxy_authorization() -> None:
    def b(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    assert parse_proxy_authorization(f"Basic {b('airlock:tok123')}") == "tok123"
    assert parse_proxy_authorization(f"basic  {b('airlock:a:b')}") == "a:b"
    assert parse_proxy_authorization(f"Basic {b(':tok')}") == "tok"
    for bad in [
        None,
        "",
        "Basic",
        "Bearer tok",
        f"Basic {b('airlock')}",
        f"Basic {b('airlock:')}",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"airlock:\xff").decode(),
        f"Basic {b('airlock:' + 'x' * 2000)}",
    ]:
        assert parse_proxy_authorization(bad) is None


@given(st.text(max_size=200))
def test_parse_proxy_authorization_never_raises(value: str) -> None:
    parse_proxy_authorization(value)


# ------------------------------------------------------------------------------ SNI


def real_client_hello(server_hostname: str | None) -> bytes:
    """The bytes Python's ssl module sends first, as a client would into a tunnel."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def handshake_of(record_stream: bytes) -> bytes:
    """Concatenated handshake payloads of a stream of TLS records."""
    out, pos = b"", 0
    while pos < len(record_stream):
        (n,) = struct.unpack("!H", record_stream[pos + 3 : pos + 5])
        out += record_stream[pos + 5 : pos + 5 + n]
        pos += 5 + n
    return out


def as_records(handshake: bytes, sizes: list[int]) -> bytes:
    """Re-fragment ``handshake`` into TLS handshake records of the given sizes (then the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        if pos >= len(handshake):
            break
        chunk = handshake[pos : pos + max(1, size)]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
        pos += len(chunk)
    return out


def synthetic_hello(extensions: list[tuple[int, bytes]] | None) -> bytes:
    """A minimal ClientHello handshake message with the given extensions."""
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        ext = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(ext)) + ext
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_ext(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return 0, struct.pack("!H", len(entries)) + entries


NAMES = [
    "pypi.decoy.test",
    "Files.PkgFiles.example.net",
    "xn--bcher-kva.example",
    "a" * 63 + ".test",
]


@pytest.mark.parametrize("name", NAMES)
def test_sni_from_real_client_hello_every_prefix(name: str) -> None:
    data = real_client_hello(name)
    assert extract_sni(data) == SniResult(SniStatus.FOUND, name=name)
    for i in range(len(data)):
        assert extract_sni(data[:i]).status is SniStatus.NEED_MORE, i


@pytest.mark.parametrize("name", NAMES[:2])
def test_sni_from_real_client_hello_split_into_two_records_at_every_byte(name: str) -> None:
    hs = handshake_of(real_client_hello(name))
    for i in range(1, len(hs)):
        data = as_records(hs, [i])
        assert extract_sni(data).name == name, i
        # and still NEED_MORE on every prefix of the re-fragmented stream
        if i % 37 == 0:
            for j in range(len(data)):
                assert extract_sni(data[:j]).status is SniStatus.NEED_MORE


@settings(max_examples=150)
@given(
    st.sampled_from(NAMES),
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40),
)
def test_sni_real_client_hello_any_record_split(name: str, sizes: list[int]) -> None:
    hs = handshake_of(real_client_hello(name))
    assert extract_sni(as_records(hs, sizes)).name == name


def test_sni_ignores_what_follows_the_client_hello() -> None:
    data = real_client_hello("pypi.decoy.test")
    early = b"\x17\x03\x03\x00\x05hello"  # TLS 1.3 early data record
    assert extract_sni(data + early).name == "pypi.decoy.test"
    assert extract_sni(data + b"garbage").name == "pypi.decoy.test"


def test_no_sni_from_real_client_hello() -> None:
    assert extract_sni(real_client_hello(None)).status is SniStatus.NO_SNI
    # Python (like curl) sends no SNI for an IP address.
    assert extract_sni(real_client_hello("127.0.0.1")).status is SniStatus.NO_SNI


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00",
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert record
        b"\x17\x03\x03\x00\x05hello",  # application data first
        b"\x16\x02\x00\x00\x05hello",  # SSLv2-ish version
        b"\x16\x03\x01\x00\x00",  # empty handshake record
        b"\x16\x03\x01\xff\xff",  # record longer than allowed
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x00\x04\x01\x00\x00\x05",  # ClientHello too short to be one
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # ClientHello longer than the limit
    ],
)
def test_not_tls(data: bytes) -> None:
    assert extract_sni(data).status is SniStatus.NOT_TLS


def test_synthetic_client_hellos() -> None:
    def run(hs: bytes) -> SniResult:
        return extract_sni(as_records(hs, []))

    assert run(synthetic_hello(None)).status is SniStatus.NO_SNI
    assert run(synthetic_hello([])).status is SniStatus.NO_SNI
    assert run(synthetic_hello([(10, b"\x00\x02\x00\x1d")])).status is SniStatus.NO_SNI
    assert run(synthetic_hello([sni_ext(b"x.test")])).name == "x.test"
    # ECH present: flagged, so the proxy can refuse it.
    r = run(synthetic_hello([sni_ext(b"public.test"), (0xFE0D, b"\x00" * 8)]))
    assert (r.name, r.ech) == ("public.test", True)
    # Malformed: two host names, duplicate extension, non-ASCII name, bad lengths.
    assert run(synthetic_hello([sni_ext(b"a.test", b"b.test")])).status is SniStatus.NOT_TLS
    assert (
        run(synthetic_hello([sni_ext(b"a.test"), sni_ext(b"b.test")])).status is SniStatus.NOT_TLS
    )
    assert run(synthetic_hello([sni_ext("ä.test".encode())])).status is SniStatus.NOT_TLS
    assert run(synthetic_hello([sni_ext(b"")])).status is SniStatus.NOT_TLS
    assert run(synthetic_hello([(0, b"\x00\x06\x00\x00\x02ab")])).status is SniStatus.NOT_TLS
    assert run(synthetic_hello([(0, b"\x00\x05\x00\x00\x02ab!")])).status is SniStatus.NOT_TLS
    assert run(synthetic_hello([(0, b"")])).status is SniStatus.NOT_TLS
    # Unknown name types are skipped, as servers do.
    r = run(synthetic_hello([(0, b"\x00\x0b" + b"\x01\x00\x01z" + b"\x00\x00\x04a.bc")]))
    assert r.name == "a.bc"


def test_sni_reads_at_most_16k() -> None:
    # A ClientHello padded to just under the limit still parses...
    pad = 16 * 1024 - 200
    hs = synthetic_hello([sni_ext(b"big.test"), (21, b"\x00" * pad)])
    data = as_records(hs, [4000, 4000, 4000, 4000])
    assert len(data) < MAX_CLIENT_HELLO_BYTES
    assert extract_sni(data).name == "big.test"
    # ...one that needs more than 16 KiB does not, and no more input changes that.
    hs = synthetic_hello([(21, b"\x00" * (16 * 1024)), sni_ext(b"big.test")])
    data = as_records(hs, [4000, 4000, 4000, 4000])
    assert extract_sni(data).status is SniStatus.NOT_TLS
    assert extract_sni(data[:MAX_CLIENT_HELLO_BYTES]).status is SniStatus.NOT_TLS
    # Many tiny records: the record headers count against the limit too.
    hs = synthetic_hello([(21, b"\x00" * 4000), sni_ext(b"big.test")])
    data = as_records(hs, [1] * len(hs))
    assert extract_sni(data).status is SniStatus.NOT_TLS


@settings(max_examples=600)
@given(st.binary(max_size=4096))
def test_extract_sni_never_raises(data: bytes) -> None:
    r = extract_sni(data)
    assert isinstance(r, SniResult)
    assert (r.name is not None) == (r.status is SniStatus.FOUND)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_extract_sni_never_raises_on_tls_shaped_input(tail: bytes) -> None:
    # Valid record and handshake headers in front, so the fuzzing reaches the inner parsers.
    hs = b"\x01" + len(tail).to_bytes(3, "big") + tail
    for data in (as_records(hs, []), as_records(hs, [3, 7]), synthetic_hello(None)[:4] + tail):
        assert isinstance(extract_sni(data), SniResult)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=40)),
        max_size=8,
    )
)
def test_extract_sni_never_raises_on_arbitrary_extensions(
    exts: list[tuple[int, bytes]],
) -> None:
    r = extract_sni(as_records(synthetic_hello(exts), []))
    assert r.status in (SniStatus.FOUND, SniStatus.NO_SNI, SniStatus.NOT_TLS)


# ------------------------------------------------------------------------------ DoH on HTTP


@pytest.mark.parametrize(
    ("method", "path", "headers", "reason"),
    [
        ("POST", "/q", [("Content-Type", "application/dns-message")], "doh_content_type"),
        ("POST", "/q", [(b"content-type", b"Application/DNS-Message; x=1")], "doh_content_type"),
        ("GET", "/q", [("Accept", "application/dns-json")], "doh_accept"),
        ("GET", "/q", [("accept", "text/html, application/dns-message;q=0.9")], "doh_accept"),
        ("GET", "/dns-query?dns=AAABAAAB", [], "doh_path"),
        ("GET", "/DNS-Query", [], "doh_path"),
        ("GET", "/a/dns-query/", [], "doh_path"),
        ("GET", "/%64ns-query", [], "doh_path"),
        ("GET", "/%2564ns-query", [], "doh_path"),
        ("GET", "/resolve?dns=AAABAAAB", [], "doh_query"),
        ("GET", "/x?a=1&DNS=q", [], "doh_query"),
        ("GET", "/x?%64ns=q", [], "doh_query"),
        ("GET", "/resolve?name=x&ct=application/dns-json", [], "doh_media_in_url"),
    ],
)
def test_doh_requests(
    method: str, path: str, headers: list[tuple[str | bytes, str | bytes]], reason: str
) -> None:
    assert is_doh_request(method, path, headers) == reason


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/simple/requests/", [("Accept", "application/vnd.pypi.simple.v1+json")]),
        ("/debian/dists/bookworm/InRelease", [("Accept", "*/*")]),
        ("/search?q=dns", [("Content-Type", "application/json")]),
        ("/dns-query-docs.html", []),
        ("/x?dnsname=1", []),
    ],
)
def test_not_doh_requests(path: str, headers: list[tuple[str | bytes, str | bytes]]) -> None:
    assert is_doh_request("GET", path, headers) is None


@given(st.text(max_size=60), st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40))))
def test_is_doh_request_never_raises(path: str, headers: list[tuple[str, str]]) -> None:
    r = is_doh_request("GET", path, list(headers))
    assert r is None or r.startswith("doh_")


# ------------------------------------------------------------------------------ DNS counters


def test_denial_counter_reports_once_per_interval() -> None:
    c = DenialCounter(interval=10, now=100.0)
    for _ in range(500):
        c.add("10.213.0.2", "refused")
    c.add("10.213.0.2", "malformed")
    c.add("10.213.0.18", "refused", n=3)
    assert c.pending == 504
    assert c.flush(105.0) is None  # not due yet
    s = c.flush(110.0)
    assert s is not None
    assert s["total"] == 504
    assert s["by_reason"] == {"refused": 503, "malformed": 1}
    assert s["by_source"] == {"10.213.0.2": 501, "10.213.0.18": 3}
    assert c.flush(125.0) is None  # nothing new: no line at all
    c.add("x", "refused")
    assert c.flush(126.0) is None  # interval restarted at 125
    assert c.flush(126.0, force=True) is not None


def test_denial_counter_memory_is_bounded() -> None:
    c = DenialCounter(interval=1, now=0.0, max_keys=10)
    for i in range(1000):
        c.add(f"10.0.{i // 256}.{i % 256}", "refused")
    s = c.flush(2.0)
    assert s is not None and s["total"] == 1000
    by_source = s["by_source"]
    assert isinstance(by_source, dict) and by_source["*"] == 990


def test_rate_limiter_token_bucket() -> None:
    rl = QueryRateLimiter(rate=10, burst=20)
    assert all(rl.allow("a", 0.0) for _ in range(20))
    assert not rl.allow("a", 0.0)
    assert rl.allow("b", 0.0)  # per source
    assert rl.allow("a", 0.1)  # 0.1 s at 10/s = one token
    assert not rl.allow("a", 0.1)
    assert not rl.allow("a", 0.05)  # a clock stepping back mints nothing
    assert sum(rl.allow("a", 100.0) for _ in range(50)) == 20  # refill caps at burst
    with pytest.raises(ValueError):
        QueryRateLimiter(rate=0, burst=1)


def test_rate_limiter_memory_is_bounded() -> None:
    rl = QueryRateLimiter(rate=1, burst=5, max_sources=100)
    for i in range(10_000):
        rl.allow(f"s{i}", float(i))
    assert len(rl) <= 100


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 1000)), max_size=200))
def test_rate_limiter_never_exceeds_burst_plus_refill(events: list[tuple[str, float]]) -> None:
    rl = QueryRateLimiter(rate=2, burst=5)
    events.sort(key=lambda e: e[1])
    allowed: dict[str, int] = {}
    for src, t in events:
        if rl.allow(src, t):
            allowed[src] = allowed.get(src, 0) + 1
    span = events[-1][1] - events[0][1] if events else 0.0
    for n in allowed.values():
        assert n <= 5 + 2 * span + 1e-6


def test_is_refused_reply_matches_dnspolicy() -> None:
    names = {"airlock.internal": "10.213.0.1"}
    ok = answer(DNSRecord.question("airlock.internal").pack(), names)
    refused = answer(DNSRecord.question("exfil.evil.test", QTYPE.get(QTYPE.TXT)).pack(), names)
    assert ok is not None and refused is not None
    assert not is_refused_reply(ok)
    assert is_refused_reply(refused)
    assert not is_refused_reply(b"")
