"""The GitHub API relay: HTTP/1.1 inside an intercepted tunnel, one decision per request.

The egress proxy hands over a CONNECT tunnel to an API name (``api.github.com``, a GitHub
Enterprise host) after it has authenticated the session by its proxy token and address
and checked the ClientHello's SNI. Here, per tunnel:

1. TLS is terminated with the interception CA's certificate for that name (tls_stream.py);
2. requests are read with h11 (head and body caps), one after another (keep-alive);

and per request, in order (the first failure answers, in GitHub's JSON error shape with a
``message`` that starts with ``airlock:`` and names the request id):

3. ``Host`` must be the tunnel's name (421), the session must still be usable (401);
4. the ``Authorization`` token must be this session's own API token (``GH_TOKEN``); a
   token of another session, even a live one, is refused (401);
5. :func:`airlock.core.api_policy.decide_api` decides (404 for an ungranted repository, 403
   for what the grants do not allow); GraphQL ``createPullRequest`` first needs the granted
   repositories' node ids, which are asked of the upstream once per session;
6. an allowed request goes to the upstream's API with the upstream credential in place of
   the sandbox's token, and its answer is relayed back as it came (no redirect followed);
7. after a pull request was created, it is looked up and remembered as the session's own
   (the only ones it may update and comment on), and the configured labels are added.

One ``api`` audit line per request: request id, session, container, method, route or
GraphQL operation, repository, decision, rule, status. Neither token is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import h11

from airlock.config import UpstreamConfig
from airlock.core import session as lifecycle
from airlock.core.api_policy import (
    Allow,
    ApiContext,
    ApiLimits,
    ApiRequest,
    CreatePull,
    NeedRepoIds,
    PullRef,
    Refuse,
    decide_api,
)
from airlock.core.grants import Access
from airlock.gateway.api.tls_stream import TlsClosed, TlsServerStream
from airlock.gateway.api.upstream import UpstreamApi, UpstreamApiError
from airlock.gateway.credentials import CredentialError, UpstreamCredential
from airlock.gateway.intercept_ca import InterceptAuthority
from airlock.gateway.ratelimits import RateLimits
from airlock.gateway.shared_store import StoreUnavailable
from airlock.gateway.store import Store

__all__ = ["ApiRelay", "ApiTunnel", "RelayLimits"]

CHUNK = 64 * 1024
MAX_HELD_ANSWER = 4 * 1024 * 1024  # a pull request's creation answer, read whole
CACHE_SESSIONS = 512  # sessions whose repository ids and create locks are kept without a check
DOCUMENTATION_URL = "https://docs.github.com/rest"
# Request headers a client's API call may carry upstream; everything else stays here
# (cookies, forwarded-for, the sandbox's own Authorization above all).
_FORWARD_REQUEST = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "user-agent",
        "x-github-api-version",
        "graphql-features",
        "if-none-match",
        "if-modified-since",
        "time-zone",
        "x-github-next-global-id",
    }
)
# Response headers never relayed: hop-by-hop (RFC 9110 s7.6.1), framing (h11 frames the
# answer anew), and cookies.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "set-cookie",
    }
)
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    421: "Misdirected Request",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class RelayLimits:
    handshake_timeout: float
    idle_timeout: float  # no request (or no byte of one) for this long ends the tunnel
    max_header_bytes: int
    max_headers: int
    max_requests_per_tunnel: int = 10_000
    request_timeout: float = 60  # one request, head and body, must arrive within this


@dataclass
class ApiTunnel:
    """One intercepted CONNECT, as the egress proxy hands it over."""

    request_id: str
    name: str  # the API name the client asked for (and its SNI)
    session_id: str
    container: str | None
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    hello: bytes  # what the proxy already read: the first ClientHello
    still_valid: Callable[[], bool]
    charge: Callable[[int], bool]  # bytes against the session's budget; False: exhausted
    report_use: Callable[[lifecycle.Use], None]
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    detail: str = ""  # why the TLS handshake failed, for the tunnel's log line


class _Answer(Exception):
    """An answer made here (not by the upstream): status, audit rule, client message."""

    def __init__(self, status: int, rule: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.rule, self.message, self.close = status, rule, message, close


@dataclass
class _Call:
    """One request's audit record."""

    request_id: str
    method: str = ""
    target: str = ""
    route: str = ""
    operation: str | None = None
    repo: str | None = None
    decision: str = "refused"
    rule: str = ""
    status: int = 0
    upstream_status: int | None = None
    bytes_down: int = 0
    started: float = field(default_factory=time.monotonic)
    extra: dict[str, Any] = field(default_factory=dict)


