"""What one git request did, as the audit log records it: one typed record per request,
filled in as the request is decided and relayed, written once at its end."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["GitRecord"]

_ALWAYS = frozenset({"session", "status", "reason"})


@dataclass
class GitRecord:
    session: str | None = None  # the session id (or the one a refused request claimed)
    auth: str | None = None  # "certificate" or "basic"
    container: str | None = None
    host: str | None = None
    repo: str | None = None  # owner/repo as the client spelled it
    service: str | None = None
    endpoint: str | None = None
    target: str | None = None  # the raw target of a request that did not parse
    status: int | None = None  # the answer's status
    reason: str | None = None  # "ok", or why it was refused or failed
    protocol: int | None = None  # the Git-Protocol version of a fetch
    upload_pack: dict[str, object] | None = None  # what a fetch asked for
    inflated_bytes: int | None = None
    push_policy: str | None = None  # digest of the push rules that decided a push
    ref_decisions: list[dict[str, str]] | None = None
    push_refused: str | None = None  # a refusal of a push as a whole
    upstream_status: int | None = None
    redirect_to: str | None = None
    upstream_updated: list[str] | None = None  # the refs the upstream reported updated
    upstream_report: str | None = None  # "unreadable" when its status report was not

    def audit_fields(self) -> dict[str, Any]:
        """The fields for the audit line: those set, plus session, status and reason."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name in _ALWAYS:
                out[f.name] = value
        return out
