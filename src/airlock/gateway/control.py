"""The control API: JSON over the hardened Unix socket, for the host side only.

Routes (all JSON; errors are ``{"error": "..."}`` with a 4xx status):
  GET  /v1/health                      -> {"status": "ok", "sessions": N, "gateway_id": ID}
                                          (ID: 16 lowercase hex, this state directory's,
                                          kept across restarts; gateway/identity.py)
  POST /v1/sessions                    CreateSession -> SessionIssued
  GET  /v1/sessions                    -> {"sessions": [Session, ...]}
  GET  /v1/sessions/{id}               -> Session
  POST /v1/sessions/{id}/renew         {"csr": PEM} -> SessionIssued (new certificate)
  POST /v1/sessions/{id}/revoke        {"reason": str} -> Session
  POST /v1/sessions/{id}/activate      Binding -> Session
  POST /v1/revoke-all                  {"reason": str} -> {"revoked": N}
  GET  /v1/rotation                    -> Rotation (phase, overlap end, the trust of the moment)
  POST /v1/rotation/prepare            {"overlap": seconds} -> Rotation + {"reissued": [...],
                                          "not_reissued": [...]} (gateway/rotation.py)
  POST /v1/rotation/commit             -> Rotation (new server certificate from now on)
  GET  /v1/listeners                   -> {"addresses": [...]}
  POST /v1/listeners                   {"address": IP} -> listen there (git + DNS)
  POST /v1/listeners/remove            {"address": IP} -> stop listening there
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from airlock.config import Config
from airlock.core import rotation as rotation_core
from airlock.core import session as lifecycle
from airlock.core.egress import InvalidAllowEntry, parse_allow_entry
from airlock.core.grants import InvalidGrant, parse_grant
from airlock.core.hostnames import InvalidHostname
from airlock.core.session import Binding, Limits, Session
from airlock.gateway.audit import AuditLog
from airlock.gateway.metrics import Metrics
from airlock.gateway.pki import CertificateAuthority, GatewayIdentity, cert_fingerprint
from airlock.gateway.rotation import CARotation, RotationError
from airlock.gateway.shared_store import StoreUnavailable
from airlock.gateway.store import Store
from airlock.gateway.unixsock import peer_uid

# Per-session API tokens: not shaped like any GitHub token, so no one mistakes one for a
# credential that works at GitHub (it works nowhere but through its own sandbox's proxy).
API_TOKEN_PREFIX = "airlock_api_"  # noqa: S105 (a prefix, not a secret)

MAX_CONTROL_BODY = 64 * 1024
# What the control API answers while the shared session store is unreachable: health and
# metrics (they report the outage); every session operation is refused, not half-done.
_WITHOUT_STORE = frozenset({"/v1/health", "/v1/metrics"})
_STORE_DOWN = "the session store is unreachable; nothing was changed, retry when it is back"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Body):
    grants: list[str] = Field(default_factory=list, max_length=100)
    csr: str = Field(max_length=8192)
    ttl: int | None = Field(default=None, gt=0)
    idle_timeout: int | None = Field(default=None, gt=0)
    bind_ip: str | None = None
    require_activation: bool = False
    allow_hosts: list[str] = Field(default_factory=list, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)

    # No grants at all is allowed: a sandbox that only uses egress (its allow_hosts, or the
    # gateway's sandbox.allow_hosts). Such a session reaches no repository: every git
    # request is refused as for an ungranted one.

    @field_validator("bind_ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.ip_address(v))


class Renew(_Body):
    csr: str = Field(max_length=8192)


class Revoke(_Body):
    reason: str = Field(default="revoked by operator", max_length=200)


class RotationPrepare(_Body):
    overlap: float = Field(ge=rotation_core.MIN_OVERLAP, le=rotation_core.MAX_OVERLAP)


def _issued_by(cert_pem: str, ca: CertificateAuthority) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_pem.encode()).verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class Activate(_Body):
    container_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    network: str = Field(min_length=1, max_length=128)
    address: str
    gateway_address: str | None = None

    @field_validator("address", "gateway_address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.ip_address(v))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ControlAPI:
    def __init__(
        self,
        config: Config,
        store: Store,
        identity: GatewayIdentity,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        *,
        gateway_id: str,
        intercept_ca_pem: str | None = None,
        api_names: list[str] | None = None,
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        # What a sandbox needs for the GitHub API: the CA to trust and the names it covers.
        self.intercept_ca_pem = intercept_ca_pem
        self.api_names = api_names or []
        self.store = store
        self.identity = identity
        self.audit = audit
        self.clock = clock
        self.listeners: Any = None  # server.Listeners, set by the gateway
        self.metrics: Metrics | None = None
        # CA rotation (set by the gateway): who issues, what clients trust; on_trust_change
        # rebuilds the gateway's TLS contexts after each step.
        self.rotation: CARotation | None = None
        self.on_trust_change: Callable[[], None] = lambda: None
        self._control_limit = parse(config.limits.control_requests)
        self._control_limiter = MovingWindowRateLimiter(MemoryStorage())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CONTROL_BODY, middlewares=[self._peer_check])
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/metrics", self.metrics_text)
        app.router.add_post("/v1/sessions", self.create)
        app.router.add_get("/v1/sessions", self.list)
        app.router.add_get("/v1/sessions/{id}", self.show)
        app.router.add_post("/v1/sessions/{id}/renew", self.renew)
        app.router.add_post("/v1/sessions/{id}/revoke", self.revoke)
        app.router.add_post("/v1/sessions/{id}/activate", self.activate)
        app.router.add_post("/v1/revoke-all", self.revoke_all)
        app.router.add_get("/v1/rotation", self.rotation_show)
        app.router.add_post("/v1/rotation/prepare", self.rotation_prepare)
        app.router.add_post("/v1/rotation/commit", self.rotation_commit)
        app.router.add_get("/v1/listeners", self.list_listeners)
        app.router.add_post("/v1/listeners", self.add_listener)
        app.router.add_post("/v1/listeners/remove", self.remove_listener)
        return app

    @web.middleware
    async def _peer_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        uid = peer_uid(sock) if sock is not None else -1
        if uid not in self.config.gateway.control_uids:
            self.audit.event("control_refused", uid=uid, path=request.path)
            return _error(403, f"uid {uid} may not use the control socket")
        if not self._control_limiter.hit(self._control_limit, "control"):
            return _error(429, "too many control requests; retry shortly")
        if not self.store.available and request.path not in _WITHOUT_STORE:
            return _error(503, _STORE_DOWN)
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            # Not acknowledged, so not done (the store took nothing): the caller may retry.
            return _error(503, f"{exc}; what it did not acknowledge did not change, retry")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    async def _json(self, request: web.Request, model: type[_Body]) -> Any:
        try:
            return model.model_validate_json(await request.read())
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "body"
            raise _BadRequest(f"{loc}: {first['msg']}") from None

    def _session(self, request: web.Request) -> Session:
        s = self.store.get(request.match_info["id"])
        if s is None:
            raise web.HTTPNotFound(reason="no such session")
        return s

    def _issue(
        self, s: Session, csr: str, apply: Callable[[str], Session] | None = None
    ) -> dict[str, Any]:
        """Sign ``csr`` for ``s``; store what ``apply`` makes of the certificate's fingerprint
        (default: ``s`` with it). ``apply`` raising ValueError stores nothing."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        not_after = dt.datetime.fromtimestamp(s.expires_at, dt.UTC)
        ca = self.rotation.issuing_ca if self.rotation is not None else self.identity.ca
        try:
            cert = ca.issue_session(csr.encode(), s.id, now, not_after)
        except ValueError as exc:
            raise _BadRequest(f"csr: {exc}") from None
        der = cert.public_bytes(serialization.Encoding.DER)
        fingerprint = cert_fingerprint(der)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        s = (apply or (lambda fp: lifecycle.renew_certificate(s, fp)))(fingerprint)
        # Kept so that a CA rotation can re-issue for the same key; a new key (renew) ends
        # whatever a rotation still accepted of the session's earlier certificate.
        s = dataclasses.replace(
            s, client_cert_pem=cert_pem, previous_cert_fingerprint=None, previous_cert_until=0.0
        )
        self.store.put(s)
        gw = self.config.gateway
        trust = self._trust()
        return {
            "session": s.to_json(),
            "cert_pem": cert_pem,
            "ca_pem": trust["ca_pem"],
            "pinned_pubkey": trust["pinned_pubkey"],
            "gateway": {"name": gw.public_name, "address": gw.git_host, "port": gw.git_port},
            "upstream_hosts": sorted(self.config.upstream_hosts),
            "api": {
                "ca_pem": trust["api_ca_pem"] if self.intercept_ca_pem else None,
                "names": self.api_names,
                # Which upstream host each API name belongs to (GH_HOST for Enterprise).
                "hosts": {u.api_name: u.host for u in self.config.upstream if u.api.enabled},
            },
        }

    def _trust(self) -> dict[str, Any]:
        if self.rotation is not None:
            return self.rotation.describe()
        return {
            "ca_pem": self.identity.ca.cert_pem.decode(),
            "pinned_pubkey": self.identity.pinned_pubkey,
            "api_ca_pem": self.intercept_ca_pem,
        }

    async def metrics_text(self, request: web.Request) -> web.Response:
        text = self.metrics.render() if self.metrics is not None else ""
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def metrics_app(self) -> web.Application:
        """Metrics alone, for the optional loopback port (no session API there)."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self.metrics_text)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok" if self.store.available else "store_unavailable",
                "sessions": len(self.store),
                "gateway_id": self.gateway_id,
                "store": "shared" if self.config.gateway.store_url else "local",
            }
        )

    async def create(self, request: web.Request) -> web.Response:
        try:
            body: CreateSession = await self._json(request, CreateSession)
            hosts = self.config.upstream_hosts
            rules = self.config.git.push_rules
            grants = tuple(parse_grant(g, hosts, rules) for g in body.grants)
            allow = tuple(str(parse_allow_entry(h)) for h in body.allow_hosts)
        except (InvalidGrant, InvalidHostname, InvalidAllowEntry) as exc:
            return _error(400, str(exc))
        except _BadRequest as exc:
            return _error(400, str(exc))
        d = self.config.sessions
        ttl = body.ttl or d.lifetime
        if ttl > d.max_lifetime:
            return _error(400, f"ttl {ttl}s exceeds sessions.max_lifetime ({d.max_lifetime}s)")
        limits = Limits(
            idle_timeout=min(body.idle_timeout or d.idle_timeout, ttl),
            lifetime=ttl,
            max_requests=d.max_requests,
            max_bytes=d.max_bytes,
            max_pushes=d.max_pushes,
        )
        s = lifecycle.create_session(
            grants=grants,
            now=self.clock(),
            limits=limits,
            bind_ip=body.bind_ip,
            require_activation=body.require_activation,
            allow_hosts=allow,
            labels=body.labels,
            served_by=f"{self.config.gateway.host_name}/{self.gateway_id}",
        )
        proxy_token = secrets.token_urlsafe(24)
        s = lifecycle.with_proxy_token(s, proxy_token)
        # HTTP Basic for git clients without client certificates (libgit2, cargo): accepted
        # only from the sandbox the session gets bound to (gateway/gitauth.py).
        git_password = secrets.token_urlsafe(32)
        s = lifecycle.with_git_secret(s, git_password)
        # The sandbox's GH_TOKEN: the gateway swaps it for the upstream credential, only on
        # this session's own proxy connections (gateway/api/relay.py).
        api_token = API_TOKEN_PREFIX + secrets.token_urlsafe(30)
        s = lifecycle.with_api_token(s, api_token)
        try:
            issued = self._issue(s, body.csr)
        except _BadRequest as exc:
            return _error(400, str(exc))
        # Returned once; the gateway keeps only its hash.
        issued["proxy_token"] = proxy_token
        issued["git_password"] = git_password
        issued["api_token"] = api_token
        self.audit.event(
            "session_created",
            session=s.id,
            grants=[str(g) for g in grants],
            bind_ip=s.bind_ip,
            expires_at=s.expires_at,
            pending=body.require_activation,
        )
        return web.json_response(issued, status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": [s.to_json() for s in self.store]})

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response(self._session(request).to_json())

    async def renew(self, request: web.Request) -> web.Response:
        s = self._session(request)
        if lifecycle.is_finished(s, self.clock()):
            return _error(409, "session has ended; create a new one")
        try:
            body: Renew = await self._json(request, Renew)
        except _BadRequest as exc:
            return _error(400, str(exc))

        def apply(fingerprint: str) -> Session:
            # Compare-and-set: applied to the session as it is NOW, not to the copy read
            # before the awaits (a revoke that landed meanwhile wins).
            return lifecycle.apply_renewal(self.store.get(s.id), fingerprint, now=self.clock())

        try:
            issued = self._issue(s, body.csr, apply)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except ValueError as exc:
            return _error(409, str(exc))
        self.audit.event("session_renewed", session=s.id)
        return web.json_response(issued)

    def _revoke(self, s: Session, reason: str) -> Session:
        s = lifecycle.revoke(s, reason)
        self.store.put(s)
        self.audit.event("session_revoked", session=s.id, reason=reason)
        return s

    async def revoke(self, request: web.Request) -> web.Response:
        self._session(request)  # 404 before the body is read
        try:
            body: Revoke = await self._json(request, Revoke)
        except _BadRequest as exc:
            return _error(400, str(exc))
        # Re-read after the await: revoke the session as it is now (never write back a copy).
        return web.json_response(self._revoke(self._session(request), body.reason).to_json())

    async def revoke_all(self, request: web.Request) -> web.Response:
        try:
            body: Revoke = await self._json(request, Revoke)
        except _BadRequest as exc:
            return _error(400, str(exc))
        n = 0
        for s in self.store:
            if s.state is not lifecycle.SessionState.REVOKED:
                self._revoke(s, body.reason)
                n += 1
        self.audit.event("sessions_revoked_all", revoked=n, reason=body.reason)
        return web.json_response({"revoked": n})

    # --- CA rotation (gateway/rotation.py, core/rotation.py) ------------------------------

    def _put_all(self, sessions: Iterable[Session]) -> None:
        """Store ``sessions`` in one transaction."""
        for s in sessions:
            self.store.put(s, durable=False)
        self.store.flush()

    def _restore(self, sessions: Iterable[Session]) -> None:
        """After a failed :meth:`_put_all`: the sessions as they were (as on disk)."""
        with contextlib.suppress(sqlite3.Error, OSError):
            for s in sessions:
                self.store.put(s, durable=False)

    def _rotation(self) -> CARotation:
        if self.rotation is None:
            raise web.HTTPConflict(reason="this gateway cannot rotate its CA")
        return self.rotation

    async def rotation_show(self, request: web.Request) -> web.Response:
        return web.json_response(self._rotation().describe())

    async def rotation_prepare(self, request: web.Request) -> web.Response:
        if self.config.gateway.store_url is not None:
            # It would re-issue every host's sessions under a CA only this gateway has: the
            # others' sandboxes would be refused once the overlap ended.
            return _error(
                409,
                "cannot prepare the rotation: CA rotation with a shared session store is not "
                "supported yet (docs/shared-store.md); rotate on a gateway with its own store",
            )
        rot = self._rotation()
        try:
            body: RotationPrepare = await self._json(request, RotationPrepare)
        except _BadRequest as exc:
            return _error(400, str(exc))
        # No await from here on: every session is re-issued against one view of the store.
        now = self.clock()
        try:
            if rotation_core.overlap_ended(rot.state, now):
                self.finish_rotation()  # the last overlap is over; its timer has not run yet
            rot.prepare(body.overlap, now)
        except RotationError as exc:
            return _error(409, f"cannot prepare the rotation: {exc}")
        except OSError as exc:
            return _error(500, f"cannot prepare the rotation: {exc}; nothing was prepared")
        ca = rot.issuing_ca
        reissued: list[str] = []
        skipped: list[str] = []
        updates: list[tuple[Session, Session]] = []  # (before, after)
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        for s in self.store:
            if lifecycle.is_finished(s, now):
                continue
            if s.client_cert_pem is None:
                skipped.append(s.id)  # made before certificates were kept: a new session
                continue
            if not _issued_by(s.client_cert_pem, ca):
                not_after = dt.datetime.fromtimestamp(s.expires_at, dt.UTC)
                try:
                    cert = ca.reissue_session(s.client_cert_pem.encode(), s.id, when, not_after)
                except ValueError:
                    skipped.append(s.id)
                    continue
                after = dataclasses.replace(
                    s,
                    cert_fingerprint=cert_fingerprint(
                        cert.public_bytes(serialization.Encoding.DER)
                    ),
                    client_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    previous_cert_fingerprint=s.cert_fingerprint,
                    # While prepared: accepted until the session ends (commit sets the end).
                    previous_cert_until=rotation_core.previous_cert_deadline(
                        rot.state, s.expires_at
                    ),
                )
                updates.append((s, after))
            elif s.previous_cert_fingerprint is not None and (
                s.previous_cert_until
                < rotation_core.previous_cert_deadline(rot.state, s.expires_at)
            ):
                # Re-issued by an earlier prepare that set a deadline (before the fix that
                # set none): the bundle not yet rewritten must keep working until the commit.
                updates.append(
                    (
                        s,
                        dataclasses.replace(
                            s,
                            previous_cert_until=rotation_core.previous_cert_deadline(
                                rot.state, s.expires_at
                            ),
                        ),
                    )
                )
            reissued.append(s.id)
        # The next CA is accepted from now on, whatever happens to the store writes.
        self.on_trust_change()
        try:
            self._put_all([after for _b, after in updates])
        except (sqlite3.Error, OSError) as exc:
            self._restore([before for before, _a in updates])
            return _error(
                500,
                f"cannot prepare the rotation: storing the re-issued certificates failed: "
                f"{exc}; none was re-issued (the next CA is prepared: run `airlock rotate ca` "
                "again)",
            )
        self.audit.event(
            "ca_rotation_prepared",
            overlap=body.overlap,
            reissued=len(reissued),
            not_reissued=skipped,
            next_ca=rot.describe()["ca_fingerprints"],
        )
        return web.json_response({**rot.describe(), "reissued": reissued, "not_reissued": skipped})

    async def rotation_commit(self, request: web.Request) -> web.Response:
        rot = self._rotation()
        now = self.clock()
        try:
            self.identity = rot.commit(now)
        except (RotationError, OSError, ValueError) as exc:
            return _error(409, f"cannot commit the rotation: {exc}")
        until = rot.state.overlap_until
        self.on_trust_change()
        try:
            self._put_all(
                [
                    dataclasses.replace(
                        s,
                        previous_cert_until=rotation_core.previous_cert_deadline(
                            rot.state, s.expires_at
                        ),
                    )
                    for s in self.store
                    if s.previous_cert_fingerprint is not None and s.previous_cert_until > now
                ]
            )
        except (sqlite3.Error, OSError) as exc:
            # Committed; the previous certificates are dropped at the overlap's end anyway
            # (finish_rotation), whatever end the store holds.
            self.audit.event("ca_rotation_store_failed", error=str(exc))
        self.audit.event(
            "ca_rotation_committed",
            overlap_until=until,
            server_pin=self.identity.pinned_pubkey,
            ca=rot.describe()["ca_fingerprints"],
        )
        return web.json_response(rot.describe())

    def finish_rotation(self) -> None:
        """The overlap is over (the gateway's timer): the old CA and certificates are out."""
        rot = self._rotation()
        rot.finish()
        self.on_trust_change()
        # Every certificate a rotation replaced is out now (also if the commit could not
        # store the overlap's end in a session).
        with contextlib.suppress(sqlite3.Error, OSError):
            self._put_all(
                [
                    dataclasses.replace(s, previous_cert_fingerprint=None, previous_cert_until=0.0)
                    for s in self.store
                    if s.previous_cert_fingerprint is not None
                ]
            )
        self.audit.event("ca_rotation_finished", ca=rot.describe()["ca_fingerprints"])

    async def activate(self, request: web.Request) -> web.Response:
        self._session(request)  # 404 before the body is read
        try:
            body: Activate = await self._json(request, Activate)
            # Re-read after the await: a revoke that landed meanwhile must not be undone.
            s = lifecycle.activate(
                self._session(request),
                Binding(
                    container_id=body.container_id,
                    network=body.network,
                    address=body.address,
                    gateway_address=body.gateway_address,
                ),
            )
        except _BadRequest as exc:
            return _error(400, str(exc))
        except ValueError as exc:
            return _error(409, str(exc))
        self.store.put(s)
        self.audit.event(
            "session_activated",
            session=s.id,
            container=body.container_id,
            network=body.network,
            address=body.address,
        )
        return web.json_response(s.to_json())

    async def list_listeners(self, request: web.Request) -> web.Response:
        return web.json_response({"addresses": self.listeners.addresses})

    async def add_listener(self, request: web.Request) -> web.Response:
        try:
            body: ListenerBody = await self._json(request, ListenerBody)
        except _BadRequest as exc:
            return _error(400, str(exc))
        try:
            await self.listeners.add(body.address)
        except OSError as exc:
            return _error(409, f"cannot listen on {body.address}: {exc.strerror or exc}")
        self.audit.event("listener_added", address=body.address)
        return web.json_response({"addresses": self.listeners.addresses}, status=201)

    async def remove_listener(self, request: web.Request) -> web.Response:
        try:
            body: ListenerBody = await self._json(request, ListenerBody)
        except _BadRequest as exc:
            return _error(400, str(exc))
        removed = await self.listeners.remove(body.address)
        self.audit.event("listener_removed", address=body.address, existed=removed)
        return web.json_response({"addresses": self.listeners.addresses})


class ListenerBody(_Body):
    address: str

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        addr = ipaddress.ip_address(v)
        if addr.is_unspecified or addr.is_multicast:
            raise ValueError("a listener needs a concrete unicast address")
        return str(addr)


class _BadRequest(Exception):
    pass
