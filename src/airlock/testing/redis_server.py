"""A real Redis server (Debian's redis-server) for the shared-store tests and benchmarks.

Configured as docs/shared-store.md says production must be: append-only file on, fsync on
every write (``appendfsync always``), so what Redis acknowledged is on disk; no RDB
snapshots; loopback only. ``kill()`` is a crash (SIGKILL), ``stop()`` a clean shutdown; a
restart in the same directory reads the append-only file back.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from airlock.testing.ports import free_port

DURABILITY = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


def _die_with_parent() -> None:
    """preexec_fn: the server is killed when the thread that started it exits, so a test
    or benchmark that dies (or is cut short) leaves no Redis behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class RedisServer:
    def __init__(
        self, root: Path, port: int | None = None, addresses: tuple[str, ...] = ("127.0.0.1",)
    ) -> None:
        self.root = root
        self.addresses = addresses  # loopback addresses to listen on (a second one: partitions)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_at(self.addresses[0])

    def url_at(self, address: str) -> str:
        return f"redis://{address}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                *self.addresses,
                "--protected-mode",
                "yes",
                "--dir",
                str(self.root),
                "--daemonize",
                "no",
                "--logfile",
                str(self.root / "redis.log"),
                *DURABILITY,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    log = (self.root / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited: {log}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer in {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: no shutdown, no last write; what survives is what was fsynced."""
        self._end(signal.SIGKILL)
