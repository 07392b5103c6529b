"""Conformance: real repository shapes x the ways git uses them, gateway versus direct.

Every case runs the same git twice: once directly against the upstream (``git
http-backend`` over HTTPS, the token in an ``Authorization`` header) and once through the
gateway with a session bundle. Both must succeed and leave identical results: refs, object
set, shallow boundary, HEAD and checkout, ``git fsck`` clean (or, for ``ls-remote``, the
same output). Each case also checks the thing it names (depth, filter, lazy fetch, push
options reaching the upstream's hooks, ...), on both sides.

Shapes are built offline by :mod:`airlock.testing.shapes` once per test session; cases that
push get private copies. Timings of the git commands of each case (not the inspection) go,
one line per case, to ``$AIRLOCK_MEASUREMENTS`` when set, and the whole matrix is written
there as a markdown table (and to the terminal) when the module finishes::

    AIRLOCK_MEASUREMENTS=/tmp/m.txt .venv/bin/pytest tests/integration/test_conformance.py

The direct side runs first, then the gateway side (the gateway side sees a warm page cache).
"""

from __future__ import annotations

import difflib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airlock.testing.repos import git_env
from airlock.testing.shapes import (
    SHAPE_NAMES,
    Shape,
    add_branches,
    build_shape,
    copy_repo,
    install,
    install_push_options_hook,
)
from airlock.testing.upstream import basic_auth_header
from tests.world import HOST, TOKEN, Bundle, World

OWNER = "conf"
Obs = dict[str, str]


# --- routes: the same git, direct or through the gateway --------------------------------


