"""Gateways on one shared store, for tests/integration/test_replicas.py and bench/replicas.py.

A Replica is a World (its own upstream, state directory and control socket) whose gateway
keeps its sessions in Redis (``gateway.store_url``). Replicas of one deployment share one CA:
the second and later copy the first one's keys (:func:`share_keys`), as an operator copies
them to a new host, so a session's bundle works at any of them.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
from pathlib import Path

from airlock.testing.ports import free_port
from tests.world import Bundle, World

INFO_REFS = "/git/github.com/acme/tiny/info/refs?service=git-upload-pack"
SHARED_KEYS = ("ca.key", "ca.pem", "gateway.key", "gateway.pem", "intercept")


def share_keys(src: Path, dst: Path) -> None:
    """What an operator copies to a new replica: the CA, the server key and certificate,
    the interception CA (not the sessions, not the gateway id)."""
    dst.mkdir(mode=0o700)
    for name in SHARED_KEYS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        else:
            shutil.copy2(src / name, dst / name)


class Replica(World):
    def __init__(
        self,
        root: Path,
        name: str,
        store_url: str | None,
        keys_from: Path | None,
        *,
        max_requests: int,
        config_extra: str = "",
        proxy_port: int = 0,
    ) -> None:
        root.mkdir()
        self.name = name  # gateway.host_name: the "host" it stands for
        self.proxy_port = proxy_port  # [sandbox] proxy_port, when config_extra sets one
        store = f'store_url = "{store_url}"\n' if store_url else ""
        super().__init__(
            root,
            gateway_extra=f'{store}host_name = "{name}"\ndns_port = {free_port()}\n',
            config_extra=f"[sessions]\nmax_requests = {max_requests}\n{config_extra}",
        )
        if keys_from is not None:
            share_keys(keys_from, self.state_dir)


class Client:
    """One kept-alive TLS connection to one gateway, as the session's git would hold."""

    def __init__(self, gateway: World, bundle: Bundle) -> None:
        ctx = ssl.create_default_context(cafile=str(bundle.dir / "ca.pem"))
        ctx.load_cert_chain(bundle.dir / "client.pem", bundle.dir / "client.key")
        self.conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, context=ctx, timeout=10)

    def get(self, path: str = INFO_REFS) -> int:
        self.conn.request("GET", path, headers={"Git-Protocol": "version=2"})
        r = self.conn.getresponse()
        r.read()
        return r.status

    def close(self) -> None:
        self.conn.close()
