"""Sans-I/O reader for the pack data of a push, and a fast-forward proof over its commits.

A git-receive-pack request body is a pkt-line command list, a flush, then (unless every
command is a delete) a pack: ``PACK``, a 4-byte version (2 or 3), a 4-byte object count,
the objects, and a trailing checksum (sha1 or sha256 of every preceding pack byte). Each
object is a type+size header (OFS_DELTA adds a negative base offset, REF_DELTA a base object
id) followed by a zlib stream that inflates to exactly ``size`` bytes.

:class:`PackScanner` takes that pack in arbitrary chunks. It must inflate every object to find
where the next one begins, but it keeps only commits: their raw content, their id (the hash of
``commit <len>\\0<content>``) and their parents. Blob, tree and tag contents are inflated into
nothing. Deltas whose base is a retained commit are resolved (the result is a commit too);
deltas against anything else are inflated and discarded. Memory stays bounded: between calls the
scanner buffers at most one incomplete object header (or the trailer), and retained commit data is
capped (:class:`PackMemoryLimitError`).

:func:`fast_forward` proves, from those commits alone, that ``new`` descends from ``old``. Because
each commit's id is the hash of the content it was parsed from, a proof is sound the moment it
succeeds, even if the rest of the pack later turns out to be malformed (the upstream then rejects
the push anyway). ``git pack-objects`` writes all commits before any tree or blob, so a caller can
check :meth:`PackScanner.fast_forward` after each :meth:`PackScanner.feed` and usually gets its
answer after the first few kilobytes, long before the blobs arrive.

Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_RETAINED_BYTES",
    "MAX_OBJECT_HEADER",
    "AncestryWalk",
    "FastForward",
    "PackError",
    "PackMemoryLimitError",
    "PackScanner",
    "apply_delta",
    "fast_forward",
    "parse_commit_parents",
]

DEFAULT_MAX_RETAINED_BYTES: Final = 32 * 1024 * 1024

# Object types (git's enum object_type).
OBJ_COMMIT: Final = 1
OBJ_TREE: Final = 2
OBJ_BLOB: Final = 3
OBJ_TAG: Final = 4
OBJ_OFS_DELTA: Final = 6
OBJ_REF_DELTA: Final = 7

_HASHES: Final = {"sha1": 20, "sha256": 32}
_PACK_HEADER_LEN: Final = 12
# Type+size header: 1 byte plus at most 9 continuation bytes (sizes < 2**67 can be written;
# anything at or above 2**64 is rejected). An OFS_DELTA offset needs at most 10 more bytes
# (it must stay below the object's own offset), a REF_DELTA base id 32.
_MAX_SIZE_BYTES: Final = 10
MAX_OBJECT_HEADER: Final = _MAX_SIZE_BYTES + 32
_MAX_SIZE: Final = 1 << 64

# zlib input is handed over in slices of this size and output is taken in bounded chunks, so an
# object of any size (or a decompression bomb) costs at most this much transient memory.
_INFLATE_IN: Final = 64 * 1024
_INFLATE_OUT: Final = 256 * 1024

# Accounting for retained data: each commit costs its content plus this much for the maps that
# hold it; each unresolved delta is remembered by offset for a few bytes.
_COMMIT_OVERHEAD: Final = 128
_UNRESOLVED_OVERHEAD: Final = 32

_HEX: Final = frozenset(b"0123456789abcdef")


class PackError(ValueError):
    """Malformed, truncated or otherwise unusable pack data."""


class PackMemoryLimitError(PackError):
    """The commits a proof needs would take more memory than the scanner may retain."""


# --- commit parsing ---------------------------------------------------------------------------


def _hex_oid(raw: bytes, hex_len: int) -> str | None:
    if len(raw) != hex_len or not _HEX.issuperset(raw):
        return None
    return raw.decode("ascii")


def parse_commit_parents(content: bytes, hex_len: int = 40) -> tuple[str, ...]:
    """The parent ids of a commit object's raw ``content`` (``hex_len`` 40 for sha1, 64 for sha256).

    The header (up to the first empty line) must start with exactly one ``tree <oid>`` line,
    followed directly by zero or more ``parent <oid>`` lines (lower-case hex of the right length).
    A ``tree`` or ``parent`` line anywhere else in the header is rejected rather than ignored:
    git itself would not treat such a line as a parent, and guessing either way is unsafe.

    Raises:
        PackError: if the commit is malformed.
    """
    end = content.find(b"\n\n")
    if end >= 0:
        header = content[:end]
    elif content.endswith(b"\n"):
        header = content[:-1]  # no message and no blank line: the whole object is header
    else:
        raise PackError("malformed commit: header not terminated by a newline")
    lines = header.split(b"\n")
    first = lines[0]
    if not first.startswith(b"tree ") or _hex_oid(first[5:], hex_len) is None:
        raise PackError("malformed commit: first line is not 'tree <oid>'")
    parents: list[str] = []
    i = 1
    while i < len(lines) and lines[i].startswith(b"parent "):
        oid = _hex_oid(lines[i][7:], hex_len)
        if oid is None:
            raise PackError("malformed commit: invalid parent line")
        parents.append(oid)
        i += 1
    for line in lines[i:]:
        if line.startswith((b"tree ", b"parent ")):
            raise PackError("malformed commit: misplaced tree/parent line")
    return tuple(parents)


# --- deltas -----------------------------------------------------------------------------------


def _delta_varint(delta: bytes, pos: int) -> tuple[int, int]:
    """Decode a delta header size (little-endian base-128) at ``pos``; return (value, next pos)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(delta):
            raise PackError("malformed delta: truncated size header")
        if shift >= 64:
            raise PackError("malformed delta: size header too long")
        c = delta[pos]
        pos += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return value, pos


