"""The egress proxy's request head (core/egress.py, as gateway/egress.py reads it): the
request line and headers through h11, the CONNECT or absolute-form target, the allowlist
decision, the plain-HTTP DNS-over-HTTPS check and ``Proxy-Authorization``.

Input: the bytes a sandbox sends to the proxy.
Invariants: h11 raises only RemoteProtocolError; the target parsers only TargetRefused
(``bad_target`` / ``ip_literal``); an accepted target is a normalised host name (never an IP
literal) with a port in range and an origin-form path; the allowlist and DoH checks return
their documented rules; parse_proxy_authorization never raises and returns a non-empty
token or None.
"""

from __future__ import annotations

import atheris
import h11

with atheris.instrument_imports():
    from airlock.core.egress import (
        AllowList,
        HttpTarget,
        Target,
        TargetRefused,
        is_doh_request,
        parse_absolute_url,
        parse_connect_target,
        parse_proxy_authorization,
    )
    from airlock.core.hostnames import InvalidHostname, is_ip_literal, normalize_hostname

from _harness import main

_ALLOW = AllowList.parse(["github.com", "*.example.com", "dns.google", "*.cloudflare-dns.com"])
_RULES = {
    True: {"exact", "wildcard", "doh_override"},
    False: {"not_allowlisted", "doh", "ip_literal", "invalid_host"},
}
_DOH = {"doh_content_type", "doh_accept", "doh_path", "doh_query", "doh_media_in_url", None}
_MAX_HEAD = 16 * 1024


def _head(data: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    try:
        conn.receive_data(data)
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(b"")
            event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def _host_ok(host: str) -> None:
    assert not is_ip_literal(host), host
    try:
        assert normalize_hostname(host) == host, host
    except InvalidHostname:
        raise AssertionError(f"accepted target host {host!r} is not a host name") from None


def check(data: bytes) -> bool:
    request = _head(data)
    if request is None:
        return False
    for name, value in request.headers:
        if name == b"proxy-authorization":
            token = parse_proxy_authorization(value.decode("latin-1"))
            assert token is None or (isinstance(token, str) and token)
    raw = request.target.decode("latin-1")
    target: Target | HttpTarget
    try:
        if request.method == b"CONNECT":
            target = parse_connect_target(raw)
        else:
            target = parse_absolute_url(raw)
    except TargetRefused as exc:
        assert exc.rule in ("bad_target", "ip_literal"), exc.rule
        return False
    _host_ok(target.host)
    assert 0 < target.port < 65536
    decision = _ALLOW.decide(target.host)
    assert decision.rule in _RULES[decision.allowed], decision
    if isinstance(target, HttpTarget):
        assert target.path.startswith("/") and "#" not in target.path
        assert is_doh_request(request.method, target.path, list(request.headers)) in _DOH
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
