"""Session lifecycle: a pure state machine, time passed in, no I/O.

A session is created by the host side, optionally waits for activation (the host has
verified the container that will use it), serves authenticated requests, and ends when it
is revoked, expires (idle or absolute), or reaches a usage cap. Use extends the idle
deadline (:func:`counts_as_use` is the one rule: a git request, a CONNECT tunnel's traffic or a
plain-HTTP proxy request, each only when it was let through every check and did what it was
let through for); nothing extends the absolute one, and nothing revives an ended session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airlock.core.grants import Access, Grant


class SessionState(StrEnum):
    PENDING = "pending"  # created, waiting for the host to bind it to a verified container
    ACTIVE = "active"
    REVOKED = "revoked"


class Refusal(StrEnum):
    """Why a request on a session is refused; goes to the audit log, never to the client."""

    UNKNOWN_SESSION = "unknown_session"
    WRONG_CERTIFICATE = "wrong_certificate"
    NOT_ACTIVATED = "not_activated"
    REVOKED = "revoked"
    EXPIRED = "expired"
    IDLE_TIMEOUT = "idle_timeout"
    REQUEST_CAP = "request_cap"
    BYTE_CAP = "byte_cap"
    WRONG_SOURCE = "wrong_source"
    WRONG_NETWORK = "wrong_network"
    # The client certificate is outside its validity period (the TLS layer lets such a
    # certificate through so that its session's end can be told; see gateway/server.py).
    CERTIFICATE_NOT_CURRENT = "certificate_not_current"


def ended_as(refusal: str | None) -> str | None:
    """``"revoked"`` or ``"expired"`` when ``refusal`` says the session has ended for good
    (what the client is told: git's message, the proxy's 407), else None."""
    if refusal == Refusal.REVOKED:
        return "revoked"
    if refusal in (Refusal.EXPIRED, Refusal.IDLE_TIMEOUT):
        return "expired"
    return None


@dataclass(frozen=True)
class Binding:
    """Where a session may be used from, as verified by the host through the Docker API."""

    container_id: str
    network: str
    address: str  # the sandbox's own address on its network
    gateway_address: str | None = None  # the gateway's address on that network


@dataclass(frozen=True)
class Limits:
    idle_timeout: int  # seconds
    lifetime: int  # seconds, absolute
    max_requests: int
    max_bytes: int
    max_pushes: int = 1000


@dataclass(frozen=True)
class Session:
    id: str
    grants: tuple[Grant, ...]
    created_at: float
    expires_at: float
    idle_timeout: int
    last_used: float
    max_requests: int
    max_bytes: int
    state: SessionState = SessionState.ACTIVE
    bind_ip: str | None = None
    binding: Binding | None = None
    allow_hosts: tuple[str, ...] = ()
    cert_fingerprint: str | None = None  # sha256 hex of the one client certificate accepted
    proxy_token_sha256: str | None = None  # the egress proxy's per-session token, hashed
    # The git password for HTTP Basic on the session's own sandbox network (clients that
    # cannot present a client certificate: libgit2, cargo), hashed; see core/gitauth.py.
    git_secret_sha256: str | None = None
    requests: int = 0
    bytes: int = 0
    revoked_reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Refs this session created upstream, as "HOST/owner/repo refs/heads/x" (repository key
    # lowercased): it may update (force) and delete these, nothing else it did not create.
    created_refs: tuple[str, ...] = ()
    pushes: int = 0
    max_pushes: int = 1000
    # The GitHub API token the sandbox holds (GH_TOKEN), hashed: worthless anywhere but
    # through this session's own proxy connection (gateway/api/).
    api_token_sha256: str | None = None
    # Pull requests this session opened, as "HOST/owner/repo#NUMBER NODE_ID" (repository key
    # lowercased): the only ones it may update, comment on and ask reviews for.
    pulls: tuple[str, ...] = ()
    # CA rotation (gateway/rotation.py): the client certificate last issued (PEM), so the
    # gateway can re-issue one for the same key; the one it replaced stays accepted until
    # ``previous_cert_until`` (the end of the rotation's overlap).
    client_cert_pem: str | None = None
    previous_cert_fingerprint: str | None = None
    previous_cert_until: float = 0.0
    # The host whose gateway created the session, as "HOST_NAME/GATEWAY_ID": with a shared
    # store (gateway/shared_store.py) every gateway lists every session, and the sandbox
    # behind it belongs to that host (its supervise, its network).
    served_by: str | None = None

    @property
    def idle_deadline(self) -> float:
        return min(self.last_used + self.idle_timeout, self.expires_at)

    def access(self, host: str, owner: str, repo: str) -> Access | None:
        from airlock.core.grants import access_for

        return access_for(self.grants, host, owner, repo)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grants"] = [str(g) for g in self.grants]
        return d

    @staticmethod
    def from_json(d: dict[str, Any], upstream_hosts: frozenset[str] | None = None) -> Session:
        d = dict(d)
        grants = [Grant.from_stored(g) for g in d.pop("grants")]
        binding = d.pop("binding")
        return Session(
            grants=tuple(grants),
            binding=Binding(**binding) if binding else None,
            state=SessionState(d.pop("state")),
            allow_hosts=tuple(d.pop("allow_hosts")),
            created_refs=tuple(d.pop("created_refs", ())),
            pulls=tuple(d.pop("pulls", ())),
            **d,
        )


def new_session_id() -> str:
    return "s-" + secrets.token_hex(16)


def create_session(
    *,
    grants: tuple[Grant, ...],
    now: float,
    limits: Limits,
    bind_ip: str | None = None,
    require_activation: bool = False,
    allow_hosts: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    served_by: str | None = None,
) -> Session:
    return Session(
        id=new_session_id(),
        grants=grants,
        created_at=now,
        expires_at=now + limits.lifetime,
        idle_timeout=limits.idle_timeout,
        last_used=now,
        max_requests=limits.max_requests,
        max_bytes=limits.max_bytes,
        max_pushes=limits.max_pushes,
        state=SessionState.PENDING if require_activation else SessionState.ACTIVE,
        bind_ip=bind_ip,
        allow_hosts=allow_hosts,
        labels=dict(labels or {}),
        served_by=served_by,
    )


def check_usable(
    s: Session,
    *,
    now: float,
    source_ip: str,
    cert_fingerprint: str | None,
    local_ip: str | None = None,
) -> Refusal | None:
    """Return why ``s`` may not serve a request now from ``source_ip``, or None if it may."""
    if s.state is SessionState.REVOKED:
        return Refusal.REVOKED
    if s.cert_fingerprint is not None and cert_fingerprint != s.cert_fingerprint:
        overlap = s.previous_cert_fingerprint is not None and now < s.previous_cert_until
        if not (overlap and cert_fingerprint == s.previous_cert_fingerprint):
            return Refusal.WRONG_CERTIFICATE
    if now >= s.expires_at:
        return Refusal.EXPIRED
    if now >= s.last_used + s.idle_timeout:
        return Refusal.IDLE_TIMEOUT
    if s.state is SessionState.PENDING:
        return Refusal.NOT_ACTIVATED
    if s.bind_ip is not None and source_ip != s.bind_ip:
        return Refusal.WRONG_SOURCE
    if s.binding is not None:
        if source_ip != s.binding.address:
            return Refusal.WRONG_SOURCE
        # The connection must arrive on the gateway's address on the sandbox's own network.
        gw = s.binding.gateway_address
        if gw is not None and local_ip != gw:
            return Refusal.WRONG_NETWORK
    if s.requests >= s.max_requests:
        return Refusal.REQUEST_CAP
    if s.bytes >= s.max_bytes:
        return Refusal.BYTE_CAP
    return None


@dataclass(frozen=True)
class Use:
    """One request, or one stretch of an open tunnel, as the idle timeout sees it.

    ``admitted``: authenticated as this session and let through every check (certificate or
    token, binding, grants or allowlist, caps and rate limits). ``succeeded``: it did what it
    was let through for: a git request answered whole with the upstream's 200; a CONNECT
    tunnel's stretch that moved bytes and was not stopped by a check (a second ClientHello,
    the byte budget); a plain-HTTP request whose answer was relayed whole. ``began`` is when
    it was admitted (a tunnel stretch: its first byte since the last look), ``ended`` when
    it finished (a tunnel stretch: its last byte); wall-clock seconds.
    """

    admitted: bool
    succeeded: bool
    began: float
    ended: float


def counts_as_use(s: Session, use: Use) -> bool:
    """Whether ``use`` extends ``s``'s idle deadline: the one rule for every way in.

    Only something admitted that succeeded counts; a refusal of any kind never does. It
    counts only for an active session that was still live when the use began: a use never
    revives a session that had ended (revoked, idle deadline or lifetime passed), however
    late it is reported. A request or tunnel in flight from a live moment is use up to its
    end (a clone longer than the idle timeout keeps its session), capped by the lifetime.
    """
    return (
        use.admitted
        and use.succeeded
        and s.state is SessionState.ACTIVE
        and use.began <= use.ended
        and use.began < s.idle_deadline
    )


def record_use(s: Session, use: Use) -> Session:
    """``s`` with its idle deadline moved by ``use`` when it counts (never moved back)."""
    if not counts_as_use(s, use):
        return s
    at = min(use.ended, s.expires_at)
    if at <= s.last_used:
        return s
    return dataclasses.replace(s, last_used=at)


def begin_request(s: Session) -> Session:
    """Count a request against the cap; callers check :func:`check_usable` first."""
    return dataclasses.replace(s, requests=s.requests + 1)


def finish_request(
    s: Session, *, now: float, nbytes: int, success: bool, began: float | None = None
) -> Session:
    """Account a git request's bytes; it extends the idle deadline as :func:`counts_as_use`
    says (``began``: when it was admitted; None: ``now``)."""
    use = Use(admitted=True, succeeded=success, began=now if began is None else began, ended=now)
    # One copy of the session per request, not two: the bytes and record_use's idle move.
    last_used = s.last_used
    if counts_as_use(s, use):
        last_used = max(last_used, min(use.ended, s.expires_at))
    return dataclasses.replace(s, bytes=s.bytes + nbytes, last_used=last_used)


def owned_refs(s: Session, repo_key: str) -> frozenset[str]:
    """The refs of one repository (``HOST/owner/repo``, lowercased) this session created."""
    prefix = repo_key + " "
    return frozenset(e[len(prefix) :] for e in s.created_refs if e.startswith(prefix))


def begin_push(s: Session) -> Session:
    """Count a push against ``max_pushes``; callers check :func:`pushes_left` first."""
    return dataclasses.replace(s, pushes=s.pushes + 1)


def pushes_left(s: Session) -> int:
    return max(0, s.max_pushes - s.pushes)


def record_push(
    s: Session, repo_key: str, created: frozenset[str], deleted: frozenset[str]
) -> Session:
    """What the upstream confirmed of a push: refs it created now belong to the session,
    refs it deleted no longer do."""
    prefix = repo_key + " "
    keep = [e for e in s.created_refs if not (e.startswith(prefix) and e[len(prefix) :] in deleted)]
    keep += [prefix + r for r in sorted(created) if prefix + r not in keep]
    return dataclasses.replace(s, created_refs=tuple(keep))


def activate(s: Session, binding: Binding) -> Session:
    if s.state is not SessionState.PENDING:
        raise ValueError(f"session {s.id} is {s.state.value}, not pending")
    return dataclasses.replace(s, state=SessionState.ACTIVE, binding=binding)


def revoke(s: Session, reason: str) -> Session:
    if s.state is SessionState.REVOKED:
        return s
    return dataclasses.replace(s, state=SessionState.REVOKED, revoked_reason=reason)


def hash_proxy_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def proxy_token_matches(s: Session, token: str) -> bool:
    if s.proxy_token_sha256 is None:
        return False
    return hmac.compare_digest(s.proxy_token_sha256, hash_proxy_token(token))


def with_proxy_token(s: Session, token: str) -> Session:
    return dataclasses.replace(s, proxy_token_sha256=hash_proxy_token(token))


def git_secret_matches(s: Session, secret: str) -> bool:
    """Constant-time: does ``secret`` match the session's git password?"""
    if s.git_secret_sha256 is None:
        return False
    return hmac.compare_digest(s.git_secret_sha256, hash_proxy_token(secret))


