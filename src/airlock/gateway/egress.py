"""The egress proxy: HTTP CONNECT and absolute-form plain HTTP for a session's allowlisted hosts.

One :class:`EgressProxy` serves every sandbox network: the gateway calls :meth:`start` for
each network's gateway address. Per connection, in order (the first failure answers):

1. the request head is read with h11 (size, header-count and time caps);
2. the session is found by ``authenticate`` (proxy token + network binding) -> else 407
   (an ended session's token: 407 with ``X-Airlock-Refused: session_expired`` or
   ``session_revoked``, and an audit line naming the session);
3. the target: no IP literals, allowed port, allowlisted name, not a DoH endpoint -> else 403;
   a CONNECT to one of the GitHub API's names (``api``: gateway/api/) is never tunnelled
   upstream: after the ClientHello check below, TLS ends here and the API relay decides each
   request inside; plain HTTP to those names is refused (403 ``api_needs_https``);
4. the per-session tunnel cap -> else 429;
5. the name is resolved ONCE; every answer must be a public unicast address -> else 403;
6. CONNECT: ``200``, then the client's ClientHello must carry an SNI naming the CONNECT host
   (checked before anything is dialed: a refused tunnel never reaches the upstream); so must
   a second ClientHello after a TLS 1.3 HelloRetryRequest (core/tlshello.py: the tunnel
   ends before it reaches the upstream);
   plain HTTP: the request is re-framed by h11 and sent with ``Connection: close``;
7. the vetted address is dialed (no second lookup) and bytes are relayed with idle and
   lifetime limits. One log line per tunnel or request.

Unauthenticated and malformed connections are counted and logged in aggregate, once per
``summary_interval``: a flood of garbage must not become a flood of log lines.

Use extends the session's idle timeout (``on_use``, decided by
:func:`airlock.core.session.counts_as_use`): a tunnel's traffic, reported at every recheck
(at most half the session's idle timeout apart) and at its end, and a plain-HTTP request
answered whole. Nothing refused is reported as use.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import h11
from limits import RateLimitItem
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from airlock.core.egress import (
    MAX_CLIENT_HELLO_BYTES,
    AllowList,
    HttpTarget,
    IPAddress,
    SniStatus,
    Target,
    TargetRefused,
    classify_address,
    extract_sni,
    is_doh_request,
    parse_absolute_url,
    parse_connect_target,
    same_host,
)
from airlock.core.session import Session, Use
from airlock.core.tlshello import HelloGuard
from airlock.gateway.api.relay import ApiTunnel
from airlock.gateway.dns_stats import DenialCounter, QueryRateLimiter
from airlock.gateway.resolver import MAX_ANSWERS, ResolveError, Resolver
from airlock.gateway.splice import DetachableReader, Splice

__all__ = ["AuthRefused", "Authenticate", "EgressPolicy", "EgressProxy", "EgressStats", "OnUse"]


@dataclass(frozen=True)
class AuthRefused:
    """Why a proxy request has no session.

    ``session_id`` is set when the token is a session's own (from its sandbox's address) and
    that session may not be used; ``ended`` (``"expired"`` or ``"revoked"``) when it has
    ended for good, which the client is told (``X-Airlock-Refused: session_expired``).
    """

    reason: str  # for the audit log
    session_id: str | None = None
    ended: str | None = None


#: (raw Proxy-Authorization value or None, source ip, local ip) -> the session, or why none.
Authenticate = Callable[[str | None, str, str], Session | AuthRefused]
#: (session id, what it did): a request or a tunnel's stretch for the idle timeout to judge.
OnUse = Callable[[str, Use], None]


class ApiHandler(Protocol):
    """Where tunnels to the GitHub API's names go instead of upstream (gateway/api/)."""

    def handles(self, host: str) -> bool: ...

    async def serve(self, tunnel: ApiTunnel) -> str: ...


_T = TypeVar("_T")

