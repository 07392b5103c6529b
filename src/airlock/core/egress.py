"""Egress policy for the sandbox proxy. Pure: no sockets, no DNS, no clocks.

What is decided here:

* **Allowlist** (:class:`AllowList`): exact names and ``*.`` wildcards, normalised with
  :func:`airlock.core.hostnames.normalize_hostname` (IDNA, case, trailing dot). A wildcard
  ``*.example.com`` matches sub-domains at any depth (``a.example.com``, ``a.b.example.com``)
  but NOT ``example.com`` itself: list both when both are wanted. This is the usual TLS
  wildcard intuition and keeps an entry from quietly granting its parent. A wildcard must
  sit on at least two labels (``*.com`` is refused) so one entry cannot open a whole TLD.
* **DNS-over-HTTPS hosts** (:data:`DOH_HOSTS`, :data:`DOH_DOMAINS`): refused even when a
  wildcard allows them, because DoH would give the sandbox a resolver for the outside world.
  An EXACT allow entry naming the host overrides (allowed, rule ``doh_override``, a warning).
* **Address classes** (:func:`classify_address`): every resolved answer must be a public
  unicast address; anything else (loopback, private, link-local incl. cloud metadata,
  CGNAT, multicast, reserved, IPv4-embedding IPv6 prefixes, the gateway's own addresses)
  gets a refusal reason.
* **Request targets** (:func:`parse_connect_target`, :func:`parse_absolute_url`): IP
  literals in any spelling are refused; the proxy only ever dials addresses it resolved.
* **SNI** (:func:`extract_sni`): a sans-I/O TLS ClientHello parser, so the proxy can check
  that a CONNECT tunnel's TLS names the host that CONNECT named (no domain fronting).
* **Plain-HTTP DoH** (:func:`is_doh_request`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote

from airlock.core.hostnames import InvalidHostname, is_ip_literal, normalize_hostname

__all__ = [
    "DOH_DOMAINS",
    "DOH_HOSTS",
    "MAX_CLIENT_HELLO_BYTES",
    "AllowEntry",
    "AllowList",
    "Decision",
    "HttpTarget",
    "IPAddress",
    "InvalidAllowEntry",
    "SniResult",
    "SniStatus",
    "Target",
    "TargetRefused",
    "classify_address",
    "extract_sni",
    "is_doh_request",
    "is_known_doh_host",
    "parse_absolute_url",
    "parse_allow_entry",
    "parse_connect_target",
    "parse_proxy_authorization",
    "same_host",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------------
# DNS-over-HTTPS endpoints
# ---------------------------------------------------------------------------------------------

#: Well-known public DoH endpoints (exact names). Refused unless an exact allow entry names one.
DOH_HOSTS: frozenset[str] = frozenset(
    {
        # Google
        "dns.google",
        "dns.google.com",
        "dns64.dns.google",
        "8888.google",
        # Cloudflare
        "cloudflare-dns.com",
        "mozilla.cloudflare-dns.com",
        "chrome.cloudflare-dns.com",
        "one.one.one.one",
        "1dot1dot1dot1.cloudflare-dns.com",
        "security.cloudflare-dns.com",
        "family.cloudflare-dns.com",
        # Quad9
        "dns.quad9.net",
        "dns9.quad9.net",
        "dns10.quad9.net",
        "dns11.quad9.net",
        "dns12.quad9.net",
        # OpenDNS / Cisco
        "doh.opendns.com",
        "doh.familyshield.opendns.com",
        "doh.umbrella.com",
        # AdGuard
        "dns.adguard.com",
        "dns-family.adguard.com",
        "dns-unfiltered.adguard.com",
        "dns.adguard-dns.com",
        "unfiltered.adguard-dns.com",
        "family.adguard-dns.com",
        # CleanBrowsing
        "doh.cleanbrowsing.org",
        # NextDNS
        "dns.nextdns.io",
        # Control D
        "dns.controld.com",
        "freedns.controld.com",
        # Mullvad
        "doh.mullvad.net",
        "dns.mullvad.net",
        "adblock.dns.mullvad.net",
        "base.dns.mullvad.net",
        # Others in common client presets (curl, Firefox, Chrome, dnscrypt-proxy lists)
        "doh.dns.sb",
        "doh.pub",
        "dns.alidns.com",
        "dns0.eu",
        "open.dns0.eu",
        "doh.libredns.gr",
        "doh.applied-privacy.net",
        "dns.switch.ch",
        "dns.digitale-gesellschaft.ch",
        "ordns.he.net",
        "doh.xfinity.com",
        "dns.twnic.tw",
        "doh.tiar.app",
        "dns.rabbitdns.org",
    }
)

#: Domains under which every sub-domain is a DoH endpoint (per-account or per-profile names,
#: e.g. ``<id>.cloudflare-gateway.com``, ``<profile>.dns.nextdns.io``).
DOH_DOMAINS: frozenset[str] = frozenset(
    {
        "cloudflare-dns.com",
        "cloudflare-gateway.com",
        "dns.nextdns.io",
        "dns.google",
        "dns.controld.com",
        "dns.quad9.net",
        "dns.adguard-dns.com",
    }
)


def is_known_doh_host(host: str) -> bool:
    """True if normalised ``host`` is a known DoH endpoint or under a DoH-only domain."""
    if host in DOH_HOSTS:
        return True
    return any(host.endswith("." + d) for d in DOH_DOMAINS)


# ---------------------------------------------------------------------------------------------
# Allowlist
# ---------------------------------------------------------------------------------------------


class InvalidAllowEntry(ValueError):
    """An allowlist entry that is not a host name or a ``*.`` wildcard over one."""


@dataclass(frozen=True)
class AllowEntry:
    """One normalised allowlist entry: ``name`` without the ``*.`` prefix for wildcards."""

    name: str
    wildcard: bool

    def __str__(self) -> str:
        return f"*.{self.name}" if self.wildcard else self.name

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised."""
        if self.wildcard:
            return host.endswith("." + self.name)
        return host == self.name


