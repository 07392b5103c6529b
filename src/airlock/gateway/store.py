"""Session store: SQLite in the state directory, so sessions survive a gateway restart.

The gateway is one asyncio process. Sessions are read from memory; because no ``await``
separates a check from its update, cap accounting is atomic with respect to concurrent
requests. State changes (create, activate, renew, revoke) are written to SQLite at once;
usage counters (``durable=False``) are written in one transaction at most ``FLUSH_DELAY``
later, and at close, so a busy session does not cost two SQLite writes per request. A crash
can lose at most that much usage accounting, never a revocation.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from airlock.core.session import Session

FLUSH_DELAY = 0.5  # seconds


class SessionStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT)")
        self._cache: dict[str, Session] = {}
        self._dirty: set[str] = set()
        self._flush_pending = False
        for sid, body in self._db.execute("SELECT id, body FROM sessions"):
            self._cache[sid] = Session.from_json(json.loads(body))

    def get(self, session_id: str) -> Session | None:
        return self._cache.get(session_id)

    def put(self, s: Session, *, durable: bool = True) -> None:
        self._cache[s.id] = s
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
        rows = [
            (sid, json.dumps(self._cache[sid].to_json()))
            for sid in self._dirty
            if sid in self._cache
        ]
        self._dirty.clear()
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO sessions (id, body) VALUES (?, ?)", rows)

    def delete(self, session_id: str) -> None:
        self._cache.pop(session_id, None)
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._cache.values()))

    def close(self) -> None:
        self.flush()
        self._db.close()
