"""Audit log: JSON lines through structlog, with every string redacted before it is written."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from airlock.core.redact import redact_value


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
        self._log = structlog.wrap_logger(
            structlog.PrintLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                self._redact,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )

    def _redact(
        self, _l: Any, _m: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        secrets = [s for s in self._secrets() if s]
        return {k: redact_value(v, secrets) for k, v in event.items()}

    def event(self, event: str, **fields: Any) -> None:
        self._log.msg(event, **fields)

    def close(self) -> None:
        if self._owned:
            self._file.close()
