"""Shared fixtures: a real git upstream over HTTPS and a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.world import World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"))
    w.start()
    yield w
    w.stop()
