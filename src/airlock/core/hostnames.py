"""Host name normalization and IP-literal detection.

Pure functions: no DNS, no sockets. Used to canonicalize configured upstream
hosts so that later comparisons can be exact string equality.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import idna

__all__ = ["InvalidHostname", "is_ip_literal", "normalize_hostname"]

MAX_HOSTNAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

# One component of an IPv4 address as inet_aton()/WHATWG accept it:
# decimal, octal (leading 0, still all digits) or hex ("0x" alone means 0).
_NUMERIC_PART = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")

# Characters that UTS46-style parsers (browsers, some URL libraries) treat as
# label separators; considered when deciding whether something *might* be an IP.
_DOT_EQUIVALENTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class InvalidHostname(ValueError):
    """Raised when a string is not an acceptable DNS host name."""


def is_ip_literal(s: str) -> bool:
    """Return True if ``s`` is, or could be parsed by a lenient client as, an IP address.

    Deliberately errs on the side of True: bracketed forms (``[::1]``), IPv6,
    and every IPv4 spelling that libc's ``inet_aton`` or a URL parser may accept
    ("127.1", "0x7f.1", "0177.0.0.1", "2130706433", fullwidth digits, a
    trailing dot) all count.
    """
    t = s.strip()
    if not t:
        return False
    # RFC 3986 IP-literal: anything in brackets is an IPv6/IPvFuture address.
    if t.startswith("[") and t.endswith("]"):
        return True
    if ":" in t:
        try:
            ipaddress.IPv6Address(t)
        except ValueError:
            return False
        return True
    # NFKC folds fullwidth digits/letters to ASCII, as a UTS46 parser would.
    t = unicodedata.normalize("NFKC", t).translate(_DOT_EQUIVALENTS)
    if t.endswith("."):
        t = t[:-1]
    parts = t.split(".")
    if not 1 <= len(parts) <= 4:
        return False
    return all(_NUMERIC_PART.fullmatch(p) for p in parts)


def _check_ldh_label(label: str, name: str) -> None:
    if not label:
        raise InvalidHostname(f"{name!r} has an empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidHostname(f"{name!r} has a label longer than {MAX_LABEL_LENGTH} characters")
    if not _LDH.issuperset(label):
        raise InvalidHostname(
            f"{name!r} has a label with characters other than letters, digits and '-'"
        )
    if label.startswith("-") or label.endswith("-"):
        raise InvalidHostname(f"{name!r} has a label starting or ending with '-'")


def _to_ascii_label(label: str, name: str) -> str:
    if label.isascii():
        _check_ldh_label(label, name)
        if label.startswith("xn--"):
            # An A-label must decode to a valid U-label, otherwise two different
            # strings could claim to be "the same" IDN.
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                raise InvalidHostname(f"{name!r} has an invalid IDNA label: {exc}") from exc
        return label
    try:
        encoded = idna.alabel(unicodedata.normalize("NFC", label)).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidHostname(f"{name!r} has a label that is not valid IDNA: {exc}") from exc
    _check_ldh_label(encoded, name)
    return encoded


def normalize_hostname(name: str) -> str:
    """Return the canonical ASCII form of DNS host name ``name``.

    Lowercases, strips one trailing dot, converts unicode labels to IDNA
    A-labels (IDNA 2008, no UTS46 mapping, so confusable compatibility forms
    such as fullwidth letters are rejected rather than silently mapped) and
    validates the result as a host name.

    Raises:
        InvalidHostname: if ``name`` is empty, an IP literal, or not a valid
            host name (bad characters, empty label, label > 63, name > 253,
            label starting/ending with '-', numeric top-level label).
    """
    if is_ip_literal(name):
        raise InvalidHostname(f"{name!r} is an IP address, not a host name")
    s = name.lower()
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise InvalidHostname(f"{name!r} is empty")
    labels = [_to_ascii_label(label, name) for label in s.split(".")]
    result = ".".join(labels)
    if len(result) > MAX_HOSTNAME_LENGTH:
        raise InvalidHostname(f"{name!r} is longer than {MAX_HOSTNAME_LENGTH} characters")
    # RFC 3696 s2: a TLD is never all-numeric, and URL parsers (WHATWG "ends in
    # a number") read such names, hex included, as IPv4: ambiguous at best.
    if _NUMERIC_PART.fullmatch(labels[-1]):
        raise InvalidHostname(f"{name!r} has a numeric top-level label")
    return result
