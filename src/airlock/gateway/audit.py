"""Audit log: JSON lines through structlog, with every string redacted before it is written.

Redaction is checked on the rendered line, once: every credential shape that
``core.redact`` removes needs an ASCII marker (``ghp_``, ``github_pat_``, ``airlock_api_``,
``authorization``, ``://``) that JSON leaves as it is, and every live secret is looked for
as written. A line with neither is already clean and goes out as rendered (nearly every
git request line); any other is redacted field by field, as before, and rendered again.
The per-field pass on every line was about 15 % of the gateway's CPU per request.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from airlock.core.redact import redact_value

# A necessary condition for any core.redact pattern to match somewhere in a line: one of
# these in its lowercased text (substring tests: a case-blind regex alternation took 30 us).
_MARKERS = (
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "airlock_api_"),
    *("authorization", "://"),
)
# A secret JSON writes verbatim (printable ASCII but the quote and backslash) can be looked
# for in the rendered line; any other is always redacted field by field.
_VERBATIM = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")


class AuditLog:
    def __init__(self, path: Path | None, secrets: Callable[[], Iterable[str]]) -> None:
        self._secrets = secrets
        self._file: TextIO
        if path is None:
            self._file = sys.stdout
            self._owned = False
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")
            self._owned = True
        # structlog's processors, called directly: a bound logger's context copy, processor
        # loop and printing lock were a third of the line's cost, for a context never used.
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        self._json = structlog.processors.JSONRenderer(sort_keys=False)

    def _render(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        secrets = [s for s in self._secrets() if s]
        line = cast(str, self._json(logger, name, event))
        lowered = line.lower()
        if (
            not any(m in lowered for m in _MARKERS)
            and all(_VERBATIM.fullmatch(s) for s in secrets)
            and not any(s in line for s in secrets)
        ):
            return line
        redacted = {k: redact_value(v, secrets) for k, v in event.items()}
        return cast(str, self._json(logger, name, redacted))

    def event(self, event: str, **fields: Any) -> None:
        fields["event"] = event  # the key order of structlog's lines: fields, event, timestamp
        line = self._render(None, "msg", self._stamp(None, "msg", fields))
        # One write per line (line-buffered): a crash loses no line already written.
        self._file.write(line + "\n")
        if not self._owned:
            self._file.flush()  # stdout under a service manager is block-buffered

    def close(self) -> None:
        if self._owned:
            self._file.close()
