"""The audit log writes JSON lines and never the live token, whatever a caller passes it."""

from __future__ import annotations

import json
from pathlib import Path

from airlock.gateway.audit import AuditLog


def test_audit_log_redacts_live_secrets_and_token_shapes(tmp_path: Path) -> None:
    live = "not-shaped-like-github-0123456789"
    log = AuditLog(tmp_path / "audit.jsonl", lambda: [live])
    log.event(
        "git_request",
        error=f"upstream said {live}",
        nested={"h": ["ghu_" + "q" * 36]},
        header="Authorization: Basic abc",
    )
    log.close()
    text = (tmp_path / "audit.jsonl").read_text()
    assert live not in text and "ghu_" not in text and "Basic abc" not in text
    line = json.loads(text)
    assert line["event"] == "git_request" and "timestamp" in line
