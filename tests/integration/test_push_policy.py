"""Push policy through the real gateway, with stock git: what a write grant may change.

Every refusal is checked three ways: git exits non-zero, git's own output shows airlock's
reason for the ref (``! [remote rejected] ... (airlock: ...)``) and the request id on a
``remote:`` line, and the upstream's refs are exactly what they were.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.testing.repos import git_env
from tests.rawhttp import RawResponse, client_context, get, send_raw
from tests.world import HOST, Bundle, World


@pytest.fixture(scope="module")
def pw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("push"))
    w.start()
    yield w
    w.stop()


def upstream_refs(w: World, repo: str) -> dict[str, str]:
    owner, name = repo.split("/")
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)"],
        cwd=w.repos / owner / f"{name}.git",
        env=git_env(w.home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def upstream_git(w: World, repo: str, *args: str) -> str:
    owner, name = repo.split("/")
    return subprocess.run(
        ["git", *args],
        cwd=w.repos / owner / f"{name}.git",
        env=git_env(w.home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


class Clone:
    def __init__(self, w: World, b: Bundle, repo: str, dest: Path) -> None:
        self.w, self.b, self.dir = w, b, dest
        r = w.clone(b, repo, dest)
        assert r.returncode == 0, r.stderr

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.w.git(self.b, *args, cwd=self.dir)

    def commit(self, message: str) -> None:
        (self.dir / "f.txt").write_text(message + "\n")
        assert self.git("add", "f.txt").returncode == 0
        assert self.git("commit", "-qm", message).returncode == 0


def _repo(w: World, name: str) -> str:
    w.make_repo("pp", name)
    # Another branch somebody else made.
    upstream_git(w, f"pp/{name}", "branch", "agent/theirs", "main")
    upstream_git(w, f"pp/{name}", "branch", "other", "main")
    return f"pp/{name}"


def _raw_push(w: World, c: Clone, repo: str, body: bytes) -> RawResponse:
    """A receive-pack request git would never send, with the clone's session certificate."""
    return send_raw(
        client_context(c.b.dir, w.state_dir / "ca.pem"),
        w.port,
        get(
            f"/git/{HOST}/{repo}/git-receive-pack",
            method="POST",
            headers={"Content-Type": "application/x-git-receive-pack-request"},
            body=body,
        ),
    )


def _refused(r: subprocess.CompletedProcess[str], ref: str, reason: str) -> None:
    assert r.returncode != 0, r.stderr
    assert f"! [remote rejected] {ref} (airlock: " in r.stderr, r.stderr
    assert f"(airlock: {reason}" in r.stderr, r.stderr
    assert "remote: airlock: push refused, nothing was changed (request id " in r.stderr, r.stderr


@pytest.fixture
def setup(pw: World, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Clone, str]:
    repo = _repo(pw, request.node.name.split("[")[0].removeprefix("test_")[:40].replace("_", "-"))
    b = pw.session(f"{HOST}/{repo}:write")
    return Clone(pw, b, repo, tmp_path / "c"), repo


