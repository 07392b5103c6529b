"""Rows as a table or JSON (session list, ps): ids cut to 12 unless --no-trunc, nothing cut
to the terminal's width."""

from __future__ import annotations

import json
from typing import Any

import click
from click.testing import CliRunner

from airlock.cli.common import Column, format_option, no_trunc_option, print_rows, table_lines

LONG_ID = "s-" + "0123456789abcdef" * 2
ROWS: list[dict[str, Any]] = [
    {"id": LONG_ID, "state": "active", "grants": ["github.com/a/b:write", "github.com/a/c:read"]},
    {"id": "s-short", "state": "revoked", "grants": []},
]
COLUMNS = (
    Column("session id", lambda r: r["id"], is_id=True),
    Column("state", lambda r: r["state"]),
    Column("grants", lambda r: r["grants"]),
)


def test_ids_are_cut_to_12_like_docker() -> None:
    lines = table_lines(ROWS, COLUMNS)
    assert lines[0].split() == ["SESSION", "ID", "STATE", "GRANTS"]
    assert lines[1].startswith(LONG_ID[:12] + " ")
    assert LONG_ID not in "\n".join(lines)
    assert "github.com/a/b:write,github.com/a/c:read" in lines[1]


def test_no_trunc_keeps_ids_whole_and_columns_aligned() -> None:
    lines = table_lines(ROWS, COLUMNS, no_trunc=True)
    assert lines[1].startswith(LONG_ID + "   ")
    state_at = lines[0].index("STATE")
    assert lines[1][state_at:].startswith("active")
    assert lines[2][state_at:].startswith("revoked")


def test_a_cell_never_spans_lines() -> None:
    rows = [{"id": "x", "state": "a\nb", "grants": []}]
    lines = table_lines(rows, COLUMNS)
    assert len(lines) == 2
    assert "a b" in lines[1]


@click.command()
@format_option
@no_trunc_option
def _show(fmt: str, no_trunc: bool) -> None:
    print_rows(ROWS, COLUMNS, fmt, no_trunc)


def test_a_narrow_terminal_cuts_nothing() -> None:
    result = CliRunner().invoke(_show, ["--no-trunc"], env={"COLUMNS": "20"}, terminal_width=20)
    assert result.exit_code == 0
    first = result.output.splitlines()[1]
    assert first.startswith(LONG_ID)
    assert first.rstrip().endswith("github.com/a/b:write,github.com/a/c:read")


def test_json_is_the_rows_whole() -> None:
    result = CliRunner().invoke(_show, ["--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == ROWS


def test_an_unknown_format_is_refused() -> None:
    result = CliRunner().invoke(_show, ["--format", "yaml"])
    assert result.exit_code == 2
