"""Tests for airlock.core.packfile, against packs written by real git (no network)."""

from __future__ import annotations

import hashlib
import itertools
import random
import subprocess
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.packfile import (
    MAX_OBJECT_HEADER,
    AncestryWalk,
    FastForward,
    PackError,
    PackMemoryLimitError,
    PackScanner,
    apply_delta,
    fast_forward,
    parse_commit_parents,
)
from airlock.testing.repos import add_large_commit, create_bare_repo, git_env

# --- git helpers ------------------------------------------------------------------------------

_DATE = "1700000000 +0000"


@dataclass
class Repo:
    path: Path
    env: dict[str, str]
    object_format: str = "sha1"
    _tick: int = 0

    def git(self, *args: str, stdin: bytes = b"") -> bytes:
        proc = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=self.env,
            input=stdin,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git {args} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def rev(self, name: str) -> str:
        return self.git("rev-parse", name).decode().strip()

    def commit(self, message: str, files: Mapping[str, bytes | str] | None = None) -> str:
        for name, content in (files or {}).items():
            data = content.encode() if isinstance(content, str) else content
            (self.path / name).write_bytes(data)
        self.git("add", "-A")
        # Distinct timestamps, so identical trees/messages still make distinct commits.
        self._tick += 1
        date = f"{1700000000 + self._tick} +0000"
        self.env["GIT_AUTHOR_DATE"] = self.env["GIT_COMMITTER_DATE"] = date
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.rev("HEAD")

    def pack(self, revs: Sequence[str], *flags: str) -> bytes:
        stdin = "".join(f"{r}\n" for r in revs).encode()
        return self.git("pack-objects", "--stdout", "--revs", "-q", *flags, stdin=stdin)

    def rev_list_parents(self, revs: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out = self.git("rev-list", "--parents", *revs).decode()
        result: dict[str, tuple[str, ...]] = {}
        for line in out.splitlines():
            oid, *parents = line.split()
            result[oid] = tuple(parents)
        return result


def make_repo(root: Path, object_format: str = "sha1") -> Repo:
    root.mkdir(parents=True, exist_ok=True)
    env = git_env(root / "home", GIT_AUTHOR_DATE=_DATE, GIT_COMMITTER_DATE=_DATE)
    repo = Repo(root / "repo", env, object_format)
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main", f"--object-format={object_format}")
    return repo


def text(seed: int, lines: int = 400) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    return "".join(" ".join(rng.choices(words, k=8)) + "\n" for _ in range(lines))


@dataclass
class History:
    """main: c1 - c2 - c3 - m - c4, feature c2 - f1 - f2 merged at m, rewritten: c2 - r1 - r2."""

    repo: Repo
    c1: str
    c2: str
    c3: str
    f1: str
    f2: str
    m: str
    c4: str
    r1: str
    r2: str


def build_history(root: Path, object_format: str = "sha1") -> History:
    repo = make_repo(root, object_format)
    base = text(1)
    c1 = repo.commit("c1", {"big.txt": base, "a.txt": "a\n"})
    c2 = repo.commit("c2", {"big.txt": base + "two\n"})
    repo.git("checkout", "-q", "-b", "feature")
    f1 = repo.commit("f1", {"f.txt": "f1\n", "big.txt": "f1\n" + base + "two\n"})
    f2 = repo.commit("f2", {"f.txt": "f2\n"})
    repo.git("checkout", "-q", "main")
    c3 = repo.commit("c3", {"a.txt": "c3\n"})
    repo.git("merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    m = repo.rev("HEAD")
    c4 = repo.commit("c4", {"big.txt": "four\n" + base + "two\n"})
    repo.git("checkout", "-q", "-b", "rewritten", c2)
    r1 = repo.commit("r1 rewritten", {"a.txt": "r1\n"})
    r2 = repo.commit("r2 rewritten", {"a.txt": "r2\n"})
    repo.git("checkout", "-q", "main")
    return History(repo, c1, c2, c3, f1, f2, m, c4, r1, r2)


def build_commit_delta_repo(root: Path, object_format: str = "sha1") -> Repo:
    """Commits with large, similar messages, repacked so that commits are deltas of commits."""
    repo = make_repo(root, object_format)
    shared = text(7, lines=120)
    for i in range(8):
        repo.commit(f"commit {i}\n\n{shared}\nchange {i}\n", {"n.txt": f"{i}\n"})
    repo.git("repack", "-q", "-a", "-d", "-f", "--window=50", "--depth=50")
    return repo


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return build_history(tmp_path_factory.mktemp("history"))


@pytest.fixture(scope="module")
def delta_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build_commit_delta_repo(tmp_path_factory.mktemp("deltas"))


@pytest.fixture(scope="module")
def delta_pack(delta_repo: Repo) -> bytes:
    return delta_repo.pack(["main"], "--delta-base-offset")


# --- scanning helpers -------------------------------------------------------------------------


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def scan(
    pack: bytes, chunk: int = 4096, *, object_format: str = "sha1", **kwargs: int
) -> PackScanner:
    scanner = PackScanner(object_format=object_format, **kwargs)
    for i in range(0, len(pack), chunk):
        scanner.feed(pack[i : i + chunk])
    scanner.finish()
    return scanner


def scan_chunks(chunks: Sequence[bytes], object_format: str = "sha1") -> PackScanner:
    scanner = PackScanner(object_format=object_format)
    for c in chunks:
        scanner.feed(c)
    scanner.finish()
    return scanner


def retrailer(pack_body: bytes, object_format: str = "sha1") -> bytes:
    """``pack_body`` (no trailer) with a correct trailing checksum appended."""
    return pack_body + hashlib.new(object_format, pack_body).digest()


# --- hand-made packs --------------------------------------------------------------------------


def obj_header(obj_type: int, size: int) -> bytes:
    out = bytearray()
    c = (obj_type << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


def ofs_encode(distance: int) -> bytes:
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def delta(src_size: int, tgt_size: int, *instructions: bytes) -> bytes:
    return varint(src_size) + varint(tgt_size) + b"".join(instructions)


def copy(offset: int, size: int) -> bytes:
    cmd = 0x80
    args = bytearray()
    for i in range(4):
        byte = (offset >> (8 * i)) & 0xFF
        if byte:
            cmd |= 1 << i
            args.append(byte)
    for i in range(3):
        byte = (size >> (8 * i)) & 0xFF
        if byte:
            cmd |= 0x10 << i
            args.append(byte)
    return bytes([cmd]) + bytes(args)


def insert(data: bytes) -> bytes:
    assert 0 < len(data) < 0x80
    return bytes([len(data)]) + data


class PackBuilder:
    def __init__(self, object_format: str = "sha1", version: int = 2) -> None:
        self.object_format = object_format
        self.version = version
        self.body = bytearray()
        self.offsets: list[int] = []

    def _add(self, header: bytes, payload: bytes, raw: bytes | None) -> int:
        self.offsets.append(12 + len(self.body))
        self.body += header + (zlib.compress(payload) if raw is None else raw)
        return len(self.offsets) - 1

    def add(self, obj_type: int, payload: bytes, size: int | None = None) -> int:
        return self._add(
            obj_header(obj_type, len(payload) if size is None else size), payload, None
        )

    def add_ofs(self, base: int, data: bytes, distance: int | None = None) -> int:
        here = 12 + len(self.body)
        dist = here - self.offsets[base] if distance is None else distance
        return self._add(obj_header(6, len(data)) + ofs_encode(dist), data, None)

    def add_ref(self, base_oid: str, data: bytes) -> int:
        return self._add(obj_header(7, len(data)) + bytes.fromhex(base_oid), data, None)

    def add_raw(self, raw: bytes) -> None:
        self.offsets.append(12 + len(self.body))
        self.body += raw

    def build(self, count: int | None = None, trailer: bool = True) -> bytes:
        n = len(self.offsets) if count is None else count
        data = b"PACK" + self.version.to_bytes(4, "big") + n.to_bytes(4, "big") + self.body
        return retrailer(data, self.object_format) if trailer else data


def commit_content(tree: str, parents: Sequence[str] = (), message: str = "msg") -> bytes:
    lines = [f"tree {tree}"] + [f"parent {p}" for p in parents]
    lines += [f"author A <a@b> {_DATE}", f"committer A <a@b> {_DATE}", "", message]
    return ("\n".join(lines) + "\n").encode()


def commit_oid(content: bytes, object_format: str = "sha1") -> str:
    return hashlib.new(object_format, b"commit %d\0" % len(content) + content).hexdigest()


TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # any well-formed id will do


# --- real packs: commits match git rev-list ---------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--delta-base-offset",),
        ("--window=50", "--depth=50"),
        ("--window=50", "--depth=50", "--delta-base-offset"),
        ("--thin",),
        ("--thin", "--delta-base-offset"),
        ("--window=0",),
    ],
)
def test_commits_match_rev_list(history: History, flags: tuple[str, ...]) -> None:
    repo = history.repo
    for revs in ([history.c4, f"^{history.c1}"], [history.c4], [history.c4, f"^{history.f1}"]):
        pack = repo.pack(revs, *flags)
        scanner = scan(pack)
        assert scanner.commits == repo.rev_list_parents(revs)
        assert scanner.done and scanner.commits_complete
        assert scanner.bytes_consumed == len(pack)
        assert scanner.version == 2
        assert scanner.object_count == scanner.objects_seen
        for oid, content in scanner.commit_contents.items():
            assert repo.git("cat-file", "commit", oid) == content


def test_merge_commit_parents(history: History) -> None:
    scanner = scan(history.repo.pack([history.c4, f"^{history.c2}"]))
    assert scanner.commits[history.m] == (history.c3, history.f2)


def test_thin_pack_has_unresolved_bases(history: History) -> None:
    repo = history.repo
    revs = [history.c4, f"^{history.m}"]
    thin = repo.pack(revs, "--thin", "--delta-base-offset")
    full = repo.pack(revs, "--delta-base-offset")
    assert len(thin) < len(full)
    thin_scan = scan(thin)
    assert thin_scan.commits == repo.rev_list_parents(revs)
    # big.txt in c4 is a delta against a blob the receiver already has.
    assert thin_scan.unresolved_deltas >= 1
    assert scan(full).unresolved_deltas == 0


@pytest.mark.parametrize("ofs", [True, False], ids=["ofs-delta", "ref-delta"])
def test_commit_to_commit_deltas_are_resolved(delta_repo: Repo, ofs: bool) -> None:
    flags = ("--delta-base-offset",) if ofs else ()
    for revs in (["main"], ["main", "^main~3"]):
        pack = delta_repo.pack(revs, *flags)
        scanner = scan(pack, chunk=97)
        assert scanner.resolved_deltas >= 2
        assert scanner.commits == delta_repo.rev_list_parents(revs)


@settings(max_examples=60)
@given(st.data())
def test_random_chunking(delta_pack: bytes, data: st.DataObject) -> None:
    n = len(delta_pack)
    cuts = data.draw(st.lists(st.integers(0, n), max_size=40))
    scanner = scan_chunks(split_at(delta_pack, cuts))
    reference = scan(delta_pack, chunk=n)
    assert scanner.commits == reference.commits
    assert scanner.resolved_deltas == reference.resolved_deltas >= 2


@settings(max_examples=25)
@given(st.data())
def test_random_chunking_history(history: History, data: st.DataObject) -> None:
    revs = [history.c4, f"^{history.c1}"]
    pack = history.repo.pack(revs, "--window=50", "--depth=50")
    cuts = data.draw(st.lists(st.integers(0, len(pack)), max_size=60))
    assert scan_chunks(split_at(pack, cuts)).commits == history.repo.rev_list_parents(revs)


def test_byte_at_a_time_keeps_pending_small(delta_pack: bytes) -> None:
    scanner = PackScanner()
    for i in range(len(delta_pack)):
        scanner.feed(delta_pack[i : i + 1])
        assert scanner.pending_bytes <= MAX_OBJECT_HEADER
        assert scanner.bytes_consumed + scanner.pending_bytes == i + 1
    scanner.finish()
    assert scanner.commits == scan(delta_pack).commits


def test_sha256_repository(tmp_path: Path) -> None:
    hist = build_history(tmp_path / "h", "sha256")
    revs = [hist.c4, f"^{hist.c1}"]
    flag_sets: list[tuple[str, ...]] = [(), ("--delta-base-offset", "--thin")]
    for flags in flag_sets:
        pack = hist.repo.pack(revs, *flags)
        scanner = scan(pack, chunk=61, object_format="sha256")
        assert scanner.commits == hist.repo.rev_list_parents(revs)
        assert all(len(oid) == 64 for oid in scanner.commits)
        assert fast_forward(hist.c1, hist.c4, scanner.commits).proven
        with pytest.raises(PackError):
            scan(pack)  # a sha1 scanner: ids and trailer are the wrong size
    deltas = build_commit_delta_repo(tmp_path / "d", "sha256")
    for flags in flag_sets:
        scanner = scan(deltas.pack(["main"], *flags), object_format="sha256")
        assert scanner.resolved_deltas >= 2
        assert scanner.commits == deltas.rev_list_parents(["main"])


def test_unsupported_object_format() -> None:
    with pytest.raises(PackError):
        PackScanner(object_format="md5")


# --- fast-forward proofs over real packs ------------------------------------------------------


def test_fast_forward_proven_linear_and_through_merge(history: History) -> None:
    h = history
    commits = scan(h.repo.pack([h.c4, f"^{h.c2}"])).commits
    assert fast_forward(h.c2, h.c4, commits).proven  # via the merge's first parent
    assert fast_forward(h.c3, h.c4, commits).proven
    # old reachable only through the merge's second parent.
    commits = scan(h.repo.pack([h.c4, f"^{h.f1}"])).commits
    result = fast_forward(h.f1, h.c4, commits)
    assert result == FastForward(True, f"old commit {h.f1} is an ancestor of {h.c4}")


def test_fast_forward_new_equals_old(history: History) -> None:
    assert fast_forward(history.c4, history.c4, {}).proven


def test_fast_forward_force_push_not_proven(history: History) -> None:
    h = history
    # The client pushes rewritten (r1, r2 on top of c2) over main (c3); it sends r2 ^c3.
    commits = scan(h.repo.pack([h.r2, f"^{h.c3}"])).commits
    assert set(commits) == {h.r1, h.r2}
    result = fast_forward(h.c3, h.r2, commits)
    assert not result.proven
    assert f"old commit {h.c3} not reachable within the pushed commits" in result.reason
    # With the complete history in the pack the answer is definite: c3 is not an ancestor.
    commits = scan(h.repo.pack([h.r2])).commits
    result = fast_forward(h.c3, h.r2, commits)
    assert not result.proven
    assert "is not an ancestor" in result.reason


def test_fast_forward_old_not_in_walk(history: History) -> None:
    h = history
    # f2 is on a side branch: the walk from c3 leaves the pack at c2 without meeting it.
    commits = scan(h.repo.pack([h.c3, f"^{h.f2}"])).commits
    assert set(commits) == {h.c3}
    result = fast_forward(h.f2, h.c3, commits)
    assert not result.proven
    assert "not reachable within the pushed commits" in result.reason


def test_fast_forward_new_not_in_pack(history: History) -> None:
    h = history
    commits = scan(h.repo.pack([h.c4, f"^{h.m}"])).commits
    result = fast_forward(h.c1, h.c2, commits)
    assert not result.proven
    assert "is not in the pushed commits" in result.reason


def test_proof_completes_early_in_the_pack(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    old = repo.commit("first", {"a.txt": "a\n"})
    for i in range(5):
        repo.commit(f"c{i}", {"a.txt": f"{i}\n"})
    rng = random.Random(3)
    new = repo.commit("big", {"blob.bin": rng.randbytes(2 << 20)})
    pack = repo.pack([new, f"^{old}"])
    scanner = PackScanner()
    proven_at = None
    for i in range(0, len(pack), 4096):
        scanner.feed(pack[i : i + 4096])
        assert scanner.pending_bytes <= MAX_OBJECT_HEADER
        if scanner.fast_forward(old, new).proven:
            proven_at = scanner.bytes_consumed
            break
    assert proven_at is not None
    assert proven_at < 8192 < len(pack)
    # Proven stays proven; the scan goes on to verify the rest of the pack.
    scanner.feed(pack[proven_at + scanner.pending_bytes :])
    scanner.finish()
    assert scanner.fast_forward(old, new).proven
    assert not scanner.fast_forward(new, old).proven


# --- hand-made packs: deltas, unresolved bases, limits ----------------------------------------


def test_empty_pack_and_version_3() -> None:
    scanner = scan(PackBuilder().build())
    assert scanner.commits == {} and scanner.done
    b = PackBuilder(version=3)
    content = commit_content(TREE)
    b.add(1, content)
    scanner = scan(b.build())
    assert scanner.version == 3
    assert scanner.commits == {commit_oid(content): ()}


def test_delta_chains_of_commits() -> None:
    c1 = commit_content(TREE, message="first " * 20)
    c2 = commit_content(TREE, [commit_oid(c1)], message="first " * 20)
    c3 = commit_content(TREE, [commit_oid(c2)], message="first " * 20)
    b = PackBuilder()
    base = b.add(1, c1)
    # c2 = c1 with a parent line inserted after the tree line.
    tree_line = len(f"tree {TREE}\n")
    parent_line = f"parent {commit_oid(c1)}\n".encode()
    d2 = delta(
        len(c1),
        len(c2),
        copy(0, tree_line),
        insert(parent_line),
        copy(tree_line, len(c1) - tree_line),
    )
    assert apply_delta(c1, d2) == c2
    second = b.add_ofs(base, d2)
    # c3 by REF_DELTA against c2 (itself a delta): swap the parent id.
    d3 = delta(
        len(c2),
        len(c3),
        copy(0, tree_line),
        insert(f"parent {commit_oid(c2)}\n".encode()),
        copy(tree_line + len(parent_line), len(c2) - tree_line - len(parent_line)),
    )
    b.add_ref(commit_oid(c2), d3)
    b.add_ofs(second, d3)  # the same object again, as a duplicate by offset
    scanner = scan(b.build(), chunk=5)
    assert scanner.commits == {
        commit_oid(c1): (),
        commit_oid(c2): (commit_oid(c1),),
        commit_oid(c3): (commit_oid(c2),),
    }
    assert scanner.resolved_deltas == 3
    assert scanner.unresolved_deltas == 0


def test_commit_delta_against_outside_base_is_unresolved() -> None:
    b = PackBuilder()
    outside = "ab" * 20
    d = delta(300, 10, insert(b"0123456789"))
    first = b.add_ref(outside, d)
    b.add_ofs(first, delta(10, 3, copy(0, 3)))  # built on the unresolved one
    b.add(3, b"a blob")
    scanner = scan(b.build())
    assert scanner.commits == {}
    assert scanner.unresolved_deltas == 2
    result = scanner.fast_forward("cd" * 20, "ef" * 20)
    assert not result.proven
    assert "could not be resolved" in result.reason


def test_blob_deltas_are_discarded() -> None:
    b = PackBuilder()
    blob = b.add(3, b"x" * 1000)
    # Not a valid delta for a commit, but never applied: the base is a blob.
    b.add_ofs(blob, delta(1000, 5000, copy(0, 1000), copy(0, 1000)))
    scanner = scan(b.build())
    assert scanner.commits == {} and scanner.resolved_deltas == scanner.unresolved_deltas == 0
    assert scanner.retained_bytes == 0


def test_retained_bytes_cap(delta_pack: bytes) -> None:
    assert scan(delta_pack).retained_bytes > 2000
    with pytest.raises(PackMemoryLimitError, match="more memory than allowed"):
        scan(delta_pack, max_retained_bytes=2000)
    # A commit declaring a huge size fails before any of it is inflated.
    b = PackBuilder()
    b.add(1, b"tree x", size=1 << 40)
    scanner = PackScanner()
    with pytest.raises(PackMemoryLimitError):
        scanner.feed(b.build(trailer=False)[:40])
    assert issubclass(PackMemoryLimitError, PackError)


# --- errors -----------------------------------------------------------------------------------


def test_every_truncation_fails(delta_pack: bytes) -> None:
    for n in range(len(delta_pack)):
        scanner = PackScanner()
        scanner.feed(delta_pack[:n])
        with pytest.raises(PackError):
            scanner.finish()
        with pytest.raises(PackError, match="already failed"):
            scanner.feed(b"x")


def test_bad_checksum(delta_pack: bytes) -> None:
    bad = delta_pack[:-1] + bytes([delta_pack[-1] ^ 1])
    with pytest.raises(PackError, match="checksum mismatch"):
        scan(bad)
    flipped = bytearray(delta_pack)
    flipped[20] ^= 0x40  # a byte inside an object: either a parse error or a checksum error
    with pytest.raises(PackError):
        scan(bytes(flipped))


def test_bytes_after_trailer(delta_pack: bytes) -> None:
    with pytest.raises(PackError, match="after the pack's trailing checksum"):
        scan(delta_pack + b"\0")
    scanner = PackScanner()
    scanner.feed(delta_pack)
    assert scanner.done
    with pytest.raises(PackError, match="after the pack's trailing checksum"):
        scanner.feed(b"x")


@pytest.mark.parametrize("delta_count", [1, -1, 1000])
def test_bad_object_count(delta_pack: bytes, delta_count: int) -> None:
    body = bytearray(delta_pack[:-20])
    count = int.from_bytes(body[8:12], "big") + delta_count
    body[8:12] = count.to_bytes(4, "big")
    with pytest.raises(PackError):
        scan(retrailer(bytes(body)))


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (b"PACX\0\0\0\x02\0\0\0\0", "signature"),
        (b"PACK\0\0\0\x04\0\0\0\0", "version"),
        (b"PACK\0\0\0\x01\0\0\0\0", "version"),
    ],
)
def test_bad_header(prefix: bytes, match: str) -> None:
    with pytest.raises(PackError, match=match):
        scan(retrailer(prefix))


