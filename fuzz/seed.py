"""Write the seed corpus of every fuzz target from real inputs (run once; the corpus is kept).

    .venv/bin/python fuzz/seed.py [--out fuzz/corpus]

Real git (clone, shallow and partial clones, fetches with negotiation, pushes with and
without push options, deletes, sha1 and sha256 repositories, protocol v0 and v2) talks to
``git http-backend`` behind a recording HTTP server on 127.0.0.1; the requests and answers
it recorded seed the git targets. curl talking to a recording socket on 127.0.0.1 seeds the
proxy request and ClientHello targets (the ClientHellos of Python's ssl module too); dnslib
builds the DNS queries; the API targets take the requests of the unit tests (the GraphQL
documents ``gh`` really sent). Everything stays on loopback; every process has a timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dnslib import EDNS0, DNSRecord

from airlock.core.requestbody import decode_body
from airlock.testing.repos import create_bare_repo, git_env

ROOT = Path(__file__).resolve().parent.parent
_TIMEOUT = 60


@dataclass
class Exchange:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes  # as sent (possibly gzip)
    response: bytes


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, project_root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _CGIHandler)
        self.project_root = project_root
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()


class _CGIHandler(BaseHTTPRequestHandler):
    server: _Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "airlock",
            "REMOTE_ADDR": "127.0.0.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=_TIMEOUT
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        with self.server.lock:
            self.server.exchanges.append(
                Exchange(self.command, path, query, dict(self.headers.items()), body, payload)
            )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


def _git(args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    done = subprocess.run(["git", *args], env=env, cwd=cwd, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace')}")


def _commit(work: Path, env: dict[str, str], name: str, text: str) -> None:
    (work / name).write_text(text)
    _git(["add", name], env, work)
    _git(["commit", "-q", "-m", f"change {name}"], env, work)


def record_git(tmp: Path) -> list[Exchange]:
    """Run real git against http-backend through the recorder; every exchange it made."""
    root = tmp / "srv"
    stamp = "1700000000 +0000"  # fixed dates: the same objects (and seeds) on every run
    env = git_env(tmp / "home", GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp)
    for fmt, name in (("sha1", "hello"), ("sha256", "hash256")):
        repo = create_bare_repo(
            root, "octo", name, object_format=fmt, files={"README.md": b"hi\n", "a.txt": b"a\n"}
        )
        for key, value in (
            ("http.receivepack", "true"),
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("receive.advertisePushOptions", "true"),
        ):
            _git(["--git-dir", str(repo), "config", key, value], env)
    server = _Recorder(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/octo"
    try:
        for v in ("0", "2"):
            pv = ["-c", f"protocol.version={v}"]
            _git([*pv, "clone", "-q", f"{url}/hello.git", str(tmp / f"w{v}")], env)
            _git([*pv, "clone", "-q", "--depth", "1", f"{url}/hello.git", str(tmp / f"s{v}")], env)
            _git(
                [*pv, "clone", "-q", "--filter=blob:none", f"{url}/hello.git", str(tmp / f"p{v}")],
                env,
            )
            _git([*pv, "ls-remote", f"{url}/hello.git"], env)
        w0, w2 = tmp / "w0", tmp / "w2"
        _commit(w2, env, "b.txt", "b\n")
        _git(["push", "-q", "origin", "main"], env, w2)  # a fast-forward of main
        _git(["push", "-q", "origin", "main:refs/heads/agent/x"], env, w2)  # a create
        _commit(w2, env, "c.txt", "c\n")
        _git(["push", "-q", "-o", "ci.skip", "origin", "HEAD:refs/heads/agent/y"], env, w2)
        _git(["push", "-q", "origin", ":refs/heads/agent/x"], env, w2)  # a delete
        _git(["tag", "v1"], env, w2)
        _git(["push", "-q", "origin", "v1"], env, w2)
        _git(["reset", "-q", "--hard", "HEAD~1"], env, w2)
        _commit(w2, env, "d.txt", "d\n")
        _git(["push", "-q", "-f", "origin", "HEAD:refs/heads/agent/y"], env, w2)  # not ff
        # Two similar files in one push (an OFS_DELTA), then one changed (a thin pack's
        # REF_DELTA against a blob the server has).
        text = "".join(f"line {i} of a file big enough to be deltified\n" for i in range(80))
        (w2 / "big2.txt").write_text(text + "tail\n")
        _git(["add", "big2.txt"], env, w2)
        _commit(w2, env, "big1.txt", text)
        _git(["push", "-q", "origin", "HEAD:refs/heads/agent/big"], env, w2)
        _commit(w2, env, "big1.txt", text.replace("line 40", "LINE 40"))
        _git(["push", "-q", "origin", "HEAD:refs/heads/agent/big"], env, w2)
        for i in range(3):  # commits with long, similar messages: deltified commits
            (w2 / "m.txt").write_text(f"{i}\n")
            _git(["add", "m.txt"], env, w2)
            _git(["commit", "-q", "-m", f"{'message ' * 200}{i}"], env, w2)
        _git(["push", "-q", "origin", "HEAD:main"], env, w2)  # a fast-forward through them
        for i in range(40):  # many local commits: many haves, a gzipped negotiation
            _commit(w0, env, f"local{i}.txt", f"{i}\n")
        for v in ("0", "2"):
            _git(["-c", f"protocol.version={v}", "fetch", "-q", "origin"], env, w0)
        _git(["clone", "-q", f"{url}/hash256.git", str(tmp / "h")], env)
        _commit(tmp / "h", env, "e.txt", "e\n")
        _git(["push", "-q", "origin", "main", "main:refs/heads/agent/z"], env, tmp / "h")
    finally:
        server.shutdown()
        server.server_close()
    return server.exchanges


def _recording_socket(reply: bytes = b"") -> tuple[socket.socket, list[bytes]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(_TIMEOUT)
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if data[:1] == b"\x16":  # a ClientHello: one record is enough
                        break
            except OSError:
                pass
            received.append(data)
            if reply:
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return listener, received


def _curl(args: list[str], reply: bytes = b"") -> bytes:
    listener, received = _recording_socket(reply)
    port = listener.getsockname()[1]
    argv = [a.replace("PORT", str(port)) for a in args]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-m", "5", *argv], env=env, timeout=_TIMEOUT, check=False
    )
    listener.close()
    return received[0] if received else b""


def record_proxy() -> list[bytes]:
    """Request heads curl sends to an HTTP proxy (plain and CONNECT, with credentials)."""
    heads = [
        _curl(["-x", "http://airlock:tok-123@127.0.0.1:PORT", "http://example.com/a?b=1"]),
        _curl(
            [
                "-x",
                "http://127.0.0.1:PORT",
                "-H",
                "Accept: application/dns-message",
                "http://dns.example.com/dns-query?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE",
            ]
        ),
        _curl(["-p", "-x", "http://airlock:tok-123@127.0.0.1:PORT", "https://github.com/"]),
        _curl(["-p", "-x", "http://127.0.0.1:PORT", "https://api.example.com:8443/"]),
        _curl(
            [
                "-x",
                "http://airlock:tok@127.0.0.1:PORT",
                "-X",
                "POST",
                "-d",
                "x=1",
                "http://www.example.com:8080/upload",
            ]
        ),
    ]
    return [h for h in heads if h]


def record_client_hellos() -> list[bytes]:
    """ClientHellos of curl and of Python's ssl module (TLS 1.3 and 1.2 only)."""
    tls12 = ["--tlsv1.2", "--tls-max", "1.2"]
    hellos = [
        _curl(["--connect-to", "github.com:443:127.0.0.1:PORT", "https://github.com/"]),
        _curl(
            [
                *tls12,
                "--connect-to",
                "api.example.com:443:127.0.0.1:PORT",
                "https://api.example.com/",
            ]
        ),
    ]
    for maximum in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.create_default_context()
        ctx.maximum_version = maximum
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="github.com")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hellos.append(outgoing.read())
    return [h for h in hellos if h]


