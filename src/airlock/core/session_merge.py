"""How several gateways change one session without losing each other's changes.

Each gateway holds a copy of a session and changes it as before (core/session.py). What it
writes to the shared store is not its copy but the *delta* from the copy it last read, and
the store merges deltas field by field, so that no order of writes loses one:

- ``state`` only moves forward (pending -> active -> revoked): a revocation is never undone
  by a gateway that had not heard of it yet; ``revoked_reason``: the first one stays.
- ``requests``, ``bytes``, ``pushes``: counters; each delta adds, so a budget is counted
  once across gateways.
- ``last_used``: the latest wins (the idle deadline never moves back).
- ``created_refs``, ``pulls``: sets; a delta adds and removes members.
- everything else (grants, limits, binding, certificates, token digests): the *body*, written
  whole, and only by the control operations that change it (create, activate, renew, CA
  rotation). Two of those on one session at the same moment on two gateways: the later
  body wins. That is the one last-writer-wins part, and none of its fields is a budget or a
  revocation.

:func:`merge` is the store's merge written in Python: gateway/shared_store.py's Lua script
does the same in Redis, and the tests hold one to the other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airlock.core.session import Session, SessionState

STATE_RANK = {SessionState.PENDING: 0, SessionState.ACTIVE: 1, SessionState.REVOKED: 2}
COUNTERS = ("requests", "bytes", "pushes")
SETS = ("created_refs", "pulls")
MERGED = ("state", "revoked_reason", "last_used", *COUNTERS, *SETS)
BODY = tuple(f.name for f in dataclasses.fields(Session) if f.name not in MERGED)


def body_of(s: Session) -> str:
    """The session's fields that are not merged, as canonical JSON."""
    d = s.to_json()
    for name in MERGED:
        d.pop(name)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SessionDelta:
    """What one gateway changed in a session since it last read it."""

    session_id: str
    body: str | None = None  # the new body, when it changed (or the session is new)
    state: SessionState | None = None
    revoked_reason: str | None = None
    requests: int = 0
    bytes: int = 0
    pushes: int = 0
    last_used: float | None = None
    refs_added: tuple[str, ...] = ()
    refs_removed: tuple[str, ...] = ()
    pulls_added: tuple[str, ...] = ()
    pulls_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == SessionDelta(self.session_id)

    @property
    def others_should_hear(self) -> bool:
        """Whether other gateways must reload the session at once: anything but counters
        and the idle clock (those they get with the next reload, or the next count)."""
        return (
            self.body is not None
            or self.state is not None
            or bool(self.refs_added or self.refs_removed or self.pulls_added)
            or bool(self.pulls_removed)
        )

    def to_wire(self) -> str:
        return json.dumps(
            {
                "id": self.session_id,
                "body": self.body or "",
                "state": self.state.value if self.state is not None else "",
                "rank": STATE_RANK[self.state] if self.state is not None else -1,
                "reason": self.revoked_reason or "",
                "requests": self.requests,
                "bytes": self.bytes,
                "pushes": self.pushes,
                "last_used": repr(self.last_used) if self.last_used is not None else "",
                "refs_add": list(self.refs_added),
                "refs_del": list(self.refs_removed),
                "pulls_add": list(self.pulls_added),
                "pulls_del": list(self.pulls_removed),
                "publish": self.others_should_hear,
            }
        )


