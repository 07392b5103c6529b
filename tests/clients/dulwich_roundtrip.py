"""What a dulwich user does inside an airlock sandbox: mTLS with the bundle's client
certificate (a urllib3 PoolManager, since dulwich reads no ``http.sslCert``), the bundle's
gitconfig (``GIT_CONFIG_SYSTEM``) rewriting the plain GitHub URL to the gateway. Clone,
commit, push, clone again, fetch; one ``OK ...`` line per step, ``FAIL ...`` and exit 1 on
the first error. Only the standard library, urllib3 and dulwich:

    python3 dulwich_roundtrip.py BUNDLE_DIR URL WORK_DIR
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import urllib3
from dulwich import porcelain
from dulwich.client import get_transport_and_path
from dulwich.config import StackedConfig
from dulwich.refs import Ref
from dulwich.repo import Repo


def _via(pool: urllib3.PoolManager) -> dict[str, Any]:
    """dulwich porcelain's ``pool_manager`` (its ``**kwargs`` are typed too narrowly for one)."""
    return {"pool_manager": pool}


def _commit(repo: Path, name: str, text: str) -> bytes:
    (repo / name).write_text(text)
    porcelain.add(str(repo), [str(repo / name)])
    sha: bytes = porcelain.commit(
        str(repo),
        message=f"add {name} with dulwich".encode(),
        author=b"dulwich <d@sandbox.invalid>",
        committer=b"dulwich <d@sandbox.invalid>",
    )
    return sha


def main(argv: list[str]) -> int:
    bundle, url, work = Path(argv[1]), argv[2], Path(argv[3])
    pool = urllib3.PoolManager(
        cert_file=str(bundle / "client.pem"),
        key_file=str(bundle / "client.key"),
        ca_certs=str(bundle / "ca.pem"),
        cert_reqs="CERT_REQUIRED",
    )
    err = io.BytesIO()
    work.mkdir(parents=True, exist_ok=True)
    step = "clone"
    try:
        first = work / "a"
        porcelain.clone(
            url, str(first), config=StackedConfig.default(), **_via(pool), errstream=err
        )
        print("OK clone", flush=True)
        step = "push"
        pushed = _commit(first, "from-dulwich.txt", "pushed by dulwich\n")
        porcelain.push(str(first), url, "refs/heads/main", **_via(pool), errstream=err)
        print(f"OK push {pushed.decode()}", flush=True)
        step = "clone2"
        second = work / "b"
        porcelain.clone(
            url, str(second), config=StackedConfig.default(), **_via(pool), errstream=err
        )
        print(f"OK clone2 {(second / 'from-dulwich.txt').read_text().strip()}", flush=True)
        step = "fetch"
        again = _commit(second, "second.txt", "second\n")
        porcelain.push(str(second), url, "refs/heads/main", **_via(pool), errstream=err)
        with Repo(str(first)) as r:
            client, path = get_transport_and_path(
                url, config=r.get_config_stack(), pool_manager=pool
            )
            result = client.fetch(path, r)
        fetched = result.refs[Ref(b"refs/heads/main")]
        assert fetched is not None
        print(f"OK fetch {fetched.decode()} pushed={again.decode()}", flush=True)
    except Exception as exc:
        print(f"FAIL {step}: {type(exc).__name__}: {exc} {err.getvalue()[-300:]!r}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
