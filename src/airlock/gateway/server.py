"""The gateway process: wires config, store, certificates, the control socket and the git proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
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
from airlock.gateway.dns import DNSServer
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


class Listeners:
    """The gateway's git and DNS listeners on sandbox networks' bridge addresses.

    The host side adds one when it creates a sandbox network (before the container exists)
    and removes it afterwards; the set is saved so a restarted gateway listens again.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._sites: dict[str, tuple[web.TCPSite, DNSServer]] = {}
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
        runner = self.gateway.git_runner
        assert runner is not None
        site = web.TCPSite(runner, address, gw.git_port, ssl_context=self.gateway.ssl, backlog=128)
        await site.start()
        names = {gw.public_name: address}
        dns = DNSServer(address, gw.dns_port, lambda: names)
        try:
            await dns.start()
        except OSError:
            await site.stop()
            raise
        self._sites[address] = (site, dns)
        self._save()

    async def remove(self, address: str) -> bool:
        entry = self._sites.pop(address, None)
        if entry is None:
            return False
        site, dns = entry
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
        for site, dns in self._sites.values():
            await site.stop()
            await dns.stop()
        self._sites.clear()


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
        self.git_runner: web.ServerRunner | None = None
        self.listeners = Listeners(self)
        self.control.listeners = self.listeners

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
            self.git_runner = git
            await web.TCPSite(
                git, gw.git_host, gw.git_port, ssl_context=self.ssl, backlog=512
            ).start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        await self.listeners.restore()
        self.audit.event(
            "gateway_started",
            git_listen=gw.git_listen,
            control_socket=str(gw.control_socket),
            upstreams=sorted(self.config.upstream_hosts),
        )

    async def stop(self) -> None:
        await self.listeners.close()
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