def _delta_sizes(delta: bytes) -> tuple[int, int, int]:
    """(source size, target size, position of the first instruction) of a delta."""
    src_size, pos = _delta_varint(delta, 0)
    tgt_size, pos = _delta_varint(delta, pos)
    return src_size, tgt_size, pos


def apply_delta(base: bytes, delta: bytes) -> bytes:
    """Apply a git delta (source size, target size, copy/insert instructions) to ``base``.

    Every bound is checked: the source size must equal ``len(base)``, a copy must stay inside
    the base, no instruction may write past the declared target size, and the result must have
    exactly that size. Opcode 0 is reserved and rejected.

    Raises:
        PackError: if the delta is malformed or does not fit ``base``.
    """
    src_size, tgt_size, pos = _delta_sizes(delta)
    if src_size != len(base):
        raise PackError(f"malformed delta: base is {len(base)} bytes, delta expects {src_size}")
    out = bytearray()
    n = len(delta)
    while pos < n:
        cmd = delta[pos]
        pos += 1
        if cmd & 0x80:
            offset = 0
            size = 0
            for bit, shift in ((0x01, 0), (0x02, 8), (0x04, 16), (0x08, 24)):
                if cmd & bit:
                    if pos >= n:
                        raise PackError("malformed delta: truncated copy instruction")
                    offset |= delta[pos] << shift
                    pos += 1
            for bit, shift in ((0x10, 0), (0x20, 8), (0x40, 16)):
                if cmd & bit:
                    if pos >= n:
                        raise PackError("malformed delta: truncated copy instruction")
                    size |= delta[pos] << shift
                    pos += 1
            if size == 0:
                size = 0x10000
            if offset + size > src_size:
                raise PackError("malformed delta: copy out of bounds of the base")
            if len(out) + size > tgt_size:
                raise PackError("malformed delta: copy past the target size")
            out += base[offset : offset + size]
        elif cmd:
            if pos + cmd > n:
                raise PackError("malformed delta: truncated insert instruction")
            if len(out) + cmd > tgt_size:
                raise PackError("malformed delta: insert past the target size")
            out += delta[pos : pos + cmd]
            pos += cmd
        else:
            raise PackError("malformed delta: reserved opcode 0")
    if len(out) != tgt_size:
        raise PackError(f"malformed delta: produced {len(out)} bytes, expected {tgt_size}")
    return bytes(out)


# --- fast-forward proof -----------------------------------------------------------------------


@dataclass(frozen=True)
class FastForward:
    """Outcome of a fast-forward proof."""

    proven: bool
    reason: str


