"""The gateway process: wires config, store, certificates, the control socket and the git proxy."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from airlock.config import Config
from airlock.core import rotation as rotation_core
from airlock.core import session as lifecycle
from airlock.core.backoff import AuthBackoff
from airlock.core.egress import parse_proxy_authorization
from airlock.gateway.api.relay import ApiRelay, RelayLimits
from airlock.gateway.audit import AuditLog
from airlock.gateway.control import ControlAPI
from airlock.gateway.credentials import (
    CredentialError,
    FileCredential,
    UpstreamCredential,
    credential_variables,
)
from airlock.gateway.dns import DNSServer
from airlock.gateway.egress import AuthRefused, EgressPolicy, EgressProxy
from airlock.gateway.github_app import AppCredential
from airlock.gateway.gitproxy import GitProxy
from airlock.gateway.httpserver import GatewayHTTPServer
from airlock.gateway.identity import GatewayIdError, load_or_create_gateway_id
from airlock.gateway.intercept_ca import InterceptAuthority, InterceptError
from airlock.gateway.metrics import Metrics
from airlock.gateway.pki import GatewayIdentity, load_or_create_identity
from airlock.gateway.ratelimits import RateLimits
from airlock.gateway.resolver import (
    DnsResolver,
    StaticEntry,
    StaticResolver,
    nameservers_from_resolv_conf,
)
from airlock.gateway.rotation import CARotation, RotationError, recover
from airlock.gateway.shared_store import RedisSessionStore, StoreUnavailable
from airlock.gateway.store import SessionStore, Store
from airlock.gateway.tlslistener import ConnectionGuard, ConnectionLimits, TLSListener
from airlock.gateway.unixsock import ControlSocket, SocketPathError


class StartupError(Exception):
    """The gateway cannot start; the message says what to fix."""


#: On SIGTERM, how long a request in flight may take to finish before it is cancelled (each
#: of aiohttp's two shutdown steps waits this long): the gateway exits within 2 s.
SHUTDOWN_GRACE = 0.3
# When ending a CA rotation's overlap cannot write its state: seconds to each new try.
FINISH_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, *([60.0] * 60))


def preflight(
    config: Config, env: Mapping[str, str], log: Callable[..., None]
) -> dict[str, UpstreamCredential]:
    """Checks that must pass before anything is created; each upstream's credential."""
    bad = credential_variables(env)
    if bad:
        raise StartupError(
            "refusing to start: credential variables are set in the environment "
            f"({', '.join(bad)}); unset them and give the token in an upstream token_file"
        )
    creds: dict[str, UpstreamCredential] = {}
    for u in config.upstream:
        cred: FileCredential | AppCredential
        if u.app is not None:
            cred = AppCredential(u.host, u.app, log)
            if u.app.ca_file is not None and not u.app.ca_file.is_file():
                raise StartupError(f"upstream {u.host}: app.ca_file {u.app.ca_file} does not exist")
        else:
            assert u.token_file is not None  # the config allows exactly one of the two
            cred = FileCredential(u.token_file, log, u.host)
        try:
            cred.check()
        except CredentialError as exc:
            raise StartupError(f"upstream {u.host}: {exc}") from None
        if u.ca_file is not None and not u.ca_file.is_file():
            raise StartupError(f"upstream {u.host}: ca_file {u.ca_file} does not exist")
        creds[u.host] = cred
    return creds


#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not named by Python's ssl module).
X509_V_FLAG_NO_CHECK_TIME = 0x200000