def parse_allow_entry(raw: str) -> AllowEntry:
    """Normalise one entry of ``--allow-host`` or the config's default list.

    Raises:
        InvalidAllowEntry: empty, an IP literal, a ``*`` anywhere but a leading ``*.``
            label, a wildcard over a single label (``*.com``), or not a valid host name.
    """
    s = raw.strip()
    wildcard = s.startswith("*.")
    base = s[2:] if wildcard else s
    if "*" in base:
        raise InvalidAllowEntry(f"{raw!r}: '*' is allowed only as a whole leading label ('*.')")
    if is_ip_literal(base):
        raise InvalidAllowEntry(f"{raw!r}: IP addresses cannot be allowlisted, only names")
    try:
        name = normalize_hostname(base)
    except InvalidHostname as exc:
        raise InvalidAllowEntry(f"{raw!r}: {exc}") from None
    if wildcard and "." not in name:
        raise InvalidAllowEntry(f"{raw!r}: a wildcard must cover at least two labels")
    return AllowEntry(name=name, wildcard=wildcard)


class Decision(NamedTuple):
    """``(allowed, rule)``. Rules: ``exact``, ``wildcard``, ``doh_override`` (allowed);
    ``not_allowlisted``, ``doh``, ``ip_literal``, ``invalid_host`` (refused)."""

    allowed: bool
    rule: str

    @property
    def warning(self) -> bool:
        """Allowed, but only because an exact entry overrides the DoH list."""
        return self.rule == "doh_override"


