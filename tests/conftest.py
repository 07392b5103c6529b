"""Shared fixtures: a real git upstream over HTTPS and a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.world import World

# CI machines are small and busy: a slow example is not a failure (no deadline), and the
# example counts stay as each test sets them.
settings.register_profile(
    "airlock", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("airlock")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"))
    w.start()
    yield w
    w.stop()