def malformed_packs() -> Iterator[tuple[str, bytes]]:
    c1 = commit_content(TREE)

    def with_base(data: bytes) -> bytes:
        b = PackBuilder()
        base = b.add(1, c1)
        b.add_ofs(base, data)
        return b.build()

    n = len(c1)
    yield "copy out of bounds", with_base(delta(n, 10, copy(n - 5, 10)))
    yield "copy past target", with_base(delta(n, 5, copy(0, 10)))
    yield "insert past target", with_base(delta(n, 2, insert(b"abc")))
    yield "source size mismatch", with_base(delta(n + 1, 3, insert(b"abc")))
    yield "target size mismatch", with_base(delta(n, 4, insert(b"abc")))
    yield "reserved opcode 0", with_base(delta(n, 3, b"\0", insert(b"abc")))
    yield "truncated insert", with_base(delta(n, 3, b"\x03ab"))
    yield "truncated copy", with_base(delta(n, 3, b"\x91"))
    yield "truncated delta size", with_base(b"\x80")
    yield "copy of 0x10000 past base", with_base(delta(n, 0x10000, b"\x80"))

    def single(obj_type: int, payload: bytes, size: int | None = None) -> bytes:
        b = PackBuilder()
        b.add(obj_type, payload, size)
        return b.build()

    yield "type 0", single(0, b"x")
    yield "type 5", single(5, b"x")
    yield "size too small", single(3, b"hello", size=4)
    yield "size too large", single(3, b"hello", size=6)
    yield "commit without tree", single(1, b"author x\n\nmsg\n")
    yield "commit with short tree", single(1, b"tree abc\n\nmsg\n")
    yield "commit with upper-case tree", single(1, commit_content(TREE.upper()))
    yield "commit with two trees", single(1, f"tree {TREE}\ntree {TREE}\n\nm\n".encode())
    yield "late parent", single(1, f"tree {TREE}\nauthor a\nparent {TREE}\n\nm\n".encode())
    yield "bad parent", single(1, f"tree {TREE}\nparent {TREE}x\n\nm\n".encode())
    yield "empty commit", single(1, b"")
    yield "unterminated header", single(1, f"tree {TREE}".encode())

    b = PackBuilder()
    b.add(3, b"blob")
    b.add_ofs(0, b"", distance=1000)
    yield "ofs before pack start", b.build()
    b = PackBuilder()
    b.add_raw(obj_header(6, 0) + b"\x00")
    yield "ofs distance 0", b.build()
    b = PackBuilder()
    b.add_raw(obj_header(3, 4) + b"not zlib at all")
    yield "corrupt zlib", b.build()
    b = PackBuilder()
    with_dict = zlib.compressobj(zdict=b"abcd")
    b.add_raw(obj_header(3, 4) + with_dict.compress(b"abcd") + with_dict.flush())
    yield "zlib with a preset dictionary", b.build()
    b = PackBuilder()
    b.add_raw(b"\xb0" + b"\xff" * 20)
    yield "overlong size", b.build()