class AllowList:
    """A set of exact and wildcard entries; build with :meth:`parse` or :meth:`lenient`."""

    def __init__(self, entries: Iterable[AllowEntry]) -> None:
        self.entries: tuple[AllowEntry, ...] = tuple(dict.fromkeys(entries))
        self._exact = frozenset(e.name for e in self.entries if not e.wildcard)
        self._wild = tuple(e for e in self.entries if e.wildcard)

    @classmethod
    def parse(cls, raw: Iterable[str]) -> AllowList:
        """Strict: raises :class:`InvalidAllowEntry` on the first bad entry (for config)."""
        return cls(parse_allow_entry(r) for r in raw)

    @classmethod
    def lenient(cls, raw: Iterable[str]) -> tuple[AllowList, list[str]]:
        """Skip bad entries (fail closed for that entry) and return them for logging."""
        good: list[AllowEntry] = []
        bad: list[str] = []
        for r in raw:
            try:
                good.append(parse_allow_entry(r))
            except InvalidAllowEntry:
                bad.append(r)
        return cls(good), bad

    def match(self, host: str) -> AllowEntry | None:
        """The entry that allows normalised ``host`` (exact preferred), ignoring the DoH list."""
        if host in self._exact:
            return AllowEntry(host, wildcard=False)
        for e in self._wild:
            if e.matches(host):
                return e
        return None

    def decide(self, host: str) -> Decision:
        """Whether a connection to ``host`` (raw, normalised here) may be made."""
        if is_ip_literal(host):
            return Decision(False, "ip_literal")
        try:
            name = normalize_hostname(host)
        except InvalidHostname:
            return Decision(False, "invalid_host")
        entry = self.match(name)
        if entry is None:
            return Decision(False, "not_allowlisted")
        if is_known_doh_host(name):
            # Only a deliberate, exact entry may open a DoH endpoint; a wildcard never does.
            return Decision(True, "doh_override") if not entry.wildcard else Decision(False, "doh")
        return Decision(True, "wildcard" if entry.wildcard else "exact")


# ---------------------------------------------------------------------------------------------
# Address classes
# ---------------------------------------------------------------------------------------------

_N4 = ipaddress.IPv4Network
_N6 = ipaddress.IPv6Network

# Most specific first: the first match names the reason. Anything that is not listed here but
# is still not global unicast is caught by the fall-backs in classify_address.
_V4_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_N4("255.255.255.255/32"), "broadcast"),
    (_N4("0.0.0.0/8"), "unspecified"),  # "this network"; 0.0.0.0 reaches the local host
    (_N4("10.0.0.0/8"), "private"),
    (_N4("100.64.0.0/10"), "cgnat"),
    (_N4("127.0.0.0/8"), "loopback"),
    (_N4("169.254.0.0/16"), "link_local"),  # includes the 169.254.169.254 metadata service
    (_N4("172.16.0.0/12"), "private"),
    (_N4("192.0.0.0/24"), "reserved"),  # IETF protocol assignments (incl. 192.0.0.170 NAT64)
    (_N4("192.0.2.0/24"), "documentation"),
    (_N4("192.31.196.0/24"), "reserved"),  # AS112
    (_N4("192.52.193.0/24"), "reserved"),  # AMT
    (_N4("192.88.99.0/24"), "reserved"),  # 6to4 relay anycast
    (_N4("192.168.0.0/16"), "private"),
    (_N4("192.175.48.0/24"), "reserved"),  # AS112 direct delegation
    (_N4("198.18.0.0/15"), "reserved"),  # benchmarking
    (_N4("198.51.100.0/24"), "documentation"),
    (_N4("203.0.113.0/24"), "documentation"),
    (_N4("224.0.0.0/4"), "multicast"),
    (_N4("240.0.0.0/4"), "reserved"),
)

_V6_RANGES: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_N6("::/128"), "unspecified"),
    (_N6("::1/128"), "loopback"),
    # IPv4-embedding prefixes: the packet may end up at the embedded IPv4 address, which
    # could be anything (10.0.0.1, 169.254.169.254...), so they are refused outright.
    (_N6("::ffff:0:0/96"), "ipv4_mapped"),
    (_N6("::ffff:0:0:0/96"), "ipv4_translated"),
    (_N6("::/96"), "ipv4_compatible"),
    (_N6("64:ff9b::/96"), "nat64"),
    (_N6("64:ff9b:1::/48"), "nat64"),
    (_N6("100::/64"), "reserved"),  # discard-only
    (_N6("2001::/32"), "teredo"),
    (_N6("2001:db8::/32"), "documentation"),
    (_N6("2001::/23"), "reserved"),  # IETF protocol assignments (ORCHID, benchmarking...)
    (_N6("2002::/16"), "6to4"),
    (_N6("3fff::/20"), "documentation"),
    (_N6("5f00::/16"), "reserved"),  # SRv6 SIDs
    (_N6("fc00::/7"), "private"),  # unique local
    (_N6("fe80::/10"), "link_local"),
    (_N6("fec0::/10"), "private"),  # deprecated site-local
    (_N6("ff00::/8"), "multicast"),
)

_V6_GLOBAL_UNICAST = _N6("2000::/3")


def _as_ip(value: IPAddress | str) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(value.split("%", 1)[0])