def dns_queries() -> list[bytes]:
    out = []
    for name, qtype in (
        ("github.com", "A"),
        ("github.com", "AAAA"),
        ("gateway.airlock.test", "A"),
        ("GateWay.Airlock.Test.", "ANY"),
        ("exfil-4142434445.example.com", "TXT"),
        ("example.com", "MX"),
    ):
        out.append(DNSRecord.question(name, qtype).pack())
    response = DNSRecord.question("github.com", "A").reply()
    out.append(response.pack())  # a response, not a query: dropped
    edns = DNSRecord.question("github.com", "A")
    edns.add_ar(EDNS0(udp_len=4096))  # as dig and systemd-resolved send it
    out.append(edns.pack())
    return out


def _selector(encoding_index: int, limit_index: int) -> int:
    return next(b for b in range(256) if b % 7 == encoding_index and (b >> 4) % 3 == limit_index)


def api_seeds() -> tuple[list[bytes], list[bytes]]:
    sys.path.insert(0, str(ROOT))
    from tests.unit.test_api_graphql import GH_REQUESTS

    methods = ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS", "get")
    source = (ROOT / "tests/unit/test_api_policy.py").read_text()
    targets = sorted(set(re.findall(r'"(/(?:repos|user|rate_limit|meta|api/v3)[^"\s]*)"', source)))
    rest = [bytes([0]) + t.encode() + b"\n" for t in targets]
    rest += [bytes([3 << 4]) + b"/api/v3/repos/octo/secret/pulls\n"]
    writes = (
        ("POST", "/repos/octo/hello/pulls", {"head": "agent/x", "base": "main", "title": "t"}),
        ("PATCH", "/repos/octo/hello/pulls/7", {"title": "new", "body": "b"}),
        ("POST", "/repos/octo/hello/issues/7/comments", {"body": "hi"}),
        ("POST", "/repos/octo/hello/pulls/7/requested_reviewers", {"reviewers": ["a"]}),
        ("POST", "/repos/octo/hello/pulls/7/reviews", {"event": "COMMENT", "body": "x"}),
        ("DELETE", "/repos/octo/hello/git/refs/heads/agent/x", None),
    )
    for method, target, body in writes:
        raw = b"" if body is None else json.dumps(body).encode()
        rest.append(bytes([methods.index(method)]) + target.encode() + b"\n" + raw)
    graphql = [bytes([0]) + body for _cmd, method, target, body in GH_REQUESTS if method == "POST"]
    graphql += [bytes([3]) + body for _cmd, method, _t, body in GH_REQUESTS[:2] if method == "POST"]
    return rest, graphql