@pytest.mark.parametrize(("name", "pack"), list(malformed_packs()))
def test_malformed(name: str, pack: bytes) -> None:
    for chunk in (1, 7, len(pack)):
        with pytest.raises(PackError):
            scan(pack, chunk=chunk)


def test_parse_commit_parents() -> None:
    merge = commit_content(TREE, [TREE, "1" * 40])
    assert parse_commit_parents(merge) == (TREE, "1" * 40)
    signed = (
        f"tree {TREE}\nparent {TREE}\nauthor a\ncommitter c\ngpgsig -----BEGIN-----\n"
        f" parent {'2' * 40}\n \n -----END-----\n\nmsg\n"
    ).encode()
    assert parse_commit_parents(signed) == (TREE,)
    assert parse_commit_parents(f"tree {TREE}\n".encode()) == ()
    sha256_tree = "a" * 64
    assert parse_commit_parents(commit_content(sha256_tree, ["b" * 64]), 64) == ("b" * 64,)
    with pytest.raises(PackError):
        parse_commit_parents(commit_content(TREE), 64)


# --- robustness: nothing but PackError --------------------------------------------------------


def scan_or_pack_error(chunks: Sequence[bytes], object_format: str = "sha1") -> None:
    try:
        scan_chunks(chunks, object_format)
    except PackError:
        pass


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_only_pack_error(chunks: list[bytes]) -> None:
    scan_or_pack_error(chunks)
    scan_or_pack_error(chunks, "sha256")


