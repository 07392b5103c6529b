"""Offline builders of real repository shapes, for the conformance suite.

Each builder writes bare repositories with ``git fast-import`` (seconds, even for 20,000
commits), with fixed identities and timestamps, so the same call always gives the same
object ids. The repositories are configured the way a GitHub-like server serves them:
partial clone filters, any-SHA-1 wants (lazy fetches of filtered clones) and push options.

Shapes:

* ``many-refs``: over 2,000 refs: branches, lightweight and annotated tags, and
  ``refs/pull/N/head`` / ``refs/pull/N/merge`` refs, each with its own commit.
* ``long-history``: 20,000 commits on ``main``.
* ``submodule``: a superproject ``super`` whose ``.gitmodules`` points at ``../lib``.
* ``sha256``: a repository with ``--object-format=sha256``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from airlock.testing.repos import git_env

_NAME = "Airlock Shapes"
_EMAIL = "shapes@airlock.invalid"
_BASE_TS = 1_600_000_000  # 2020-09-13; every shape's first commit
# Upstream configuration for serving: what GitHub allows and the suite exercises.
SERVING_CONFIG: tuple[tuple[str, str], ...] = (
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("receive.advertisePushOptions", "true"),
)

SHAPE_NAMES = ("many-refs", "long-history", "submodule", "sha256")


@dataclass(frozen=True)
class Shape:
    """Built bare repositories plus the facts the conformance cases check against."""

    name: str
    repos: Mapping[str, Path]  # upstream repository name -> built bare repository
    main: str  # the repository the cases clone, fetch and push
    object_format: str
    main_commits: int  # length of ``main`` (linear)
    tag: str  # an annotated tag, for ``--single-branch --branch``
    other_rev: str  # a tag whose tree differs from main's, for lazy fetches
    shallow_since: str  # a date between two commits of ``main``
    since_commits: int  # commits of ``main`` after ``shallow_since``
    ref_count: int  # refs in ``main`` (HEAD not counted)
    tag_count: int
    pull_refs: int  # refs under refs/pull/
    submodule_commit: str | None = None  # the gitlink ``lib`` in ``super`` (submodule shape)


class _Stream:
    """A ``git fast-import`` stream built in memory (a few MB even for 20,000 commits)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._mark = 0

    def _data(self, payload: bytes) -> None:
        self._parts.append(b"data %d\n" % len(payload))
        self._parts.append(payload)
        self._parts.append(b"\n")

    def commit(
        self,
        ref: str,
        when: int,
        message: str,
        *,
        parent: int | str | None,
        files: Mapping[str, bytes] | None = None,
        merge: int | None = None,
        gitlinks: Mapping[str, str] | None = None,
    ) -> int:
        """Add a commit on ``ref``; ``parent`` is a mark, a commit-ish, or None (a root)."""
        self._mark += 1
        ident = f"{_NAME} <{_EMAIL}> {when} +0000".encode()
        self._parts.append(f"commit {ref}\nmark :{self._mark}\n".encode())
        self._parts.append(b"author " + ident + b"\ncommitter " + ident + b"\n")
        self._data(message.encode())
        if isinstance(parent, int):
            self._parts.append(f"from :{parent}\n".encode())
        elif parent is not None:
            self._parts.append(f"from {parent}\n".encode())
        if merge is not None:
            self._parts.append(f"merge :{merge}\n".encode())
        for path, content in sorted((files or {}).items()):
            self._parts.append(f"M 100644 inline {path}\n".encode())
            self._data(content)
        for path, oid in sorted((gitlinks or {}).items()):
            self._parts.append(f"M 160000 {oid} {path}\n".encode())
        self._parts.append(b"\n")
        return self._mark

    def lightweight_tag(self, name: str, mark: int) -> None:
        self._parts.append(f"reset refs/tags/{name}\nfrom :{mark}\n\n".encode())

    def annotated_tag(self, name: str, mark: int, when: int) -> None:
        self._parts.append(f"tag {name}\nfrom :{mark}\n".encode())
        self._parts.append(f"tagger {_NAME} <{_EMAIL}> {when} +0000\n".encode())
        self._data(f"Release {name}\n".encode())

    def payload(self) -> bytes:
        return b"".join([*self._parts, b"done\n"])