def _bearer(value: str) -> str | None:
    """The token of an Authorization header (``token X``, ``Bearer X``, Basic user:X)."""
    scheme, _, rest = value.strip().partition(" ")
    scheme, rest = scheme.lower(), rest.strip()
    if scheme in ("token", "bearer") and rest and " " not in rest:
        return rest
    if scheme == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def created_pull(answer: bytes, graphql: bool) -> bool:
    """Whether the upstream's 2xx answer to a create says a pull request was opened.

    GitHub answers a refused GraphQL mutation (a pull request already exists for the head,
    say) with 200 and ``errors``: that answer must not make the open pull request for that
    head, someone else's, the session's own. A REST create is 201 with the pull request.
    """
    try:
        data = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    if not graphql:
        return isinstance(data.get("number"), int) and isinstance(data.get("node_id"), str)
    if data.get("errors"):
        return False
    payload = (data.get("data") or {}).get("createPullRequest")
    return isinstance(payload, dict) and isinstance(payload.get("pullRequest"), dict)


def error_body(message: str, status: int, request_id: str) -> bytes:
    """GitHub's error shape; the request id is in the message so that tools print it."""
    return json.dumps(
        {
            "message": f"{message} (request {request_id})",
            "documentation_url": DOCUMENTATION_URL,
            "status": str(status),
            "airlock_request_id": request_id,
        }
    ).encode()


