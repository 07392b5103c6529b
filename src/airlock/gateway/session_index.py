"""The gateway's sessions in memory, with the indexes a request looks them up by.

Both stores keep one (gateway/store.py: SQLite on one host; gateway/shared_store.py: Redis
shared by several gateways). Lookups on a request's path are by index, never a scan, so
their cost does not grow with the number of sessions kept (ended ones stay): by id; by
proxy-token digest (each new proxy connection and each tunnel's recheck, gateway/server.py
``_authenticate_proxy``); and whether a session not revoked is bound to an address. The
indexes change on ``set`` and ``pop``; a ``set`` that changes none of the indexed fields
(usage counters) leaves them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from airlock.core.session import Session, SessionState

_Keys = tuple[str | None, str | None]


def _keys(s: Session) -> _Keys:
    """What ``s`` is indexed under: its proxy-token digest, and its binding's address
    while it is not revoked."""
    live = s.binding is not None and s.state is not SessionState.REVOKED
    return s.proxy_token_sha256, s.binding.address if live and s.binding else None


class SessionIndex:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        # Ordered sets (dicts of None): the ids under each key, in the order they came.
        self._by_token: dict[str, dict[str, None]] = {}
        self._live_at: dict[str, dict[str, None]] = {}
        # Told of each session that turns revoked here, whoever revoked it (this gateway, or
        # another one through the shared store), and None when the store can vouch for no
        # session at all: the egress proxy ends those tunnels at once.
        self.on_end: list[Callable[[str | None], None]] = []

    def ended(self, session_id: str | None) -> None:
        for fn in self.on_end:
            fn(session_id)

    def _index(self, sid: str, keys: _Keys) -> None:
        token, address = keys
        if token is not None:
            self._by_token.setdefault(token, {})[sid] = None
        if address is not None:
            self._live_at.setdefault(address, {})[sid] = None

    def _unindex(self, sid: str, keys: _Keys) -> None:
        for index, key in zip((self._by_token, self._live_at), keys, strict=True):
            if key is None:
                continue
            ids = index.get(key)
            if ids is not None:
                ids.pop(sid, None)
                if not ids:
                    del index[key]

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def by_proxy_token(self, digest: str) -> list[Session]:
        """The sessions (any state) whose ``proxy_token_sha256`` is ``digest``."""
        ids = self._by_token.get(digest)
        return [self._by_id[sid] for sid in ids] if ids else []

    def live_bound_to(self, address: str) -> bool:
        """Whether a session not revoked (expired ones count) is bound to ``address``."""
        return address in self._live_at

    def set(self, s: Session) -> None:
        old = self._by_id.get(s.id)
        keys = _keys(s)
        if old is None:
            self._index(s.id, keys)
        else:
            old_keys = _keys(old)
            if old_keys != keys:
                self._unindex(s.id, old_keys)
                self._index(s.id, keys)
        self._by_id[s.id] = s
        if s.state is SessionState.REVOKED and (old is None or old.state is not s.state):
            self.ended(s.id)

    def pop(self, session_id: str) -> Session | None:
        old = self._by_id.pop(session_id, None)
        if old is not None:
            self._unindex(session_id, _keys(old))
        return old

    def ids(self) -> list[str]:
        return list(self._by_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        # A copy: admin scans (list, revoke-all, rotation, gauges) put while they iterate.
        # None of them runs per request; a request looks up by index.
        return iter(list(self._by_id.values()))