class AncestryWalk:
    """An incremental breadth-first walk from ``new`` looking for ``old``.

    Call :meth:`update` with the commits known so far, as often as they grow: each call only
    expands commits that arrived since the last one (plus a scan of the walk's frontier, the
    parents it reached but has not seen yet), so repeated checks cost O(commits) in total. The
    walk only visits commits present in the mapping, so it is bounded by its size. A proven
    result is final (more commits only add edges); a negative one may change as commits arrive.
    """

    def __init__(self, old: str, new: str) -> None:
        """Prepare a walk proving ``old`` is ``new`` or one of its ancestors."""
        self.old = old
        self.new = new
        self._visited: set[str] = set()
        self._frontier: set[str] = {new}  # reached, but not (yet) among the known commits
        self._proven: FastForward | None = None
        if old == new:
            self._proven = FastForward(True, f"new commit {new} equals old commit")

    def update(self, commits: Mapping[str, Sequence[str]]) -> FastForward:
        """Extend the walk over ``commits`` (oid -> parent oids) and report the result."""
        if self._proven is not None:
            return self._proven
        queue = deque(oid for oid in self._frontier if oid in commits)
        self._frontier.difference_update(queue)
        while queue:
            oid = queue.popleft()
            if oid in self._visited:
                continue
            self._visited.add(oid)
            for parent in commits[oid]:
                if parent == self.old:
                    self._proven = FastForward(
                        True, f"old commit {self.old} is an ancestor of {self.new}"
                    )
                    self._frontier.clear()
                    self._visited.clear()
                    return self._proven
                if parent in self._visited:
                    continue
                if parent in commits:
                    queue.append(parent)
                else:
                    self._frontier.add(parent)
        if self.new not in self._visited:
            return FastForward(
                False,
                f"new commit {self.new} is not in the pushed commits; the fast-forward from "
                f"{self.old} cannot be proven within them",
            )
        if self._frontier:
            return FastForward(
                False,
                f"old commit {self.old} not reachable within the pushed commits (the walk "
                f"from {self.new} leaves them at {len(self._frontier)} parent(s))",
            )
        return FastForward(
            False,
            f"old commit {self.old} is not an ancestor of {self.new}: the pushed history "
            f"from {self.new} is complete and does not contain it",
        )


def fast_forward(old: str, new: str, commits: Mapping[str, Sequence[str]]) -> FastForward:
    """Prove that moving a ref from ``old`` to ``new`` is a fast-forward, using only ``commits``.

    Walks breadth-first from ``new`` through parents present in ``commits`` (oid -> parents).
    Proven if ``old`` is reached (``new == old`` counts). A parent missing from ``commits`` is a
    dead end, not a failure: a merge of an upstream branch has such a parent and may still reach
    ``old`` through another one. If ``old`` is never reached, the result is not proven: either
    the proof is impossible within the pushed commits (``new`` absent, or the walk left them),
    or the pushed history is complete and ``old`` is not in it.
    """
    return AncestryWalk(old, new).update(commits)


# --- pack scanning ----------------------------------------------------------------------------

_S_HEADER: Final = 0
_S_OBJECT: Final = 1
_S_INFLATE: Final = 2
_S_TRAILER: Final = 3
_S_DONE: Final = 4

_TYPE_NAMES: Final = {
    OBJ_COMMIT: "commit",
    OBJ_TREE: "tree",
    OBJ_BLOB: "blob",
    OBJ_TAG: "tag",
    OBJ_OFS_DELTA: "ofs-delta",
    OBJ_REF_DELTA: "ref-delta",
}


