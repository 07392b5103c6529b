"""Decoys the egress tests run on the host, and the probes they run inside a sandbox.

Standard library only, on purpose: the same file is copied into the sandbox (read-only) and run
there with the image's ``python3`` (``python3 /tools/egress_decoys.py PROBE 'JSON'``, result as
one JSON line on stdout), so the raw-socket probes that curl cannot express (a tunnel whose SNI
names another host, a DNS flood, a burst of bad connections) are typed and linted like the rest.

Host side:
* :class:`DecoyWeb`: an HTTP or HTTPS server on one address and port. It records every TCP
  connection it accepts (before any TLS), every SNI name it sees and every request, so a test can
  prove that a refused request never reached it, and that an allowed one did.
* :class:`DecoyDNS`: an authoritative UDP DNS server for one zone, recording every query.
* :func:`build_wheel`: a minimal, valid wheel made with :mod:`zipfile` (no internet, no build
  tools).

Sandbox side (``main``): ``raw``, ``sni``, ``dns`` and ``burst``; see each function.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import json
import os
import random
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# --------------------------------------------------------------------------------------------
# DNS wire format (just enough for one-question queries and simple answers)
# --------------------------------------------------------------------------------------------

QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_TXT = 16
RCODE_NOERROR = 0
RCODE_REFUSED = 5


def dns_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def dns_query(qid: int, name: str, qtype: int = QTYPE_A, rd: bool = True) -> bytes:
    flags = 0x0100 if rd else 0
    return (
        struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0)
        + dns_name(name)
        + struct.pack("!HH", qtype, 1)
    )


@dataclass(frozen=True)
class DnsHeader:
    qid: int
    qr: bool
    rcode: int
    qdcount: int
    ancount: int


def dns_header(packet: bytes) -> DnsHeader | None:
    if len(packet) < 12:
        return None
    qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", packet[:12])
    return DnsHeader(qid, bool(flags & 0x8000), flags & 0xF, qd, an)


def dns_question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end offset) of the first question; no compression in questions."""
    pos, labels = 12, []
    try:
        while True:
            n = packet[pos]
            if n == 0:
                pos += 1
                break
            if n & 0xC0:
                return None
            labels.append(packet[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        (qtype,) = struct.unpack("!H", packet[pos : pos + 2])
    except (IndexError, struct.error):
        return None
    return ".".join(labels).lower(), qtype, pos + 4


# --------------------------------------------------------------------------------------------
# Host side: web decoys
# --------------------------------------------------------------------------------------------


@dataclass
class Route:
    content_type: str
    body: bytes


@dataclass
class DecoyWeb:
    """HTTP(S) on ``address:port``; ``/hello`` answers with the marker, ``routes`` the rest."""

    address: str
    port: int
    marker: str
    tls: ssl.SSLContext | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)  # peer address of every TCP connection
    snis: list[str | None] = field(default_factory=list)  # SNI of every TLS handshake
    requests: list[str] = field(default_factory=list)  # "Host path" of every request
    _server: socketserver.ThreadingTCPServer | None = None

    def __post_init__(self) -> None:
        if self.tls is not None:
            self.tls.sni_callback = self._sni
        decoy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def setup(self) -> None:
                self.request.settimeout(15)
                if decoy.tls is not None:
                    self.request = decoy.tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, with_body: bool) -> None:
                host = self.headers.get("Host", "")
                decoy.requests.append(f"{host} {self.path}")
                path = self.path.split("?", 1)[0]
                if path == "/hello":
                    route = Route("text/plain", f"{decoy.marker} host={host}\n".encode())
                else:
                    found = decoy.routes.get(path)
                    if found is None:
                        self.send_error(404)
                        return
                    route = found
                self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(route.body)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(min(length, 1 << 20))
                self._answer(True)

        class Server(socketserver.ThreadingTCPServer):
            # Not http.server.HTTPServer: its server_bind looks up the address's FQDN, a DNS
            # query to the machine's resolver (an outside address).
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

            def verify_request(self, request: Any, client_address: Any) -> bool:
                decoy.accepted.append(str(client_address[0]))
                return True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # refused handshakes and resets are expected; the lists say what happened

        self._server = Server((self.address, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _sni(self, _sock: Any, name: str | None, _ctx: Any) -> None:
        self.snis.append(name)

    @property
    def hits(self) -> int:
        return len(self.accepted)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


# --------------------------------------------------------------------------------------------
# Host side: an authoritative DNS decoy
# --------------------------------------------------------------------------------------------


class DecoyDNS:
    """Authoritative for ``zone`` on ``address:53``/UDP: A -> ``answer``; REFUSED elsewhere.

    Records every query name it receives (``queries``), whoever sent it.
    """

    def __init__(self, address: str, zone: str, answer: str, port: int = 53) -> None:
        self.zone = zone.lower().rstrip(".")
        self.answer = socket.inet_aton(answer)
        self.queries: list[tuple[str, str]] = []  # (name, source)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            reply = self._reply(data, str(peer[0]))
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def _reply(self, data: bytes, source: str) -> bytes | None:
        head, q = dns_header(data), dns_question(data)
        if head is None or q is None or head.qr:
            return None
        name, qtype, end = q
        self.queries.append((name, source))
        ours = name == self.zone or name.endswith("." + self.zone)
        rcode = RCODE_NOERROR if ours else RCODE_REFUSED
        answers = b""
        if ours and qtype == QTYPE_A:
            answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, 60, 4) + self.answer
        flags = 0x8000 | 0x0400 | rcode  # QR, AA
        count = 1 if answers else 0
        return struct.pack("!HHHHHH", head.qid, flags, 1, count, 0, 0) + data[12:end] + answers

    def names(self) -> set[str]:
        return {n for n, _ in self.queries}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Host side: a wheel without build tools
# --------------------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(directory: Path, project: str, version: str, marker: str) -> Path:
    """A pure-Python wheel for ``project`` whose module holds ``marker``."""
    module = project.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'MARKER = "{marker}"\n'.encode(),
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
            "Summary: decoy package for airlock's egress tests\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: airlock-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------------------------
# Sandbox side: probes (run with the sandbox's python3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    user: str
    token: str

    @staticmethod
    def from_env() -> Proxy:
        p = urlsplit(os.environ["HTTPS_PROXY"])
        assert p.hostname and p.port and p.username and p.password
        return Proxy(p.hostname, p.port, p.username, p.password)

    def authorization(self, token: str | None = None) -> str:
        blob = base64.b64encode(f"{self.user}:{token or self.token}".encode()).decode()
        return f"Proxy-Authorization: Basic {blob}\r\n"


def _read_head(sock: socket.socket) -> bytes:
    """Byte by byte up to the blank line, so nothing after the head is consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 65536:
        b = sock.recv(1)
        if not b:
            break
        head += b
    return head


def _status(head: bytes) -> tuple[int | None, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    return status, headers


def probe_raw(args: dict[str, Any]) -> list[dict[str, Any]]:
    """Send each ``{"line": "CONNECT x:443 HTTP/1.1", "host": ..., "auth": bool}`` to the proxy;
    report the status and the ``X-Airlock-Refused`` rule of each answer."""
    proxy = Proxy.from_env()
    results = []
    for req in args["requests"]:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
            head = f"{req['line']}\r\nHost: {req['host']}\r\n"
            if req.get("auth", True):
                head += proxy.authorization()
            s.sendall((head + "\r\n").encode("latin-1"))
            status, headers = _status(_read_head(s))
        results.append({"status": status, "refused": headers.get("x-airlock-refused")})
    return results


def probe_sni(args: dict[str, Any]) -> list[dict[str, Any]]:
    """For each ``{"connect": HOST, "sni": NAME|null}``: CONNECT HOST:443 with the sandbox's
    token, then TLS with ``NAME`` as SNI (none when null) and ``GET /hello``."""
    proxy = Proxy.from_env()
    results = []
    for a in args["attempts"]:
        host, sni = a["connect"], a["sni"]
        result: dict[str, Any] = {"connect": host, "sni": sni}
        s = socket.create_connection((proxy.host, proxy.port), timeout=10)
        try:
            s.sendall(
                (
                    f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                    f"{proxy.authorization()}\r\n"
                ).encode()
            )
            result["status"], _ = _status(_read_head(s))
            ctx = ssl.create_default_context(cafile=args["cafile"])
            if sni is None:
                ctx.check_hostname = False
            try:
                with ctx.wrap_socket(s, server_hostname=sni) as t:
                    t.sendall(f"GET /hello HTTP/1.0\r\nHost: {sni or host}\r\n\r\n".encode())
                    body = b""
                    while chunk := t.recv(65536):
                        body += chunk
                result["tls"] = "ok"
                result["body"] = body.decode("latin-1")[-300:]
            except (ssl.SSLError, OSError) as exc:
                result["tls"] = f"error: {type(exc).__name__}: {exc}"
        finally:
            s.close()
        results.append(result)
    return results


def probe_dns(args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send one query for each of ``names`` to each ``[address, port]`` target at once, then
    collect replies for ``wait`` seconds: per target, how many went out, came back, and with
    which rcodes and how many answer records."""
    names: list[str] = args["names"]
    out: dict[str, dict[str, Any]] = {}
    socks: dict[str, socket.socket] = {}
    for address, port in args["targets"]:
        key = f"{address}:{port}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        socks[key] = s
        sent, errors = 0, Counter[str]()
        for i, name in enumerate(names):
            try:
                s.sendto(dns_query(i, name), (address, port))
                sent += 1
            except OSError as exc:
                errors[type(exc).__name__ + f"({exc.errno})"] += 1
        out[key] = {"sent": sent, "send_errors": dict(errors), "replies": 0, "answers": 0}
        out[key]["rcodes"] = Counter[str]()
    deadline = time.monotonic() + float(args.get("wait", 3))
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(socks.values()), [], [], left)
        for key, s in socks.items():
            if s not in ready:
                continue
            with contextlib.suppress(OSError):
                data = s.recv(4096)
                head = dns_header(data)
                if head is not None:
                    out[key]["replies"] += 1
                    out[key]["answers"] += head.ancount
                    out[key]["rcodes"][str(head.rcode)] += 1
    for s in socks.values():
        s.close()
    for v in out.values():
        v["rcodes"] = dict(v["rcodes"])
    return out


