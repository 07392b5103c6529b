"""A push as the gateway decides it (core/pktline.py commands, core/pushpolicy.py decision,
core/packfile.py pack reader and fast-forward proof), the steps of gateway/pushgate.py
without the sockets.

Input: byte 0 picks the chunking and, with bit 0x40, that the rest is pack data alone; else
the rest is a whole git-receive-pack request body (commands, flush, push options when
negotiated, pack).
Invariants: only PktLineError / PackError escape; a push is all or nothing (any command
refused refuses all); every commit the scanner keeps has the id of its own content (so a
proof is sound), its parents as its content names them, and retained memory stays under the
cap; a proven fast-forward is a real ancestry path within those commits; settle() leaves no
update pending.
"""

from __future__ import annotations

import hashlib

import atheris

with atheris.instrument_imports():
    from airlock.core.packfile import PackError, PackScanner, parse_commit_parents
    from airlock.core.pktline import PktLineError, ReceivePackCommandParser, section_end
    from airlock.core.pushpolicy import Verdict, decide_push, settle
    from airlock.core.refrules import parse_rules

from _harness import chunks, main

_RULES = parse_rules("agent/**,ff:main,ff:refs/tags/v*")
_OWNED = frozenset({"refs/heads/agent/mine"})
_CAP = 1 << 20


def _reachable(commits: dict[str, tuple[str, ...]], old: str, new: str) -> bool:
    if old == new:
        return True
    seen: set[str] = set()
    todo = [new]
    while todo:
        oid = todo.pop()
        if oid in seen or oid not in commits:
            continue
        seen.add(oid)
        for parent in commits[oid]:
            if parent == old:
                return True
            todo.append(parent)
    return False


def _scan(pieces: list[bytes], object_format: str) -> PackScanner | None:
    scanner = PackScanner(object_format=object_format, max_retained_bytes=_CAP)
    try:
        for piece in pieces:
            scanner.feed(piece)
        scanner.finish()
    except PackError:
        pass
    _check_commits(scanner)
    return scanner if scanner.done else None


def _check_commits(scanner: PackScanner) -> None:
    assert scanner.retained_bytes <= _CAP
    hex_len = 40 if scanner.object_format == "sha1" else 64
    for oid, content in scanner.commit_contents.items():
        digest = hashlib.new(scanner.object_format, b"commit %d\0" % len(content) + content)
        assert digest.hexdigest() == oid
        assert scanner.commits[oid] == parse_commit_parents(content, hex_len)
    assert set(scanner.commits) == set(scanner.commit_contents)


def _push(body: bytes, selector: int) -> bool:
    parser = ReceivePackCommandParser()
    try:
        parser.feed(body)
        parser.finish()
    except PktLineError:
        return False
    decision = decide_push(parser.commands, _RULES, _OWNED, max_refs=64)
    verdicts = {r.verdict for r in decision.refs}
    if decision.refused:
        assert verdicts <= {Verdict.REFUSE}
    caps = parser.capabilities
    object_format = "sha256" if "object-format=sha256" in caps else "sha1"
    start = parser.command_section_length
    try:
        pack_at = section_end(body, start) if "push-options" in caps else start
    except PktLineError:
        return False
    proven: dict[str, bool] = {}
    scanner = PackScanner(object_format=object_format, max_retained_bytes=_CAP)
    if pack_at is not None:
        try:
            for piece in chunks(body[pack_at:], selector):
                scanner.feed(piece)
            scanner.finish()
        except PackError:
            pass
    _check_commits(scanner)
    for pending in decision.pending:
        u = pending.update
        result = scanner.fast_forward(u.old, u.new)
        if result.proven:
            assert _reachable(scanner.commits, u.old, u.new), (u, result)
        proven[u.ref] = result.proven
    final = settle(decision, proven)
    assert not final.pending
    if final.refused:
        assert all(r.verdict is Verdict.REFUSE for r in final.refs)
    return bool(final.refs) and not final.refused


def check(data: bytes) -> bool:
    if not data:
        return False
    if data[0] & 0x40:
        fmt = "sha256" if data[0] & 0x20 else "sha1"
        return _scan(chunks(data[1:], data[0]), fmt) is not None
    return _push(data[1:], data[0])


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
