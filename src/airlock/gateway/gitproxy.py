"""The git smart-HTTP proxy: mTLS in, credential-injecting HTTPS out, both bodies streamed.

Only three endpoints exist (info/refs, git-upload-pack, git-receive-pack). The request
target is validated raw (never decoded), the session is checked on every request (so a
revoked or capped session fails on the very next request, even on a kept-alive connection),
and the upstream is asked with the gateway's own credential. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from airlock.config import Config, UpstreamConfig
from airlock.core import session as lifecycle
from airlock.core.aggregate import DenialAggregator
from airlock.core.gitdecision import Refuse, decide_git_request
from airlock.core.gitpath import Endpoint, GitRequest, Service, host_form_target
from airlock.core.gitrecord import GitRecord
from airlock.core.pktline import PktLineError
from airlock.core.pushpolicy import PushDecision, decide_push, policy_digest, settle
from airlock.core.refrules import RefRule
from airlock.core.reportstatus import (
    AdvertisementFilter,
    ReportStatusReader,
    refusal_report,
    sideband_limit,
)
from airlock.core.requestbody import BodyRefused, BodyTooLarge, decode_body
from airlock.core.session import Refusal
from airlock.core.uploadpack import (
    UploadPackRefused,
    parse_protocol_version,
    parse_upload_pack_request,
)
from airlock.core.upstream import RESPONSE_HEADERS, judge_upstream_answer, upstream_headers
from airlock.gateway import gitauth
from airlock.gateway.audit import AuditLog
from airlock.gateway.credentials import CredentialError, UpstreamCredential
from airlock.gateway.metrics import Metrics
from airlock.gateway.pushgate import BodyReader, HeldPush, drain, prove, read_commands
from airlock.gateway.ratelimits import RateLimits
from airlock.gateway.shared_store import StoreUnavailable
from airlock.gateway.store import Store
from airlock.gateway.tlslistener import ConnectionGuard
from airlock.gateway.upstreampool import upstream_session

REQUEST_ID_HEADER = "X-Airlock-Request-Id"
_REQUEST_ID_KEY = web.RequestKey("airlock_request_id", str)


class _BodyTooLarge(Exception):
    pass


@dataclass
class _Outcome:
    """What one request did, for the audit log."""

    request_id: str
    source: str
    started: float
    record: GitRecord = field(default_factory=GitRecord)
    bytes_in: int = 0
    bytes_out: int = 0
    body_error: Exception | None = None  # raised inside the upload; aiohttp wraps it
    body_failed: asyncio.Event = field(default_factory=asyncio.Event)
    body_complete: bool = True  # the whole request body went upstream
    push: HeldPush | None = None  # an allowed push, for what the upstream reports of it
    report: ReportStatusReader | None = None

    def count_in(self, n: int) -> None:
        self.bytes_in += n


def _text(status: int, message: str, request_id: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=f"airlock: {message} (request id {request_id})\n",
        headers={REQUEST_ID_HEADER: request_id, **headers},
    )


def _repo_key(req: GitRequest) -> str:
    """The repository as grants and the session's created refs name it (lowercased)."""
    return f"{req.host}/{req.repo_key}"


def not_found(request_id: str) -> web.Response:
    """The one answer for a repository that is missing, not granted or otherwise hidden."""
    return _text(404, "repository not found", request_id)