def test_push_to_main_is_refused(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    c.commit("to main")
    r = c.git("push", "origin", "HEAD:main")
    _refused(r, "HEAD -> main", "main is outside this session's branches agent/**")
    assert upstream_refs(pw, repo) == before


def test_force_push_to_main_is_refused(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    c.git("commit", "--amend", "-qm", "rewritten")
    r = c.git("push", "-f", "origin", "HEAD:main")
    _refused(r, "HEAD -> main", "main is outside")
    assert upstream_refs(pw, repo) == before


def test_delete_of_another_branch_is_refused(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    r = c.git("push", "origin", "--delete", "agent/theirs")
    _refused(r, "agent/theirs", "may not delete agent/theirs: this session did not create it")
    assert upstream_refs(pw, repo) == before


def test_mirror_push_is_refused(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    c.git("branch", "agent/mine")
    r = c.git("push", "--mirror", "origin")
    assert r.returncode != 0
    assert "(airlock: refs/remotes/origin/HEAD is outside this session's branches" in r.stderr or (
        "(airlock: may not delete " in r.stderr
    ), r.stderr
    assert upstream_refs(pw, repo) == before  # not even agent/mine: refused whole


def test_tag_is_refused(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    c.git("tag", "v9")
    r = c.git("push", "origin", "v9")
    _refused(r, "v9 -> v9", "refs/tags/v9 is outside this session's branches agent/**")
    assert upstream_refs(pw, repo) == before


def test_push_certificate_is_not_advertised_and_refused(
    pw: World, setup: tuple[Clone, str]
) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    owner, name = repo.split("/")
    upstream_git(pw, repo, "config", "receive.certNonceSeed", "seed")  # upstream offers it
    # The advertisement reaching the client has no push-cert capability...
    r = send_raw(
        client_context(c.b.dir, pw.state_dir / "ca.pem"),
        pw.port,
        get(f"/git/{HOST}/{repo}/info/refs?service=git-receive-pack"),
    )
    assert r.status == 200 and b"report-status" in r.body
    assert b"push-cert" not in r.body
    # ...while the upstream's own does (so the control can fail).
    direct = subprocess.run(
        ["git", "receive-pack", "--advertise-refs", "."],
        cwd=pw.repos / owner / f"{name}.git",
        env=git_env(pw.home),
        capture_output=True,
        check=True,
    ).stdout
    assert b"push-cert=" in direct
    # git cannot sign a push, and a hand-made certificate is refused before the upstream.
    c.commit("signed")
    signed = c.git("push", "--signed", "origin", "HEAD:agent/signed")
    assert signed.returncode != 0
    assert "does not support --signed push" in signed.stderr, signed.stderr
    cert = b"push-cert\0report-status\n"
    body = b"%04x" % (len(cert) + 4) + cert + b"0000"
    raw = _raw_push(pw, c, repo, body)
    assert raw.status == 400
    assert upstream_refs(pw, repo) == before


def test_own_branch_created_force_pushed_and_deleted(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    c.commit("one")
    assert c.git("push", "origin", "HEAD:agent/x").returncode == 0
    first = upstream_refs(pw, repo)["refs/heads/agent/x"]
    c.git("commit", "--amend", "-qm", "one, rewritten")
    r = c.git("push", "-f", "origin", "HEAD:agent/x")
    assert r.returncode == 0, r.stderr
    second = upstream_refs(pw, repo)["refs/heads/agent/x"]
    assert second != first
    r = c.git("push", "origin", "--delete", "agent/x")
    assert r.returncode == 0, r.stderr
    assert "refs/heads/agent/x" not in upstream_refs(pw, repo)
    # Deleted, it is no longer the session's: a branch of that name made by someone else
    # later may not be touched.
    upstream_git(pw, repo, "branch", "agent/x", "main")
    before = upstream_refs(pw, repo)
    assert c.git("push", "origin", "--delete", "agent/x").returncode != 0
    assert upstream_refs(pw, repo) == before


def test_update_of_a_branch_it_did_not_create_is_refused(
    pw: World, setup: tuple[Clone, str]
) -> None:
    c, repo = setup
    before = upstream_refs(pw, repo)
    c.commit("on theirs")
    r = c.git("push", "origin", "HEAD:agent/theirs")
    _refused(
        r, "HEAD -> agent/theirs", "may not update agent/theirs: this session did not create it"
    )
    assert upstream_refs(pw, repo) == before


def test_a_create_the_upstream_rejects_gives_no_ownership(
    pw: World, setup: tuple[Clone, str]
) -> None:
    """A create (old = zero) of a ref that already exists fails upstream; the session must
    not then count that ref as its own (ownership comes from the upstream's report)."""
    c, repo = setup
    theirs = upstream_refs(pw, repo)["refs/heads/agent/theirs"]
    c.commit("mine")
    new = c.git("rev-parse", "HEAD").stdout.strip()
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs"],
        cwd=c.dir,
        input=f"{new}\n^{theirs}\n".encode(),
        capture_output=True,
        env=git_env(pw.home),
        check=True,
    ).stdout
    command = f"{'0' * 40} {new} refs/heads/agent/theirs\0report-status\n".encode()
    body = b"%04x" % (len(command) + 4) + command + b"0000" + pack
    raw = _raw_push(pw, c, repo, body)
    assert raw.status == 200
    assert b"ng refs/heads/agent/theirs" in raw.body  # the upstream refused the create
    assert upstream_refs(pw, repo)["refs/heads/agent/theirs"] == theirs
    r = c.git("push", "-f", "origin", "HEAD:agent/theirs")
    _refused(
        r, "HEAD -> agent/theirs", "may not update agent/theirs: this session did not create it"
    )
    assert upstream_refs(pw, repo)["refs/heads/agent/theirs"] == theirs


def test_fast_forward_of_an_updatable_branch(pw: World, tmp_path: Path) -> None:
    repo = _repo(pw, "ff")
    b = pw.session(f"{HOST}/{repo}:write=agent/**,ff:main")
    c = Clone(pw, b, repo, tmp_path / "c")
    c.commit("fast-forward 1")
    c.commit("fast-forward 2")
    r = c.git("push", "origin", "HEAD:main")
    assert r.returncode == 0, r.stderr
    assert upstream_refs(pw, repo)["refs/heads/main"] == c.git("rev-parse", "HEAD").stdout.strip()
    deadline = time.monotonic() + 5
    while not (lines := [e for e in pw.audit_for(b.session_id) if e.get("ref_decisions")]):
        assert time.monotonic() < deadline, "no audit line with ref decisions"
        time.sleep(0.02)
    line = lines[-1]
    assert line["ref_decisions"][0]["rule"] == "ff:main (fast-forward)"
    assert len(line["push_policy"]) == 16


def test_non_fast_forward_to_an_updatable_branch_is_refused(pw: World, tmp_path: Path) -> None:
    repo = _repo(pw, "nonff")
    b = pw.session(f"{HOST}/{repo}:write=agent/**,ff:main")
    c = Clone(pw, b, repo, tmp_path / "c")
    before = upstream_refs(pw, repo)
    c.git("commit", "--amend", "-qm", "rewritten history")
    r = c.git("push", "-f", "origin", "HEAD:main")
    _refused(r, "HEAD -> main", "main: not a fast-forward")
    assert upstream_refs(pw, repo) == before


def test_created_refs_survive_a_gateway_restart(pw: World, setup: tuple[Clone, str]) -> None:
    c, repo = setup
    c.commit("before restart")
    assert c.git("push", "origin", "HEAD:agent/durable").returncode == 0
    pw.stop_gateway()
    pw.start_gateway()
    c.git("commit", "--amend", "-qm", "after restart")
    r = c.git("push", "-f", "origin", "HEAD:agent/durable")
    assert r.returncode == 0, r.stderr
    stored = [s for s in pw.control.list_sessions() if s["id"] == c.b.session_id]
    assert stored and f"{HOST}/{repo} refs/heads/agent/durable" in stored[0]["created_refs"]