def classify_address(
    ip: IPAddress | str, own_addresses: Iterable[IPAddress | str] = ()
) -> str | None:
    """Why the proxy must not dial ``ip``, or None for a public unicast address.

    Reasons: ``gateway_address``, ``loopback``, ``private``, ``link_local``, ``cgnat``,
    ``multicast``, ``unspecified``, ``broadcast``, ``reserved``, ``documentation``,
    ``ipv4_mapped``, ``ipv4_translated``, ``ipv4_compatible``, ``nat64``, ``teredo``,
    ``6to4``, ``invalid``. IPv6 outside 2000::/3 (not yet allocated as unicast) is
    ``reserved``; so is anything else Python does not consider global.
    """
    try:
        addr = _as_ip(ip)
    except ValueError:
        return "invalid"
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    for own in own_addresses:
        try:
            if _as_ip(own) == addr:
                return "gateway_address"
        except ValueError:
            continue
    if isinstance(addr, ipaddress.IPv4Address):
        for net4, reason in _V4_RANGES:
            if addr in net4:
                return reason
    else:
        for net6, reason in _V6_RANGES:
            if addr in net6:
                return reason
        if addr not in _V6_GLOBAL_UNICAST:
            return "reserved"
    # Belt and braces: a range this table misses but the IANA registries mark non-global.
    if not addr.is_global:
        return "reserved"
    return None


# ---------------------------------------------------------------------------------------------
# Request targets
# ---------------------------------------------------------------------------------------------