class ApiRelay:
    def __init__(
        self,
        upstreams: list[UpstreamConfig],
        credentials: dict[str, UpstreamCredential],
        store: Store,
        authority: InterceptAuthority,
        log: Callable[..., None],
        limits: RelayLimits,
        *,
        rate_limits: RateLimits | None = None,
        connect_timeout: float = 10,
        read_timeout: float = 120,
    ) -> None:
        self.rate_limits = rate_limits
        # One create at a time per session, decided again under the lock: parallel tunnels
        # cannot open more pull requests than api.max_pulls between decision and record.
        self._create_locks: dict[str, asyncio.Lock] = {}
        self.store = store
        self.authority = authority
        self.log = log
        self.limits = limits
        self.credentials = credentials
        self._upstreams = {u.api_name: u for u in upstreams if u.api.enabled}
        self._apis = {
            name: UpstreamApi(u, connect_timeout=connect_timeout, read_timeout=read_timeout)
            for name, u in self._upstreams.items()
        }
        # (session id, repository key) -> node id: asked of the upstream once per session.
        self._repo_ids: dict[tuple[str, str], str] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._upstreams)

    def handles(self, host: str) -> bool:
        return host.lower() in self._upstreams

    async def close(self) -> None:
        for api in self._apis.values():
            await api.close()

    def forget(self, live: set[str]) -> None:
        """Drop what is cached for sessions not in ``live``."""
        for key in [k for k in self._repo_ids if k[0] not in live]:
            del self._repo_ids[key]
        for sid in [
            k for k, lock in self._create_locks.items() if k not in live and not lock.locked()
        ]:
            del self._create_locks[sid]

    def _prune(self) -> None:
        """Bound the per-session caches: past CACHE_SESSIONS sessions, ended ones go."""
        cached = {sid for sid, _ in self._repo_ids} | set(self._create_locks)
        if len(cached) <= CACHE_SESSIONS:
            return
        live = set()
        for sid in cached:
            s = self.store.get(sid)
            if s is not None and s.state is not lifecycle.SessionState.REVOKED:
                live.add(sid)
        self.forget(live)

    # ----------------------------------------------------------------------- tunnel

    async def serve(self, tunnel: ApiTunnel) -> str:
        """Serve the tunnel's requests until it ends; why it ended."""
        self._prune()
        upstream = self._upstreams[tunnel.name.lower()]
        stream = TlsServerStream(
            self.authority.context_for(tunnel.name), tunnel.reader, tunnel.writer, tunnel.hello
        )
        try:
            await asyncio.wait_for(stream.handshake(), self.limits.handshake_timeout)
        except TimeoutError:
            return "tls_handshake_timeout"
        except TlsClosed as exc:
            tunnel.detail = str(exc)
            return "tls_handshake_failed"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        try:
            while tunnel.requests < self.limits.max_requests_per_tunnel:
                ended = await self._one(tunnel, upstream, stream, conn)
                if ended is not None:
                    return ended
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return "closed"
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return "closed"
            return "request_cap"
        except TlsClosed:
            return "client_error"
        finally:
            tunnel.bytes_up, tunnel.bytes_down = stream.bytes_in, stream.bytes_out
            with contextlib.suppress(TimeoutError, TlsClosed):
                await asyncio.wait_for(stream.close(), 1)

    async def _next(self, conn: h11.Connection, stream: TlsServerStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(stream.read(), self.limits.idle_timeout)
            conn.receive_data(data)

    async def _one(
        self,
        tunnel: ApiTunnel,
        upstream: UpstreamConfig,
        stream: TlsServerStream,
        conn: h11.Connection,
    ) -> str | None:
        """One request and its answer; None to go on with the next, else why to stop."""
        try:
            event = await self._next(conn, stream)
        except TimeoutError:
            return "idle_timeout"
        except h11.RemoteProtocolError as exc:
            await self._send_raw_error(conn, stream, 400, f"airlock: bad request: {exc}", tunnel)
            return "bad_request"
        if isinstance(event, h11.ConnectionClosed):
            return "closed"
        if not isinstance(event, h11.Request):
            return "closed"
        tunnel.requests += 1
        call = _Call(request_id=f"{tunnel.request_id}-{tunnel.requests}")
        call.method = event.method.decode("ascii", "replace")
        call.target = event.target.decode("latin-1")[:512]
        began = time.time()
        try:
            try:
                if event.http_version != b"1.1":
                    raise _Answer(400, "http_version", "airlock: HTTP/1.1 only", True)
                try:
                    # The whole request within a bound: a byte-at-a-time drip ends here.
                    body = await asyncio.wait_for(
                        self._body(conn, stream, event, upstream.api.max_body),
                        self.limits.request_timeout,
                    )
                except TimeoutError:
                    raise _Answer(
                        408, "request_timeout", "airlock: request too slow", True
                    ) from None
                if not tunnel.charge(len(body)):
                    raise _Answer(
                        429, "byte_rate", "airlock: this session's byte budget is used up"
                    )
                await self._handle(tunnel, upstream, stream, conn, event, body, call)
            except _Answer as a:
                call.status, call.rule = a.status, a.rule
                if conn.our_state is h11.SEND_RESPONSE:
                    await self._send_error(conn, stream, a.status, a.message, call.request_id)
                if a.close:
                    return "refused"
            except TimeoutError:
                call.rule = call.rule or "timeout"
                return "idle_timeout"
        finally:
            self._log(tunnel, call)
            tunnel.report_use(
                lifecycle.Use(
                    admitted=call.decision == "allowed",
                    succeeded=call.decision == "allowed" and 200 <= call.status < 400,
                    began=began,
                    ended=time.time(),
                )
            )
        if conn.our_state is not h11.DONE:
            return "closed"
        return None

    async def _body(
        self,
        conn: h11.Connection,
        stream: TlsServerStream,
        request: h11.Request,
        cap: int,
    ) -> bytes:
        for k, v in request.headers:
            if k == b"content-length" and v.isdigit() and int(v) > cap:
                raise _Answer(
                    413, "body_too_large", f"airlock: request body over {cap} bytes", True
                )
        if len(request.headers) > self.limits.max_headers:
            raise _Answer(431, "too_many_headers", "airlock: too many headers", True)
        if conn.client_is_waiting_for_100_continue:
            await stream.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = await self._next(conn, stream)
            except h11.RemoteProtocolError as exc:
                raise _Answer(400, "bad_request", f"airlock: bad request: {exc}", True) from None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > cap:
                    raise _Answer(
                        413, "body_too_large", f"airlock: request body over {cap} bytes", True
                    )
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _Answer(400, "bad_request", "airlock: request ended early", True)

    # ----------------------------------------------------------------------- request

    async def _handle(
        self,
        tunnel: ApiTunnel,
        upstream: UpstreamConfig,
        stream: TlsServerStream,
        conn: h11.Connection,
        request: h11.Request,
        body: bytes,
        call: _Call,
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        host = headers.get("host", "").lower()
        if host not in (tunnel.name.lower(), f"{tunnel.name.lower()}:443"):
            raise _Answer(
                421, "wrong_host", f"airlock: this connection is for {tunnel.name} only", True
            )
        if not tunnel.still_valid():
            raise _Answer(401, "session_ended", "airlock: this sandbox's session has ended", True)
        session = self.store.get(tunnel.session_id)
        if session is None:
            raise _Answer(401, "session_ended", "airlock: this sandbox's session has ended", True)
        auth = [v for k, v in request.headers if k == b"authorization"]
        if not auth:
            raise _Answer(
                401,
                "no_api_token",
                "airlock: Requires authentication: send this sandbox's GH_TOKEN "
                "(Authorization: token $GH_TOKEN)",
            )
        token = _bearer(auth[0].decode("latin-1")) if len(auth) == 1 else None
        if token is None or not lifecycle.api_token_matches(session, token):
            raise _Answer(
                401,
                "wrong_api_token",
                "airlock: Bad credentials: only the GH_TOKEN airlock gave this sandbox works here",
            )
        ctype = headers.get("content-type")
        api_request = ApiRequest(call.method, request.target.decode("latin-1"), body, ctype)
        decision = await self._decide(session, upstream, api_request, call)
        if self.rate_limits is not None:
            over = await self.rate_limits.admit_request(session.id)
            if over is not None:
                call.decision = "refused"
                raise _Answer(
                    429, over.limit, f"airlock: over this session's {over.limit} limit; retry later"
                )
        try:
            if decision.creates_pull is None:
                await self._forward(tunnel, upstream, stream, conn, request, body, decision, call)
                return
            lock = self._create_locks.setdefault(session.id, asyncio.Lock())
            async with lock:
                # A slot in the budget, across every gateway on a shared store (here alone,
                # the lock is enough), then decided again with the pulls recorded meanwhile.
                hold = self._hold_pull(session, upstream, call)
                try:
                    current = self.store.get(session.id) or session
                    decision = await self._decide(current, upstream, api_request, call)
                    await self._forward(
                        tunnel, upstream, stream, conn, request, body, decision, call
                    )
                finally:
                    if "pull_not_recorded" not in call.extra:
                        self.store.release_pull(session, hold)
        finally:
            if self.rate_limits is not None:
                await self.rate_limits.done(session.id, call.bytes_down + len(body))

    def _hold_pull(self, session: lifecycle.Session, upstream: UpstreamConfig, call: _Call) -> str:
        cap = upstream.api.max_pulls
        try:
            hold = self.store.hold_pull(session, cap)
        except StoreUnavailable:
            call.decision = "refused"
            raise _Answer(503, "store_unavailable", "airlock: session store unreachable") from None
        if hold is None:
            call.decision = "refused"
            raise _Answer(
                403,
                "pull_limit",
                f"airlock: this session may create at most {cap} pull requests; "
                "update one of them instead",
            )
        return hold

    async def _decide(
        self,
        session: lifecycle.Session,
        upstream: UpstreamConfig,
        api_request: ApiRequest,
        call: _Call,
    ) -> Allow:
        """The policy's decision, with repository ids looked up when it needs them; a
        refusal is raised as the answer."""
        decision = decide_api(api_request, self._context(session, upstream, None))
        if isinstance(decision, NeedRepoIds):
            ids = await self._repo_node_ids(session, upstream, decision.repos)
            decision = decide_api(api_request, self._context(session, upstream, ids))
            if isinstance(decision, NeedRepoIds):
                raise _Answer(
                    502, "repo_ids_unknown", "airlock: the repositories' ids could not be read"
                )
        if isinstance(decision, Refuse):
            call.route, call.repo, call.decision = decision.route, decision.repo, "refused"
            raise _Answer(decision.status, decision.reason, decision.message)
        call.route, call.repo, call.operation = decision.route, decision.repo, decision.operation
        call.decision, call.rule = "allowed", "api_policy"
        return decision

    def _context(
        self,
        session: lifecycle.Session,
        upstream: UpstreamConfig,
        repo_ids: dict[str, str] | None,
    ) -> ApiContext:
        api = upstream.api
        pulls = []
        for entry in session.pulls:
            repo, number, node_id = lifecycle.parse_pull_entry(entry)
            pulls.append(PullRef(repo, number, node_id))
        return ApiContext(
            host=upstream.host,
            grants=session.grants,
            pulls=tuple(pulls),
            limits=ApiLimits(
                max_pulls=api.max_pulls,
                require_draft=api.require_draft,
                title_prefix=api.title_prefix,
                labels=tuple(api.labels),
                base_branches=tuple(api.base_branches),
            ),
            rest_prefix=upstream.api_rest_prefix,
            graphql_path=upstream.api_graphql_path,
            repo_ids=repo_ids,
        )

    async def _token(
        self, session: lifecycle.Session, upstream: UpstreamConfig, repo: str | None
    ) -> str:
        """The upstream credential for a request about ``repo`` (or, for one about no
        repository, the session's first repository on this upstream: writes first)."""
        grants = [g for g in session.grants if g.host == upstream.host]
        if repo is not None:
            grants = [g for g in grants if g.key == repo] or grants
        grants.sort(key=lambda g: g.access is not Access.WRITE)
        if not grants:
            raise _Answer(403, "no_grant", f"airlock: this session has no grant on {upstream.host}")
        g = grants[0]
        try:
            return await self.credentials[upstream.host].token(session, g.owner, g.repo)
        except CredentialError as exc:
            self.log("api_credential_error", session=session.id, host=upstream.host, error=str(exc))
            raise _Answer(502, "credential_error", "airlock: no upstream credential") from None

    async def _repo_node_ids(
        self, session: lifecycle.Session, upstream: UpstreamConfig, repos: tuple[str, ...]
    ) -> dict[str, str]:
        api = self._apis[upstream.api_name]
        out: dict[str, str] = {}
        for key in repos:
            cached = self._repo_ids.get((session.id, key))
            if cached is None:
                grant = next((g for g in session.grants if g.key == key), None)
                if grant is None:
                    continue
                token = await self._token(session, upstream, key)
                try:
                    cached = await api.repository_node_id(token, grant.owner, grant.repo)
                except UpstreamApiError:
                    cached = None
                if cached is None:
                    continue
                self._repo_ids[(session.id, key)] = cached
            out[cached] = key
        return out

    async def _forward(
        self,
        tunnel: ApiTunnel,
        upstream: UpstreamConfig,
        stream: TlsServerStream,
        conn: h11.Connection,
        request: h11.Request,
        body: bytes,
        decision: Allow,
        call: _Call,
    ) -> None:
        session = self.store.get(tunnel.session_id)
        assert session is not None
        token = await self._token(session, upstream, decision.repo)
        api = self._apis[upstream.api_name]
        out_headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in request.headers
            if k.decode("latin-1") in _FORWARD_REQUEST
        }
        out_headers["authorization"] = f"token {token}"
        send = decision.body if decision.body is not None else body
        out_headers.pop("content-type", None)
        if call.method in ("GET", "HEAD"):
            send = b""  # a read carries nothing the policy did not look at
        elif send:
            # The body the policy read as JSON is what the upstream reads, as JSON.
            out_headers["content-type"] = "application/json"
        graphql = decision.route.startswith("graphql")
        url = api.url_for(decision.upstream_target, graphql)
        try:
            resp = await api.open(call.method, url, out_headers, send)
        except (aiohttp.ClientError, OSError) as exc:
            call.decision = "error"
            call.extra["error"] = f"{type(exc).__name__}: {exc}"[:300]  # for the audit log
            raise _Answer(502, "upstream_error", "airlock: the API did not answer") from None
        except TimeoutError:
            call.decision = "error"
            raise _Answer(
                504, "upstream_timeout", "airlock: the API did not answer in time"
            ) from None
        try:
            call.upstream_status = call.status = resp.status
            held: bytes | None = None
            if decision.creates_pull is not None and 200 <= resp.status < 300:
                # The answer waits until the pull request is the session's own and labelled:
                # when gh prints its URL, the gateway's part is done too.
                held = await resp.content.read(MAX_HELD_ANSWER)
                if created_pull(held, graphql):
                    await self._remember_pull(tunnel, upstream, decision.creates_pull, call)
                else:
                    call.extra["pull_created"] = False  # refused upstream: nothing adopted
            headers: list[tuple[str, str]] = [
                (k, v) for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE
            ]
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and call.method != "HEAD":
                headers.append(("content-length", length))
            headers.append(("x-airlock-request-id", call.request_id))
            await stream.write(
                conn.send(
                    h11.Response(
                        status_code=resp.status,
                        headers=headers,
                        reason=(resp.reason or "").encode("latin-1", "replace"),
                    )
                )
            )
            if held is not None:
                call.bytes_down += len(held)
                await stream.write(conn.send(h11.Data(data=held)))
            elif call.method != "HEAD":
                async for chunk in resp.content.iter_chunked(CHUNK):
                    call.bytes_down += len(chunk)
                    if not tunnel.charge(len(chunk)):
                        call.rule = "byte_rate"
                        raise TlsClosed("byte budget")
                    await stream.write(conn.send(h11.Data(data=chunk)))
            await stream.write(conn.send(h11.EndOfMessage()))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TlsClosed(f"upstream: {exc}") from None
        finally:
            resp.release()

    async def _remember_pull(
        self, tunnel: ApiTunnel, upstream: UpstreamConfig, created: CreatePull, call: _Call
    ) -> None:
        session = self.store.get(tunnel.session_id)
        if session is None:
            return
        api = self._apis[upstream.api_name]
        token = await self._token(session, upstream, created.repo)
        try:
            found = await api.find_pull(
                token, created.owner, created.name, created.head, created.base
            )
        except UpstreamApiError as exc:
            found = None
            call.extra["pull_lookup_error"] = str(exc)
        if found is None:
            call.extra["pull_lookup"] = "not_found"
            return
        number, node_id = found
        current = self.store.get(tunnel.session_id) or session
        try:
            self.store.put(
                lifecycle.record_pull(current, created.repo, number, node_id), durable=True
            )
        except StoreUnavailable:
            # Opened upstream, not recorded: the session may not update it, and its slot in
            # the budget stays held (until it lapses), so the budget is not overshot.
            call.extra["pull_not_recorded"] = f"{created.repo}#{number}"
            return
        call.extra["pull"] = f"{created.repo}#{number}"
        if created.labels:
            try:
                status = await api.add_labels(
                    token, created.owner, created.name, number, list(created.labels)
                )
            except UpstreamApiError:
                status = 0
            call.extra["labels_status"] = status
        self.log(
            "api_pull_created",
            session=tunnel.session_id,
            repo=created.repo,
            number=number,
            head=created.head,
            base=created.base,
            request_id=call.request_id,
        )

    # ----------------------------------------------------------------------- answers

    async def _send_error(
        self, conn: h11.Connection, stream: TlsServerStream, status: int, message: str, rid: str
    ) -> None:
        data = error_body(message, status, rid)
        headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", str(len(data))),
            ("x-airlock-request-id", rid),
            ("x-github-request-id", rid),
        ]
        if status == 401:
            headers.append(("www-authenticate", 'token realm="airlock"'))
        try:
            await stream.write(
                conn.send(
                    h11.Response(
                        status_code=status,
                        headers=headers,
                        reason=_REASONS.get(status, "Error").encode(),
                    )
                )
            )
            await stream.write(conn.send(h11.Data(data=data)))
            await stream.write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass

    async def _send_raw_error(
        self,
        conn: h11.Connection,
        stream: TlsServerStream,
        status: int,
        message: str,
        tunnel: ApiTunnel,
    ) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send_error(conn, stream, status, message, f"{tunnel.request_id}-bad")

    def _log(self, tunnel: ApiTunnel, call: _Call) -> None:
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "session": tunnel.session_id,
            "container": tunnel.container,
            "host": tunnel.name,
            "method": call.method,
            "route": call.route or None,
            "operation": call.operation,
            "repo": call.repo,
            "decision": call.decision,
            "rule": call.rule,
            "status": call.status,
            "upstream_status": call.upstream_status,
            "bytes_down": call.bytes_down,
            "duration_ms": round((time.monotonic() - call.started) * 1000, 1),
        }
        if call.decision != "allowed":
            fields["target"] = call.target.split("?", 1)[0]
        fields.update(call.extra)
        self.log("api", **fields)
