"""1 GiB through a CONNECT tunnel: direct, through airlock's EgressProxy, through squid, and
through the floor relay (bench/splice_floor.py: splice(2) and nothing else).

The client (this process, blocking sockets) opens a TLS connection to the sink's name, either
straight to it or inside a CONNECT tunnel, and moves the bytes in 1 MiB reads/writes. The
sink, the airlock proxy and squid each run as their own process on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.testing.tls import make_test_ca_and_server_cert
from bench.common import (
    REPO_ROOT,
    CpuMeter,
    Samples,
    child_pythonpath,
    die_with_parent,
    peak_rss_mb,
    stop_process,
    wait_file,
)
from bench.proxies import Squid

SINK_NAME = "sink.bench.test"
BLOCK = 1024 * 1024
IO_TIMEOUT = 120.0


@dataclass
class EgressRow:
    direction: str  # "download" / "upload"
    nbytes: int
    runs: int
    samples: dict[str, Samples] = field(default_factory=dict)  # values: MiB/s
    proxy_peak_mb: dict[str, float] = field(default_factory=dict)


class EgressBench:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.tls = make_test_ca_and_server_cert(root / "sink-tls", [SINK_NAME], ["127.0.0.1"])
        self.ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        self.token = "tok-" + secrets.token_hex(16)
        self.sink: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.squid: Squid | None = None
        self.floor: subprocess.Popen[bytes] | None = None
        self.sink_port = 0
        self.proxy_port = 0
        self.floor_port = 0

    def _spawn(self, module: str, ready: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
        ready.unlink(missing_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": child_pythonpath(),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--ready", str(ready), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"{module}.stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        return proc, int(wait_file(ready, 30, proc))

    def start(self) -> None:
        self.sink, self.sink_port = self._spawn(
            "bench.tls_sink",
            self.root / "sink.ready",
            "--cert",
            str(self.tls.server_cert),
            "--key",
            str(self.tls.server_key),
        )
        self.start_proxy()
        self.squid = Squid(self.root / "squid", SINK_NAME)
        self.squid.start()
        self.floor, self.floor_port = self._spawn(
            "bench.splice_floor",
            self.root / "floor.ready",
            "--sink-port",
            str(self.sink_port),
        )

    def start_proxy(self) -> None:
        """A fresh airlock egress process (its VmHWM starts over)."""
        stop_process(self.proxy)
        self.proxy, self.proxy_port = self._spawn(
            "bench.egress_proc",
            self.root / "egress.ready",
            "--sink-name",
            SINK_NAME,
            "--sink-port",
            str(self.sink_port),
            "--token",
            self.token,
            "--log",
            str(self.root / "egress-audit.log"),
        )

    def stop(self) -> None:
        if self.squid is not None:
            self.squid.stop()
        stop_process(self.floor)
        stop_process(self.proxy)
        stop_process(self.sink)

    # --- one transfer ---------------------------------------------------------------------

    def _connect(self, path: str) -> socket.socket:
        if path == "direct":
            return socket.create_connection(("127.0.0.1", self.sink_port), timeout=IO_TIMEOUT)
        if path == "airlock":
            port = self.proxy_port
            cred = base64.b64encode(f"airlock:{self.token}".encode()).decode()
            auth = f"Proxy-Authorization: Basic {cred}\r\n"
        elif path == "floor":
            port, auth = self.floor_port, ""
        else:
            assert self.squid is not None
            port, auth = self.squid.port, ""
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        target = f"{SINK_NAME}:{self.sink_port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{path}: proxy closed during CONNECT: {head!r}")
            head += chunk
            if len(head) > 16384:
                raise ConnectionError(f"{path}: response head too large")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise ConnectionError(f"{path}: CONNECT refused: {status!r}")
        return sock

    def transfer(self, path: str, direction: str, nbytes: int) -> float:
        """Seconds to move ``nbytes`` through ``path`` (TLS set-up included)."""
        t0 = time.perf_counter()
        raw = self._connect(path)
        with self.ctx.wrap_socket(raw, server_hostname=SINK_NAME) as tls:
            if direction == "download":
                tls.sendall(b"GET %d\n" % nbytes)
                buf = bytearray(BLOCK)
                got = 0
                while got < nbytes:
                    n = tls.recv_into(buf, BLOCK)
                    if not n:
                        raise ConnectionError(f"{path}: short download {got}/{nbytes}")
                    got += n
            else:
                tls.sendall(b"PUT %d\n" % nbytes)
                block = memoryview(bytes(BLOCK))
                left = nbytes
                while left:
                    k = min(BLOCK, left)
                    tls.sendall(block[:k])
                    left -= k
                if tls.recv(16) != b"OK\n":
                    raise ConnectionError(f"{path}: upload not acknowledged")
        return time.perf_counter() - t0

    def proxy_pids(self, path: str) -> list[int]:
        if path == "airlock" and self.proxy is not None:
            return [self.proxy.pid]
        if path == "squid" and self.squid is not None:
            return self.squid.pids()
        if path == "floor" and self.floor is not None:
            return [self.floor.pid]
        return []

    def row(self, direction: str, nbytes: int, runs: int) -> EgressRow:
        paths = ["direct", "airlock", "squid", "floor"]
        row = EgressRow(direction, nbytes, runs, {p: Samples() for p in paths})
        self.start_proxy()
        for rep in range(runs):
            k = rep % len(paths)
            for path in paths[k:] + paths[:k]:
                meter = CpuMeter(self.proxy_pids(path)).start()
                try:
                    seconds = self.transfer(path, direction, nbytes)
                except (OSError, ConnectionError) as exc:
                    row.samples[path].errors.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                row.samples[path].values.append(nbytes / 1024 / 1024 / seconds)
                row.samples[path].cpu.append(meter.stop())
        assert self.proxy is not None
        row.proxy_peak_mb["airlock"] = peak_rss_mb(self.proxy.pid)
        row.proxy_peak_mb["squid"] = max(
            (peak_rss_mb(p) for p in self.proxy_pids("squid")), default=0
        )
        return row
