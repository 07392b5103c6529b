"""Synthetic repositories for the git benchmarks, built with git fast-import.

A size class of S bytes is a repository whose packs hold about S bytes of incompressible data
in four commits; each commit rewrites the same 20 files (S/4 in all), so a full clone moves
about S and a ``--depth 1`` clone about S/4. On top, the served repository has one more
commit of 1 MiB in 4 new files: what an incremental fetch brings in. A ``base`` branch on
the served repository points at the fourth commit, so a push from a work copy of that commit
sends only its new objects. Served and work repositories have ``pack.window=0`` (random
data never deltas; see ``build``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airlock.testing.repos import _fast_import, create_bare_repo, git_env
from bench.common import MiB

FILES = 20
HISTORY = 4
INCREMENT = 1 * MiB
INCREMENT_FILES = 4


def _git(*args: str, cwd: Path | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="airlock-bench-home-") as home:
        r = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=git_env(Path(home)),
            capture_output=True,
            text=True,
            check=True,
        )
    return r.stdout.strip()


def write_commit(
    git_dir: Path, paths: list[str], total: int, seed: int, message: str, parent: bool = True
) -> None:
    """One commit on main writing ``total`` random bytes spread over ``paths`` (streamed)."""
    rng = random.Random(seed)
    base, extra = divmod(total, len(paths))
    feed: list[tuple[str, int, random.Random | bytes]] = [
        (p, base + (1 if i < extra else 0), rng) for i, p in enumerate(paths)
    ]
    _fast_import(git_dir, feed, message.encode() + b"\n", parent=parent)


@dataclass(frozen=True)
class SizeClass:
    label: str  # "10 MB"
    size: int  # bytes of packed data in the full history
    name: str  # repository name under acme/

    @property
    def repo(self) -> str:
        return f"acme/{self.name}"


@dataclass(frozen=True)
class BuiltRepo:
    size_class: SizeClass
    served: Path  # the bare repository the upstream serves
    seed: Path  # the same history without the increment: clients start from here

    def pack_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.served / "objects").rglob("*.pack"))

    def local_copy(self, dest: Path) -> Path:
        """A work repository at the seed's tip (hard-linked objects, no checkout)."""
        _git("clone", "--quiet", "--local", "--no-checkout", str(self.seed), str(dest))
        _git("-C", str(dest), "config", "pack.window", "0")  # pushes: see build()
        return dest


def build(size_class: SizeClass, upstream_root: Path, work_root: Path) -> BuiltRepo:
    seed = create_bare_repo(work_root / "seeds", "acme", size_class.name)
    paths = [f"data/blob-{i:02d}.bin" for i in range(FILES)]
    per_commit = size_class.size // HISTORY
    for n in range(HISTORY):
        write_commit(
            seed, paths, per_commit, seed=1000 * n + size_class.size % 997, message=f"v{n}"
        )
    served = upstream_root / "acme" / f"{size_class.name}.git"
    served.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "--quiet", "--bare", "--local", str(seed), str(served))
    _git("--git-dir", str(served), "remote", "remove", "origin")
    _git("--git-dir", str(served), "branch", "base", "main")
    # Keep received packs as packs (as GitHub does) instead of exploding small pushes.
    _git("--git-dir", str(served), "config", "receive.unpackLimit", "1")
    _git("--git-dir", str(served), "config", "gc.auto", "0")
    # Random blobs never delta: without this, pack-objects spends ~95 % of a clone searching
    # for deltas (10 s of 11 s for 200 MiB), which is the upstream's cost, not the proxy's,
    # and not how GitHub serves packs (reused objects and bitmaps).
    _git("--git-dir", str(served), "config", "pack.window", "0")
    incr = [f"incr/blob-{i}.bin" for i in range(INCREMENT_FILES)]
    write_commit(served, incr, INCREMENT, seed=7, message="increment")
    return BuiltRepo(size_class, served, seed)


def remove(built: BuiltRepo) -> None:
    shutil.rmtree(built.served, ignore_errors=True)
    shutil.rmtree(built.seed, ignore_errors=True)


class PushTarget:
    """Undo a benchmark push on the served repository: drop the ref and the received pack."""

    REF = "refs/heads/bench-push"  # created by each push
    FF_REF = "refs/heads/bench-ff"  # set to the base commit, then fast-forwarded

    def __init__(self, served: Path, ref: str = REF) -> None:
        self.served = served
        self.ref = ref
        self._packs = self._pack_files()

    def point_at(self, commit: str) -> None:
        subprocess.run(
            ["git", "--git-dir", str(self.served), "update-ref", self.ref, commit],
            capture_output=True,
            check=True,
        )

    def _pack_files(self) -> set[Path]:
        return set((self.served / "objects" / "pack").iterdir())

    def reset(self) -> None:
        subprocess.run(
            ["git", "--git-dir", str(self.served), "update-ref", "-d", self.ref],
            capture_output=True,
            check=False,
        )
        for p in self._pack_files() - self._packs:
            p.unlink(missing_ok=True)
        # Loose objects (none expected with receive.unpackLimit=1) and the reflog.
        for d in (self.served / "objects").iterdir():
            if len(d.name) == 2 and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
