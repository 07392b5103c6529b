"""The session store: state changes durable at once, counters batched, nothing lost at close."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from airlock.core import session as lc
from airlock.core.grants import Access, Grant
from airlock.gateway.store import FLUSH_DELAY, SessionStore

G = (Grant("github.com", "acme", "repo", Access.READ),)


def _session() -> lc.Session:
    return lc.create_session(grants=G, now=0.0, limits=lc.Limits(100, 1000, 10, 1000))


def test_durable_puts_are_on_disk_at_once(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    store = SessionStore(db)
    s = _session()
    store.put(s)
    store.put(lc.revoke(s, "test"))
    # A second reader (as after a crash) sees the revocation without any close.
    other = SessionStore(db)
    got = other.get(s.id)
    assert got is not None and got.state is lc.SessionState.REVOKED
    other.close()
    store.close()


def test_counters_are_batched_and_flushed(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"

    async def run() -> None:
        store = SessionStore(db)
        s = _session()
        store.put(s)
        store.put(dataclasses.replace(s, requests=7), durable=False)
        peek = SessionStore(db)
        assert peek.get(s.id) is not None and peek.get(s.id).requests == 0  # type: ignore[union-attr]
        peek.close()
        await asyncio.sleep(FLUSH_DELAY + 0.2)
        peek = SessionStore(db)
        assert peek.get(s.id).requests == 7  # type: ignore[union-attr]
        peek.close()
        store.put(dataclasses.replace(s, requests=9), durable=False)
        store.close()  # flushes what is pending
        assert SessionStore(db).get(s.id).requests == 9  # type: ignore[union-attr]

    asyncio.run(run())
