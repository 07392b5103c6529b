"""The floor under any CONNECT relay here: accept, answer 200, splice(2) both ways.

No authentication, no TLS checks, no audit, no event loop: one blocking thread per direction
moving bytes socket -> pipe -> socket, the way airlock's tunnel does once its checks are
done. What this relay costs against a direct connection is what two loopback hops cost on
this machine, so it bounds what a relay can reach (run as its own process).

    python -m bench.splice_floor --sink-port P --ready FILE
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import socketserver
import threading
from pathlib import Path
from types import FrameType

from airlock.gateway.splice import WRITE_BUFFER_HIGH

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """src -> pipe -> dst until src ends, then pass the end on."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, WRITE_BUFFER_HIGH)
    try:
        while True:
            n = os.splice(src.fileno(), w, WRITE_BUFFER_HIGH)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > 16384:
                return
            head += chunk
        with socket.create_connection(("127.0.0.1", self.server.sink_port)) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            up = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
            up.start()
            _pump(upstream, client)
            up.join()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sink_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sink_port = sink_port


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--ready", type=Path, required=True)
    args = p.parse_args()
    server = _Server(args.sink_port)

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
