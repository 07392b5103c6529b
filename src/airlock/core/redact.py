"""Redaction of secrets before anything is logged or shown."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Shapes of GitHub credentials (classic, OAuth, App installation, user-to-server, fine-grained).
GITHUB_TOKEN_RE = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,})\b")
# airlock's own per-session API tokens (GH_TOKEN in a sandbox): worthless elsewhere, but
# still a session's credential, so never logged either.
AIRLOCK_API_TOKEN_RE = re.compile(r"\bairlock_api_[A-Za-z0-9_-]{16,}")
_AUTH_HEADER_RE = re.compile(r"(?i)\b(authorization|proxy-authorization)\s*[:=]\s*\S+(?:\s+\S+)?")
_URL_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
REDACTED = "[REDACTED]"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove known secrets and anything shaped like a credential from ``text``."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    text = GITHUB_TOKEN_RE.sub(REDACTED, text)
    text = AIRLOCK_API_TOKEN_RE.sub(REDACTED, text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)}: {REDACTED}", text)
    return _URL_USERINFO_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Redact strings inside nested dicts, lists and tuples."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {k: redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v, secrets) for v in value]
    return value
