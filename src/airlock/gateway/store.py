"""Session store: SQLite in the state directory, so sessions survive a gateway restart.

The gateway is one asyncio process. Sessions are read from memory (gateway/session_index.py);
because no ``await`` separates a check from its update, cap accounting is atomic with respect
to concurrent requests. State changes (create, activate, renew, revoke) are written to SQLite
at once; usage counters (``durable=False``) are written in one transaction at most
``FLUSH_DELAY`` later, and at close, so a busy session does not cost two SQLite writes per
request. A crash can lose at most that much usage accounting, never a revocation.

Several gateways sharing their sessions use gateway/shared_store.py instead, behind the same
methods.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from airlock.core import session as lifecycle
from airlock.core.session import Session
from airlock.gateway.session_index import SessionIndex

FLUSH_DELAY = 0.5  # seconds


class Store(Protocol):
    """What the gateway asks of its sessions' store: this module's, or the shared one."""

    @property
    def available(self) -> bool: ...
    def get(self, session_id: str) -> Session | None: ...
    def on_end(self, fn: Callable[[str | None], None]) -> None: ...
    def by_proxy_token(self, digest: str) -> list[Session]: ...
    def live_bound_to(self, address: str) -> bool: ...
    def begin_request(self, s: Session) -> bool: ...
    def hold_pull(self, s: Session, cap: int) -> str | None: ...
    def release_pull(self, s: Session, token: str) -> None: ...
    def put(self, s: Session, *, durable: bool = True) -> None: ...
    def flush(self) -> None: ...
    def delete(self, session_id: str) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Session]: ...
    async def run(self) -> None: ...
    def close(self) -> None: ...


class SessionStore:
    # Always: the file is local. The shared store's flag drops while Redis is unreachable.
    available = True

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT)")
        self._cache = SessionIndex()
        self._dirty: set[str] = set()
        self._flush_pending = False
        for _sid, body in self._db.execute("SELECT id, body FROM sessions"):
            self._cache.set(Session.from_json(json.loads(body)))

    def on_end(self, fn: Callable[[str | None], None]) -> None:
        """Call ``fn`` with each session that turns revoked (None: every session)."""
        self._cache.on_end.append(fn)

    def get(self, session_id: str) -> Session | None:
        return self._cache.get(session_id)

    def by_proxy_token(self, digest: str) -> list[Session]:
        """The sessions (any state) whose ``proxy_token_sha256`` is ``digest``."""
        return self._cache.by_proxy_token(digest)

    def live_bound_to(self, address: str) -> bool:
        """Whether a session not revoked (expired ones count) is bound to ``address``."""
        return self._cache.live_bound_to(address)

    def begin_request(self, s: Session) -> bool:
        """Count one request of ``s`` against its cap. The caller checked the cap with no
        await since, so here the count cannot overshoot: always True."""
        self.put(lifecycle.begin_request(s), durable=False)
        return True

    def hold_pull(self, s: Session, cap: int) -> str | None:
        """One gateway: the API relay's per-session lock already makes creates one at a
        time, and its decision counts the pulls recorded. Always a slot."""
        return "local"

    def release_pull(self, s: Session, token: str) -> None:
        pass

    def put(self, s: Session, *, durable: bool = True) -> None:
        self._cache.set(s)
        self._dirty.add(s.id)
        if durable:
            self.flush()
            return
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_pending = True
            loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write every changed session in one transaction."""
        self._flush_pending = False
        rows = []
        for sid in self._dirty:
            s = self._cache.get(sid)
            if s is not None:
                rows.append((sid, json.dumps(s.to_json())))
        self._dirty.clear()
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO sessions (id, body) VALUES (?, ?)", rows)

    def delete(self, session_id: str) -> None:
        self._cache.pop(session_id)
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._cache)

    async def run(self) -> None:
        """Nothing to watch: one gateway owns the file (the shared store's watcher runs here)."""

    def close(self) -> None:
        self.flush()
        self._db.close()