class GitFailed(Exception):
    def __init__(self, side: str, args: tuple[str, ...], r: subprocess.CompletedProcess[str]):
        self.side = side
        self.stderr = r.stderr
        super().__init__(f"[{side}] git {' '.join(args)} exited {r.returncode}:\n{r.stderr}")

    @property
    def summary(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        return (fatal or lines or ["(no stderr)"])[0][:120]


def direct_gitconfig(w: World, path: Path) -> Path:
    """Git config for talking to the upstream directly: ``https://github.com/`` is rewritten
    to the upstream's URL, trusted with its CA, and every request carries the token the
    gateway would attach. The protocol policy matches the bundle's (https only)."""
    base = f"{w.upstream.url}/"
    path.write_text(
        f'[url "{base}"]\n'
        f"\tinsteadOf = https://{HOST}/\n"
        f'[http "{base}"]\n'
        f"\tsslCAInfo = {w.tls.ca_cert}\n"
        f"\textraHeader = Authorization: {basic_auth_header(TOKEN)}\n"
        "[credential]\n\thelper =\n"
        "[protocol]\n\tallow = never\n"
        '[protocol "https"]\n\tallow = always\n'
    )
    return path


@dataclass
class Side:
    """One route to the upstream. ``git`` runs (and times) commands that may use the network."""

    name: str  # "direct" or "gateway"
    w: World
    bundle: Bundle | None  # the gateway side's session
    config: Path | None  # the direct side's git config
    names: dict[str, str] = field(default_factory=dict)  # logical repo -> upstream repo name
    elapsed: float = 0.0

    def repo(self, logical: str) -> str:
        return self.names.get(logical, logical)

    def url(self, logical: str) -> str:
        return f"https://{HOST}/{OWNER}/{self.repo(logical)}"

    def try_git(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {"GIT_CONFIG_GLOBAL": str(self.config)} if self.config else None
        t0 = time.monotonic()
        try:
            return self.w.git(self.bundle, *args, cwd=cwd, env=env, timeout=300)
        finally:
            self.elapsed += time.monotonic() - t0

    def git(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        r = self.try_git(*args, cwd=cwd)
        if r.returncode != 0:
            raise GitFailed(self.name, args, r)
        return r

    def upload_pack_posts(self) -> int:
        """Fetch requests (upload-pack POSTs) this side has made so far, as its route saw
        them: the gateway's audit log for the session, or the upstream's request log."""
        if self.bundle is not None:
            return sum(
                1
                for e in self.w.audit_for(self.bundle.session_id)
                if e.get("service") == "git-upload-pack" and e.get("endpoint") == "rpc"
            )
        return sum(
            1
            for q in self.w.upstream.requests
            if q.method == "POST" and q.path.endswith("/git-upload-pack")
        )

    def mark(self) -> int:
        return len(self.w.upstream.requests)

    def upload_pack_protocols(self, since: int) -> set[str | None]:
        """The Git-Protocol headers of upload-pack requests that reached the upstream."""
        return {
            q.git_protocol
            for q in self.w.upstream.requests[since:]
            if "git-upload-pack" in q.path + "?" + q.query
        }


def local(
    w: World, *args: str, cwd: Path | None = None, check: bool = True, files: bool = False
) -> str:
    """Git with no network at all (inspection must not lazily fetch, or reach anywhere);
    ``files`` allows the local ``file`` transport (a clone of a path)."""
    r = w.git(
        None,
        "-c",
        "protocol.allow=never",
        "-c",
        f"protocol.file.allow={'always' if files else 'never'}",
        *args,
        cwd=cwd,
        env={"GIT_CONFIG_GLOBAL": os.devnull},
    )
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln]


def snapshot(w: World, repo: Path, prefix: str = "") -> Obs:
    """Everything a clone's outcome is judged by; equal snapshots mean identical clones."""
    git_dir = Path(local(w, "rev-parse", "--absolute-git-dir", cwd=repo).strip())
    bare = local(w, "rev-parse", "--is-bare-repository", cwd=repo).strip() == "true"
    shallow = git_dir / "shallow"
    fsck = w.git(
        None,
        "-c",
        "protocol.allow=never",
        "fsck",
        "--no-progress",
        "--no-dangling",
        cwd=repo,
        env={"GIT_CONFIG_GLOBAL": os.devnull},
    )
    obs = {
        "object-format": local(w, "rev-parse", "--show-object-format", cwd=repo),
        "refs": local(
            w,
            "for-each-ref",
            "--format=%(objectname) %(objecttype) %(refname) %(symref)",
            cwd=repo,
        ),
        "HEAD": local(w, "rev-parse", "--verify", "-q", "HEAD", cwd=repo, check=False)
        + local(w, "symbolic-ref", "-q", "HEAD", cwd=repo, check=False),
        "objects": "\n".join(
            sorted(lines(local(w, "cat-file", "--batch-all-objects", "--batch-check", cwd=repo)))
        ),
        "shallow": "\n".join(sorted(lines(shallow.read_text()))) if shallow.exists() else "",
        "partial": local(
            w,
            "config",
            "--get-regexp",
            r"^remote\.origin\.(promisor|partialclonefilter)$",
            cwd=repo,
            check=False,
        ),
        "fsck": f"rc={fsck.returncode}\n{fsck.stdout}{fsck.stderr}",
    }
    if not bare:
        obs["index"] = local(w, "ls-files", "-s", cwd=repo)
        obs["status"] = local(w, "status", "--porcelain", cwd=repo)
    assert fsck.returncode == 0 and not (fsck.stdout + fsck.stderr).strip(), (
        f"git fsck in {repo}: {obs['fsck']}"
    )
    if not bare:
        assert obs["status"] == "", f"dirty checkout in {repo}: {obs['status']}"
    return {prefix + k: v for k, v in obs.items()}


def count(w: World, repo: Path, rev: str = "HEAD") -> int:
    return int(local(w, "rev-list", "--count", rev, cwd=repo))


# --- the cases ----------------------------------------------------------------------------


@dataclass
class Ctx:
    w: World
    shape: Shape
    upstream: dict[str, Path]  # logical repo -> the bare repository this side talks to

    @property
    def main(self) -> str:
        return self.shape.main

    def up(self, *args: str, repo: str | None = None) -> str:
        """Git in the upstream's bare repository (what the server holds)."""
        return local(self.w, f"--git-dir={self.upstream[repo or self.main]}", *args)

    def up_rev(self, rev: str) -> str:
        return self.up("rev-parse", f"{rev}^{{commit}}").strip()


WayFn = Callable[[Ctx, Side, Path], Obs]


def _clone_protocol(version: int) -> WayFn:
    def run(c: Ctx, side: Side, dest: Path) -> Obs:
        mark = side.mark()
        side.git("-c", f"protocol.version={version}", "clone", "-q", side.url(c.main), str(dest))
        seen = side.upload_pack_protocols(mark)
        wanted: set[str | None] = {None} if version == 0 else {f"version={version}"}
        assert seen == wanted, f"upload-pack requests carried Git-Protocol {seen}, not {wanted}"
        obs = snapshot(c.w, dest)
        assert local(c.w, "rev-parse", "HEAD", cwd=dest).strip() == c.up_rev("main")
        tracking = lines(
            local(c.w, "for-each-ref", "--format=%(refname)", "refs/remotes/", cwd=dest)
        )
        heads = lines(c.up("for-each-ref", "--format=%(refname)", "refs/heads/"))
        assert sorted(tracking) == sorted(
            ["refs/remotes/origin/HEAD"]
            + [h.replace("refs/heads/", "refs/remotes/origin/", 1) for h in heads]
        ), "every upstream branch is a remote-tracking ref"
        return {"protocol": repr(sorted(map(str, seen))), **obs}

    return run


def _shallow_deepen(c: Ctx, side: Side, dest: Path) -> Obs:
    side.git("clone", "-q", "--depth", "1", side.url(c.main), str(dest))
    assert count(c.w, dest) == 1
    s1 = snapshot(c.w, dest, "depth1:")
    side.git("fetch", "-q", "--deepen", "5", cwd=dest)
    assert count(c.w, dest) == 6
    s2 = snapshot(c.w, dest, "deepen5:")
    side.git("fetch", "-q", "--unshallow", cwd=dest)
    assert count(c.w, dest) == c.shape.main_commits
    s3 = snapshot(c.w, dest, "unshallow:")
    assert s1["depth1:shallow"] and s2["deepen5:shallow"] and not s3["unshallow:shallow"]
    return {**s1, **s2, **s3}


def _shallow_since(c: Ctx, side: Side, dest: Path) -> Obs:
    side.git("clone", "-q", f"--shallow-since={c.shape.shallow_since}", side.url(c.main), str(dest))
    assert count(c.w, dest) == c.shape.since_commits
    obs = snapshot(c.w, dest)
    assert obs["shallow"], "a --shallow-since clone is shallow"
    return obs


def _wait_for_more(side: Side, before: int) -> int:
    deadline = time.monotonic() + 5  # the audit line is written as the response ends
    while (now := side.upload_pack_posts()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def _filter(spec: str) -> WayFn:
    def run(c: Ctx, side: Side, dest: Path) -> Obs:
        side.git("clone", "-q", f"--filter={spec}", side.url(c.main), str(dest))
        assert local(c.w, "config", "remote.origin.partialclonefilter", cwd=dest).strip() == spec
        before_objects = len(
            lines(local(c.w, "cat-file", "--batch-all-objects", "--batch-check", cwd=dest))
        )
        before = side.upload_pack_posts()
        # Another commit's trees/blobs are not here: checkout fetches them lazily.
        side.git("checkout", "-q", c.shape.other_rev, cwd=dest)
        after = _wait_for_more(side, before)
        assert after > before, f"no upload-pack request after the clone ({side.name})"
        assert local(c.w, "rev-parse", "HEAD", cwd=dest).strip() == c.up_rev(c.shape.other_rev)
        obs = snapshot(c.w, dest)
        assert len(lines(obs["objects"])) > before_objects, "the lazy fetch added objects"
        return obs

    return run


def _mirror(c: Ctx, side: Side, dest: Path) -> Obs:
    side.git("clone", "-q", "--mirror", side.url(c.main), str(dest))
    obs = snapshot(c.w, dest)
    fmt = "--format=%(objectname) %(refname)"
    assert local(c.w, "for-each-ref", fmt, cwd=dest) == c.up("for-each-ref", fmt)
    assert len(lines(obs["refs"])) == c.shape.ref_count
    return obs


def _single_branch_tag(c: Ctx, side: Side, dest: Path) -> Obs:
    tag = c.shape.tag
    side.git("clone", "-q", "--single-branch", "--branch", tag, side.url(c.main), str(dest))
    obs = snapshot(c.w, dest)
    refs = lines(local(c.w, "for-each-ref", "--format=%(refname)", cwd=dest))
    assert f"refs/tags/{tag}" in refs
    assert not [r for r in refs if not r.startswith("refs/tags/")], f"only tags: {refs}"
    assert local(c.w, "symbolic-ref", "-q", "HEAD", cwd=dest, check=False) == "", "detached"
    assert local(c.w, "rev-parse", "HEAD", cwd=dest).strip() == c.up_rev(tag)
    return obs


def _fetch_pulls(c: Ctx, side: Side, dest: Path) -> Obs:
    side.git("clone", "-q", side.url(c.main), str(dest))
    side.git("fetch", "-q", "origin", "+refs/pull/*:refs/remotes/pull/*", cwd=dest)
    obs = snapshot(c.w, dest)
    fmt = "--format=%(objectname) %(refname)"
    fetched = local(c.w, "for-each-ref", fmt, "refs/remotes/pull/", cwd=dest)
    upstream = c.up("for-each-ref", fmt, "refs/pull/")
    assert fetched.replace(" refs/remotes/pull/", " refs/pull/") == upstream
    assert len(lines(fetched)) == c.shape.pull_refs
    return obs


def _ls_remote(
    *opts: str, patterns: tuple[str, ...] = (), expect: Callable[[str], bool] = lambda ref: True
) -> WayFn:
    def run(c: Ctx, side: Side, dest: Path) -> Obs:
        out = side.git("ls-remote", *opts, side.url(c.main), *patterns).stdout
        shown = lines(c.up("show-ref", "--head", "--dereference"))
        wanted = sorted(
            f"{oid}\t{ref}" for oid, _, ref in (s.partition(" ") for s in shown) if expect(ref)
        )
        assert wanted, "the pattern matches something"
        assert sorted(lines(out)) == wanted
        return {"ls-remote": out}

    return run


def _recurse_submodules(c: Ctx, side: Side, dest: Path) -> Obs:
    side.git("clone", "-q", "--recurse-submodules", side.url(c.main), str(dest))
    lib = dest / "lib"
    assert local(c.w, "rev-parse", "HEAD", cwd=lib).strip() == c.shape.submodule_commit
    status = local(c.w, "submodule", "status", "--recursive", cwd=dest)
    assert status.startswith(" ") and " lib " in status, status  # present, at the gitlink
    return {
        "submodules": status,
        **snapshot(c.w, dest),
        **snapshot(c.w, lib, "lib:"),
    }


def _recurse_ungranted(c: Ctx, side: Side, dest: Path) -> Obs:
    r = side.try_git("clone", "--recurse-submodules", side.url(c.main), str(dest))
    assert r.returncode != 0, "a submodule the session may not read fails the clone"
    assert "airlock: repository not found" in r.stderr, r.stderr
    assert TOKEN not in r.stderr
    assert (dest / ".gitmodules").is_file(), "the granted superproject is cloned"
    assert not any((dest / "lib").iterdir()), "the ungranted submodule stays empty"
    assert side.bundle is not None
    refused = [
        e
        for e in c.w.audit_for(side.bundle.session_id)
        if e.get("repo") == f"{OWNER}/lib" and e.get("reason") == "not_granted"
    ]
    assert refused, "the audit log names the refused submodule"
    return {"rc": str(r.returncode)}


# Pushes: each side pushes into its own copy of the shape's repository.


def _push_setup(c: Ctx, side: Side, dest: Path) -> str:
    """A clone of this side's copy (made locally: pushes are what is measured); main's id."""
    local(c.w, "clone", "-q", "--no-checkout", str(c.upstream[c.main]), str(dest), files=True)
    local(c.w, "remote", "set-url", "origin", side.url(c.main), cwd=dest)
    return local(c.w, "rev-parse", "refs/heads/main", cwd=dest).strip()


def _push_result(c: Ctx, *pushes: subprocess.CompletedProcess[str]) -> Obs:
    obs: Obs = {}
    for i, r in enumerate(pushes):
        # A refused ref's reason is the refuser's own words (the upstream's or airlock's);
        # the flag and the refspec must agree.
        out = [
            ln.split("\t[remote rejected]")[0]
            + ("\t[remote rejected]" if "\t[remote rejected]" in ln else "")
            for ln in r.stdout.splitlines()
            if not ln.startswith("To ")
        ]
        obs[f"push{i}"] = f"rc={r.returncode}\n" + "\n".join(out)
    obs["upstream-refs"] = c.up("for-each-ref", "--format=%(objectname) %(refname)")
    # Reachable objects: a push the upstream refused after unpacking (direct) leaves
    # unreachable objects behind, one airlock refused never sent any.
    obs["upstream-objects"] = "\n".join(sorted(lines(c.up("rev-list", "--objects", "--all"))))
    fsck = c.up("fsck", "--no-progress", "--no-dangling")
    assert not fsck.strip(), fsck
    return obs


def _git_env(c: Ctx) -> dict[str, str]:
    return git_env(c.w.home)


def _push_branch(c: Ctx, side: Side, dest: Path) -> Obs:
    main = _push_setup(c, side, dest)
    add_branches(dest / ".git", main, ["topic"], _git_env(c))
    r = side.git("push", "--porcelain", "origin", "refs/heads/topic:refs/heads/topic", cwd=dest)
    assert c.up("rev-parse", "refs/heads/topic") == local(c.w, "rev-parse", "topic", cwd=dest)
    return _push_result(c, r)


def _push_many(c: Ctx, side: Side, dest: Path) -> Obs:
    main = _push_setup(c, side, dest)
    names = [f"bulk/{i:03d}" for i in range(200)]
    add_branches(dest / ".git", main, names, _git_env(c))
    r = side.git("push", "--porcelain", "origin", "refs/heads/bulk/*:refs/heads/bulk/*", cwd=dest)
    fmt = "--format=%(objectname) %(refname)"
    pushed = c.up("for-each-ref", fmt, "refs/heads/bulk/")
    assert len(lines(pushed)) == 200
    assert pushed == local(c.w, "for-each-ref", fmt, "refs/heads/bulk/", cwd=dest)
    return _push_result(c, r)


def _push_atomic(c: Ctx, side: Side, dest: Path) -> Obs:
    main = _push_setup(c, side, dest)
    c.up("config", "receive.denyNonFastForwards", "true")
    add_branches(dest / ".git", main, ["atomic-a", "atomic-b"], _git_env(c))
    parent = local(c.w, "rev-parse", "main~1", cwd=dest).strip()
    add_branches(dest / ".git", parent, ["rewrite"], _git_env(c), when=1_800_000_000)
    before = c.up("for-each-ref")
    # The upstream refuses the forced non-fast-forward, so the whole atomic push fails.
    refused = side.try_git(
        "push", "--porcelain", "--atomic", "origin",
        "refs/heads/atomic-a:refs/heads/atomic-a", "+refs/heads/rewrite:refs/heads/main",
        cwd=dest,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert c.up("for-each-ref") == before, "an atomic push that failed changed nothing"
    ok = side.git("push", "--porcelain", "--atomic", "origin", "atomic-a", "atomic-b", cwd=dest)
    heads = c.up("for-each-ref", "--format=%(refname)", "refs/heads/atomic-*")
    assert lines(heads) == ["refs/heads/atomic-a", "refs/heads/atomic-b"]
    return _push_result(c, refused, ok)


def _push_options(c: Ctx, side: Side, dest: Path) -> Obs:
    main = _push_setup(c, side, dest)
    seen = install_push_options_hook(c.upstream[c.main])
    add_branches(dest / ".git", main, ["opts"], _git_env(c))
    r = side.git(
        "push", "--porcelain", "-o", "foo=bar", "-o", "ci.skip", "origin",
        "refs/heads/opts:refs/heads/opts", cwd=dest,
    )  # fmt: skip
    hook = seen.read_text()
    assert hook == "count=2\nfoo=bar\nci.skip\n", f"the upstream's pre-receive hook saw {hook!r}"
    return {"hook": hook, **_push_result(c, r)}


@dataclass(frozen=True)
class Way:
    name: str
    run: WayFn
    shapes: tuple[str, ...]
    pushes: bool = False  # needs a private copy of the repository per side
    gateway_only: bool = False  # no direct equivalent (a grant the upstream token ignores)


ALL = SHAPE_NAMES
FLAT = ("many-refs", "long-history", "sha256")
SUB = ("submodule",)

WAYS: tuple[Way, ...] = (
    Way("clone-v0", _clone_protocol(0), ALL),
    Way("clone-v1", _clone_protocol(1), ALL),
    Way("clone-v2", _clone_protocol(2), ALL),
    Way("shallow-deepen-unshallow", _shallow_deepen, FLAT),
    Way("shallow-since", _shallow_since, FLAT),
    Way("filter-blob-none", _filter("blob:none"), FLAT),
    Way("filter-tree-0", _filter("tree:0"), FLAT),
    Way("mirror", _mirror, ALL),
    Way("single-branch-tag", _single_branch_tag, ALL),
    Way("fetch-pulls", _fetch_pulls, ALL),
    Way("ls-remote", _ls_remote(), ALL),
    Way("ls-remote-tags", _ls_remote("--tags", expect=lambda r: r.startswith("refs/tags/")), ALL),
    Way(
        "ls-remote-pattern",
        _ls_remote(patterns=("refs/pull/1*",), expect=lambda r: r.startswith("refs/pull/1")),
        ALL,
    ),
    Way("recurse-submodules", _recurse_submodules, SUB),
    Way("recurse-submodules-ungranted", _recurse_ungranted, SUB, gateway_only=True),
    Way("push-branch", _push_branch, FLAT, pushes=True),
    Way("push-200-branches", _push_many, FLAT, pushes=True),
    Way("push-atomic", _push_atomic, FLAT, pushes=True),
    Way("push-options", _push_options, FLAT, pushes=True),
)


# --- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    shape: str
    way: str
    identical: str
    direct_s: float | None
    gateway_s: float

    @property
    def ratio(self) -> str:
        if not self.direct_s:
            return "n/a"
        return f"{self.gateway_s / self.direct_s:.2f}"

    def line(self) -> str:
        direct = f"{self.direct_s:.2f} s" if self.direct_s is not None else "n/a"
        return (
            f"conformance {self.shape} / {self.way}: identical={self.identical}, "
            f"direct {direct}, gateway {self.gateway_s:.2f} s, ratio {self.ratio}"
        )

    def cells(self) -> str:
        direct = f"{self.direct_s:.2f}" if self.direct_s is not None else "n/a"
        return (
            f"| {self.shape} | {self.way} | {self.identical} | {direct} | "
            f"{self.gateway_s:.2f} | {self.ratio} |"
        )


def markdown(rows: list[Row]) -> str:
    head = "| shape | way | identical | direct s | gateway s | ratio |\n|---|---|---|---|---|---|\n"
    return head + "".join(r.cells() + "\n" for r in rows)


class ShapeCache:
    """Shapes built once per test session, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Shape] = {}

    def get(self, name: str) -> Shape:
        if name not in self.built:
            self.built[name] = build_shape(name, self.root / name)
        return self.built[name]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapeCache:
    return ShapeCache(tmp_path_factory.mktemp("shapes"))


class Suite:
    def __init__(self, w: World, cache: ShapeCache) -> None:
        self.w = w
        self.cache = cache
        self.installed: dict[str, dict[str, Path]] = {}
        self.direct_config = direct_gitconfig(w, w.root / "direct.gitconfig")
        self.rows: list[Row] = []

    def shape(self, name: str) -> tuple[Shape, dict[str, Path]]:
        shape = self.cache.get(name)
        if name not in self.installed:
            self.installed[name] = install(shape, self.w.repos, OWNER)
        return shape, self.installed[name]

    def side(self, name: str, shape: Shape, way: Way) -> tuple[Side, Ctx]:
        shape_, repos = self.shape(shape.name)
        names = {logical: logical for logical in repos}
        upstream = dict(repos)
        if way.pushes:
            copy = f"{shape.main}-{way.name}-{name}"
            upstream[shape.main] = copy_repo(
                repos[shape.main], self.w.repos / OWNER / f"{copy}.git"
            )
            names[shape.main] = copy
        bundle = None
        if name == "gateway":
            granted = [shape.main] if way.gateway_only else list(names)
            # Any branch may be created, main fast-forwarded (the push policy's own tests
            # are in test_push_policy.py).
            bundle = self.w.session(
                *(f"{HOST}/{OWNER}/{names[g]}:write=**,ff:main" for g in granted)
            )
        side = Side(
            name,
            self.w,
            bundle,
            None if bundle else self.direct_config,
            names,
        )
        return side, Ctx(self.w, shape_, upstream)

    def record(self, row: Row) -> None:
        self.rows.append(row)
        out = os.environ.get("AIRLOCK_MEASUREMENTS")
        if out:
            with open(out, "a") as f:
                f.write(row.line() + "\n")


@pytest.fixture(scope="module")
def suite(world: World, shapes: ShapeCache, request: pytest.FixtureRequest) -> Iterator[Suite]:
    s = Suite(world, shapes)
    yield s
    if not s.rows:
        return
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    table = f"Conformance matrix ({git}; direct = straight to the upstream)\n\n"
    table += markdown(s.rows)
    out = os.environ.get("AIRLOCK_MEASUREMENTS")
    if out:
        with open(out, "a") as f:
            f.write(table + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Teardown output is captured (and shown only on failure); the table is for everyone.
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for ln in table.splitlines():
                reporter.write_line(ln)


def differences(direct: Obs, gateway: Obs) -> list[str]:
    out = []
    for key in sorted(set(direct) | set(gateway)):
        a, b = direct.get(key, "<missing>"), gateway.get(key, "<missing>")
        if a != b:
            diff = difflib.unified_diff(
                a.splitlines(), b.splitlines(), "direct", "gateway", lineterm="", n=1
            )
            out.append(f"{key}:\n" + "\n".join(list(diff)[:20]))
    return out


CASES = [
    pytest.param(shape, way, id=f"{shape}-{way.name}")
    for way in WAYS
    for shape in SHAPE_NAMES
    if shape in way.shapes
]


@pytest.mark.parametrize(("shape_name", "way"), CASES)
def test_conformance(suite: Suite, shape_name: str, way: Way, tmp_path: Path) -> None:
    shape, _ = suite.shape(shape_name)
    results: dict[str, Obs] = {}
    errors: dict[str, BaseException] = {}
    times: dict[str, float] = {}
    for name in ("gateway",) if way.gateway_only else ("direct", "gateway"):
        side, ctx = suite.side(name, shape, way)
        try:
            results[name] = way.run(ctx, side, tmp_path / name)
        except (GitFailed, AssertionError) as exc:
            errors[name] = exc
        times[name] = side.elapsed
    diff = differences(results["direct"], results["gateway"]) if len(results) == 2 else []
    if "direct" in errors:
        verdict = "direct failed"
    elif "gateway" in errors:
        failure = errors["gateway"]
        what = failure.summary if isinstance(failure, GitFailed) else "a check failed"
        verdict = f"gateway failed: {what}"
    elif way.gateway_only:
        verdict = "n/a (gateway only, passed)"
    else:
        verdict = "yes" if not diff else "NO: " + ", ".join(d.split(":")[0] for d in diff)
    suite.record(Row(shape_name, way.name, verdict, times.get("direct"), times["gateway"]))
    if errors:
        raise AssertionError(
            "\n\n".join(f"{side}: {exc}" for side, exc in errors.items())
        ) from next(iter(errors.values()))
    assert not diff, "gateway and direct results differ:\n" + "\n".join(diff)