class GitProxy:
    def __init__(
        self,
        config: Config,
        store: Store,
        tokens: Mapping[str, UpstreamCredential],
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        *,
        metrics: Metrics | None = None,
        guard: ConnectionGuard | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tokens = tokens
        self.audit = audit
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.guard = guard
        self.limits = limits
        self.denials = DenialAggregator(interval=config.limits.log_interval)
        self._clients: dict[str, aiohttp.ClientSession] = {}

    def _client(self, upstream: UpstreamConfig) -> aiohttp.ClientSession:
        client = self._clients.get(upstream.host)
        if client is None or client.closed:
            ctx = ssl.create_default_context(
                cafile=str(upstream.ca_file) if upstream.ca_file else None
            )
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            client = upstream_session(ctx)
            self._clients[upstream.host] = client
        return client

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()

    # --- request handling -------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = secrets.token_hex(8)
        request[_REQUEST_ID_KEY] = rid  # for an error answer made outside this handler
        source = request.transport.get_extra_info("peername")[0] if request.transport else "?"
        out = _Outcome(rid, source, time.monotonic())
        try:
            response = await self._handle(request, out)
        except Exception as exc:  # the audit line must be written whatever happened
            if out.record.reason is None:
                out.record.reason = f"internal_error:{type(exc).__name__}"
            out.record.status = 500
            self._log(out)
            raise
        if out.record.status is None:
            out.record.status = response.status
        self._log(out)
        return response

    def error_response(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.Response:
        """The answer to a request that never reached :meth:`handle` (aiohttp's parser refused
        it: obs-fold, both Content-Length and Transfer-Encoding, control characters...) or
        that failed inside it: the same short text as every refusal, never an echo."""
        rid = request.get(_REQUEST_ID_KEY)
        if rid is None:  # refused by the parser: this is its only audit line
            rid = secrets.token_hex(8)
            transport = request.transport
            peer = transport.get_extra_info("peername") if transport else None
            out = _Outcome(rid, peer[0] if peer else "?", time.monotonic())
            out.record.status = status
            out.record.reason = f"bad_http:{type(exc).__name__}"
            self._log(out)
        message = "bad request" if 400 <= status < 500 else "internal error"
        response = _text(status if 400 <= status < 600 else 500, message, rid)
        response.force_close()
        return response

    def _log(self, out: _Outcome) -> None:
        record = out.record
        status = record.status or 0
        self.metrics.inc(
            "airlock_requests_total",
            help="Git requests answered",
            service=record.service or "none",
            status=str(status),
        )
        self.metrics.inc("airlock_bytes_total", out.bytes_in, help="Bytes relayed", direction="in")
        self.metrics.inc(
            "airlock_bytes_total", out.bytes_out, help="Bytes relayed", direction="out"
        )
        if status >= 400:
            reason = record.reason or "unknown"
            self.metrics.inc(
                "airlock_denials_total",
                help="Requests and connections refused",
                reason=reason.split(":")[0],
            )
            # Repeated denials of one kind from one session or source: one line, then counts.
            who = record.session or out.source
            first, due = self.denials.record(time.monotonic(), (reason, who), out.request_id)
            for line in due:
                self.audit.event("denials_repeated", **line)
            if not first:
                return
        self.audit.event(
            "git_request",
            request_id=out.request_id,
            source=out.source,
            bytes_in=out.bytes_in,
            bytes_out=out.bytes_out,
            duration_ms=round((time.monotonic() - out.started) * 1000, 1),
            **record.audit_fields(),
        )

    def _refuse(self, out: _Outcome, reason: str, response: web.Response) -> web.Response:
        out.record.reason = reason
        return response

    def _store_unavailable(self, out: _Outcome) -> web.Response:
        """Fail closed: without the shared store no session can be checked, so none is."""
        if self.metrics is not None:
            self.metrics.inc(
                "airlock_store_unavailable_refusals_total",
                help="requests refused because the session store was unreachable",
                kind="git",
            )
        message = "session store unreachable; retry shortly"
        return self._refuse(out, "store_unavailable", _text(503, message, out.request_id))

    def _usable_session(
        self, request: web.BaseRequest, out: _Outcome, session_id: str, der: bytes | None
    ) -> lifecycle.Session | web.Response:
        """The session if it may serve this request now; synchronous, so no await can slip
        between this check and the request count that follows it. ``der`` is the client
        certificate, None when gitauth.identify accepted HTTP Basic."""
        rid = out.request_id
        if not self.store.available:
            return self._store_unavailable(out)
        s = self.store.get(session_id)
        if s is None:
            return self._refuse(out, Refusal.UNKNOWN_SESSION, _text(403, "session invalid", rid))
        local = request.transport.get_extra_info("sockname") if request.transport else None
        refusal = gitauth.usable(
            s,
            der,
            now=self.clock(),
            source_ip=out.source,
            local_ip=local[0] if local else None,
        )
        if refusal is not None:
            status = 429 if refusal in (Refusal.REQUEST_CAP, Refusal.BYTE_CAP) else 403
            # An ended session is told so ("airlock: session expired"); the rest stays vague.
            ended = lifecycle.ended_as(refusal)
            message = f"session {ended}" if ended else "session not usable"
            return self._refuse(out, refusal, _text(status, message, rid))
        if s.binding is not None:
            out.record.container = s.binding.container_id
        return s

    async def _handle(self, request: web.BaseRequest, out: _Outcome) -> web.StreamResponse:
        rid = out.request_id
        if not self.store.available:  # before any lookup: every way in is told the same
            return self._store_unavailable(out)
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        local = request.transport.get_extra_info("sockname") if request.transport else None
        who = gitauth.identify(
            ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None,
            request.headers.get("Authorization"),
            source_ip=out.source,
            local_ip=local[0] if local else None,
            lookup=self.store.get,
            backoff=self.guard.backoff if self.guard is not None else None,
            now=time.monotonic(),
        )
        if isinstance(who, gitauth.Refused):
            out.record.session = who.claimed
            return self._refuse(out, who.reason, _text(who.status, who.message, rid, **who.headers))
        session_id, der = who.session_id, who.cert_der
        out.record.session = session_id
        out.record.auth = who.method.value
        checked = self._usable_session(request, out, session_id, der)
        if isinstance(checked, web.Response):
            return checked
        limits = self.limits
        if limits is None:
            return await self._authorized(request, checked, out)
        if limits.synchronous:  # in memory: no await between the session check and here
            over = limits.admit_now(session_id)
        else:
            over = await limits.admit_request(session_id)
        if over is not None:
            return self._refuse(
                out,
                f"limit:{over.limit}",
                _text(429, "rate limited", rid, **{"Retry-After": str(over.retry_after)}),
            )
        try:
            if not limits.synchronous:
                # The limiter awaited: check the session again, it may have changed meanwhile.
                checked = self._usable_session(request, out, session_id, der)
                if isinstance(checked, web.Response):
                    return checked
            return await self._authorized(request, checked, out)
        finally:
            if limits.synchronous:
                limits.done_now(session_id, out.bytes_in + out.bytes_out)
            else:
                await limits.done(session_id, out.bytes_in + out.bytes_out)

    async def _authorized(
        self, request: web.BaseRequest, s: lifecycle.Session, out: _Outcome
    ) -> web.StreamResponse:
        rid = out.request_id
        session_id = s.id
        decision = decide_git_request(
            request.method,
            host_form_target(
                request.raw_path, request.headers.get("Host"), self.config.upstream_hosts
            ),
            request.headers.get("Content-Type"),
            s,
            self.config.upstream_hosts,
        )
        req = decision.request
        if req is None:
            out.record.target = request.raw_path[:300]
        else:
            out.record.host = req.host
            out.record.repo = req.repo_path
            out.record.service = req.service.value
            out.record.endpoint = req.endpoint.value
        if isinstance(decision, Refuse):
            answer = (
                not_found(rid) if decision.hidden else _text(decision.status, decision.message, rid)
            )
            return self._refuse(out, decision.reason, answer)
        assert req is not None
        upstream = self.config.upstream_for(req.host)
        if upstream is None:  # parse_git_request already refused unknown hosts
            return self._refuse(out, "unknown_upstream", not_found(rid))
        # Count the request before the first await so concurrent requests cannot overshoot.
        try:
            counted = self.store.begin_request(s)
        except StoreUnavailable:
            return self._store_unavailable(out)
        if not counted:
            # The shared store said no: another gateway revoked the session a moment ago
            # (this copy is the store's now), or counted the last request the cap allows.
            current = self.store.get(s.id)
            if current is None or current.state is lifecycle.SessionState.REVOKED:
                return self._refuse(out, Refusal.REVOKED, _text(403, "session revoked", rid))
            cap = Refusal.BYTE_CAP if current.bytes >= current.max_bytes else Refusal.REQUEST_CAP
            return self._refuse(out, cap, _text(429, "session not usable", rid))
        admitted_at = self.clock()
        success = False
        try:
            response, success = await self._forward(
                request, s, req, decision.push_rules, upstream, out
            )
            return response
        finally:
            current = self.store.get(session_id)
            if current is not None:
                self.store.put(
                    lifecycle.finish_request(
                        current,
                        now=self.clock(),
                        nbytes=out.bytes_in + out.bytes_out,
                        success=success,
                        began=admitted_at,
                    ),
                    durable=False,
                )

    async def _read_body(self, request: web.BaseRequest, limit: int, out: _Outcome) -> bytes:
        """The whole raw request body, refused once it passes ``limit`` bytes."""
        reader = BodyReader(request, self.config.git.idle_timeout, out.count_in)
        parts: list[bytes] = []
        while chunk := await reader.chunk():
            if out.bytes_in > limit:
                raise BodyTooLarge(f"body of more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _upload_pack_body(
        self, request: web.BaseRequest, version: int, limit: int, out: _Outcome
    ) -> bytes:
        """The fetch request, read whole, inflated (bounded) and parsed before anything goes
        upstream; these exact bytes are what the upstream receives."""
        raw = await self._read_body(request, limit, out)
        encoding = request.headers.get("Content-Encoding")
        body = decode_body(raw, encoding, limit)
        parsed = parse_upload_pack_request(body, version)
        out.record.upload_pack = parsed.audit_fields()
        if encoding:
            out.record.inflated_bytes = len(body)
        return body

    def _push_decision(
        self, s: lifecycle.Session, req: GitRequest, rules: tuple[RefRule, ...], push: HeldPush
    ) -> PushDecision:
        return decide_push(
            push.commands.commands,
            rules,
            lifecycle.owned_refs(s, _repo_key(req)),
            max_refs=self.config.git.max_refs_per_push,
            pushes_left=lifecycle.pushes_left(s),
        )

    async def _read_push(
        self,
        request: web.BaseRequest,
        s: lifecycle.Session,
        req: GitRequest,
        rules: tuple[RefRule, ...],
        limit: int,
        out: _Outcome,
    ) -> HeldPush | web.Response:
        """Read a push as far as its decision needs; the held push when it may go upstream,
        else the status report refusing it (the body read to its end, nothing sent)."""
        cfg = self.config.git
        reader = BodyReader(request, cfg.idle_timeout, out.count_in)
        push = await read_commands(reader, min(limit, cfg.max_upload_pack_body))
        decision = self._push_decision(s, req, rules, push)
        if decision.pending:
            decision = settle(decision, await prove(reader, push, decision, cfg.max_proof_buffer))
        out.record.push_policy = policy_digest({_repo_key(req): rules})
        out.record.ref_decisions = [d.audit() for d in decision.refs]
        if decision.refused_whole:
            out.record.push_refused = decision.refused_whole
        if not decision.refused:
            out.body_complete = reader.eof
            push.reader = reader
            return push
        await drain(reader, out.bytes_in, limit)
        out.record.reason = "push_refused"
        refused = [(d.update.ref, d.message) for d in decision.refs]
        body = refusal_report(
            refused,
            sideband=sideband_limit(push.commands.capabilities),
            message=f"airlock: push refused, nothing was changed (request id {out.request_id})",
        )
        return web.Response(
            status=200,
            body=body,
            content_type="application/x-git-receive-pack-result",
            headers={REQUEST_ID_HEADER: out.request_id, "Cache-Control": "no-cache"},
        )

    async def _push_body(self, push: HeldPush, limit: int, out: _Outcome) -> AsyncIterator[bytes]:
        """Every byte held for the decision, then the rest of the pack, in bounded pieces."""
        assert push.reader is not None
        chunk_size = self.config.git.chunk_size
        chunk = push.joined()
        push.held = []  # streamed from here on: nothing more is kept
        while chunk:
            # Yield in bounded pieces; readany() never returns more than its buffer holds.
            for i in range(0, len(chunk), chunk_size):
                yield chunk[i : i + chunk_size]
            chunk = await push.reader.chunk()
            if out.bytes_in > limit:
                out.body_error = _BodyTooLarge()
                out.body_failed.set()
                raise out.body_error
        out.body_complete = True

    def _record_push(
        self,
        session_id: str,
        req: GitRequest,
        push: HeldPush,
        report: ReportStatusReader,
        out: _Outcome,
    ) -> None:
        """The refs the upstream confirmed creating belong to the session (durably), the
        ones it confirmed deleting no longer do."""
        confirmed = report.confirmed()
        commands = push.commands.commands
        created = frozenset(c.ref for c in commands if c.is_create and c.ref in confirmed)
        deleted = frozenset(c.ref for c in commands if c.is_delete and c.ref in confirmed)
        out.record.upstream_updated = sorted(confirmed)
        if not report.trusted:
            out.record.upstream_report = "unreadable"
        current = self.store.get(session_id)
        if current is not None and (created or deleted):
            updated = lifecycle.record_push(current, _repo_key(req), created, deleted)
            try:
                self.store.put(updated, durable=True)
            except StoreUnavailable:
                # The upstream did it; the shared store could not be told. The refs stay
                # unowned (the session cannot force or delete them): the safe side.
                out.record.upstream_report = "refs_not_recorded:store_unavailable"

    def _refuse_body(self, out: _Outcome, exc: Exception) -> web.Response:
        rid = out.request_id
        if isinstance(exc, BodyTooLarge):
            out.record.reason = "body_too_large"
            response = _text(413, "request body too large", rid)
        else:
            out.record.reason = f"bad_body:{str(exc)[:200]}"
            response = _text(400, "bad request", rid)
        response.force_close()  # the rest of the body is not wanted: end the connection
        return response

    async def _forward(
        self,
        request: web.BaseRequest,
        s: lifecycle.Session,
        req: GitRequest,
        rules: tuple[RefRule, ...],
        upstream: UpstreamConfig,
        out: _Outcome,
    ) -> tuple[web.StreamResponse, bool]:
        rid = out.request_id
        cfg = self.config.git
        version = 0
        if req.service is Service.UPLOAD_PACK:
            try:
                version = parse_protocol_version(request.headers.get("Git-Protocol"))
            except UploadPackRefused as exc:
                out.record.reason = f"bad_git_protocol:{exc}"
                return _text(400, "bad request", rid), False
            out.record.protocol = version
        limit = cfg.max_request_body if req.is_write else cfg.max_upload_pack_body
        data: bytes | AsyncIterator[bytes] | None = None
        out.body_complete = True
        if request.method == "POST":
            encoding = request.headers.get("Content-Encoding")
            if request.content_length is not None and request.content_length > limit:
                out.record.reason = "body_too_large"
                return _text(413, "request body too large", rid), False
            try:
                if req.is_write:
                    # A push body must stay readable for the audit: git never encodes it.
                    if encoding is not None:
                        raise BodyRefused("a push body may not be encoded")
                    held = await self._read_push(request, s, req, rules, limit, out)
                    if isinstance(held, web.Response):
                        return held, False
                    out.push = held
                    self.store.put(lifecycle.begin_push(self.store.get(s.id) or s), durable=False)
                    data = self._push_body(held, limit, out)
                else:
                    data = await self._upload_pack_body(request, version, limit, out)
            except (BodyRefused, UploadPackRefused, PktLineError) as exc:
                return self._refuse_body(out, exc), False
            except TimeoutError:
                out.record.reason = "client_body_timeout"
                response = _text(408, "request body timed out", rid)
                response.force_close()
                return response, False
        try:
            token = await self.tokens[upstream.host].token(s, req.owner, req.repo)
        except (CredentialError, OSError) as exc:
            out.record.reason = f"credential_unavailable:{exc}"
            return _text(502, "upstream unavailable", rid), False
        query = req.upstream_query()
        url = upstream.url + req.upstream_path() + (f"?{query}" if query else "")
        timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout, connect=cfg.connect_timeout, sock_read=cfg.idle_timeout
        )

        async def send() -> tuple[web.StreamResponse, bool]:
            async with self._client(upstream).request(
                request.method,
                url,
                headers=upstream_headers(
                    req,
                    request.method,
                    token,
                    request.headers,
                    protocol_version=version,
                    content_length=request.content_length,
                ),
                data=data,
                allow_redirects=False,
                timeout=timeout,
            ) as up:
                out.record.upstream_status = up.status
                clean = False
                try:
                    result = await self._relay(request, req, up, out)
                    # Back to the pool only after a complete exchange: a request body the
                    # upstream did not read to its end (an early answer, a refusal, an
                    # error) would be read as the start of the next request on it.
                    if out.push is not None and out.report is not None:
                        # What the upstream reported it did, even if the client has gone.
                        self._record_push(s.id, req, out.push, out.report, out)
                    clean = result[1] and out.body_complete and up.content.at_eof()
                    return result
                finally:
                    if not clean:
                        up.close()

        try:
            if out.push is None:
                # No body, or one read whole and parsed already: nothing can fail mid-upload.
                return await send()
            return await self._send_streaming(send(), out)
        except _BodyTooLarge:
            out.record.reason = "body_too_large"
            response = _text(413, "request body too large", rid)
            response.force_close()  # the rest of the body is not wanted: end the connection
            return response, False
        except TimeoutError:
            out.record.reason = "timeout"
            return _text(504, "upstream timed out", rid), False
        except aiohttp.ClientError as exc:
            out.record.reason = f"upstream_error:{type(exc).__name__}"
            return _text(502, "upstream unavailable", rid), False

    async def _send_streaming(
        self, sending_coro: Awaitable[tuple[web.StreamResponse, bool]], out: _Outcome
    ) -> tuple[web.StreamResponse, bool]:
        """``send()`` of a push, whose body streams from the client while the upstream is
        asked: a bad body (too large, cut off) ends the upstream request at once, where
        aiohttp would wait for an upstream answer that may never come."""
        sending = asyncio.ensure_future(sending_coro)
        failed = asyncio.ensure_future(out.body_failed.wait())
        try:
            await asyncio.wait({sending, failed}, return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
                assert out.body_error is not None
                raise out.body_error
            return sending.result()
        except Exception as exc:
            # An error raised while uploading the body surfaces wrapped in a client error.
            if out.body_error is None or exc is out.body_error:
                raise
            raise out.body_error from None
        finally:
            failed.cancel()
            if not sending.done():
                sending.cancel()

    async def _relay(
        self,
        request: web.BaseRequest,
        req: GitRequest,
        up: aiohttp.ClientResponse,
        out: _Outcome,
    ) -> tuple[web.StreamResponse, bool]:
        rid = out.request_id
        refusal = judge_upstream_answer(req, up.status, up.headers)
        if refusal is not None:
            out.record.reason = refusal.reason
            out.record.redirect_to = refusal.redirect_to
            if refusal.hidden:
                return not_found(rid), False
            extra = {"Retry-After": refusal.retry_after} if refusal.retry_after else {}
            return _text(refusal.status, refusal.message, rid, **extra), False
        kind = "info" if req.endpoint is Endpoint.INFO_REFS else "rpc"
        advert: AdvertisementFilter | None = None
        if req.service is Service.RECEIVE_PACK:
            if kind == "info":
                advert = AdvertisementFilter()
            elif out.push is not None:
                caps = out.push.commands.capabilities
                out.report = ReportStatusReader(sideband=sideband_limit(caps) is not None)
        response = web.StreamResponse(status=200)
        for name in RESPONSE_HEADERS:
            if name in up.headers:
                response.headers[name] = up.headers[name]
        response.headers[REQUEST_ID_HEADER] = rid
        if up.content_length is not None and advert is None:
            response.content_length = up.content_length
        await response.prepare(request)
        try:
            async for chunk in up.content.iter_chunked(self.config.git.chunk_size):
                out.bytes_out += len(chunk)
                if advert is not None:
                    chunk = advert.feed(chunk)  # push-cert taken out of the capabilities
                if out.report is not None:
                    out.report.feed(chunk)
                await response.write(chunk)
            if advert is not None:
                advert.finish()
            await response.write_eof()
        except ConnectionResetError:
            # The client went away (some close as soon as they have read a push's result):
            # not an upstream error. aiohttp's ClientConnectionResetError is one of these.
            out.record.reason = "client_disconnected"
            return response, False
        out.record.reason = "ok"
        return response, True