def server_ssl_context(
    identity: GatewayIdentity, client_cas: list[bytes] | None = None
) -> ssl.SSLContext:
    """``client_cas``: the CAs whose client certificates verify (default: the identity's);
    during a CA rotation the old and the new (gateway/rotation.py)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(identity.server_cert_path, identity.server_key_path)
    cas = client_cas if client_cas is not None else [identity.ca.cert_pem]
    ctx.load_verify_locations(cadata=b"".join(cas).decode())
    ctx.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no TLS session
    # A session certificate ends with its session (notAfter = the session's lifetime). Were
    # OpenSSL to check the time, the handshake of an expired session's certificate would
    # fail and git would see only "Connection reset by peer"; instead the chain (our CA, the
    # client's proof of its key) is verified here and the time on every request
    # (gitauth.usable, pki.certificate_current), which answers "airlock: session expired".
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    return ctx


def sandbox_ssl_context(
    identity: GatewayIdentity, client_cas: list[bytes] | None = None
) -> ssl.SSLContext:
    """Sandbox listeners: the same server certificate, a client certificate optional (one
    that is presented must still verify), for clients that can only do HTTP Basic with the
    session's git secret (libgit2, cargo); gitauth.py accepts that only from the sandbox."""
    ctx = server_ssl_context(identity, client_cas)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class Listeners:
    """The gateway's git and DNS listeners on sandbox networks' bridge addresses.

    The host side adds one when it creates a sandbox network (before the container exists)
    and removes it afterwards; the set is saved so a restarted gateway listens again.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._sites: dict[str, tuple[TLSListener, DNSServer]] = {}
        self._file = gateway.config.gateway.state_dir / "listeners.json"

    @property
    def addresses(self) -> list[str]:
        return sorted(self._sites)

    def _save(self) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.addresses))
        os.replace(tmp, self._file)

    async def add(self, address: str) -> None:
        if address in self._sites:
            return
        gw = self.gateway.config.gateway
        site = self.gateway.git_listener(sandbox=True)
        await site.start(address, gw.git_port, backlog=128)
        names = {gw.public_name: address}
        eg = self.gateway.config.egress
        dns = DNSServer(
            address,
            gw.dns_port,
            lambda: names,
            self.gateway.audit.event,
            rate=eg.dns_rate,
            burst=eg.dns_burst,
            summary_interval=self.gateway.config.limits.log_interval,
        )
        try:
            await dns.start()
        except OSError:
            await site.stop()
            raise
        try:
            await self.gateway.egress.start(address, self.gateway.config.sandbox.proxy_port)
        except OSError:
            await dns.stop()
            await site.stop()
            raise
        self._sites[address] = (site, dns)
        self._save()

    async def remove(self, address: str) -> bool:
        entry = self._sites.pop(address, None)
        if entry is None:
            return False
        site, dns = entry
        await self.gateway.egress.stop_listener(address)
        await site.stop()
        await dns.stop()
        self._save()
        return True

    async def restore(self) -> None:
        try:
            saved = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return
        for address in saved:
            try:
                await self.add(address)
            except OSError as exc:  # the network is gone; the host side will clean up
                self.gateway.audit.event("listener_not_restored", address=address, error=str(exc))
        self._save()

    async def close(self) -> None:
        await self.gateway.egress.stop()
        for site, dns in self._sites.values():
            await site.stop()
            await dns.stop()
        self._sites.clear()


class Gateway:
    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.tokens = preflight(
            config,
            os.environ if env is None else env,
            lambda event, **fields: self.audit.event(event, **fields),
        )
        self._sweeper: asyncio.Task[None] | None = None
        gw = config.gateway
        # First, before anything in the state is touched: one gateway per control socket.
        try:
            self.control_socket = ControlSocket.acquire(gw.control_socket)
        except SocketPathError as exc:
            raise StartupError(str(exc)) from None
        gw.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(gw.state_dir, 0o700)
        try:
            self.gateway_id = load_or_create_gateway_id(gw.state_dir)
        except (GatewayIdError, OSError) as exc:
            raise StartupError(str(exc)) from None
        ips = [] if gw.git_host in ("0.0.0.0", "::") else [gw.git_host]
        # The upstream hosts too: sandboxes reach git as https://github.com:PORT/owner/repo
        # (host form, gitpath.host_form_target), trusting this CA for that URL only.
        names = [gw.public_name, *sorted(config.upstream_hosts - {gw.public_name})]
        try:
            # A CA rotation's commit cut short is completed before the identity is read.
            rotation_state = recover(gw.state_dir, time.time())
        except (RotationError, OSError) as exc:
            raise StartupError(f"CA rotation: {exc}") from None
        self.identity = load_or_create_identity(gw.state_dir, names, ips, dt.datetime.now(dt.UTC))
        self.audit = AuditLog(gw.audit_log, self._secrets)
        self.store: Store
        if gw.store_url is None:
            self.store = SessionStore(gw.state_dir / "sessions.sqlite3")
        else:
            try:
                self.store = RedisSessionStore(
                    gw.store_url, prefix=gw.store_prefix, on_event=self.audit.event
                )
            except StoreUnavailable as exc:
                self.audit.close()
                raise StartupError(f"{exc}: is Redis running there?") from None
            except ValueError as exc:  # redis-py's reading of the URL
                self.audit.close()
                raise StartupError(f"gateway.store_url: {exc}") from None
        lim = config.limits
        self.metrics = Metrics()
        self.guard = ConnectionGuard(
            ConnectionLimits(
                handshake_timeout=lim.handshake_timeout,
                header_timeout=lim.header_timeout,
                max_connections=lim.max_connections,
                max_connections_per_source=lim.max_connections_per_source,
                auth_failure_threshold=lim.auth_failure_threshold,
                auth_backoff_max=lim.auth_backoff_max,
            ),
            self.audit.event,
            self.metrics,
        )
        try:
            self.limits = RateLimits(
                storage_uri=lim.storage_uri,
                session_requests=lim.session_requests,
                session_bytes=lim.session_bytes,
                global_requests=lim.global_requests,
                session_inflight=lim.session_inflight,
                global_inflight=lim.global_inflight,
                metrics=self.metrics,
            )
        except Exception as exc:  # limits raises ConfigurationError for a missing driver
            raise StartupError(f"limits.storage_uri: {exc}") from None
        self.proxy = GitProxy(
            config,
            self.store,
            self.tokens,
            self.audit,
            time.time,
            metrics=self.metrics,
            guard=self.guard,
            limits=self.limits,
        )
        api_names = [u.api_name for u in config.upstream if u.api.enabled]
        try:
            self.intercept = InterceptAuthority(gw.state_dir / "intercept", api_names)
        except (InterceptError, OSError) as exc:
            raise StartupError(f"interception CA: {exc}") from None
        eg = config.egress
        self.api = ApiRelay(
            list(config.upstream),
            self.tokens,
            self.store,
            self.intercept,
            self.audit.event,
            RelayLimits(
                handshake_timeout=eg.handshake_timeout,
                idle_timeout=eg.idle_timeout,
                max_header_bytes=eg.max_header_bytes,
                max_headers=eg.max_headers,
            ),
            rate_limits=self.limits,  # API requests count like git requests
            connect_timeout=eg.connect_timeout,
            read_timeout=config.git.idle_timeout,
        )
        self.control = ControlAPI(
            config,
            self.store,
            self.identity,
            self.audit,
            time.time,
            gateway_id=self.gateway_id,
            intercept_ca_pem=self.intercept.cert_pem.decode() if api_names else None,
            api_names=sorted(api_names),
        )
        self.control.metrics = self.metrics
        try:
            self.rotation = CARotation(
                gw.state_dir, self.identity, self.intercept if api_names else None, rotation_state
            )
        except RotationError as exc:
            raise StartupError(f"CA rotation: {exc}") from None
        self.control.rotation = self.rotation
        self.control.on_trust_change = self._trust_changed
        self._overlap_timer: asyncio.TimerHandle | None = None
        self._runners: list[web.BaseRunner] = []
        self.ssl = server_ssl_context(self.identity, self.rotation.ca_pems())
        self.sandbox_ssl = sandbox_ssl_context(self.identity, self.rotation.ca_pems())
        self._git_server: web.Server | None = None
        self._git_listeners: list[TLSListener] = []
        self.proxy_backoff = AuthBackoff(
            threshold=lim.auth_failure_threshold, maximum=lim.auth_backoff_max
        )
        self.egress = self._make_egress()
        self.store.on_end(self.egress.end_sessions)
        self.listeners = Listeners(self)
        self._register_gauges()
        self.control.listeners = self.listeners

    def _make_egress(self) -> EgressProxy:
        eg = self.config.egress
        static = [StaticEntry.make(e.name, e.addresses, e.allow_private) for e in eg.static]
        servers = list(eg.resolvers)
        if not servers:
            try:
                servers = nameservers_from_resolv_conf(Path("/etc/resolv.conf").read_text())
            except OSError:
                servers = []
        fallback = DnsResolver(servers, eg.resolver_timeout) if servers else None
        resolver = StaticResolver(static, fallback=fallback)
        policy = EgressPolicy(
            connect_ports=frozenset(eg.connect_ports),
            http_ports=frozenset(eg.http_ports),
            connect_timeout=eg.connect_timeout,
            idle_timeout=eg.idle_timeout,
            max_tunnel_lifetime=eg.max_tunnel_lifetime,
            max_tunnels_per_session=eg.max_tunnels_per_session,
            default_allow_hosts=tuple(self.config.sandbox.allow_hosts),
            gateway_addresses=frozenset(eg.gateway_addresses),
            allow_private_names=resolver.private_ok,
            handshake_timeout=eg.handshake_timeout,
            max_header_bytes=eg.max_header_bytes,
            max_headers=eg.max_headers,
            max_connections=eg.max_connections,
            refuse_ech=eg.refuse_ech,
            session_recheck_interval=eg.session_recheck_interval,
            summary_interval=self.config.limits.log_interval,
            session_tunnel_rate=eg.session_tunnels,
            session_byte_rate=eg.session_bytes,
        )
        return EgressProxy(
            self._authenticate_proxy,
            resolver,
            policy,
            self.audit.event,
            on_use=self._egress_use,
            api=self.api,
        )

    def _authenticate_proxy(
        self, header: str | None, source_ip: str, local_ip: str
    ) -> lifecycle.Session | AuthRefused:
        """The session behind a proxy request: token, source and arrival address must agree.

        Ended (revoked, expired) sessions bound to the source are looked at too, so that
        their own token is answered "session ended" (and logged under the session) rather
        than as a wrong token; it gets no more through than before.

        Runs on every new proxy connection and every tunnel's recheck: the store's indexes
        (token digest, live address), no scan of the sessions.
        """
        now = time.monotonic()
        if self.proxy_backoff.blocked(source_ip, now) is not None:
            return AuthRefused("auth_backoff")
        token = parse_proxy_authorization(header)
        if token is None:
            return AuthRefused("no_proxy_credentials")
        for s in self.store.by_proxy_token(lifecycle.hash_proxy_token(token)):
            if s.binding is None or s.binding.address != source_ip:
                continue
            if not lifecycle.proxy_token_matches(s, token):
                continue
            refusal = lifecycle.check_usable(
                s,
                now=time.time(),
                source_ip=source_ip,
                cert_fingerprint=s.cert_fingerprint,
                local_ip=local_ip,
            )
            if refusal is not None:
                return AuthRefused(refusal.value, s.id, lifecycle.ended_as(refusal))
            self.proxy_backoff.success(source_ip)
            return s
        # A wrong token counts against this source only (each sandbox has its own address).
        self.proxy_backoff.failure(source_ip, now)
        if self.store.live_bound_to(source_ip):
            return AuthRefused("wrong_token")
        return AuthRefused("unknown_source")

    def _egress_use(self, session_id: str, use: lifecycle.Use) -> None:
        """An egress request or tunnel stretch: the idle deadline moves if it counts."""
        current = self.store.get(session_id)
        if current is None:
            return
        updated = lifecycle.record_use(current, use)
        if updated is not current:
            self.store.put(updated, durable=False)

    def _register_gauges(self) -> None:
        def sessions() -> dict[tuple[tuple[str, str], ...], float]:
            counts: dict[tuple[tuple[str, str], ...], float] = {}
            now = time.time()
            for s in self.store:
                state = "ended" if lifecycle.is_finished(s, now) else s.state.value
                key = (("state", state),)
                counts[key] = counts.get(key, 0) + 1
            return counts

        self.metrics.gauge("airlock_sessions", sessions, "Sessions by state")
        self.metrics.gauge(
            "airlock_store_available",
            lambda: {(): 1.0 if self.store.available else 0.0},
            "1 while the session store answers (the shared store: Redis); 0: all refused",
        )
        self.metrics.gauge(
            "airlock_open_connections",
            lambda: {(("listener", "git"),): float(self.guard.open_connections())},
            "Open git connections",
        )
        self.metrics.gauge(
            "airlock_inflight_upstream_requests",
            lambda: {(): float(self.limits.inflight())},
            "Upstream requests in flight",
        )

    def git_listener(self, *, sandbox: bool = False) -> TLSListener:
        """A new git listener sharing the one HTTP server and guard. The host listener
        requires a client certificate; a sandbox's (``sandbox=True``) also lets HTTP Basic in."""
        assert self._git_server is not None
        # Read at every handshake: a CA rotation swaps the contexts (_trust_changed).
        ctx = (lambda: self.sandbox_ssl) if sandbox else (lambda: self.ssl)
        listener = TLSListener(self._git_server, ctx, self.guard)
        return listener

    def _trust_changed(self) -> None:
        """A CA rotation step: new connections get contexts with the server certificate and
        the client CAs of the moment; when an overlap runs, its end is scheduled."""
        self._make_contexts()
        self._schedule_overlap_end()

    def _make_contexts(self) -> None:
        self.identity = self.rotation.identity
        cas = self.rotation.ca_pems()
        self.ssl = server_ssl_context(self.identity, cas)
        self.sandbox_ssl = sandbox_ssl_context(self.identity, cas)

    def _schedule_overlap_end(self) -> None:
        if self._overlap_timer is not None:
            self._overlap_timer.cancel()
            self._overlap_timer = None
        state = self.rotation.state
        if state.phase is not rotation_core.Phase.OVERLAP or state.overlap_until is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not started yet: start() schedules it
        delay = max(0.0, state.overlap_until - time.time())
        self._overlap_timer = loop.call_later(delay, self._overlap_ended)

    def _overlap_ended(self, attempt: int = 0) -> None:
        self._overlap_timer = None
        state = self.rotation.state
        ended = rotation_core.overlap_ended(state, time.time())
        if attempt == 0 and not ended:
            self._schedule_overlap_end()  # the wall clock moved: wait again
            return
        if attempt > 0 and not ended and state.phase is not rotation_core.Phase.IDLE:
            return  # a rotation begun since wrote its own state
        try:
            self.control.finish_rotation()
        except OSError as exc:
            # The handshake does not wait for the state file: the contexts are made anew
            # from the trust of the moment (the old CA is out of it), and the state is
            # written again later (a restart before that finishes the overlap too).
            self._make_contexts()
            retry = attempt < len(FINISH_RETRY_DELAYS)
            delay = FINISH_RETRY_DELAYS[attempt] if retry else None
            self.audit.event(
                "ca_rotation_finish_failed",
                error=str(exc)[:200],
                attempt=attempt + 1,
                retry_in=delay,
            )
            if delay is not None:
                loop = asyncio.get_running_loop()
                self._overlap_timer = loop.call_later(delay, self._overlap_ended, attempt + 1)

    def _secrets(self) -> list[str]:
        return [t for cred in self.tokens.values() for t in cred.secrets()]

    async def _sweep_credentials(self) -> None:
        """Per-session upstream tokens of ended sessions are given up (revoked at GitHub)."""
        intervals = [u.app.revoke_interval for u in self.config.upstream if u.app is not None]
        if not intervals:
            return  # token files are not per session: nothing to give up
        while True:
            await asyncio.sleep(min(intervals))
            if not self.store.available:
                continue  # it lists nothing then: that is not "every session ended"
            now = time.time()
            live = {s.id for s in self.store if not lifecycle.is_finished(s, now)}
            for cred in self.tokens.values():
                try:
                    await cred.sweep(live)
                except Exception as exc:  # one failed sweep must not end the loop
                    self.audit.event("credential_sweep_failed", error=repr(exc)[:200])

    async def start(self) -> None:
        gw = self.config.gateway
        try:
            sock = self.control_socket.bind()
            control = web.AppRunner(
                self.control.app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE
            )
            await control.setup()
            self._runners.append(control)
            await web.SockSite(control, sock).start()
            lim = self.config.limits
            self._git_server = GatewayHTTPServer(
                self.proxy.handle,
                self.proxy.error_response,
                max_line_size=lim.max_line_size,
                max_field_size=lim.max_field_size,
                max_headers=lim.max_headers,
                # No complete request for this long (slowloris, idle keep-alive): closed.
                keepalive_timeout=lim.header_timeout,
            )
            main_listener = self.git_listener()
            self._git_listeners.append(main_listener)
            await main_listener.start(gw.git_host, gw.git_port)
            if gw.metrics_listen:
                metrics_runner = web.AppRunner(
                    self.control.metrics_app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE
                )
                await metrics_runner.setup()
                self._runners.append(metrics_runner)
                host, _, port = gw.metrics_listen.rpartition(":")
                await web.TCPSite(metrics_runner, host.strip("[]"), int(port)).start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        except SocketPathError as exc:
            await self.stop()
            raise StartupError(str(exc)) from None
        await self.listeners.restore()
        # A rotation's overlap that ended while the gateway was down ends now; one still
        # running gets its timer back.
        self._schedule_overlap_end()
        self._sweeper = asyncio.create_task(self._sweep_credentials())
        await self.store.run()
        self.audit.event(
            "gateway_started",
            git_listen=gw.git_listen,
            control_socket=str(gw.control_socket),
            upstreams=sorted(self.config.upstream_hosts),
        )

    async def stop(self) -> None:
        # No new connection from here on: every listening socket closes first.
        for listener in self._git_listeners:
            await listener.stop()
        await self.listeners.close()
        if self._git_server is not None:
            # Requests in flight get SHUTDOWN_GRACE to finish, then are cancelled: a large
            # clone fails cleanly (the connection closes) instead of holding up the exit.
            await self._git_server.shutdown(SHUTDOWN_GRACE)
        await self.guard.stop()
        for r in reversed(self._runners):
            await r.cleanup()
        self._runners.clear()
        await self.proxy.close()
        await self.api.close()
        if self._overlap_timer is not None:
            self._overlap_timer.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for cred in self.tokens.values():
            await cred.close()
        # Only the socket this gateway bound, and only while it holds the lock.
        self.control_socket.unlink()
        self.control_socket.close()
        self.store.close()
        self.audit.event("gateway_stopped")
        self.audit.close()


async def run_gateway(config: Config, ready_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    gateway = Gateway(config)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    try:
        await stop.wait()
    finally:
        await gateway.stop()
