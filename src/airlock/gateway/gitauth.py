"""Which session a git request belongs to, and by which way in. No I/O: the session lookup,
the back-off and the time are passed in.

Two ways in:

* **mTLS** (the default, and the only one on the host listener, whose TLS context requires a
  client certificate): the certificate names the session (its URI SAN) and
  :func:`~airlock.core.session.check_usable` then accepts that one certificate only.
* **HTTP Basic** (sandbox listeners only, for clients that cannot present a client
  certificate: libgit2, pygit2, cargo): username = session id, password = the session's git
  secret (``git_password``, returned once by the control API). Accepted only for a session
  bound to a sandbox (a host session never), with the secret matching, from the sandbox's own
  address, arriving on the gateway's address on that sandbox's network. So the secret is
  worthless anywhere but where the session's client certificate also works.

A certificate always wins: when one is presented, an ``Authorization`` header is ignored.
A request with neither is answered 401 with a Basic challenge (git and libgit2 send
credentials only after one); that is not a failure. Wrong Basic credentials (any of the
checks above) count against the source's authentication back-off, like failed TLS
handshakes, and while the source is backed off every Basic attempt is refused unread.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from airlock.core import session as lifecycle
from airlock.core.backoff import AuthBackoff
from airlock.core.session import Refusal, Session
from airlock.gateway.pki import cert_fingerprint, certificate_current, session_id_from_cert

CHALLENGE = 'Basic realm="airlock"'
_SESSION_ID = re.compile(r"^s-[0-9a-f]{32}$")
_MAX_HEADER = 1024


class Method(StrEnum):
    MTLS = "mtls"
    BASIC = "basic"


@dataclass(frozen=True)
class Identified:
    session_id: str
    method: Method
    cert_der: bytes | None  # the verified client certificate (mTLS); None for Basic


@dataclass(frozen=True)
class Refused:
    status: int  # 401 (with CHALLENGE), 403 or 429
    reason: str  # for the audit log, never for the client
    message: str
    claimed: str | None = None  # the session id a Basic attempt named, when well-formed
    retry_after: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        h = {"WWW-Authenticate": CHALLENGE} if self.status == 401 else {}
        if self.retry_after is not None:
            h["Retry-After"] = str(self.retry_after)
        return h


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:password)`` -> (user, password); None otherwise."""
    if header is None or len(header) > _MAX_HEADER:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_refusal(
    s: Session | None, password: str, *, source_ip: str, local_ip: str | None
) -> str | None:
    """Why Basic with ``password`` may not name ``s`` on this connection, or None."""
    if s is None:
        return "basic_unknown_session"
    binding = s.binding
    # Host sessions (and sessions not yet activated) have no sandbox binding: never Basic.
    if binding is None or binding.gateway_address is None:
        return "basic_not_sandbox_session"
    if not lifecycle.git_secret_matches(s, password):
        return "basic_wrong_secret"
    if source_ip != binding.address:
        return "basic_wrong_source"
    if local_ip != binding.gateway_address:
        return "basic_wrong_network"
    return None


def identify(
    cert_der: bytes | None,
    authorization: str | None,
    *,
    source_ip: str,
    local_ip: str | None,
    lookup: Callable[[str], Session | None],
    backoff: AuthBackoff | None,
    now: float,
) -> Identified | Refused:
    """The session of one request and how it proved it, or why there is none."""
    if cert_der:
        session_id = session_id_from_cert(cert_der)
        if session_id is None:
            return Refused(403, "no_session_certificate", "forbidden")
        return Identified(session_id, Method.MTLS, cert_der)
    credentials = parse_basic(authorization)
    if credentials is None:
        reason = "no_credentials" if authorization is None else "bad_authorization"
        return Refused(401, reason, "authentication required")
    user, password = credentials
    claimed = user if _SESSION_ID.match(user) else None
    if backoff is not None:
        wait = backoff.blocked(source_ip, now)
        if wait is not None:
            return Refused(
                429, "auth_backoff", "too many failed attempts", claimed, max(1, round(wait))
            )
    refusal = basic_refusal(lookup(user), password, source_ip=source_ip, local_ip=local_ip)
    if refusal is not None:
        if backoff is not None:
            backoff.failure(source_ip, now)
        return Refused(401, refusal, "authentication failed", claimed)
    if backoff is not None:
        backoff.success(source_ip)
    return Identified(user, Method.BASIC, None)


def usable(
    s: Session,
    cert_der: bytes | None,
    *,
    now: float,
    source_ip: str,
    local_ip: str | None,
) -> Refusal | str | None:
    """:func:`check_usable` for a session :func:`identify` named (again after any await).

    ``cert_der`` None means the session was named by Basic: its certificate is not asked
    for, and it must (still) be a sandbox session used from its own address and network.
    A certificate outside its validity period is refused here (the TLS layer does not check
    the time, so that an ended session can be told so): a session's certificate ends with
    the session, so that is normally the session's own ``expired``.
    """
    if cert_der is None:
        binding = s.binding
        if binding is None or binding.gateway_address is None:
            return "basic_not_sandbox_session"
        if source_ip != binding.address or local_ip != binding.gateway_address:
            return "basic_wrong_source"
        fingerprint = s.cert_fingerprint
    else:
        fingerprint = cert_fingerprint(cert_der)
    refusal = lifecycle.check_usable(
        s, now=now, source_ip=source_ip, cert_fingerprint=fingerprint, local_ip=local_ip
    )
    if refusal is None and cert_der is not None and not certificate_current(cert_der, now):
        return Refusal.CERTIFICATE_NOT_CURRENT
    return refusal