def _git(git_dir: Path, *args: str, env: Mapping[str, str], stdin: bytes | None = None) -> str:
    r = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        input=stdin,
        env=dict(env),
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} in {git_dir}: {r.stderr.decode(errors='replace')}"
        )
    return r.stdout.decode()


def run_fast_import(git_dir: Path, stream: bytes, env: Mapping[str, str]) -> None:
    _git(git_dir, "fast-import", "--quiet", "--done", env=env, stdin=stream)


def _init(repo: Path, object_format: str, env: Mapping[str, str]) -> None:
    repo.parent.mkdir(parents=True, exist_ok=True)
    init = ["git", "init", "--quiet", "--bare", f"--object-format={object_format}", "-b", "main"]
    subprocess.run([*init, str(repo)], env=dict(env), check=True, capture_output=True)
    for key, value in SERVING_CONFIG:
        _git(repo, "config", key, value, env=env)


def _finish(repo: Path, env: Mapping[str, str]) -> int:
    """Pack refs and objects the way a served repository is (bitmaps included); ref count."""
    _git(repo, "pack-refs", "--all", env=env)
    _git(repo, "repack", "-a", "-d", "-q", "--write-bitmap-index", env=env)
    return len(_git(repo, "for-each-ref", "--format=%(refname)", env=env).splitlines())