CHUNK = 64 * 1024
# Methods a package manager or curl needs on plain HTTP; TRACE/CONNECT-likes are not relayed.
PLAIN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Hop-by-hop headers (RFC 9110 s7.6.1) plus the proxy's own; never forwarded either way.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"host",
    }
)
_TLS_ALERT_ACCESS_DENIED = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49])
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class EgressPolicy:
    """Settings shared by every sandbox network (per-session hosts come from the session)."""

    connect_ports: frozenset[int] = frozenset({443})
    http_ports: frozenset[int] = frozenset({80})
    connect_timeout: float = 10.0  # resolve, and separately dial
    idle_timeout: float = 300.0  # no byte either way for this long ends a tunnel
    max_tunnel_lifetime: float = 3600.0
    max_tunnels_per_session: int = 64  # open tunnels + in-flight plain requests
    default_allow_hosts: tuple[str, ...] = ()
    gateway_addresses: frozenset[str] = frozenset()  # plus every address start() listens on
    # Static-map names that may resolve to loopback/private addresses (tests and demo only).
    allow_private_names: frozenset[str] = frozenset()
    handshake_timeout: float = 10.0  # request head, then ClientHello, must arrive in this
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_connections: int = 4096  # client connections open at once, all listeners together
    refuse_ech: bool = True  # an encrypted ClientHello would hide the real SNI
    session_recheck_interval: float = 5.0  # a revoked/expired session's tunnels end this fast
    summary_interval: float = 60.0  # aggregate log of unauthenticated/malformed connections
    # A session's refusals get their own log line up to this rate, then are counted in the
    # summary: a sandbox looping on a forbidden host must not flood the audit log.
    refusal_log_rate: float = 1.0
    refusal_log_burst: int = 50
    # Per session, over all its tunnels and plain requests (``limits`` rate strings; None: no
    # limit): how many may start, and how many bytes (both directions) may pass. A tunnel
    # that exhausts the byte budget is ended, to within CHARGE_BYTES.
    session_tunnel_rate: str | None = "600/minute"
    session_byte_rate: str | None = "8589934592/hour"


@dataclass
class EgressStats:
    """Counters for tests and health output."""

    connections: int = 0
    active: int = 0
    dials: int = 0
    tunnels: int = 0
    http_requests: int = 0
    refused: int = 0
    malformed: int = 0