class TargetRefused(ValueError):
    """A request target the proxy will not use; ``rule`` is the short name for the client."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule


@dataclass(frozen=True)
class Target:
    host: str  # normalised
    port: int


@dataclass(frozen=True)
class HttpTarget:
    host: str  # normalised
    port: int
    path: str  # origin-form: path and query, starts with "/"

    @property
    def authority(self) -> str:
        """The ``Host`` header value for the upstream request."""
        return self.host if self.port == 80 else f"{self.host}:{self.port}"


def _parse_port(s: str) -> int:
    # ASCII digits only, no sign, no leading zero, 1..65535.
    if not (1 <= len(s) <= 5 and s.isascii() and s.isdigit()) or s.startswith("0"):
        raise TargetRefused("bad_target", f"bad port {s[:20]!r}")
    port = int(s)
    if not 0 < port < 65536:
        raise TargetRefused("bad_target", f"port {port} out of range")
    return port


def _parse_authority(authority: str, default_port: int | None) -> Target:
    if not authority:
        raise TargetRefused("bad_target", "empty host")
    if authority.startswith("[") or is_ip_literal(authority):
        raise TargetRefused("ip_literal", "IP literals are refused; use a host name")
    if "@" in authority:
        raise TargetRefused("bad_target", "user information is not allowed in the target")
    host, sep, port_s = authority.rpartition(":")
    if not sep:
        if default_port is None:
            raise TargetRefused("bad_target", "CONNECT needs host:port")
        host, port = authority, default_port
    else:
        port = _parse_port(port_s)
    if is_ip_literal(host):
        raise TargetRefused("ip_literal", "IP literals are refused; use a host name")
    try:
        name = normalize_hostname(host)
    except InvalidHostname:
        raise TargetRefused("bad_target", "not a valid host name") from None
    return Target(host=name, port=port)


def parse_connect_target(target: str) -> Target:
    """Parse a CONNECT request's authority-form target ``host:port``.

    Raises:
        TargetRefused: ``ip_literal`` for any IP spelling (``127.1``, ``0x7f.0.0.1``,
            ``[::1]:443``, ``2130706433:443``...); ``bad_target`` for anything else unusable.
    """
    return _parse_authority(target, default_port=None)


def parse_absolute_url(target: str) -> HttpTarget:
    """Parse a plain-HTTP proxy request's absolute-form target ``http://host[:port]/path``.

    Only ``http``: HTTPS goes through CONNECT. Raises :class:`TargetRefused`.
    """
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise TargetRefused("bad_target", "only absolute http:// URLs are proxied")
    cut = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            cut = min(cut, i)
    authority, path = rest[:cut], rest[cut:]
    t = _parse_authority(authority, default_port=80)
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return HttpTarget(host=t.host, port=t.port, path=path)


def same_host(a: str, b: str) -> bool:
    """Both names normalise to the same host; an invalid name matches nothing."""
    try:
        return normalize_hostname(a) == normalize_hostname(b)
    except InvalidHostname:
        return False


MAX_PROXY_AUTHORIZATION = 1024


def parse_proxy_authorization(value: str | None) -> str | None:
    """The proxy token from ``Proxy-Authorization: Basic base64(user:token)``, else None.

    The user name is ignored (the sandbox's URL uses ``airlock``); the password is the token.
    Anything malformed, oversized or not Basic gives None, never an exception.
    """
    if value is None or len(value) > MAX_PROXY_AUTHORIZATION:
        return None
    scheme, _, blob = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    _user, sep, token = decoded.partition(":")
    return token if sep and token else None


# ---------------------------------------------------------------------------------------------
# TLS ClientHello SNI
# ---------------------------------------------------------------------------------------------

#: The proxy reads at most this much of a tunnel before it must have seen the whole
#: ClientHello. Real ones are < 2 KiB (post-quantum key shares ~1.8 KiB).
MAX_CLIENT_HELLO_BYTES = 16 * 1024

_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ECH = 0xFE0D  # encrypted_client_hello: the real SNI would be hidden inside
_MAX_RECORD = 2**14 + 256  # plaintext limit plus slack some stacks use
# legacy_version + random + empty session id + one cipher suite + one compression method
_MIN_CLIENT_HELLO = 2 + 32 + 1 + 2 + 2 + 1 + 1


class SniStatus(enum.Enum):
    NEED_MORE = "need_more"
    NO_SNI = "no_sni"
    NOT_TLS = "not_tls"
    FOUND = "found"


@dataclass(frozen=True)
class SniResult:
    status: SniStatus
    name: str | None = None  # set when FOUND: the raw host_name, ASCII
    ech: bool = False  # the ClientHello carries an encrypted_client_hello extension
    reason: str = ""  # for logs when NOT_TLS


_NEED_MORE = SniResult(SniStatus.NEED_MORE)


def _not_tls(reason: str) -> SniResult:
    return SniResult(SniStatus.NOT_TLS, reason=reason)


class _Malformed(Exception):
    pass


class _Reader:
    """Bounds-checked cursor over one ClientHello body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec(self, len_bytes: int) -> bytes:
        n = int.from_bytes(self.take(len_bytes), "big")
        return self.take(n)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_client_hello(body: bytes) -> SniResult:
    r = _Reader(body)
    r.take(2)  # legacy_version
    r.take(32)  # random
    if len(r.vec(1)) > 32:
        raise _Malformed("session id longer than 32 bytes")
    suites = r.vec(2)
    if not suites or len(suites) % 2:
        raise _Malformed("bad cipher suite list")
    if not r.vec(1):
        raise _Malformed("no compression methods")
    if r.left == 0:
        return SniResult(SniStatus.NO_SNI)  # pre-extension ClientHello
    ext = _Reader(r.vec(2))
    if r.left:
        raise _Malformed("bytes after extensions")
    seen: set[int] = set()
    name: str | None = None
    ech = False
    while ext.left:
        etype = ext.u16()
        edata = ext.vec(2)
        if etype in seen:
            raise _Malformed("duplicate extension")  # RFC 8446 s4.2
        seen.add(etype)
        if etype == _EXT_ECH:
            ech = True
        elif etype == _EXT_SERVER_NAME:
            name = _parse_server_name(edata)
    if name is None:
        return SniResult(SniStatus.NO_SNI, ech=ech)
    return SniResult(SniStatus.FOUND, name=name, ech=ech)


def _parse_server_name(edata: bytes) -> str:
    e = _Reader(edata)
    lst = _Reader(e.vec(2))
    if e.left or not lst.left:
        raise _Malformed("bad server_name extension")
    found: str | None = None
    while lst.left:
        name_type = lst.u8()
        raw = lst.vec(2)
        if name_type != 0:
            continue  # unknown name types are skipped, as servers do
        if found is not None:
            raise _Malformed("two host_name entries")  # RFC 6066 s3
        if not raw or not raw.isascii():
            raise _Malformed("host_name not ASCII")
        found = raw.decode("ascii")
    if found is None:
        raise _Malformed("server_name without host_name")
    return found


def client_hello_sni(body: bytes) -> SniResult:
    """The SNI of one ClientHello message body (after its 4-byte handshake header); FOUND,
    NO_SNI or NOT_TLS (malformed). Never raises."""
    if len(body) < _MIN_CLIENT_HELLO:
        return _not_tls("bad ClientHello length")
    try:
        return _parse_client_hello(body)
    except _Malformed as exc:
        return _not_tls(f"malformed ClientHello: {exc}")


def extract_sni(data: bytes) -> SniResult:
    """Find the SNI host name in the first bytes a client sent into a tunnel.

    ``data`` is everything received so far (call again with more when the result is
    NEED_MORE). Handles a ClientHello split across several TLS records, and ignores
    whatever follows it (TLS 1.3 early data). Never raises. Looks at no more than
    :data:`MAX_CLIENT_HELLO_BYTES`; a ClientHello that needs more is NOT_TLS.
    """
    data = data[:MAX_CLIENT_HELLO_BYTES]
    hs = bytearray()
    pos = 0
    while True:
        if hs and hs[0] != _CLIENT_HELLO:
            return _not_tls("first handshake message is not a ClientHello")
        if len(hs) >= 4:
            length = int.from_bytes(hs[1:4], "big")
            if length < _MIN_CLIENT_HELLO or 4 + length > MAX_CLIENT_HELLO_BYTES:
                return _not_tls("bad ClientHello length")
            if len(hs) >= 4 + length:
                try:
                    return _parse_client_hello(bytes(hs[4 : 4 + length]))
                except _Malformed as exc:
                    return _not_tls(f"malformed ClientHello: {exc}")
        if len(data) - pos < 5:
            if pos < len(data) and data[pos] != _TLS_HANDSHAKE:
                return _not_tls("not a TLS handshake record")
            break
        ctype, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != _TLS_HANDSHAKE:
            return _not_tls("not a TLS handshake record")
        if major != 3:
            return _not_tls("not a TLS record version")
        if length == 0 or length > _MAX_RECORD:
            return _not_tls("bad record length")  # RFC 8446 s5.1: no empty handshake records
        # A partial record body still carries ClientHello bytes; parse as soon as they suffice.
        hs += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    if len(data) >= MAX_CLIENT_HELLO_BYTES:
        return _not_tls("ClientHello larger than the limit")
    return _NEED_MORE


# ---------------------------------------------------------------------------------------------
# DNS-over-HTTPS on plain HTTP
# ---------------------------------------------------------------------------------------------

_DOH_MEDIA = ("application/dns-message", "application/dns-json", "application/dns-udpwireformat")


def _text(v: str | bytes) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def is_doh_request(
    method: str | bytes,
    target_path: str | bytes,
    headers: Iterable[tuple[str | bytes, str | bytes]],
) -> str | None:
    """A reason (``doh_content_type``, ``doh_accept``, ``doh_path``, ``doh_query``,
    ``doh_media_in_url``) if this plain-HTTP request looks like DNS-over-HTTPS, else None.

    ``target_path`` is the path and query (origin-form). Matching is deliberately broad:
    any DNS media type anywhere in Content-Type or Accept, any ``dns-query`` path segment,
    any ``dns`` query parameter, after percent-decoding twice.
    """
    del method  # GET (?dns=) and POST (body) DoH are both caught by the checks below
    for name, value in headers:
        n = _text(name).strip().lower()
        v = _text(value).lower()
        if n in ("content-type", "accept") and any(m in v for m in _DOH_MEDIA):
            return "doh_content_type" if n == "content-type" else "doh_accept"
    raw = _text(target_path)
    # Decode twice so "%252Fdns-query" cannot hide the path from a lenient server.
    decoded = unquote(unquote(raw, errors="replace"), errors="replace").lower()
    path, _, query = decoded.partition("?")
    if any(seg.strip() == "dns-query" for seg in path.replace("\\", "/").split("/")):
        return "doh_path"
    for key, _value in parse_qsl(query, keep_blank_values=True):
        if key.strip() == "dns":
            return "doh_query"
    if any(m in decoded for m in _DOH_MEDIA):
        return "doh_media_in_url"  # e.g. Cloudflare's ?ct=application/dns-json
    return None