def _since(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _main_line(
    s: _Stream, commits: int, step: int, width: int, prefix: str = "src"
) -> tuple[list[int], list[int]]:
    """``commits`` linear commits on main, each rewriting one of ``width`` files."""
    marks: list[int] = []
    times: list[int] = []
    parent: int | None = None
    for i in range(commits):
        when = _BASE_TS + i * step
        files = {f"{prefix}/f{i % width:03d}.txt": f"line {i}\n".encode()}
        if i == 0:
            files["README.md"] = b"# shape\n"
        parent = s.commit("refs/heads/main", when, f"commit {i}\n", parent=parent, files=files)
        marks.append(parent)
        times.append(when)
    return marks, times


def build_many_refs(dest: Path, env: Mapping[str, str]) -> Shape:
    """main (300 commits), 12 branches, 50 + 50 tags, 1,500 pull heads, 400 pull merges."""
    repo = dest / "many-refs.git"
    _init(repo, "sha1", env)
    s = _Stream()
    n_main, step = 300, 3600
    main, times = _main_line(s, n_main, step, width=50)
    t = times[-1]
    for b in range(12):
        base = main[(b * 23) % n_main]
        m = s.commit(
            f"refs/heads/branch-{b:02d}",
            t + b + 1,
            f"branch {b}\n",
            parent=base,
            files={f"branches/{b}.txt": f"branch {b}\n".encode()},
        )
        s.commit(
            f"refs/heads/branch-{b:02d}",
            t + b + 2,
            f"branch {b} again\n",
            parent=m,
            files={f"branches/{b}.txt": f"branch {b} v2\n".encode()},
        )
    for i in range(50):
        s.lightweight_tag(f"v0.{i}", main[i * 5])
        s.annotated_tag(f"v1.{i}", main[i * 5 + 2], times[i * 5 + 2] + 60)
    heads: list[int] = []
    for n in range(1, 1501):
        heads.append(
            s.commit(
                f"refs/pull/{n}/head",
                t + 100 + n * 60,
                f"pull request {n}\n",
                parent=main[n % n_main],
                files={f"pulls/{n}.txt": f"pull {n}\n".encode()},
            )
        )
    for n in range(1, 401):
        s.commit(
            f"refs/pull/{n}/merge",
            t + 200_000 + n * 60,
            f"Merge {n} into main\n",
            parent=main[-1],
            merge=heads[n - 1],
            files={f"pulls/{n}.txt": f"pull {n}\n".encode()},
        )
    run_fast_import(repo, s.payload(), env)
    refs = _finish(repo, env)
    return Shape(
        name="many-refs",
        repos={"many-refs": repo},
        main="many-refs",
        object_format="sha1",
        main_commits=n_main,
        tag="v1.7",
        other_rev="v0.3",
        shallow_since=_since(times[-10] - step // 2),
        since_commits=10,
        ref_count=refs,
        tag_count=100,
        pull_refs=1900,
    )


def build_long_history(dest: Path, env: Mapping[str, str], commits: int = 20_000) -> Shape:
    """``commits`` commits on main over 200 files, a release branch, 40 tags, 5 pull heads."""
    repo = dest / "long-history.git"
    _init(repo, "sha1", env)
    s = _Stream()
    step = 600
    main, times = _main_line(s, commits, step, width=200)
    half = commits // 2
    s.commit(
        "refs/heads/release",
        times[half] + 1,
        "release\n",
        parent=main[half],
        files={"RELEASE": b"1\n"},
    )
    every = commits // 20
    for k in range(20):
        s.lightweight_tag(f"v0.{k}", main[k * every])
        s.annotated_tag(f"v1.{k}", main[k * every + 1], times[k * every + 1] + 1)
    for n in range(1, 6):
        s.commit(
            f"refs/pull/{n}/head",
            times[-1] + n,
            f"pull {n}\n",
            parent=main[-n - 1],
            files={f"pulls/{n}.txt": b"x\n"},
        )
    run_fast_import(repo, s.payload(), env)
    refs = _finish(repo, env)
    return Shape(
        name="long-history",
        repos={"long-history": repo},
        main="long-history",
        object_format="sha1",
        main_commits=commits,
        tag="v1.3",
        other_rev="v0.10",
        shallow_since=_since(times[-50] - step // 2),
        since_commits=50,
        ref_count=refs,
        tag_count=40,
        pull_refs=5,
    )


def build_sha256(dest: Path, env: Mapping[str, str]) -> Shape:
    """A SHA-256 repository: 40 commits, 3 branches, 10 tags, 3 pull heads."""
    repo = dest / "sha256.git"
    _init(repo, "sha256", env)
    s = _Stream()
    step = 3600
    main, times = _main_line(s, 40, step, width=8)
    for b in range(3):
        s.commit(
            f"refs/heads/topic-{b}",
            times[-1] + b + 1,
            f"topic {b}\n",
            parent=main[10 + b],
            files={f"topics/{b}.txt": b"t\n"},
        )
    for k in range(5):
        s.lightweight_tag(f"v0.{k}", main[k * 6])
        s.annotated_tag(f"v1.{k}", main[k * 6 + 3], times[k * 6 + 3] + 1)
    for n in range(1, 4):
        s.commit(
            f"refs/pull/{n}/head",
            times[-1] + 100 + n,
            f"pull {n}\n",
            parent=main[-n - 1],
            files={f"pulls/{n}.txt": b"p\n"},
        )
    run_fast_import(repo, s.payload(), env)
    refs = _finish(repo, env)
    return Shape(
        name="sha256",
        repos={"sha256": repo},
        main="sha256",
        object_format="sha256",
        main_commits=40,
        tag="v1.2",
        other_rev="v0.1",
        shallow_since=_since(times[-5] - step // 2),
        since_commits=5,
        ref_count=refs,
        tag_count=10,
        pull_refs=3,
    )


def build_submodule(dest: Path, env: Mapping[str, str]) -> Shape:
    """``lib`` (6 commits) and ``super`` whose .gitmodules says ``url = ../lib``."""
    lib = dest / "lib.git"
    _init(lib, "sha1", env)
    s = _Stream()
    lib_marks, lib_times = _main_line(s, 6, 3600, width=3, prefix="lib")
    s.annotated_tag("lib-1.0", lib_marks[-1], lib_times[-1] + 1)
    run_fast_import(lib, s.payload(), env)
    _finish(lib, env)
    lib_head = _git(lib, "rev-parse", "refs/heads/main", env=env).strip()

    sup = dest / "super.git"
    _init(sup, "sha1", env)
    s = _Stream()
    step = 3600
    main, times = _main_line(s, 8, step, width=4)
    gitmodules = b'[submodule "lib"]\n\tpath = lib\n\turl = ../lib\n'
    last = s.commit(
        "refs/heads/main",
        times[-1] + step,
        "add lib as a submodule\n",
        parent=main[-1],
        files={".gitmodules": gitmodules},
        gitlinks={"lib": lib_head},
    )
    s.annotated_tag("super-1.0", last, times[-1] + step + 1)
    s.lightweight_tag("super-0.1", main[2])
    s.commit(
        "refs/pull/1/head",
        times[-1] + 2 * step,
        "pull 1\n",
        parent=last,
        files={"pull.txt": b"1\n"},
    )
    run_fast_import(sup, s.payload(), env)
    refs = _finish(sup, env)
    return Shape(
        name="submodule",
        repos={"super": sup, "lib": lib},
        main="super",
        object_format="sha1",
        main_commits=9,
        tag="super-1.0",
        other_rev="super-0.1",
        shallow_since=_since(times[-2] - step // 2),
        since_commits=3,
        ref_count=refs,
        tag_count=2,
        pull_refs=1,
        submodule_commit=lib_head,
    )


def build_shape(name: str, dest: Path) -> Shape:
    """Build the shape ``name`` (one of SHAPE_NAMES) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airlock-shapes-home-") as home:
        env = git_env(Path(home))
        if name == "many-refs":
            return build_many_refs(dest, env)
        if name == "long-history":
            return build_long_history(dest, env)
        if name == "submodule":
            return build_submodule(dest, env)
        if name == "sha256":
            return build_sha256(dest, env)
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPE_NAMES)}")


def copy_repo(src: Path, dst: Path) -> Path:
    """A private copy of a built bare repository (for cases that push into it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def install(shape: Shape, root: Path, owner: str) -> dict[str, Path]:
    """Copy the shape's repositories to ``root/owner/<name>.git`` (an upstream's layout)."""
    return {name: copy_repo(src, root / owner / f"{name}.git") for name, src in shape.repos.items()}


_PUSH_OPTIONS_HOOK = """#!/bin/sh
# Written by airlock.testing.shapes: record the push options receive-pack was given.
{{
  echo "count=${{GIT_PUSH_OPTION_COUNT:-none}}"
  i=0
  while [ "$i" -lt "${{GIT_PUSH_OPTION_COUNT:-0}}" ]; do
    eval "echo \\"\\$GIT_PUSH_OPTION_$i\\""
    i=$((i + 1))
  done
}} >> '{out}'
cat >/dev/null
"""


def install_push_options_hook(repo: Path) -> Path:
    """A pre-receive hook in ``repo`` that appends the push options it saw to a file
    (returned): ``count=N`` then one option a line, per push."""
    out = repo / "push-options.seen"
    hook = repo / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(_PUSH_OPTIONS_HOOK.format(out=str(out).replace("'", "'\\''")))
    hook.chmod(0o755)
    return out


def add_branches(
    git_dir: Path,
    base: str,
    names: list[str],
    env: Mapping[str, str],
    when: int = _BASE_TS + 10**8,
) -> None:
    """One new commit per name, on ``refs/heads/<name>``, each a child of ``base`` (a
    commit id) adding ``pushed/<name>.txt``. Fixed times: the same call gives the same ids."""
    s = _Stream()
    for i, name in enumerate(names):
        s.commit(
            f"refs/heads/{name}",
            when + i,
            f"push {name}\n",
            parent=base,
            files={f"pushed/{name}.txt": f"{name}\n".encode()},
        )
    run_fast_import(git_dir, s.payload(), env)
