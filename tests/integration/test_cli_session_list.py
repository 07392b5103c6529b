"""`airlock session list` against a real gateway: a table with ids cut to 12 (like docker),
whole ids with --no-trunc however narrow the terminal, the control API's records as JSON,
and the cut ids usable as they are (unique prefixes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.world import HOST, World


def airlock(world: World, *args: str, columns: int = 40) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "AIRLOCK_CONFIG": str(world.config)}
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _two_sessions(world: World) -> list[str]:
    ids = []
    for access in ("read", "write"):
        issued, _ = world.issue(f"{HOST}/cli/list:{access}")
        ids.append(issued["session"]["id"])
    return ids


def test_the_table_cuts_ids_to_12(world: World) -> None:
    ids = _two_sessions(world)
    r = airlock(world, "session", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["SESSION", "ID", "STATE"]
    for sid in ids:
        assert sid not in r.stdout
        row = [line for line in lines if line.startswith(sid[:12] + " ")]
        assert len(row) == 1, r.stdout
        assert f"{HOST}/cli/list:" in row[0]


def test_no_trunc_shows_whole_ids_in_a_narrow_terminal(world: World) -> None:
    ids = _two_sessions(world)
    r = airlock(world, "session", "list", "--no-trunc", columns=20)
    assert r.returncode == 0, r.stderr
    for sid in ids:
        row = [line for line in r.stdout.splitlines() if line.startswith(sid + " ")]
        assert len(row) == 1, r.stdout


def test_json_is_the_control_apis_sessions(world: World) -> None:
    ids = _two_sessions(world)
    r = airlock(world, "session", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert isinstance(listed, list)
    api = {s["id"]: s for s in world.control.list_sessions()}
    for sid in ids:
        (mine,) = [s for s in listed if s["id"] == sid]
        assert mine.keys() == api[sid].keys()
        assert mine["grants"] == api[sid]["grants"]


def test_a_cut_id_is_enough_for_show_and_revoke(world: World) -> None:
    sid = _two_sessions(world)[0]
    r = airlock(world, "session", "show", sid[:12])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == sid
    r = airlock(world, "session", "revoke", sid[:12])
    assert r.returncode == 0, r.stderr
    assert world.control.show(sid)["state"] == "revoked"


def test_an_ambiguous_or_unknown_prefix_is_one_line(world: World) -> None:
    _two_sessions(world)
    r = airlock(world, "session", "show", "s-")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "sessions; give more of the id" in r.stderr
    r = airlock(world, "session", "revoke", "s-zzzz")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no session 's-zzzz'" in r.stderr
