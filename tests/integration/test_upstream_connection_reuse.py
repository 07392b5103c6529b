"""No pooled upstream connection carries anything after a surprise (request smuggling).

The upstream here is deliberately naive, as some HTTP front ends are: it answers a request
for a missing repository with a 404 as soon as it has the headers, without reading the
body, and reads whatever follows on the connection as the next request. A session granted
only that missing repository sends a push whose pack bytes are the start of a request for
another repository. If the gateway put that connection back into its pool, its next
request (carrying the real credential) would complete the smuggled one, and the attacker
would read the other repository's refs.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.core.pktline import FLUSH, encode_pkt
from airlock.testing.tls import make_test_ca_and_server_cert
from tests.rawhttp import client_context, get, send_raw
from tests.world import TOKEN, World

NAIVE = "naive.example.com"
SECRET = b"0033victim-secret-ref-advertisement-not-for-you\n0000"
SMUGGLED = (
    b"GET /victim/secret.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
    b"Host: naive\r\nX-Swallow: "
)


class NaiveUpstream:
    """Reads requests off each connection back to back; never reads a refused request's body,
    and skips junk before a request line."""

    def __init__(self, root: Path) -> None:
        self.tls = make_test_ca_and_server_cert(root / "naive-tls", ["localhost"], ["127.0.0.1"])
        self.port = 0
        self.requests: list[tuple[int, str, bool]] = []  # (connection, request line, authed)
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._expected_auth = (
            "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        )

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn = self._connections
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                # Lenient about junk before a request line, as some servers are.
                starts = [i for i in (head.find(b"GET /"), head.find(b"POST /")) if i >= 0]
                head = head[min(starts) :] if starts else head
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                authed = headers.get("authorization") == self._expected_auth
                self.requests.append((conn, lines[0], authed))
                target = lines[0].split(" ")[1]
                if target.startswith("/victim/secret.git/info/refs") and authed:
                    status, ctype, body = (
                        "200 OK",
                        "application/x-git-upload-pack-advertisement",
                        SECRET,
                    )
                else:
                    # Refused at once, body unread; wait until the client's body is here so
                    # the smuggled bytes are on this connection, not still in flight.
                    length = int(headers.get("content-length", "0"))
                    while len(buf) < length:
                        data = await reader.read(65536)
                        if not data:
                            return
                        buf += data
                    status, ctype, body = "404 Not Found", "text/plain", b""
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()


@pytest.fixture(scope="module")
def naive_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, NaiveUpstream]]:
    root = tmp_path_factory.mktemp("naive")
    naive = NaiveUpstream(root)
    w = World(root)
    w.loop.run(naive.start())
    w.config_extra = f"""
[[upstream]]
host = "{NAIVE}"
url = "https://127.0.0.1:{naive.port}"
ca_file = "{naive.tls.ca_cert}"
token_file = "{w.token_file}"
"""
    w.start()
    yield w, naive
    w.stop()
    asyncio.run(naive.stop())


def test_early_answer_does_not_return_the_connection_to_the_pool(
    naive_world: tuple[World, NaiveUpstream],
) -> None:
    w, naive = naive_world
    b = w.session(f"{NAIVE}/attacker/missing:write")
    ctx = client_context(b.dir, w.state_dir / "ca.pem")
    # A valid command list (the gateway checks it), then "pack data" that is a request.
    body = encode_pkt(f"{'0' * 40} {'1' * 40} refs/heads/agent/x\0report-status\n".encode())
    body += FLUSH + SMUGGLED
    push = get(
        f"/git/{NAIVE}/attacker/missing/git-receive-pack",
        method="POST",
        headers={"Content-Type": "application/x-git-receive-pack-request"},
        body=body,
    )
    first = send_raw(ctx, w.port, push)
    assert first.status == 404
    # The attacker's next, perfectly ordinary request on its own granted repository.
    second = send_raw(
        ctx, w.port, get(f"/git/{NAIVE}/attacker/missing/info/refs?service=git-upload-pack")
    )
    assert b"victim-secret" not in second.body
    assert second.status == 404
    # The upstream never answered an authenticated request for the victim's repository.
    assert not [r for r in naive.requests if "/victim/" in r[1] and r[2]], naive.requests
    # And the two gateway requests travelled on different upstream connections.
    attacker = [r[0] for r in naive.requests if "/attacker/" in r[1]]
    assert len(attacker) == 2 and attacker[0] != attacker[1], naive.requests
