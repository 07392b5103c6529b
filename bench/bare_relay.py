"""The floor: a bare aiohttp relay, in a process of its own, for the latency section.

A TLS server (aiohttp's web server) that forwards each GET to the upstream with the
credential added (aiohttp's client, a keep-alive pool) and streams the answer back: what a
Python gateway built on these libraries costs before it does anything airlock does (no
client certificate, no session, no path check, no limits, no audit line). Its CPU per
request beside airlock's shows how much of airlock's is its own work.

    python -m bench.bare_relay --upstream URL --upstream-ca CA --tls-dir D --auth HEADER
        --ready FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from airlock.testing.tls import make_test_ca_and_server_cert
from bench.common import REPO_ROOT, child_pythonpath, die_with_parent, stop_process, wait_file
from bench.latency import HEADERS, Target

PASSED_HEADERS = ("Git-Protocol", "Accept", "User-Agent", "Pragma")
CHUNK = 256 * 1024


async def _main(args: argparse.Namespace) -> None:
    client_ctx = ssl.create_default_context(cafile=str(args.upstream_ca))
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ctx), auto_decompress=False, trust_env=False
    )

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = {k: request.headers[k] for k in PASSED_HEADERS if k in request.headers}
        headers["Authorization"] = args.auth
        async with client.get(args.upstream + request.path_qs, headers=headers) as up:
            response = web.StreamResponse(status=up.status)
            response.content_type = up.content_type
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(args.tls_dir / "server.pem", args.tls_dir / "server.key")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    args.ready.write_text(str(runner.addresses[0][1]))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await client.close()


class BareRelay:
    """The relay process, started and stopped by the bench."""

    def __init__(self, root: Path, upstream_url: str, upstream_ca: Path, auth: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.tls = make_test_ca_and_server_cert(root / "tls", ["localhost"], ["127.0.0.1"])
        self.upstream_url, self.upstream_ca, self.auth = upstream_url, upstream_ca, auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        ready = self.root / "ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_relay",
                "--upstream",
                self.upstream_url,
                "--upstream-ca",
                str(self.upstream_ca),
                "--tls-dir",
                str(self.tls.ca_cert.parent),
                "--auth",
                self.auth,
                "--ready",
                str(ready),
            ],
            cwd=REPO_ROOT,
            env={"PYTHONPATH": child_pythonpath(), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        self.port = int(wait_file(ready, 30, self.proc))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def target(self, repo: str) -> Target:
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        url = f"https://127.0.0.1:{self.port}/{repo}.git/info/refs?service=git-upload-pack"
        return Target(url, ctx, dict(HEADERS))

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--upstream-ca", type=Path, required=True)
    p.add_argument("--tls-dir", type=Path, required=True)
    p.add_argument("--auth", required=True)
    p.add_argument("--ready", type=Path, required=True)
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
