"""airlock's EgressProxy alone on loopback, as its own process (like the gateway runs it).

One session whose allowlist is the sink's name; the name resolves through a StaticResolver
entry marked allow_private (the sink is on 127.0.0.1). Authentication is the per-session
proxy token, checked as the gateway does (hash compare), without the network binding that
needs a sandbox network. Audit lines go to a file, one per tunnel, as in the gateway.

    python -m bench.egress_proc --sink-name N --sink-port P --token T --ready F --log L
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from airlock.core.egress import parse_proxy_authorization
from airlock.core.session import (
    Limits,
    Session,
    create_session,
    proxy_token_matches,
    with_proxy_token,
)
from airlock.gateway.egress import AuthRefused, EgressPolicy, EgressProxy
from airlock.gateway.resolver import StaticEntry, StaticResolver


async def _main(args: argparse.Namespace) -> None:
    limits = Limits(idle_timeout=3600, lifetime=3600, max_requests=10**9, max_bytes=10**15)
    session = with_proxy_token(
        create_session(grants=(), now=time.time(), limits=limits, allow_hosts=(args.sink_name,)),
        args.token,
    )

    def authenticate(header: str | None, source: str, local: str) -> Session | AuthRefused:
        token = parse_proxy_authorization(header)
        if token is None:
            return AuthRefused("no_proxy_credentials")
        if proxy_token_matches(session, token):
            return session
        return AuthRefused("wrong_token")

    log_file = open(args.log, "a", buffering=1)

    def log(event: str, **fields: Any) -> None:
        log_file.write(json.dumps({"event": event, **fields}, default=str) + "\n")

    resolver = StaticResolver([StaticEntry.make(args.sink_name, "127.0.0.1", allow_private=True)])
    policy = EgressPolicy(
        connect_ports=frozenset({args.sink_port}),
        allow_private_names=resolver.private_ok,
    )
    proxy = EgressProxy(authenticate, resolver, policy, log)
    port = await proxy.start("127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    args.ready.write_text(str(port))
    try:
        await stop.wait()
    finally:
        await proxy.stop()
        log_file.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sink-name", required=True)
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
