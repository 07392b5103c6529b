"""Raw HTTPS requests with a session's client certificate, for requests git would never send."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import h11


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def client_context(
    bundle_dir: Path | None, ca: Path, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = True
    if bundle_dir is not None:
        ctx.load_cert_chain(bundle_dir / "client.pem", bundle_dir / "client.key")
    elif cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def send_raw(
    ctx: ssl.SSLContext,
    port: int,
    payload: bytes,
    *,
    source: str | None = None,
    timeout: float = 10,
    address: str = "127.0.0.1",
) -> RawResponse:
    """Raises ConnectionResetError when the gateway closes without answering."""
    """Send ``payload`` verbatim over TLS to the gateway and parse one response."""
    raw = socket.create_connection(
        (address, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    with ctx.wrap_socket(raw, server_hostname="airlock.internal") as s:
        s.sendall(payload)
        conn = h11.Connection(h11.CLIENT)
        # Tell h11 what we sent so it can frame the response (method matters for HEAD).
        method = payload.split(b" ", 1)[0].decode()
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = s.recv(65536)
                if not data and status == 0:
                    raise ConnectionResetError(
                        "the gateway closed the connection without answering"
                    )
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return RawResponse(status, headers, body)


def get(
    target: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: airlock.internal", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape") + body
