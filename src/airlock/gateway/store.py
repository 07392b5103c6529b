"""Session store: SQLite in the state directory, so sessions survive a gateway restart.

The gateway is one asyncio process. Sessions are read from memory; because no ``await``
separates a check from its update, cap accounting is atomic with respect to concurrent
requests. State changes (create, activate, renew, revoke) are written to SQLite at once;
usage counters (``durable=False``) are written in one transaction at most ``FLUSH_DELAY``
later, and at close, so a busy session does not cost two SQLite writes per request. A crash
can lose at most that much usage accounting, never a revocation.

Lookups on a request's path are by index, never a scan, so their cost does not grow with the
number of sessions kept (ended ones stay in the store): by id; by proxy-token digest (each new
proxy connection and each tunnel's recheck, gateway/server.py ``_authenticate_proxy``); and
whether a session not revoked is bound to an address. The indexes are kept on ``put`` and
``delete``; a ``put`` that changes none of the indexed fields (usage counters) leaves them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from airlock.core.session import Session, SessionState

FLUSH_DELAY = 0.5  # seconds


def _keys(s: Session) -> tuple[str | None, str | None]:
    """What ``s`` is indexed under: its proxy-token digest, and its binding's address
    while it is not revoked."""
    live = s.binding is not None and s.state is not SessionState.REVOKED
    return s.proxy_token_sha256, s.binding.address if live and s.binding else None


class SessionStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT)")
        self._cache: dict[str, Session] = {}
        # Ordered sets (dicts of None): the ids under each key, in the order they came.
        self._by_token: dict[str, dict[str, None]] = {}
        self._live_at: dict[str, dict[str, None]] = {}
        self._dirty: set[str] = set()
        self._flush_pending = False
        for sid, body in self._db.execute("SELECT id, body FROM sessions"):
            s = Session.from_json(json.loads(body))
            self._cache[sid] = s
            self._index(sid, _keys(s))

    def _index(self, sid: str, keys: tuple[str | None, str | None]) -> None:
        token, address = keys
        if token is not None:
            self._by_token.setdefault(token, {})[sid] = None
        if address is not None:
            self._live_at.setdefault(address, {})[sid] = None

    def _unindex(self, sid: str, keys: tuple[str | None, str | None]) -> None:
        for index, key in zip((self._by_token, self._live_at), keys, strict=True):
            if key is None:
                continue
            ids = index.get(key)
            if ids is not None:
                ids.pop(sid, None)
                if not ids:
                    del index[key]

    def get(self, session_id: str) -> Session | None:
        return self._cache.get(session_id)

    def by_proxy_token(self, digest: str) -> list[Session]:
        """The sessions (any state) whose ``proxy_token_sha256`` is ``digest``."""
        ids = self._by_token.get(digest)
        return [self._cache[sid] for sid in ids] if ids else []

    def live_bound_to(self, address: str) -> bool:
        """Whether a session not revoked (expired ones count) is bound to ``address``."""
        return address in self._live_at

    def put(self, s: Session, *, durable: bool = True) -> None:
        old = self._cache.get(s.id)
        keys = _keys(s)
        if old is None:
            self._index(s.id, keys)
        else:
            old_keys = _keys(old)
            if old_keys != keys:
                self._unindex(s.id, old_keys)
                self._index(s.id, keys)
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
        old = self._cache.pop(session_id, None)
        if old is not None:
            self._unindex(session_id, _keys(old))
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Iterator[Session]:
        # A copy: admin scans (list, revoke-all, rotation, gauges) put while they iterate.
        # None of them runs per request; a request looks up by index.
        return iter(list(self._cache.values()))

    def close(self) -> None:
        self.flush()
        self._db.close()
