"""Debian's stock git through the gateway: clone, fetch, push, v2, shallow, SHA-256."""

from __future__ import annotations

from pathlib import Path

from tests.world import HOST, World


def _commit(world: World, repo: Path, name: str, content: str) -> None:
    (repo / name).write_text(content)
    world.git(None, "add", name, cwd=repo, check=True)
    world.git(None, "commit", "-qm", f"add {name}", cwd=repo, check=True)


def test_clone_fetch_push(world: World, tmp_path: Path) -> None:
    bare = world.make_repo("acme", "widgets")
    b = world.session(f"{HOST}/acme/widgets:write=agent/**,ff:main")
    work = tmp_path / "w"
    r = world.clone(b, "acme/widgets", work)
    assert r.returncode == 0, r.stderr
    assert (work / "README.md").exists()
    _commit(world, work, "a.txt", "hello\n")
    r = world.git(b, "push", "origin", "HEAD:main", cwd=work)
    assert r.returncode == 0, r.stderr
    head = world.git(None, "rev-parse", "HEAD", cwd=work, check=True).stdout.strip()
    upstream_head = world.git(None, "--git-dir", str(bare), "rev-parse", "main", check=True)
    assert upstream_head.stdout.strip() == head
    # A second clone fetches what the first pushed.
    other = tmp_path / "o"
    assert world.clone(b, "acme/widgets", other).returncode == 0
    _commit(world, other, "b.txt", "again\n")
    assert world.git(b, "push", "origin", "HEAD:main", cwd=other).returncode == 0
    r = world.git(b, "fetch", "origin", cwd=work)
    assert r.returncode == 0, r.stderr
    fetched = world.git(None, "rev-parse", "origin/main", cwd=work, check=True).stdout.strip()
    assert fetched == world.git(None, "rev-parse", "HEAD", cwd=other, check=True).stdout.strip()
    pushes = [
        e
        for e in world.audit_for(b.session_id)
        if e.get("service") == "git-receive-pack" and e.get("endpoint") == "rpc"
    ]
    assert pushes and all(e["status"] == 200 for e in pushes)
    assert any(
        d["ref"] == "refs/heads/main" and d["verdict"] == "allow"
        for e in pushes
        for d in e.get("ref_decisions", [])
    )


def test_protocol_v2_fetch_passes_git_protocol_to_upload_pack_only(
    world: World, tmp_path: Path
) -> None:
    world.make_repo("acme", "proto")
    b = world.session(f"{HOST}/acme/proto:write=agent/**,ff:main")
    before = len(world.upstream.requests)
    work = tmp_path / "w"
    r = world.git(b, "-c", "protocol.version=2", "clone", f"https://{HOST}/acme/proto", str(work))
    assert r.returncode == 0, r.stderr
    _commit(world, work, "x", "y")
    r = world.git(b, "-c", "protocol.version=2", "push", "origin", "HEAD:main", cwd=work)
    assert r.returncode == 0, r.stderr
    seen = world.upstream.requests[before:]
    upload = [q for q in seen if "git-upload-pack" in q.path + q.query]
    receive = [q for q in seen if "git-receive-pack" in q.path + q.query]
    assert upload and all(q.git_protocol == "version=2" for q in upload)
    assert receive and all(q.git_protocol is None for q in receive)


def test_shallow_clone(world: World, tmp_path: Path) -> None:
    bare = world.make_repo("acme", "deep")
    work = tmp_path / "full"
    b = world.session(f"{HOST}/acme/deep:write=agent/**,ff:main")
    assert world.clone(b, "acme/deep", work).returncode == 0
    for i in range(5):
        _commit(world, work, f"f{i}", str(i))
    assert world.git(b, "push", "origin", "HEAD:main", cwd=work).returncode == 0
    shallow = tmp_path / "shallow"
    r = world.clone(b, "acme/deep", shallow, "--depth", "1")
    assert r.returncode == 0, r.stderr
    count = world.git(None, "rev-list", "--count", "HEAD", cwd=shallow, check=True).stdout
    assert count.strip() == "1"
    assert (shallow / ".git" / "shallow").exists()
    assert bare.exists()


def test_sha256_repository(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "modern", object_format="sha256")
    b = world.session(f"{HOST}/acme/modern:write=agent/**,ff:main")
    work = tmp_path / "w"
    r = world.clone(b, "acme/modern", work)
    assert r.returncode == 0, r.stderr
    fmt = world.git(None, "rev-parse", "--show-object-format", cwd=work, check=True).stdout
    assert fmt.strip() == "sha256"
    _commit(world, work, "n", "new")
    r = world.git(b, "push", "origin", "HEAD:main", cwd=work)
    assert r.returncode == 0, r.stderr
    assert len(world.git(None, "rev-parse", "HEAD", cwd=work, check=True).stdout.strip()) == 64


def test_grant_names_are_case_insensitive_like_github(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "Mixed")
    b = world.session(f"{HOST}/ACME/mixed:read")
    r = world.git(b, "ls-remote", f"https://{HOST}/acme/Mixed")
    assert r.returncode == 0, r.stderr
    assert "refs/heads/main" in r.stdout