class PackScanner:
    """Incremental pack reader that retains the pack's commits and nothing else.

    Feed the pack data in any chunking with :meth:`feed`, then call :meth:`finish`. As objects
    complete, :attr:`commits` (oid -> parent oids) grows; :meth:`fast_forward` checks a ref
    update against it cheaply and may be called after every feed (``git pack-objects`` writes
    commits first, so the proof usually completes after the first few objects and the caller can
    release whatever it buffers of the pack).

    Memory is bounded: between calls the scanner holds at most one incomplete object header
    (:data:`MAX_OBJECT_HEADER` bytes) or the incomplete trailer, zlib's window, and the retained
    commits, which are capped at ``max_retained_bytes`` (commit contents, delta data being
    resolved against a commit, plus a small per-entry overhead). After an error the scanner stays
    failed. Every error is a :class:`PackError`.

    Deltas whose base is not a retained commit are discarded; those whose base type is unknown
    (a REF_DELTA against an object outside the pack, or against one that is not a commit we
    kept, and deltas built on them) are counted in :attr:`unresolved_deltas`: if one of them was
    a commit, it is missing from :attr:`commits` and a proof through it is impossible.
    """

    def __init__(
        self, *, object_format: str = "sha1", max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES
    ) -> None:
        """Create a scanner for ``object_format`` ("sha1" or "sha256") packs."""
        digest_len = _HASHES.get(object_format)
        if digest_len is None:
            raise PackError(f"unsupported object format {object_format!r}")
        self.object_format = object_format
        self.max_retained_bytes = max_retained_bytes
        self._digest_len = digest_len
        self._hex_len = 2 * digest_len
        self._hash = hashlib.new(object_format)
        self._state = _S_HEADER
        self._pending = b""
        self._consumed = 0
        self._failed = False
        self._version = 0
        self._count: int | None = None
        self._seen = 0
        self._retained = 0
        # Retained commits: by offset (for OFS_DELTA bases) and by id (REF_DELTA bases, callers).
        self._by_offset: dict[int, tuple[str, bytes]] = {}
        self._contents: dict[str, bytes] = {}
        self.commits: dict[str, tuple[str, ...]] = {}
        self._unresolved: set[int] = set()  # offsets of deltas whose base type is unknown
        self._resolved_deltas = 0
        self._walks: dict[tuple[str, str], AncestryWalk] = {}
        # The object being inflated.
        self._obj_offset = 0
        self._obj_type = 0
        self._obj_size = 0
        self._obj_base: bytes | None = None
        self._obj_unresolved = False
        self._inflated = 0
        self._sink: bytearray | None = None
        self._zlib = zlib.decompressobj()

    # -- state -----------------------------------------------------------------------------

    @property
    def bytes_consumed(self) -> int:
        """Pack bytes parsed so far (buffered bytes of an incomplete header not included)."""
        return self._consumed

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered for an incomplete header or trailer (at most ``MAX_OBJECT_HEADER``)."""
        return len(self._pending)

    @property
    def version(self) -> int:
        """Pack version (2 or 3), 0 until the header has been read."""
        return self._version

    @property
    def object_count(self) -> int | None:
        """Object count from the pack header, None until it has been read."""
        return self._count

    @property
    def objects_seen(self) -> int:
        """Objects fully parsed so far."""
        return self._seen

    @property
    def retained_bytes(self) -> int:
        """Memory charged against ``max_retained_bytes`` so far."""
        return self._retained

    @property
    def commit_contents(self) -> Mapping[str, bytes]:
        """Raw content of each retained commit, by oid."""
        return self._contents

    @property
    def resolved_deltas(self) -> int:
        """Delta objects resolved against a retained commit (each one is a commit)."""
        return self._resolved_deltas

    @property
    def unresolved_deltas(self) -> int:
        """Delta objects whose base was neither a retained commit nor known to be a non-commit."""
        return len(self._unresolved)

    @property
    def commits_complete(self) -> bool:
        """True once every object has been parsed: :attr:`commits` will not grow any more."""
        return self._state >= _S_TRAILER

    @property
    def done(self) -> bool:
        """True once the trailer has been read and verified."""
        return self._state == _S_DONE

    def fast_forward(self, old: str, new: str) -> FastForward:
        """:func:`fast_forward` over the commits seen so far, cheap to call after every feed.

        The walk for each ``(old, new)`` pair is kept and only extended by commits that arrived
        since the previous call. A proven result is final. A negative one is provisional until
        :attr:`commits_complete` is True.
        """
        walk = self._walks.get((old, new))
        if walk is None:
            walk = self._walks[(old, new)] = AncestryWalk(old, new)
        result = walk.update(self.commits)
        if not result.proven and self._unresolved:
            result = FastForward(
                False,
                f"{result.reason}; {len(self._unresolved)} delta object(s) against bases "
                "outside the pack could not be resolved",
            )
        return result

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Consume the next chunk of pack data.

        Raises:
            PackError: on malformed data, a checksum mismatch, bytes after the trailer, or
                (:class:`PackMemoryLimitError`) too much commit data to retain.
        """
        if self._failed:
            raise PackError("pack scanner already failed")
        if not data:
            return
        if self._pending:
            data = self._pending + data
            self._pending = b""
        try:
            self._process(memoryview(data))
        except PackError:
            self._fail()
            raise
        except zlib.error as exc:
            self._fail()
            raise PackError(f"corrupt zlib stream in object at offset {self._obj_offset}") from exc

    def finish(self) -> None:
        """Declare the end of the pack data.

        Raises:
            PackError: if the pack is truncated (header, an object or the trailer incomplete).
        """
        if self._failed:
            raise PackError("pack scanner already failed")
        if self._state != _S_DONE:
            self._fail()
            if self._state == _S_HEADER:
                raise PackError("pack truncated inside its header")
            if self._state == _S_TRAILER:
                raise PackError("pack truncated inside its trailing checksum")
            raise PackError(f"pack truncated after {self._seen} of {self._count} objects")

    def _fail(self) -> None:
        self._failed = True
        self._pending = b""
        self._sink = None
        self._obj_base = None

    def _process(self, view: memoryview) -> None:
        # Parsing only advances positions; the pack checksum is updated once per call, over
        # everything consumed (an incomplete header left pending is hashed when completed).
        pos = 0
        end = len(view)
        while pos < end:
            state = self._state
            if state == _S_INFLATE:
                pos = self._inflate(view, pos)
            elif state == _S_OBJECT:
                used = self._object_header(view[pos : pos + MAX_OBJECT_HEADER])
                if used == 0:
                    if end - pos >= MAX_OBJECT_HEADER:
                        raise PackError("malformed object header")
                    break
                pos += used
            elif state == _S_HEADER:
                if end - pos < _PACK_HEADER_LEN:
                    break
                self._pack_header(view[pos : pos + _PACK_HEADER_LEN])
                pos += _PACK_HEADER_LEN
            elif state == _S_TRAILER:
                if end - pos > self._digest_len:
                    raise PackError("unexpected bytes after the pack's trailing checksum")
                if end - pos < self._digest_len:
                    break
                self._hash.update(view[:pos])
                if bytes(view[pos:end]) != self._hash.digest():
                    raise PackError("pack checksum mismatch")
                self._consumed += self._digest_len
                self._state = _S_DONE
                return
            else:
                raise PackError("unexpected bytes after the pack's trailing checksum")
        self._hash.update(view[:pos])
        self._pending = bytes(view[pos:])

    def _pack_header(self, header: memoryview) -> None:
        if bytes(header[:4]) != b"PACK":
            raise PackError("missing PACK signature")
        version = int.from_bytes(header[4:8], "big")
        if version not in (2, 3):
            raise PackError(f"unsupported pack version {version}")
        self._version = version
        self._count = int.from_bytes(header[8:12], "big")
        self._consumed += _PACK_HEADER_LEN
        self._state = _S_OBJECT if self._count else _S_TRAILER

    def _object_header(self, buf: memoryview) -> int:
        """Parse the object header at the start of ``buf``; its length, or 0 if incomplete."""
        n = len(buf)
        c = buf[0]
        obj_type = (c >> 4) & 7
        size = c & 0x0F
        shift = 4
        i = 1
        while c & 0x80:
            if i >= n:
                return 0
            if i >= _MAX_SIZE_BYTES:
                raise PackError("object header size too long")
            c = buf[i]
            i += 1
            size |= (c & 0x7F) << shift
            shift += 7
        if size >= _MAX_SIZE:
            raise PackError("object size too large")
        if obj_type not in _TYPE_NAMES:
            raise PackError(f"invalid object type {obj_type}")
        offset = self._consumed
        base: bytes | None = None
        unresolved = False
        if obj_type == OBJ_OFS_DELTA:
            if i >= n:
                return 0
            c = buf[i]
            i += 1
            distance = c & 0x7F
            while c & 0x80:
                if i >= n:
                    return 0
                distance += 1
                if distance >= offset:
                    raise PackError("delta base offset out of range")
                c = buf[i]
                i += 1
                distance = (distance << 7) + (c & 0x7F)
            base_offset = offset - distance
            if distance == 0 or base_offset < _PACK_HEADER_LEN:
                raise PackError("delta base offset out of range")
            retained = self._by_offset.get(base_offset)
            if retained is not None:
                base = retained[1]
            else:
                # Not a retained commit: a non-commit (discarded), or itself unresolved.
                unresolved = base_offset in self._unresolved
        elif obj_type == OBJ_REF_DELTA:
            if n - i < self._digest_len:
                return 0
            base_id = bytes(buf[i : i + self._digest_len]).hex()
            i += self._digest_len
            base = self._contents.get(base_id)
            unresolved = base is None
        self._consumed += i
        self._start_object(offset, obj_type, size, base, unresolved)
        return i

    def _charge(self, amount: int) -> None:
        if self._retained + amount > self.max_retained_bytes:
            raise PackMemoryLimitError(
                f"the fast-forward proof needs more than {self.max_retained_bytes} bytes of "
                "commit data, more memory than allowed"
            )
        self._retained += amount

    def _start_object(
        self, offset: int, obj_type: int, size: int, base: bytes | None, unresolved: bool
    ) -> None:
        self._obj_offset = offset
        self._obj_type = obj_type
        self._obj_size = size
        self._obj_base = base
        self._obj_unresolved = unresolved
        self._inflated = 0
        self._zlib = zlib.decompressobj()
        if obj_type == OBJ_COMMIT:
            self._charge(size + _COMMIT_OVERHEAD)
            self._sink = bytearray()
        elif base is not None:
            # Delta data against a commit: held until the object ends, then replaced by the
            # resolved commit (charged separately once its size is known).
            self._charge(size)
            self._sink = bytearray()
        else:
            self._sink = None
        self._state = _S_INFLATE

    def _inflate(self, view: memoryview, pos: int) -> int:
        """Feed the current object's zlib stream from ``view[pos:]``; return the new position."""
        d = self._zlib
        end = len(view)
        while True:
            # Hand zlib no more than the stream can still need when written by zlib itself
            # (compressBound of the output still due): input past the end of the stream is
            # copied into ``unused_data``, which for many small objects would dominate the cost.
            # A longer (non-zlib) stream just takes more rounds.
            due = self._obj_size - self._inflated
            chunk = view[pos : pos + min(_INFLATE_IN, due + (due >> 12) + (due >> 14) + 64)]
            out = d.decompress(chunk, _INFLATE_OUT)
            used = len(chunk) - len(d.unconsumed_tail) - len(d.unused_data)
            pos += used
            self._consumed += used
            if out:
                self._inflated += len(out)
                if self._inflated > self._obj_size:
                    raise PackError(
                        f"object at offset {self._obj_offset} inflates past its declared size"
                    )
                if self._sink is not None:
                    self._sink += out
            if d.eof:
                self._end_object()
                return pos
            if pos >= end and len(out) < _INFLATE_OUT:
                return pos  # need more input
            if not used and not out:
                # Cannot happen with input available (zlib either consumes or produces), but
                # never spin.
                raise PackError(f"zlib stream stalled in object at offset {self._obj_offset}")

    def _end_object(self) -> None:
        if self._inflated != self._obj_size:
            raise PackError(
                f"object at offset {self._obj_offset} inflates to {self._inflated} bytes, "
                f"header says {self._obj_size}"
            )
        sink = self._sink
        self._sink = None
        if self._obj_type == OBJ_COMMIT:
            assert sink is not None
            self._retain(bytes(sink))
        elif self._obj_base is not None:
            assert sink is not None
            delta = bytes(sink)
            _, tgt_size, _ = _delta_sizes(delta)
            self._charge(tgt_size + _COMMIT_OVERHEAD)
            content = apply_delta(self._obj_base, delta)
            self._retained -= len(delta)
            self._obj_base = None
            self._resolved_deltas += 1
            self._retain(content)
        elif self._obj_unresolved:
            self._charge(_UNRESOLVED_OVERHEAD)
            self._unresolved.add(self._obj_offset)
        self._seen += 1
        assert self._count is not None
        self._state = _S_TRAILER if self._seen == self._count else _S_OBJECT

    def _retain(self, content: bytes) -> None:
        """Record a commit (already charged) found at the current object's offset."""
        parents = parse_commit_parents(content, self._hex_len)
        h = hashlib.new(self.object_format, b"commit %d\0" % len(content))
        h.update(content)
        oid = h.hexdigest()
        existing = self._contents.get(oid)
        if existing is not None:
            # A duplicate object: share the stored content, don't pay for it twice.
            self._retained -= len(content) + _COMMIT_OVERHEAD
            content = existing
        self._by_offset[self._obj_offset] = (oid, content)
        self._contents[oid] = content
        self.commits[oid] = parents
