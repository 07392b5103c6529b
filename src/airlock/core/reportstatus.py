"""Sans-I/O pieces of receive-pack's answers: the status report the gateway writes for a
refused push, the upstream's status report read back (which refs it really changed), and
the ref advertisement with ``push-cert`` taken out.

Formats from git's ``Documentation/gitprotocol-pack.txt``: the report is pkt-lines
``unpack ok``, then ``ok <ref>`` or ``ng <ref> <reason>`` per command, then a flush; with
``side-band-64k`` (or ``side-band``) it travels inside band 1 packets, progress and messages
in band 2 (git prints those as ``remote: ...``), and the whole ends with a flush.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from airlock.core.pktline import (
    DELIM,
    FLUSH,
    RESPONSE_END,
    Data,
    Delim,
    Flush,
    PktEvent,
    PktLineError,
    PktLineReader,
    encode_pkt,
)

__all__ = [
    "AdvertisementFilter",
    "ReportStatusReader",
    "refusal_report",
    "sideband_limit",
]

_SIDEBAND_64K = 65515
_SIDEBAND = 995
MAX_REPORT_LINES = 100_000


def sideband_limit(capabilities: frozenset[str]) -> int | None:
    """Largest band payload the client asked for, or None without side-band."""
    if "side-band-64k" in capabilities:
        return _SIDEBAND_64K
    if "side-band" in capabilities:
        return _SIDEBAND
    return None


def _banded(band: int, data: bytes, limit: int) -> bytes:
    out = b""
    for i in range(0, len(data), limit):
        out += encode_pkt(bytes([band]) + data[i : i + limit])
    return out


def refusal_report(
    refused: Sequence[tuple[str, str]], *, sideband: int | None, message: str
) -> bytes:
    """A receive-pack answer refusing every ``(ref, reason)``; ``message`` goes to the
    client's terminal as ``remote:`` lines when it asked for side-band."""
    report = encode_pkt(b"unpack ok\n")
    for ref, reason in refused:
        line = f"ng {ref} {reason}".replace("\n", " ")
        report += encode_pkt(line.encode()[:65000] + b"\n")
    report += FLUSH
    if sideband is None:
        return report
    return _banded(2, message.encode() + b"\n", sideband) + _banded(1, report, sideband) + FLUSH


@dataclass
class ReportStatusReader:
    """Reads the upstream's receive-pack answer as it streams past (bytes pass unchanged).

    ``ok`` holds the refs the upstream reports as updated. Anything unexpected (a broken
    stream, report-status-v2 ``option`` lines, which mean a hook moved the update to another
    ref, bytes after the end of the answer) sets ``trusted`` to False: callers then record
    nothing from this push. The verdict does not depend on how the stream was cut into reads.
    """

    sideband: bool
    ok: set[str] = field(default_factory=set)
    unpack_ok: bool = False
    complete: bool = False
    trusted: bool = True
    _outer: PktLineReader = field(default_factory=PktLineReader)
    _inner: PktLineReader = field(default_factory=lambda: PktLineReader(MAX_REPORT_LINES))
    _ended: bool = False  # side-band: the flush ending the whole answer went by

    def feed(self, data: bytes) -> None:
        if not self.trusted or not data:
            return
        if self._ended or (self.complete and not self.sideband):
            self.trusted = False  # bytes after the end of the answer
            return
        try:
            if self.sideband:
                for event in self._outer.feed(data):
                    if self._ended:
                        self.trusted = False
                        return
                    if isinstance(event, Flush):
                        self._ended = True
                    elif isinstance(event, Data) and event.payload[:1] == b"\x01":
                        self._report(self._inner.feed(event.payload[1:]))
                if self._ended and self._outer.pending_bytes:
                    self.trusted = False
            else:
                self._report(self._inner.feed(data))
                if self.complete and self._inner.pending_bytes:
                    self.trusted = False
        except PktLineError:
            self.trusted = False

    def _report(self, events: list[PktEvent]) -> None:
        for event in events:
            if self.complete:
                self.trusted = False  # anything after the report's flush
                return
            if isinstance(event, Flush):
                self.complete = True
                continue
            if not isinstance(event, Data):
                self.trusted = False
                return
            line = event.payload.decode("utf-8", "replace").removesuffix("\n")
            word, _, rest = line.partition(" ")
            if word == "unpack":
                self.unpack_ok = rest == "ok"
            elif word == "ok" and rest:
                self.ok.add(rest)
            elif word == "ng":
                self.ok.discard(rest.partition(" ")[0])
            else:
                self.trusted = False  # "option ..." and anything else

    def confirmed(self) -> set[str]:
        """The refs the upstream updated, when its whole report was read and trusted."""
        if not (self.complete and self.trusted and self.unpack_ok):
            return set()
        return set(self.ok)


@dataclass
class AdvertisementFilter:
    """Takes ``push-cert=<nonce>`` out of a receive-pack ref advertisement, so no client
    signs a push (a push certificate carries its own command list, which the gateway's
    check of the commands would not see). The capability list sits after a NUL on the
    first ref line; everything after that line passes unchanged."""

    limit: int = 256 * 1024
    done: bool = False
    _held: bytearray = field(default_factory=bytearray)
    _reader: PktLineReader = field(default_factory=PktLineReader)

    def feed(self, data: bytes) -> bytes:
        """Bytes to send on now (possibly none while the first ref line is incomplete)."""
        if self.done:
            return data
        out = bytearray()
        for event in self._reader.feed(data):
            if self.done:
                out += _encode(event)
                continue
            if isinstance(event, Data) and b"\0" in event.payload:
                refpart, _, caps = event.payload.partition(b"\0")
                kept = [c for c in caps.rstrip(b"\n").split(b" ") if not c.startswith(b"push-cert")]
                event = Data(refpart + b"\0" + b" ".join(kept) + b"\n")
                self.done = True
            out += _encode(event)
        if self.done:
            out += self._reader.take_pending()  # the start of the next packet, untouched
        elif len(out) + self._reader.pending_bytes > self.limit:
            raise PktLineError("ref advertisement without a capability line")
        return bytes(out)

    def finish(self) -> None:
        """The advertisement ended; raises when it ended inside a packet."""
        if not self.done:
            self._reader.finish()


def _encode(event: PktEvent) -> bytes:
    if isinstance(event, Data):
        return encode_pkt(event.payload)
    if isinstance(event, Flush):
        return FLUSH
    return DELIM if isinstance(event, Delim) else RESPONSE_END
