"""The gateway process: wires config, store, certificates, the control socket and the git proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from airlock.config import Config
from airlock.gateway.audit import AuditLog
from airlock.gateway.control import ControlAPI
from airlock.gateway.credentials import CredentialError, TokenFile, credential_variables
from airlock.gateway.gitproxy import GitProxy
from airlock.gateway.pki import GatewayIdentity, load_or_create_identity
from airlock.gateway.store import SessionStore
from airlock.gateway.unixsock import bind_unix_socket


class StartupError(Exception):
    """The gateway cannot start; the message says what to fix."""


def preflight(config: Config, env: Mapping[str, str]) -> dict[str, TokenFile]:
    """Checks that must pass before anything is created."""
    bad = credential_variables(env)
    if bad:
        raise StartupError(
            "refusing to start: credential variables are set in the environment "
            f"({', '.join(bad)}); unset them and give the token in an upstream token_file"
        )
    tokens: dict[str, TokenFile] = {}
    for u in config.upstream:
        tf = TokenFile(u.token_file)
        try:
            tf.get()
        except CredentialError as exc:
            raise StartupError(f"upstream {u.host}: {exc}") from None
        except OSError as exc:
            raise StartupError(
                f"upstream {u.host}: token file {u.token_file}: {exc.strerror}"
            ) from None
        if u.ca_file is not None and not u.ca_file.is_file():
            raise StartupError(f"upstream {u.host}: ca_file {u.ca_file} does not exist")
        tokens[u.host] = tf
    return tokens


def server_ssl_context(identity: GatewayIdentity) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(identity.server_cert_path, identity.server_key_path)
    ctx.load_verify_locations(cadata=identity.ca.cert_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no TLS session
    return ctx


class Gateway:
    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.tokens = preflight(config, os.environ if env is None else env)
        gw = config.gateway
        gw.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(gw.state_dir, 0o700)
        ips = [] if gw.git_host in ("0.0.0.0", "::") else [gw.git_host]
        self.identity = load_or_create_identity(
            gw.state_dir, [gw.public_name], ips, dt.datetime.now(dt.UTC)
        )
        self.store = SessionStore(gw.state_dir / "sessions.sqlite3")
        self.audit = AuditLog(gw.audit_log, self._secrets)
        self.proxy = GitProxy(config, self.store, self.tokens, self.audit, time.time)
        self.control = ControlAPI(config, self.store, self.identity, self.audit, time.time)
        self._runners: list[web.BaseRunner] = []
        self.ssl = server_ssl_context(self.identity)

    def _secrets(self) -> list[str]:
        return [t.current for t in self.tokens.values() if t.current]

    async def start(self) -> None:
        gw = self.config.gateway
        try:
            sock = bind_unix_socket(gw.control_socket)
            control = web.AppRunner(self.control.app(), access_log=None)
            await control.setup()
            self._runners.append(control)
            await web.SockSite(control, sock).start()
            git = web.ServerRunner(web.Server(self.proxy.handle), access_log=None)
            await git.setup()
            self._runners.append(git)
            await web.TCPSite(
                git, gw.git_host, gw.git_port, ssl_context=self.ssl, backlog=512
            ).start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        self.audit.event(
            "gateway_started",
            git_listen=gw.git_listen,
            control_socket=str(gw.control_socket),
            upstreams=sorted(self.config.upstream_hosts),
        )

    async def stop(self) -> None:
        for r in reversed(self._runners):
            await r.cleanup()
        self._runners.clear()
        await self.proxy.close()
        try:
            if self.config.gateway.control_socket.is_socket():
                self.config.gateway.control_socket.unlink()
        except OSError:
            pass
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
