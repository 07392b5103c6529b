"""The audit log's one-pass check (a line with no credential marker and no live secret goes
out as rendered) writes exactly what redacting every field would: property-tested against
the field-by-field redaction it skips, with values built from the very pieces redaction
looks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.redact import redact_value
from airlock.gateway.audit import AuditLog

PLAIN = ["tok-live-0123456789abcdef"]
# Secrets JSON does not write verbatim: with one of these, every line is redacted by field.
ODD = ['we"ird\\secret', "s3cr\u00e9t-unicode"]
LIVE = PLAIN + ODD

_pieces = st.sampled_from(
    [
        "ghp_",
        "gho_",
        "ghs_",
        "GHP_",
        "github_pat_",
        "airlock_api_",
        "Authorization",
        "proxy-authorization: ",
        "https://",
        "user:pw@",
        ":",
        "=",
        " ",
        '"',
        "\\",
        "\n",
        "\u00e9",
        "a",
        "Z",
        "0" * 20,
        "_",
        "-",
        *LIVE,
    ]
)
_text = st.lists(_pieces, max_size=8).map("".join)
_value: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.integers() | st.booleans() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner),
    max_leaves=6,
)


def _lines(
    tmp_path: Path, name: str, fields: dict[str, Any], secrets: list[str] = PLAIN
) -> list[dict[str, Any]]:
    path = tmp_path / name
    path.unlink(missing_ok=True)
    log = AuditLog(path, lambda: secrets)
    log.event("probe", **fields)
    log.close()
    return [json.loads(line) for line in path.read_text().splitlines()]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["error", "target", "repo", "n", "nested"]), _value))
def test_the_one_pass_check_writes_what_field_by_field_redaction_writes(
    tmp_path_factory: Any, fields: dict[str, Any]
) -> None:
    tmp_path = tmp_path_factory.mktemp("audit")
    for secrets in (PLAIN, LIVE):
        (line,) = _lines(tmp_path, "audit.jsonl", fields, secrets)
        expected = {k: redact_value(v, secrets) for k, v in fields.items()}
        assert {k: line[k] for k in fields} == json.loads(json.dumps(expected))
        text = json.dumps(line, ensure_ascii=False)
        for secret in secrets:
            assert secret not in text


def test_a_clean_line_skips_the_field_by_field_pass(tmp_path: Path, monkeypatch: Any) -> None:
    """The point of the check: an ordinary git request line is not redacted field by field."""
    calls: list[object] = []

    def counting(value: Any, secrets: Any = ()) -> Any:
        calls.append(value)
        return redact_value(value, secrets)

    monkeypatch.setattr("airlock.gateway.audit.redact_value", counting)
    (line,) = _lines(
        tmp_path,
        "a.jsonl",
        {"session": "s-" + "a" * 32, "repo": "acme/tiny", "status": 200, "reason": "ok"},
    )
    assert line["repo"] == "acme/tiny" and calls == []
    _lines(tmp_path, "b.jsonl", {"error": "upstream said tok-live-0123456789abcdef"})
    assert calls, "a line holding a live secret must be redacted field by field"