# Bad connections of the burst, one kind after another.
BURST_KINDS = ("garbage", "half", "wrong_token", "no_token", "huge_head", "tls_bytes", "close")


def _burst_payload(kind: str, proxy: Proxy) -> bytes:
    connect = "CONNECT allowed.decoy.test:443 HTTP/1.1\r\nHost: allowed.decoy.test:443\r\n"
    if kind == "garbage":
        return random.randbytes(200).replace(b"\n", b"x") + b"\r\n\r\n"
    if kind == "half":
        return b"CONNECT allowed.decoy.test:443 HTTP/1.1\r\nHost: allow"
    if kind == "wrong_token":
        return (
            connect + proxy.authorization("not-the-token-" + os.urandom(8).hex()) + "\r\n"
        ).encode()
    if kind == "no_token":
        return (
            b"GET http://allowed-http.decoy.test/hello HTTP/1.1\r\n"
            b"Host: allowed-http.decoy.test\r\n\r\n"
        )
    if kind == "huge_head":
        return (connect + "X-Junk: " + "j" * 40000 + "\r\n\r\n").encode()
    if kind == "tls_bytes":
        return b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500)
    return b""


async def _one_bad(
    kind: str, proxy: Proxy, opened: asyncio.Event, go: asyncio.Event, connected: list[int]
) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), 15)
    except (OSError, TimeoutError) as exc:
        connected[1] += 1
        if connected[0] + connected[1] >= connected[2]:
            opened.set()
        return f"connect_failed:{type(exc).__name__}"
    connected[0] += 1
    if connected[0] + connected[1] >= connected[2]:
        opened.set()
    try:
        await go.wait()
        if kind == "close":
            writer.transport.abort()
            return "closed_by_us"
        writer.write(_burst_payload(kind, proxy))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(4096), 30)
        if not data:
            return f"closed_by_proxy:{round(time.monotonic() - started)}s"
        status, _ = _status(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        return f"status:{status}"
    except TimeoutError:
        return "no_answer_in_30s"
    except OSError as exc:
        return f"reset:{type(exc).__name__}"
    finally:
        writer.transport.abort()


async def _burst(args: dict[str, Any]) -> dict[str, Any]:
    proxy = Proxy.from_env()
    n = int(args["n"])
    opened, go = asyncio.Event(), asyncio.Event()
    connected = [0, 0, n]  # ok, failed, total
    tasks = [
        asyncio.create_task(
            _one_bad(BURST_KINDS[i % len(BURST_KINDS)], proxy, opened, go, connected)
        )
        for i in range(n)
    ]
    await asyncio.wait_for(opened.wait(), 60)
    Path(args["signal"]).write_text(f"{connected[0]} open\n")  # all at once, right now
    go.set()
    results = await asyncio.gather(*tasks)
    outcomes: dict[str, Counter[str]] = {}
    for i, r in enumerate(results):
        outcomes.setdefault(BURST_KINDS[i % len(BURST_KINDS)], Counter())[r] += 1
    Path(args["done"]).write_text("done\n")
    return {
        "connected": connected[0],
        "connect_failed": connected[1],
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
    }


def probe_burst(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` concurrent bad connections to the proxy (kinds: :data:`BURST_KINDS`): all are
    opened first (then ``signal`` is written), then each misbehaves; ``done`` at the end."""
    return asyncio.run(_burst(args))


PROBES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "raw": probe_raw,
    "sni": probe_sni,
    "dns": probe_dns,
    "burst": probe_burst,
}


def main(argv: list[str]) -> int:
    probe, raw = argv[1], argv[2]
    print(json.dumps(PROBES[probe](json.loads(raw))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