def _set_change(old: Iterable[str], new: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    a, b = set(old), set(new)
    return tuple(sorted(b - a)), tuple(sorted(a - b))


def delta(base: Session | None, new: Session) -> SessionDelta:
    """What turns ``base`` (the copy last read from the store; None: a new session) into
    ``new``, as a delta the store merges."""
    if base is None:
        return SessionDelta(
            new.id,
            body=body_of(new),
            state=new.state,
            revoked_reason=new.revoked_reason,
            requests=new.requests,
            bytes=new.bytes,
            pushes=new.pushes,
            last_used=new.last_used,
            refs_added=tuple(sorted(set(new.created_refs))),
            pulls_added=tuple(sorted(set(new.pulls))),
        )
    # Field by field, not by JSON: this runs for every request the gateway counts.
    body_changed = any(getattr(base, name) != getattr(new, name) for name in BODY)
    refs_added, refs_removed = _set_change(base.created_refs, new.created_refs)
    pulls_added, pulls_removed = _set_change(base.pulls, new.pulls)
    return SessionDelta(
        new.id,
        body=body_of(new) if body_changed else None,
        state=new.state if new.state is not base.state else None,
        revoked_reason=(new.revoked_reason if new.revoked_reason != base.revoked_reason else None),
        requests=new.requests - base.requests,
        bytes=new.bytes - base.bytes,
        pushes=new.pushes - base.pushes,
        last_used=new.last_used if new.last_used > base.last_used else None,
        refs_added=refs_added,
        refs_removed=refs_removed,
        pulls_added=pulls_added,
        pulls_removed=pulls_removed,
    )


def with_scalars(s: Session, fields: Mapping[str, str]) -> Session:
    """``s`` with the merged scalar fields as the store holds them now (the body and the
    sets as ``s`` has them): what a request's count returns, cheaper than a whole reload."""
    return dataclasses.replace(
        s,
        state=SessionState(fields["state"]),
        revoked_reason=fields.get("revoked_reason") or None,
        last_used=float(fields.get("last_used") or "0"),
        requests=int(fields.get("requests") or "0"),
        bytes=int(fields.get("bytes") or "0"),
        pushes=int(fields.get("pushes") or "0"),
    )


def from_stored(fields: Mapping[str, str], refs: Iterable[str], pulls: Iterable[str]) -> Session:
    """A session from what the store holds: the body, the merged fields and the two sets."""
    d: dict[str, Any] = json.loads(fields["body"])
    d["state"] = fields["state"]
    d["revoked_reason"] = fields.get("revoked_reason") or None
    d["last_used"] = float(fields.get("last_used", "0"))
    for name in COUNTERS:
        d[name] = int(fields.get(name, "0"))
    d["created_refs"] = sorted(refs)
    d["pulls"] = sorted(pulls)
    return Session.from_json(d)


def to_stored(s: Session) -> tuple[dict[str, str], list[str], list[str]]:
    """The inverse of :func:`from_stored` (what a merge leaves for ``s``)."""
    fields = {
        "body": body_of(s),
        "state": s.state.value,
        "last_used": repr(s.last_used),
        **{name: str(getattr(s, name)) for name in COUNTERS},
    }
    if s.revoked_reason is not None:
        fields["revoked_reason"] = s.revoked_reason
    return fields, sorted(set(s.created_refs)), sorted(set(s.pulls))


def merge(stored: Session | None, d: SessionDelta) -> Session | None:
    """The store's merge, in Python: ``stored`` with ``d`` applied (None: the session is
    unknown and ``d`` brings no body, so there is nothing to merge into)."""
    if stored is None:
        if d.body is None:
            return None
        fields: dict[str, str] = {"body": d.body, "state": "pending", "last_used": "0"}
        refs: set[str] = set()
        pulls: set[str] = set()
    else:
        f, r, p = to_stored(stored)
        fields, refs, pulls = dict(f), set(r), set(p)
        if d.body is not None:
            fields["body"] = d.body
    if d.state is not None and STATE_RANK[d.state] > STATE_RANK[SessionState(fields["state"])]:
        fields["state"] = d.state.value
    if d.revoked_reason and "revoked_reason" not in fields:
        fields["revoked_reason"] = d.revoked_reason
    for name in COUNTERS:
        fields[name] = str(int(fields.get(name, "0")) + getattr(d, name))
    if d.last_used is not None and d.last_used > float(fields["last_used"]):
        fields["last_used"] = repr(d.last_used)
    refs = (refs | set(d.refs_added)) - set(d.refs_removed)
    pulls = (pulls | set(d.pulls_added)) - set(d.pulls_removed)
    return from_stored(fields, refs, pulls)
