"""A TLS sink/source on loopback for the egress benchmark (run as its own process).

One request per connection, one line: ``GET <n>`` sends n bytes then closes; ``PUT <n>``
reads n bytes and answers ``OK``. Threaded, blocking sockets: the server must not be the
bottleneck of what it measures.

    python -m bench.tls_sink --cert C --key K --ready FILE
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import ssl
from pathlib import Path
from types import FrameType

BLOCK = 1024 * 1024
MAX_BYTES = 16 * 1024**3


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        raw: socket.socket = self.request
        raw.settimeout(120)
        try:
            conn = self.server.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                chunk = conn.recv(64 - len(line))
                if not chunk:
                    return
                line += chunk
            verb, _, count = line.strip().partition(b" ")
            n = int(count)
            if not 0 <= n <= MAX_BYTES:
                return
            if verb == b"GET":
                block = memoryview(bytes(BLOCK))
                left = n
                while left:
                    k = min(BLOCK, left)
                    conn.sendall(block[:k])
                    left -= k
            elif verb == b"PUT":
                buf = bytearray(BLOCK)
                left = n
                while left:
                    got = conn.recv_into(buf, min(BLOCK, left))
                    if not got:
                        return
                    left -= got
                conn.sendall(b"OK\n")
            try:
                conn.unwrap()
            except (ssl.SSLError, OSError):
                pass
        except (ssl.SSLError, OSError, ValueError):
            return
        finally:
            conn.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ctx = ctx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    args = p.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    server = _Server(ctx)

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    args.ready.write_text(str(server.server_address[1]))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
