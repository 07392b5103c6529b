"""Session store: SQLite in the state directory, so sessions survive a gateway restart.

The gateway is one asyncio process. Sessions are read from memory and written through to
SQLite; because no ``await`` separates a check from its update, cap accounting is atomic
with respect to concurrent requests.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from airlock.core.session import Session


class SessionStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT)")
        self._cache: dict[str, Session] = {}
        for sid, body in self._db.execute("SELECT id, body FROM sessions"):
            self._cache[sid] = Session.from_json(json.loads(body))

    def get(self, session_id: str) -> Session | None:
        return self._cache.get(session_id)

    def put(self, s: Session) -> None:
        self._cache[s.id] = s
        self._db.execute(
            "INSERT OR REPLACE INTO sessions (id, body) VALUES (?, ?)",
            (s.id, json.dumps(s.to_json())),
        )

    def delete(self, session_id: str) -> None:
        self._cache.pop(session_id, None)
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._cache.values()))

    def close(self) -> None:
        self._db.close()
