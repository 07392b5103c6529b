"""Where the CLI looks for its config: --config, $AIRLOCK_CONFIG, the user's own file (not
for root), /etc/airlock/airlock.toml; never the current directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from airlock.cli.common import (
    SYSTEM_CONFIG,
    ConfigNotFound,
    config_search,
    resolve_config_path,
    user_config_path,
)

USER = 1000


def _exists(*present: Path) -> Callable[[Path], bool]:
    return lambda p: Path(p) in set(present)


def test_config_option_wins_over_everything() -> None:
    given = Path("/srv/a.toml")
    env = {"AIRLOCK_CONFIG": "/srv/b.toml", "HOME": "/home/u"}
    assert config_search(given, env, USER) == ([given], "--config")
    assert resolve_config_path(given, env, USER, _exists(given, SYSTEM_CONFIG)) == given


def test_the_environment_variable_comes_next() -> None:
    env = {"AIRLOCK_CONFIG": "/srv/b.toml", "HOME": "/home/u"}
    assert config_search(None, env, 0) == ([Path("/srv/b.toml")], "$AIRLOCK_CONFIG")


def test_an_explicit_choice_that_is_missing_is_never_passed_over() -> None:
    env = {"AIRLOCK_CONFIG": "/srv/missing.toml"}
    with pytest.raises(ConfigNotFound, match=r"/srv/missing.toml \(from \$AIRLOCK_CONFIG\)"):
        resolve_config_path(None, env, 0, _exists(SYSTEM_CONFIG))
    with pytest.raises(ConfigNotFound, match=r"/srv/x.toml \(from --config\) does not exist"):
        resolve_config_path(Path("/srv/x.toml"), {}, 0, _exists(SYSTEM_CONFIG))


def test_a_user_has_a_file_of_their_own_before_the_system_one() -> None:
    env = {"HOME": "/home/u"}
    mine = Path("/home/u/.config/airlock/airlock.toml")
    assert config_search(None, env, USER) == ([mine, SYSTEM_CONFIG], None)
    assert resolve_config_path(None, env, USER, _exists(mine, SYSTEM_CONFIG)) == mine
    assert resolve_config_path(None, env, USER, _exists(SYSTEM_CONFIG)) == SYSTEM_CONFIG
    xdg = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}
    assert user_config_path(xdg) == Path("/cfg/airlock/airlock.toml")


def test_root_never_reads_a_file_from_a_home_or_xdg_directory() -> None:
    """sudo may keep the user's HOME or XDG_CONFIG_HOME: root must not read their file."""
    env = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/home/u/.config"}
    mine = Path("/home/u/.config/airlock/airlock.toml")
    assert config_search(None, env, 0) == ([SYSTEM_CONFIG], None)
    with pytest.raises(ConfigNotFound):
        resolve_config_path(None, env, 0, _exists(mine))


def test_relative_home_or_xdg_values_are_ignored() -> None:
    assert user_config_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/airlock/airlock.toml"
    )
    assert user_config_path({"HOME": "relative"}) is None
    assert user_config_path({}) is None


def test_never_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "airlock.toml").write_text("[gateway]\n")
    monkeypatch.chdir(tmp_path)
    candidates, _ = config_search(None, {"HOME": str(tmp_path / "home")}, USER)
    assert all(p.is_absolute() for p in candidates)
    with pytest.raises(ConfigNotFound):
        resolve_config_path(None, {"HOME": str(tmp_path / "home")}, USER, _exists())


def test_the_missing_message_names_every_place_it_looked() -> None:
    with pytest.raises(ConfigNotFound) as info:
        resolve_config_path(None, {"HOME": "/home/u"}, USER, _exists())
    message = str(info.value)
    assert "\n" not in message
    assert "/home/u/.config/airlock/airlock.toml" in message
    assert str(SYSTEM_CONFIG) in message
    assert "--config FILE" in message
    assert "AIRLOCK_CONFIG" in message
