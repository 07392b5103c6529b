"""`airlock exec -u`: only a numeric, non-root uid, refused before anything else is asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from airlock.cli import main


@pytest.mark.parametrize(
    ("user", "words"),
    [
        ("0", "never runs anything as root"),
        ("00", "never runs anything as root"),
        ("0:0", "never runs anything as root"),
        ("000:1000", "never runs anything as root"),
        ("+0", "numeric"),
        ("-0", "numeric"),
        (" 0", "numeric"),
        ("root", "numeric"),
        ("nobody", "numeric"),
        ("1000:root", "numeric"),
    ],
)
def test_exec_refuses_root_in_every_spelling(tmp_path: Path, user: str, words: str) -> None:
    config = tmp_path / "missing.toml"  # never read: the refusal comes first
    result = CliRunner().invoke(
        main, ["exec", "--config", str(config), "-u", user, "box", "id"], catch_exceptions=False
    )
    assert result.exit_code == 125, result.output
    assert words in result.output and "Traceback" not in result.output