@settings(max_examples=500)
@given(st.binary(max_size=400), st.sampled_from([2, 3]), st.integers(0, 5))
def test_random_objects_only_pack_error(body: bytes, version: int, count: int) -> None:
    header = b"PACK" + version.to_bytes(4, "big") + count.to_bytes(4, "big")
    scan_or_pack_error([header + body])
    scan_or_pack_error([retrailer(header + body)])


@settings(max_examples=300)
@given(st.data())
def test_mutated_real_packs_only_pack_error(delta_pack: bytes, data: st.DataObject) -> None:
    pack = bytearray(delta_pack[:-20])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(pack) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "flip":
            pack[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            pack[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            pack[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del pack[pos : pos + data.draw(st.integers(1, 8))]
    # With a recomputed trailer the mutation has to be caught by parsing, if at all.
    mutated = retrailer(bytes(pack)) if data.draw(st.booleans()) else bytes(pack) + b"\0" * 20
    cuts = data.draw(st.lists(st.integers(0, len(mutated)), max_size=6))
    scan_or_pack_error(split_at(mutated, cuts))


# --- fast_forward: property test against a reference model -----------------------------------


def reference_reachable(old: str, new: str, commits: Mapping[str, Sequence[str]]) -> set[str]:
    """Everything reachable from ``new`` through known commits, by fixed-point iteration."""
    reach = {new}
    while True:
        grown = reach | {p for c in reach if c in commits for p in commits[c]}
        if grown == reach:
            return reach
        reach = grown


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    n = draw(st.integers(1, 25))
    names = [f"c{i}" for i in range(n)]
    outside = [f"x{i}" for i in range(draw(st.integers(0, 4)))]
    graph: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(names):
        candidates = names[:i] + outside
        parents = draw(st.lists(st.sampled_from(candidates), max_size=3)) if candidates else []
        graph[name] = tuple(parents)
    present = draw(st.sets(st.sampled_from(names)))
    return {k: v for k, v in graph.items() if k in present}, names + outside


@settings(max_examples=500)
@given(dags(), st.data())
def test_fast_forward_matches_reference(
    dag: tuple[dict[str, tuple[str, ...]], list[str]], data: st.DataObject
) -> None:
    commits, names = dag
    old = data.draw(st.sampled_from(names))
    new = data.draw(st.sampled_from(names))
    reach = reference_reachable(old, new, commits)
    result = fast_forward(old, new, commits)
    assert result.proven == (old in reach)
    if not result.proven:
        if new not in commits:
            assert "is not in the pushed commits" in result.reason
        elif reach - commits.keys():
            assert f"old commit {old} not reachable within the pushed commits" in result.reason
        else:
            assert "is not an ancestor" in result.reason

    # Incremental: commits arriving in any order reach the same answer; proven stays proven.
    order = data.draw(st.permutations(sorted(commits)))
    walk = AncestryWalk(old, new)
    growing: dict[str, tuple[str, ...]] = {}
    was_proven = walk.update(growing).proven
    for oid in order:
        growing[oid] = commits[oid]
        now = walk.update(growing).proven
        assert now or not was_proven
        assert now == (old in reference_reachable(old, new, growing))
        was_proven = now
    assert walk.update(growing) == result


def test_fast_forward_bounded_on_cycles() -> None:
    # Hash ids can't form cycles, but the walk must terminate on any mapping.
    commits = {"a": ("b",), "b": ("a", "c"), "c": ("b",)}
    assert not fast_forward("z", "a", commits).proven
    assert fast_forward("c", "a", commits).proven


# --- throughput -------------------------------------------------------------------------------


@pytest.mark.slow
def test_throughput_large_pack(tmp_path: Path) -> None:
    repo = create_bare_repo(tmp_path, "acme", "large")
    add_large_commit(repo, 200 * 1024 * 1024)
    env = git_env(tmp_path / "home")
    pack_path = tmp_path / "large.pack"
    with pack_path.open("wb") as out:
        subprocess.run(
            ["git", f"--git-dir={repo}", "pack-objects", "--stdout", "--revs", "-q"],
            input=b"main\n",
            stdout=out,
            env=env,
            check=True,
        )
    size = pack_path.stat().st_size
    scanner = PackScanner()
    elapsed = 0.0
    with pack_path.open("rb") as f:
        while chunk := f.read(1 << 20):
            t0 = time.perf_counter()
            scanner.feed(chunk)
            elapsed += time.perf_counter() - t0
            assert scanner.pending_bytes <= MAX_OBJECT_HEADER
    scanner.finish()
    assert len(scanner.commits) == 2
    mib = size / (1 << 20)
    print(f"\nscanned {mib:.1f} MiB in {elapsed:.2f} s: {mib / elapsed:.0f} MiB/s")