def git_seeds(exchanges: list[Exchange]) -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {
        k: []
        for k in (
            "pktline",
            "uploadpack",
            "requestbody",
            "receivepack",
            "reportstatus",
            "gitpath",
            "pushpack",
        )
    }
    for ex in exchanges:
        service = ex.path.rsplit("/", 1)[-1] if ex.method == "POST" else ex.query.partition("=")[2]
        content_type = ex.headers.get("Content-Type", "")
        host_form = f"/git/github.com{ex.path}" + (f"?{ex.query}" if ex.query else "")
        method = 0 if ex.method == "GET" else 1
        for target, host in (
            (host_form, "x"),
            (ex.path + (f"?{ex.query}" if ex.query else ""), "github.com"),
        ):
            seeds["gitpath"].append(
                bytes([method | 0xC0]) + f"{target}\n{host}\n{content_type}".encode()
            )
        encoding = ex.headers.get("Content-Encoding")
        body = decode_body(ex.body, encoding, 1 << 24)
        if encoding == "gzip":
            seeds["requestbody"].append(bytes([_selector(2, 2)]) + ex.body)
        elif ex.body:
            seeds["requestbody"].append(bytes([_selector(0, 1)]) + ex.body[:1024])
        if ex.method == "GET":
            seeds["pktline"].append(b"\x80" + ex.response)
            if service == "git-receive-pack":
                seeds["reportstatus"].append(b"\x80" + ex.response)
            continue
        seeds["pktline"] += [b"\x80" + body, b"\x07" + body]
        if service == "git-upload-pack":
            version = 2 if "version=2" in ex.headers.get("Git-Protocol", "") else 0
            seeds["uploadpack"].append(bytes([version]) + body)
            header = ex.headers.get("Git-Protocol", "").encode()
            seeds["uploadpack"].append(bytes([0x80]) + header + b"\n" + body)
        else:
            seeds["receivepack"] += [b"\x80" + body, b"\x05" + body]
            seeds["pushpack"].append(b"\x80" + body)
            seeds["reportstatus"].append(b"\xc0" + ex.response)
            pack_at = body.find(b"PACK")
            if pack_at >= 0:
                sha256 = "object-format=sha256" in body[:pack_at].decode("latin-1")
                seeds["pushpack"].append(bytes([0xE0 if sha256 else 0xC0]) + body[pack_at:])
    return seeds


#: One input each target's parser refuses, so every corpus holds both verdicts.
REFUSED: dict[str, bytes] = {
    "api_graphql": b"\x00" + b'{"query": "mutation { deleteRepository(input: {}) { x } }"}',
    "api_rest": b"\x00/repos/octo/other/pulls\n",
    "dns_query": b"\x12\x34\x01\x00\x00\x01\x00\x00",
    "egress_request": b"GET /local HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "gitpath": b"\x80/git/evil.example/octo/hello/git-upload-pack\n\napplication/x-git-upload"
    b"-pack-request",
    "pktline": b"\x80000axyz\n",
    "pushpack": b"\x800044" + b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\n0000PACK",
    "receivepack": b"\x80003f" + b"0" * 40 + b" " + b"1" * 18 + b" refs/heads/..\n0000",
    "reportstatus": b"\x800000",
    "requestbody": bytes([2]) + b"\x1f\x8b\x08\x00not gzip",
    "tlshello": b"\x80GET / HTTP/1.1\r\n\r\n",
    "uploadpack": b"\x000009done\n0000",
}


def write(out: Path, name: str, seeds: list[bytes], max_len: int) -> int:
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for seed in seeds:
        if not seed or len(seed) > max_len:
            continue
        digest = hashlib.sha1(seed).hexdigest()
        path = directory / f"seed-{digest}"
        if not path.exists():
            path.write_bytes(seed)
            written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz" / "corpus")
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="only these (default all)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "fuzz"))
    from run import MAX_LEN

    with tempfile.TemporaryDirectory(prefix="airlock-fuzz-seed-") as tmp:
        seeds = git_seeds(record_git(Path(tmp)))
    seeds["egress_request"] = record_proxy()
    seeds["tlshello"] = [b"\x80" + h for h in record_client_hellos()]
    seeds["tlshello"] += [b"\x05" + h for h in seeds["tlshello"][:2]]
    seeds["dns_query"] = dns_queries()
    seeds["api_rest"], seeds["api_graphql"] = api_seeds()
    for name, items in sorted(seeds.items()):
        if args.targets and name not in args.targets:
            continue
        items.append(REFUSED[name])
        count = write(args.out, name, items, MAX_LEN.get(name, 4096))
        print(f"{name}: {count} new seed(s) of {len(items)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
