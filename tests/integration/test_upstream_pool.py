"""The upstream pool keeps connections after clean exchanges (speed) and drops them after
any other (no bytes left over for the next request): a real aiohttp server on loopback."""

from __future__ import annotations

import ssl

import aiohttp
from aiohttp import web

from airlock.gateway.upstreampool import upstream_session


async def _server(statuses: list[int]) -> tuple[web.AppRunner, int, set[int]]:
    connections: set[int] = set()

    async def handle(request: web.Request) -> web.Response:
        connections.add(id(request.transport))
        await request.read()
        status = statuses.pop(0) if statuses else 200
        return web.Response(status=status, body=b"x" * 100)

    app = web.Application()
    app.router.add_route("*", "/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port), connections


async def _requests(port: int, n: int) -> None:
    async with upstream_session(ssl.create_default_context()) as client:
        for i in range(n):
            data = b"y" * 1000 if i % 2 else None
            async with client.request(
                "POST" if data else "GET", f"http://127.0.0.1:{port}/", data=data
            ) as r:
                if r.status == 200:  # the gateway reads no other answer's body
                    await r.read()


async def test_clean_exchanges_share_one_connection() -> None:
    runner, port, connections = await _server([])
    try:
        await _requests(port, 10)
    finally:
        await runner.cleanup()
    assert len(connections) == 1


async def test_a_connection_is_dropped_after_an_answer_other_than_200() -> None:
    runner, port, connections = await _server([200, 404, 200, 500, 200])
    try:
        await _requests(port, 5)
    finally:
        await runner.cleanup()
    # 200 | 404 closes | 200 (new) | 500 closes | 200 (new)
    assert len(connections) == 3


async def test_plain_aiohttp_would_have_kept_it() -> None:
    """The control: aiohttp's own response class reuses the connection after the 404."""
    runner, port, connections = await _server([200, 404, 200])
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(f"http://127.0.0.1:{port}/") as r:
                    await r.read()
    finally:
        await runner.cleanup()
    assert len(connections) == 1