def with_git_secret(s: Session, secret: str) -> Session:
    return dataclasses.replace(s, git_secret_sha256=hash_proxy_token(secret))


def with_api_token(s: Session, token: str) -> Session:
    return dataclasses.replace(s, api_token_sha256=hash_proxy_token(token))


def api_token_matches(s: Session, token: str) -> bool:
    if s.api_token_sha256 is None:
        return False
    return hmac.compare_digest(s.api_token_sha256, hash_proxy_token(token))


def pull_entry(repo_key: str, number: int, node_id: str) -> str:
    return f"{repo_key}#{number} {node_id}"


def parse_pull_entry(entry: str) -> tuple[str, int, str]:
    """``(repo key, number, node id)`` of one :attr:`Session.pulls` entry."""
    head, _, node_id = entry.partition(" ")
    repo_key, _, number = head.rpartition("#")
    return repo_key, int(number), node_id


def record_pull(s: Session, repo_key: str, number: int, node_id: str) -> Session:
    """The session after it opened a pull request (kept once, in order)."""
    entry = pull_entry(repo_key, number, node_id)
    if entry in s.pulls:
        return s
    return dataclasses.replace(s, pulls=(*s.pulls, entry))


def renew_certificate(s: Session, fingerprint: str) -> Session:
    return dataclasses.replace(s, cert_fingerprint=fingerprint)


def apply_renewal(current: Session | None, fingerprint: str, *, now: float) -> Session:
    """The CURRENT session with a renewed certificate; ValueError if it may not be renewed.

    A renewal is prepared (the CSR read and signed) from one read of the session and applied
    to another: only this function, on the session as it is now, decides. A revoke or an
    end that landed in between wins, and nothing else of the session (counters, last use)
    is taken from the earlier read.
    """
    if current is None:
        raise ValueError("session no longer exists")
    if is_finished(current, now):
        raise ValueError("session has ended; create a new one")
    return renew_certificate(current, fingerprint)


def is_finished(s: Session, now: float) -> bool:
    """True when no request can ever succeed again (for cleanup)."""
    return s.state is SessionState.REVOKED or now >= s.expires_at or now >= s.idle_deadline