@dataclass
class _Record:
    """One line of the audit log: everything known about one tunnel or request."""

    request_id: str
    source: str
    local: str
    started: float
    session: str | None = None
    container: str | None = None
    method: str | None = None
    host: str | None = None
    port: int | None = None
    address: str | None = None
    decision: str = "refused"
    rule: str = ""
    status: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    end: str | None = None
    detail: str | None = None
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Refuse(Exception):
    def __init__(
        self,
        status: int,
        rule: str,
        detail: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(rule)
        self.status, self.rule, self.detail, self.headers = status, rule, detail, headers


class _Closed(Exception):
    """End the connection without a response (after a 200, or the client went away)."""

    def __init__(self, rule: str, detail: str = "", alert: bool = False) -> None:
        super().__init__(rule)
        self.rule, self.detail, self.alert = rule, detail, alert


def _response(
    status: int,
    rule: str,
    request_id: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    # The body and headers name the rule and the request id only; reasons stay in the log.
    reason = _REASONS.get(status, "Error")
    body = f"airlock egress: {reason.lower()} ({rule}); request id {request_id}\n".encode()
    name = "X-Airlock-Error" if status >= 500 else "X-Airlock-Refused"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"{name}: {rule}",
        f"X-Airlock-Request-Id: {request_id}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _forward_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including any the Connection header names."""
    named: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            named.update(t.strip().lower() for t in v.split(b","))
    return [(k, v) for k, v in headers if k not in _HOP_BY_HOP and k not in named]


class EgressProxy:
    def __init__(
        self,
        authenticate: Authenticate,
        resolver: Resolver,
        policy: EgressPolicy,
        log: Callable[..., None],
        clock: Callable[[], float] = time.time,
        on_use: OnUse | None = None,
        api: ApiHandler | None = None,
    ) -> None:
        self.authenticate = authenticate
        self.api = api
        self.on_use = on_use
        self.resolver = resolver
        self.policy = policy
        self.log = log
        self.clock = clock  # wall clock, for the aggregate summaries only
        self.stats = EgressStats()
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._conns: dict[asyncio.Task[Any], str] = {}  # handler task -> local address
        self._open: dict[str, int] = {}  # session id -> open tunnels / in-flight requests
        self._splices: dict[str, set[Splice]] = {}  # session id -> its tunnels moving bytes
        self._allow_cache: dict[tuple[str, ...], AllowList] = {}
        self._denials = DenialCounter(policy.summary_interval, clock())
        self._refusal_lines = QueryRateLimiter(policy.refusal_log_rate, policy.refusal_log_burst)
        self._summary_task: asyncio.Task[None] | None = None
        # In-memory and synchronous: byte budgets are charged from protocol callbacks.
        storage = MemoryStorage()
        self._tunnel_rate = SlidingWindowCounterRateLimiter(storage)
        self._byte_rate = FixedWindowRateLimiter(storage)
        self._tunnel_item = (
            parse_rate(policy.session_tunnel_rate) if policy.session_tunnel_rate else None
        )
        self._byte_item = parse_rate(policy.session_byte_rate) if policy.session_byte_rate else None

    # ----------------------------------------------------------------------- listeners

    async def start(self, address: str, port: int) -> int:
        """Listen on ``address:port`` (another listener of this proxy); returns the port."""
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server's factory, with a reader a CONNECT tunnel can detach from.
            return asyncio.StreamReaderProtocol(DetachableReader(CHUNK), self._client)

        server = await loop.create_server(
            connection, address, port, backlog=1024, reuse_address=True
        )
        bound = int(server.sockets[0].getsockname()[1])
        self._servers[(address, bound)] = server
        if self._summary_task is None:
            self._summary_task = asyncio.create_task(self._summaries())
        return bound

    @property
    def listeners(self) -> list[tuple[str, int]]:
        return sorted(self._servers)

    def open_tunnels(self, session_id: str) -> int:
        return self._open.get(session_id, 0)

    def end_sessions(self, session_id: str | None) -> None:
        """End the tunnels of a session just revoked (None: of every session, the store
        can vouch for none) now, not at their next recheck; on any gateway, the store's
        listener calls this the moment it hears."""
        ids = list(self._splices) if session_id is None else [session_id]
        for sid in ids:
            for splice in list(self._splices.get(sid, ())):
                splice.stop("session_ended")

    async def stop_listener(self, address: str) -> bool:
        """Stop listening on ``address`` and end the connections that arrived on it."""
        keys = [k for k in self._servers if k[0] == address]
        for k in keys:
            self._servers.pop(k).close()
        await self._cancel([t for t, local in self._conns.items() if local == address])
        return bool(keys)

    async def stop(self) -> None:
        """Stop every listener, end every connection, write the last summary."""
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        await self._cancel(list(self._conns))
        if self._summary_task is not None:
            self._summary_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summary_task
            self._summary_task = None
        self._flush_summary(force=True)

    async def _cancel(self, tasks: list[asyncio.Task[Any]]) -> None:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.policy.summary_interval)
            self._flush_summary()

    def _flush_summary(self, force: bool = False) -> None:
        summary = self._denials.flush(self.clock(), force=force)
        if summary is not None:
            self.log("egress_denied_summary", **summary)

    def _own_addresses(self) -> set[str]:
        return set(self.policy.gateway_addresses) | {a for a, _ in self._servers}

    def _allowlist(self, session: Session) -> AllowList:
        key = (*self.policy.default_allow_hosts, *session.allow_hosts)
        allow = self._allow_cache.get(key)
        if allow is None:
            allow, bad = AllowList.lenient(key)
            if bad:
                self.log("egress_bad_allow_entries", session=session.id, entries=bad[:20])
            if len(self._allow_cache) > 256:
                self._allow_cache.clear()
            self._allow_cache[key] = allow
        return allow

    # ----------------------------------------------------------------------- connections

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        source = str(peer[0]) if peer else "?"
        local = str(sock[0]) if sock else "?"
        task = asyncio.current_task()
        assert task is not None
        self.stats.connections += 1
        if len(self._conns) >= self.policy.max_connections:
            # Over the global cap: no parsing, no response, nothing that costs more than this.
            self._denials.add(source, "too_many_connections")
            writer.transport.abort()
            return
        self._conns[task] = local
        self.stats.active += 1
        rec = _Record(
            request_id="e-" + secrets.token_hex(8),
            source=source,
            local=local,
            started=time.monotonic(),
        )
        try:
            await self._serve(rec, reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            rec.end = rec.end or "client_error"
        except asyncio.CancelledError:
            rec.end = "listener_stopped"
            raise
        finally:
            self._conns.pop(task, None)
            self.stats.active -= 1
            if rec.end in ("client_error", "listener_stopped"):
                writer.transport.abort()
            else:
                writer.close()
            if rec.session is not None:
                if rec.decision == "allowed" or self._refusal_lines.allow(
                    rec.session, time.monotonic()
                ):
                    self._log_record(rec)
                else:
                    self._denials.add(f"session:{rec.session}", rec.rule)

    def _log_record(self, rec: _Record) -> None:
        fields: dict[str, Any] = {
            "request_id": rec.request_id,
            "session": rec.session,
            "container": rec.container,
            "source": rec.source,
            "method": rec.method,
            "host": rec.host,
            "port": rec.port,
            "address": rec.address,
            "decision": rec.decision,
            "rule": rec.rule,
            "status": rec.status,
            "bytes_up": rec.bytes_up,
            "bytes_down": rec.bytes_down,
            "duration_ms": round((time.monotonic() - rec.started) * 1000, 1),
        }
        for k in ("end", "detail", "warning"):
            v = getattr(rec, k)
            if v:
                fields[k] = v
        fields.update(rec.extra)
        self.log("egress", **fields)

    async def _serve(
        self, rec: _Record, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.policy.max_header_bytes)
        try:
            request = await self._read_head(conn, reader)
        except _Refuse as r:
            self._denials.add(rec.source, r.rule)
            self.stats.malformed += 1
            writer.write(_response(r.status, r.rule, rec.request_id))
            await self._drain(writer)
            return
        except _Closed as c:
            self._denials.add(rec.source, c.rule)
            return
        rec.method = request.method.decode("ascii", "replace")
        auth_values = [v for k, v in request.headers if k == b"proxy-authorization"]
        found: Session | AuthRefused
        raw_auth: str | None = None
        if len(auth_values) > 1:
            found = AuthRefused("duplicate_proxy_authorization")
        else:
            raw_auth = auth_values[0].decode("latin-1") if auth_values else None
            try:
                found = self.authenticate(raw_auth, rec.source, rec.local)
            except Exception as exc:  # the gateway's lookup failing must not open the door
                found = AuthRefused(f"auth_error:{type(exc).__name__}")
        if not isinstance(found, Session):
            self.stats.refused += 1
            rule = "proxy_auth"
            if found.session_id is None:
                self._denials.add(rec.source, f"auth:{found.reason or 'refused'}")
            else:
                # The token is this session's: the audit line names it (and says why).
                rec.session = found.session_id
                rec.detail = found.reason
                if found.ended is not None:
                    rule = f"session_{found.ended}"
                rec.rule, rec.status = rule, 407
            writer.write(
                _response(
                    407,
                    rule,
                    rec.request_id,
                    (("Proxy-Authenticate", 'Basic realm="airlock"'),),
                )
            )
            await self._drain(writer)
            return
        session = found
        rec.session = sid = session.id
        if session.binding is not None:
            rec.container = session.binding.container_id

        def still_valid() -> bool:
            # Re-asked while a tunnel is open, so revocation or expiry ends it promptly.
            try:
                again = self.authenticate(raw_auth, rec.source, rec.local)
            except Exception:
                return False
            return isinstance(again, Session) and again.id == sid

        try:
            if request.method == b"CONNECT":
                await self._connect(rec, conn, request, reader, writer, session, still_valid)
            else:
                await self._plain(rec, conn, request, reader, writer, session)
        except _Refuse as r:
            self.stats.refused += 1
            rec.decision = "error" if r.status >= 500 else "refused"
            rec.rule, rec.status, rec.detail = r.rule, r.status, r.detail or rec.detail
            writer.write(_response(r.status, r.rule, rec.request_id, r.headers))
            await self._drain(writer)
        except _Closed as c:
            # Before the upstream was reached this is a refusal (SNI, ClientHello, dial after
            # the 200); afterwards only the way the relay ended.
            rec.end = rec.end or c.rule
            rec.detail = c.detail or rec.detail
            if rec.decision != "allowed":
                self.stats.refused += 1
                rec.rule = c.rule
            if c.alert:
                writer.write(_TLS_ALERT_ACCESS_DENIED)
                await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            await asyncio.wait_for(writer.drain(), self.policy.handshake_timeout)

    async def _read_head(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.handshake_timeout
        received = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
                raise _Refuse(status, "bad_request", str(exc)) from None
            if event is h11.NEED_DATA:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _Closed("head_timeout")
                try:
                    data = await asyncio.wait_for(reader.read(8192), remaining)
                except TimeoutError:
                    raise _Closed("head_timeout") from None
                except (ConnectionError, OSError):
                    raise _Closed("client_error") from None
                received += len(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                # h11 caps only an incomplete head; one that arrived whole is measured here.
                if received - len(conn.trailing_data[0]) > self.policy.max_header_bytes:
                    raise _Refuse(431, "bad_request", "request head too large")
                if event.http_version not in (b"1.0", b"1.1"):
                    raise _Refuse(400, "bad_request", "HTTP version")  # e.g. the h2 preface
                if len(event.headers) > self.policy.max_headers:
                    raise _Refuse(431, "too_many_headers")
                return event
            # ConnectionClosed before any request: nothing to answer.
            raise _Closed("closed_early")

    # ----------------------------------------------------------------------- policy steps

    def _check_name(self, rec: _Record, session: Session, target: Target | HttpTarget) -> None:
        rec.host, rec.port = target.host, target.port
        decision = self._allowlist(session).decide(target.host)
        if not decision.allowed:
            raise _Refuse(403, decision.rule)
        rec.rule = decision.rule
        if decision.warning:
            rec.warning = "doh_host_allowed_by_exact_entry"

    def _take_slot(self, session: Session) -> None:
        n = self._open.get(session.id, 0)
        if n >= self.policy.max_tunnels_per_session:
            raise _Refuse(429, "tunnel_cap", headers=(("Retry-After", "5"),))
        if self._byte_item is not None and not self._byte_rate.test(self._byte_item, session.id):
            raise _Refuse(
                429,
                "byte_rate",
                headers=self._retry_after(self._byte_rate, self._byte_item, session),
            )
        if self._tunnel_item is not None and not self._tunnel_rate.hit(
            self._tunnel_item, session.id
        ):
            raise _Refuse(
                429,
                "tunnel_rate",
                headers=self._retry_after(self._tunnel_rate, self._tunnel_item, session),
            )
        self._open[session.id] = n + 1

    def _retry_after(
        self, limiter: RateLimiter, item: RateLimitItem, session: Session
    ) -> tuple[tuple[str, str], ...]:
        reset = limiter.get_window_stats(item, session.id).reset_time
        return (("Retry-After", str(max(1, math.ceil(reset - time.time())))),)

    def _charge(self, session_id: str, nbytes: int) -> bool:
        """Count bytes against the session's budget; False once it is exhausted."""
        if self._byte_item is None or nbytes <= 0:
            return True
        return self._byte_rate.hit(self._byte_item, session_id, cost=nbytes)

    def _release_slot(self, session: Session) -> None:
        n = self._open.get(session.id, 0) - 1
        if n > 0:
            self._open[session.id] = n
        else:
            self._open.pop(session.id, None)

    async def _vet(self, rec: _Record, host: str) -> list[IPAddress]:
        """Resolve once; every answer must pass, else the name is refused outright."""
        try:
            answers = await asyncio.wait_for(
                self.resolver.resolve(host), self.policy.connect_timeout
            )
        except TimeoutError:
            raise _Refuse(504, "resolve_timeout") from None
        except ResolveError as exc:
            raise _Refuse(502, "resolve_failed", str(exc)) from None
        addresses = list(dict.fromkeys(answers))[:MAX_ANSWERS]
        if not addresses:
            raise _Refuse(502, "resolve_failed", "no address")
        if host in self.policy.allow_private_names:
            rec.extra["allow_private"] = True
            return addresses
        own = self._own_addresses()
        for a in addresses:
            why = classify_address(a, own)
            if why is not None:
                # One bad answer refuses the name: a rebinding name mixes good and bad answers.
                rec.address = str(a)
                raise _Refuse(403, "private_address", f"{why} {a}")
        return addresses

    async def _dial(self, rec: _Record, addresses: list[IPAddress], port: int) -> socket.socket:
        """Connect to the first vetted address that answers, by address (no lookup)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.connect_timeout
        last: Exception | None = None
        for a in addresses:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            rec.address = str(a)
            self.stats.dials += 1
            sock = socket.socket(
                socket.AF_INET6 if a.version == 6 else socket.AF_INET, socket.SOCK_STREAM
            )
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (str(a), port)), remaining)
                return sock
            except (OSError, TimeoutError) as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        if isinstance(last, TimeoutError) or last is None:
            raise _Refuse(504, "connect_timeout")
        raise _Refuse(502, "connect_failed", f"{type(last).__name__}: {last}")

    # ----------------------------------------------------------------------- CONNECT

    async def _connect(
        self,
        rec: _Record,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        still_valid: Callable[[], bool],
    ) -> None:
        try:
            target = parse_connect_target(request.target.decode("latin-1"))
        except TargetRefused as exc:
            raise _Refuse(403 if exc.rule == "ip_literal" else 400, exc.rule, str(exc)) from None
        rec.host, rec.port = target.host, target.port
        if target.port not in self.policy.connect_ports:
            raise _Refuse(403, "port")
        if self.api is not None and self.api.handles(target.host):
            # The GitHub API: never spliced to the real host, always decided here.
            await self._intercept(rec, conn, reader, writer, session, target, still_valid)
            return
        self._check_name(rec, session, target)
        self._take_slot(session)
        try:
            addresses = await self._vet(rec, target.host)
            self._established(rec, writer)
            hello = await self._checked_hello(conn, reader, target)
            # Every later ClientHello (after a HelloRetryRequest) is held to the same rule:
            # the guard sees the whole client stream from its first byte, starting with
            # whatever came along with this hello (a second one packed behind it included).
            guard = HelloGuard(target.host, refuse_ech=self.policy.refuse_ech)
            refusal = guard.client(hello)
            if refusal is not None:
                raise _Closed(refusal.rule, refusal.detail, alert=True)
            try:
                sock = await self._dial(rec, addresses, target.port)
            except _Refuse as r:  # the 200 is out: all that is left is to close
                raise _Closed(r.rule, r.detail) from None
            assert isinstance(reader, DetachableReader)
            assert isinstance(writer.transport, asyncio.Transport)
            splice = Splice(
                writer.transport, charge=lambda n: self._charge(session.id, n), guard=guard
            )
            try:
                await asyncio.get_running_loop().create_connection(
                    splice.upstream_protocol, sock=sock
                )
            except BaseException:
                sock.close()
                raise
            self.stats.tunnels += 1
            rec.decision = "allowed"
            # Often enough that a busy tunnel is seen as use before its session idles out.
            recheck = min(self.policy.session_recheck_interval, session.idle_timeout / 2)
            live = self._splices.setdefault(session.id, set())
            live.add(splice)
            try:
                await splice.attach_client(reader, hello)
                rec.end = await self._relay(
                    splice,
                    rec.started,
                    still_valid,
                    recheck,
                    lambda: self._tunnel_use(rec, splice),
                )
                if splice.stopped_detail:
                    rec.detail = splice.stopped_detail
            finally:
                live.discard(splice)
                if not live:
                    self._splices.pop(session.id, None)
                splice.close_upstream()
                splice.settle()  # the last bytes count too
                rec.bytes_up, rec.bytes_down = splice.bytes_up, splice.bytes_down
                self._tunnel_use(rec, splice)  # and the last stretch is use too
        finally:
            self._release_slot(session)

    def _established(self, rec: _Record, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 Connection established\r\n"
            + f"X-Airlock-Request-Id: {rec.request_id}\r\n\r\n".encode()
        )
        rec.status = 200

    async def _checked_hello(
        self, conn: h11.Connection, reader: asyncio.StreamReader, target: Target
    ) -> bytes:
        """The tunnel's first ClientHello, which must name the CONNECT host (else closed)."""
        first, _ = conn.trailing_data
        hello = await self._client_hello(reader, first)
        result = extract_sni(hello)
        if result.status is SniStatus.NOT_TLS:
            raise _Closed("not_tls", result.reason)
        if result.status is SniStatus.NO_SNI:
            raise _Closed("no_sni", alert=True)
        if result.ech and self.policy.refuse_ech:
            raise _Closed("ech", alert=True)
        assert result.name is not None
        if not same_host(result.name, target.host):
            raise _Closed("sni_mismatch", f"sni={result.name[:253]!r}", alert=True)
        return hello

    async def _intercept(
        self,
        rec: _Record,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        target: Target,
        still_valid: Callable[[], bool],
    ) -> None:
        """A tunnel to an API name: TLS ends here and gateway/api/ serves its requests."""
        assert self.api is not None
        rec.rule = "api_intercept"
        self._take_slot(session)
        try:
            self._established(rec, writer)
            hello = await self._checked_hello(conn, reader, target)
            rec.decision = "allowed"
            self.stats.tunnels += 1
            tunnel = ApiTunnel(
                request_id=rec.request_id,
                name=target.host,
                session_id=session.id,
                container=rec.container,
                reader=reader,
                writer=writer,
                hello=hello,
                still_valid=still_valid,
                charge=lambda n: self._charge(session.id, n),
                report_use=lambda use: self._use(session.id, use),
            )
            rec.end = await self.api.serve(tunnel)
            rec.bytes_up, rec.bytes_down = tunnel.bytes_up, tunnel.bytes_down
            rec.extra["api_requests"] = tunnel.requests
            if tunnel.detail:
                rec.detail = tunnel.detail
        finally:
            self._release_slot(session)

    async def _client_hello(self, reader: asyncio.StreamReader, first: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.handshake_timeout
        buf = bytearray(first[:MAX_CLIENT_HELLO_BYTES])
        while extract_sni(bytes(buf)).status is SniStatus.NEED_MORE:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _Closed("hello_timeout")
            try:
                data = await asyncio.wait_for(
                    reader.read(MAX_CLIENT_HELLO_BYTES - len(buf)), remaining
                )
            except TimeoutError:
                raise _Closed("hello_timeout") from None
            if not data:
                raise _Closed("closed_before_hello")
            buf += data
        return bytes(buf)

    def _use(self, session_id: str | None, use: Use) -> None:
        if self.on_use is not None and session_id is not None:
            self.on_use(session_id, use)

    def _tunnel_use(self, rec: _Record, splice: Splice) -> None:
        """Report the tunnel's stretch since the last report (counts_as_use judges it)."""
        span = splice.take_activity()
        now = asyncio.get_running_loop().time()
        first, last = span if span is not None else (now, now)
        to_wall = time.time() - now  # the splice keeps loop time; sessions keep wall time
        use = Use(
            admitted=rec.decision == "allowed",
            succeeded=span is not None and splice.stopped is None,
            began=first + to_wall,
            ended=last + to_wall,
        )
        self._use(rec.session, use)

    async def _relay(
        self,
        splice: Splice,
        started: float,
        still_valid: Callable[[], bool],
        recheck: float,
        report_use: Callable[[], None],
    ) -> str:
        """Wait while the splice moves bytes, until both sides finish, or idle/lifetime/session
        end; why it ended. Every ``recheck`` seconds the traffic since the last one is
        reported as use (first, so a busy stretch counts), then the session is asked again."""
        loop = asyncio.get_running_loop()
        # `started` is monotonic; translate the lifetime to the loop's clock.
        deadline = loop.time() + self.policy.max_tunnel_lifetime - (time.monotonic() - started)
        next_check = loop.time() + recheck
        while not splice.done.done():
            now = loop.time()
            if now >= deadline:
                return "lifetime"
            if now - splice.last_activity >= self.policy.idle_timeout:
                return "idle_timeout"
            if now >= next_check:
                report_use()
                if not still_valid():
                    return "session_ended"
                next_check = now + recheck
            wake = min(deadline, splice.last_activity + self.policy.idle_timeout, next_check)
            await asyncio.wait((splice.done,), timeout=max(0.0, wake - now))
        if splice.stopped is not None:
            return splice.stopped
        return "reset" if splice.error is not None else "closed"

    # ----------------------------------------------------------------------- plain HTTP

    async def _plain(
        self,
        rec: _Record,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
    ) -> None:
        raw_target = request.target.decode("latin-1")
        if raw_target.startswith("/") or raw_target == "*":
            raise _Refuse(400, "not_a_proxy_request")
        try:
            target = parse_absolute_url(raw_target)
        except TargetRefused as exc:
            raise _Refuse(403 if exc.rule == "ip_literal" else 400, exc.rule, str(exc)) from None
        rec.host, rec.port = target.host, target.port
        if rec.method not in PLAIN_METHODS:
            raise _Refuse(403, "method")
        if target.port not in self.policy.http_ports:
            raise _Refuse(403, "port")
        if self.api is not None and self.api.handles(target.host):
            # The API's names are served only inside TLS, where the gateway decides; in
            # plain HTTP the sandbox's token would travel in the clear to the real host.
            raise _Refuse(403, "api_needs_https")
        self._check_name(rec, session, target)
        doh = is_doh_request(request.method, target.path, list(request.headers))
        if doh is not None:
            raise _Refuse(403, "doh", doh)
        self._take_slot(session)
        admitted_at = time.time()
        try:
            addresses = await self._vet(rec, target.host)
            sock = await self._dial(rec, addresses, target.port)
            try:
                up_reader, up_writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
            except BaseException:
                sock.close()
                raise
            self.stats.http_requests += 1
            rec.decision = "allowed"
            try:
                await self._exchange(
                    rec, conn, request, target, reader, writer, up_reader, up_writer
                )
            finally:
                up_writer.transport.abort()
        finally:
            self._release_slot(session)
            use = Use(
                admitted=rec.decision == "allowed",
                succeeded=rec.end == "complete",  # the upstream's answer relayed whole
                began=admitted_at,
                ended=time.time(),
            )
            self._use(rec.session, use)

    async def _io(self, aw: Awaitable[_T], deadline: float) -> _T:
        loop = asyncio.get_running_loop()
        timeout = min(self.policy.idle_timeout, deadline - loop.time())
        if timeout <= 0:
            raise TimeoutError
        return await asyncio.wait_for(aw, timeout)

    async def _exchange(
        self,
        rec: _Record,
        conn: h11.Connection,
        request: h11.Request,
        target: HttpTarget,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Relay one request and its response, re-framed by h11 on both sides."""
        loop = asyncio.get_running_loop()
        sid = rec.session or ""
        deadline = loop.time() + self.policy.max_tunnel_lifetime
        up = h11.Connection(h11.CLIENT)
        headers = _forward_headers(list(request.headers))
        if any(k == b"transfer-encoding" for k, _ in headers):
            # Never both: Content-Length next to chunked is the request-smuggling pattern.
            headers = [(k, v) for k, v in headers if k != b"content-length"]
        headers += [(b"host", target.authority.encode()), (b"connection", b"close")]
        started_response = False
        try:
            if conn.client_is_waiting_for_100_continue:
                # Expect is not forwarded; tell the client to send its body now.
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            up_writer.write(
                up.send(h11.Request(method=request.method, target=target.path, headers=headers))
            )
            while True:  # request body, client -> upstream
                try:
                    ev = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _Refuse(400, "bad_request", str(exc)) from None
                if ev is h11.NEED_DATA:
                    conn.receive_data(await self._io(reader.read(CHUNK), deadline))
                elif isinstance(ev, h11.Data):
                    rec.bytes_up += len(ev.data)
                    if not self._charge(sid, len(ev.data)):
                        raise _Refuse(429, "byte_rate")
                    up_writer.write(up.send(h11.Data(data=ev.data)))
                    await self._io(up_writer.drain(), deadline)
                elif isinstance(ev, h11.EndOfMessage):
                    up_writer.write(up.send(h11.EndOfMessage()))
                    await self._io(up_writer.drain(), deadline)
                    break
                else:
                    raise _Closed("client_closed")
            while True:  # response, upstream -> client
                rev = up.next_event()
                if rev is h11.NEED_DATA:
                    up.receive_data(await self._io(up_reader.read(CHUNK), deadline))
                elif isinstance(rev, h11.InformationalResponse):
                    continue  # 1xx: we already answered Expect ourselves; 101 cannot happen
                elif isinstance(rev, h11.Response):
                    rec.status = rev.status_code
                    out_headers = _forward_headers(list(rev.headers))
                    out_headers.append((b"connection", b"close"))
                    writer.write(
                        conn.send(
                            h11.Response(
                                status_code=rev.status_code,
                                headers=out_headers,
                                reason=rev.reason,
                            )
                        )
                    )
                    started_response = True
                elif isinstance(rev, h11.Data):
                    rec.bytes_down += len(rev.data)
                    if not self._charge(sid, len(rev.data)):
                        raise _Closed("byte_rate")
                    writer.write(conn.send(h11.Data(data=rev.data)))
                    await self._io(writer.drain(), deadline)
                elif isinstance(rev, h11.EndOfMessage):
                    writer.write(conn.send(h11.EndOfMessage()))
                    await self._io(writer.drain(), deadline)
                    rec.end = "complete"
                    return
                else:
                    raise _Closed("upstream_closed")
        except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
            if started_response:
                raise _Closed("protocol_error", str(exc)) from None
            raise _Refuse(502, "bad_upstream_response", str(exc)) from None
        except TimeoutError:
            if started_response:
                raise _Closed("idle_timeout") from None
            raise _Refuse(504, "upstream_timeout") from None
