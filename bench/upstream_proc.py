"""The test upstream (git http-backend behind aiohttp over HTTPS) in a process of its own.

tests/world.py runs the upstream in a thread of the test process; the bench moves it out, so
the in-process latency and egress clients do not share a GIL (and a core) with it.

    python -m bench.upstream_proc --repos DIR --token-file F --tls-dir D --ready FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from airlock.testing.tls import TestTLS
from airlock.testing.upstream import GitUpstream


async def _main(args: argparse.Namespace) -> None:
    tls = TestTLS(args.tls_dir / "ca.pem", args.tls_dir / "server.pem", args.tls_dir / "server.key")
    upstream = GitUpstream(args.repos, args.token_file, tls, port=args.port)
    await upstream.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    args.ready.write_text(str(upstream.port))
    try:
        await stop.wait()
    finally:
        await upstream.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repos", type=Path, required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--tls-dir", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--port", type=int, default=0)
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
