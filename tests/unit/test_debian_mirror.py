"""The sandbox image's Debian mirror comes from this machine's apt sources, never the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock.host.images import debian_mirror


def _apt(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_DEBIAN_MIRROR", raising=False)
    apt = _apt(tmp_path)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.mirror.test/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.test/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror(apt) == "http://mirror.test/debian"


def test_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_DEBIAN_MIRROR", raising=False)
    apt = _apt(tmp_path)
    (apt / "sources.list").write_text(
        "# deb http://old.test/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://one.test/debian bookworm main\n"
    )
    assert debian_mirror(apt) == "http://one.test/debian"


def test_override_and_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apt = _apt(tmp_path)
    monkeypatch.delenv("AIRLOCK_DEBIAN_MIRROR", raising=False)
    assert debian_mirror(apt) == ""
    monkeypatch.setenv("AIRLOCK_DEBIAN_MIRROR", "http://override.test/debian")
    assert debian_mirror(apt) == "http://override.test/debian"
