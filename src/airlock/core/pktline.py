"""Sans-I/O pkt-line framing (git's wire format) and receive-pack command parsing.

A pkt-line is a 4 hex digit length (counting the 4 length bytes) followed by
the payload. Special lengths: ``0000`` flush, ``0001`` delim, ``0002``
response-end; ``0003`` and anything above 65520 are invalid.

Nothing here does I/O: callers feed bytes as they arrive and get events back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DELIM",
    "FLUSH",
    "MAX_PAYLOAD_LENGTH",
    "MAX_PKT_LENGTH",
    "RESPONSE_END",
    "Data",
    "Delim",
    "Flush",
    "PktEvent",
    "PktLineError",
    "PktLineReader",
    "ReceivePackCommandParser",
    "RefUpdate",
    "ResponseEnd",
    "encode_pkt",
    "section_end",
]

FLUSH = b"0000"
DELIM = b"0001"
RESPONSE_END = b"0002"

MAX_PKT_LENGTH = 65520  # git's LARGE_PACKET_MAX, length prefix included
MAX_PAYLOAD_LENGTH = MAX_PKT_LENGTH - 4

# int(x, 16) would also accept "+fff", " fff", "-0", "0_1": only plain digits here.
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_LOWER_HEX = frozenset("0123456789abcdef")


class PktLineError(ValueError):
    """Malformed pkt-line stream or receive-pack request."""


@dataclass(frozen=True)
class Data:
    """A data packet."""

    payload: bytes


@dataclass(frozen=True)
class Flush:
    """``0000``: end of a message section."""


@dataclass(frozen=True)
class Delim:
    """``0001``: section delimiter (protocol v2)."""


@dataclass(frozen=True)
class ResponseEnd:
    """``0002``: end of a response (protocol v2 stateless RPC)."""


PktEvent = Data | Flush | Delim | ResponseEnd

_FLUSH = Flush()
_DELIM = Delim()
_RESPONSE_END = ResponseEnd()


def encode_pkt(payload: bytes) -> bytes:
    """Frame ``payload`` as one data pkt-line.

    Raises:
        PktLineError: if the payload exceeds 65516 bytes.
    """
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise PktLineError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_LENGTH}")
    return b"%04x" % (len(payload) + 4) + payload


def _read_length(buf: bytes | bytearray, pos: int) -> int:
    """Decode the 4-byte length header at ``buf[pos:pos+4]`` strictly."""
    header = buf[pos : pos + 4]
    if not _HEX_DIGITS.issuperset(header):
        raise PktLineError(f"invalid pkt-line length {bytes(header)!r}")
    length = int(header, 16)
    if length == 3 or length > MAX_PKT_LENGTH:
        raise PktLineError(f"invalid pkt-line length {length}")
    return length


def _next_packet(buf: bytearray, pos: int) -> tuple[PktEvent, int] | None:
    """Parse one packet at ``pos``; return it and the next position, or None if incomplete."""
    if len(buf) - pos < 4:
        return None
    length = _read_length(buf, pos)
    if length == 0:
        return _FLUSH, pos + 4
    if length == 1:
        return _DELIM, pos + 4
    if length == 2:
        return _RESPONSE_END, pos + 4
    end = pos + length
    if len(buf) < end:
        return None
    return Data(bytes(buf[pos + 4 : end])), end


def section_end(buf: bytes | bytearray, pos: int = 0, max_packets: int = 10_000) -> int | None:
    """The position just after the first flush at or after ``pos`` (the end of a pkt-line
    section such as push options), or None while the section is incomplete.

    Raises:
        PktLineError: on invalid framing, a delim or response-end, or too many packets.
    """
    count = 0
    while (item := _next_packet(bytearray(buf[pos : pos + MAX_PKT_LENGTH]), 0)) is not None:
        event, size = item
        pos += size
        count += 1
        if isinstance(event, Flush):
            return pos
        if not isinstance(event, Data):
            raise PktLineError("unexpected delim/response-end in a section")
        if count > max_packets:
            raise PktLineError(f"more than {max_packets} pkt-lines in a section")
    return None


class PktLineReader:
    """Incremental pkt-line decoder.

    Memory is bounded: between calls the buffer holds at most one incomplete
    packet (< 65520 bytes). After an error the reader stays failed.
    """

    def __init__(self, max_packets: int | None = None) -> None:
        """Create a reader; ``max_packets`` caps packets (of any kind) over the stream."""
        self._buf = bytearray()
        self._max_packets = max_packets
        self._count = 0
        self._failed = False

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered for an incomplete packet."""
        return len(self._buf)

    @property
    def packet_count(self) -> int:
        """Packets decoded so far."""
        return self._count

    def feed(self, data: bytes) -> list[PktEvent]:
        """Consume ``data`` and return every packet it completes, in order.

        Raises:
            PktLineError: on an invalid length or too many packets.
        """
        if self._failed:
            raise PktLineError("pkt-line reader already failed")
        self._buf += data
        events: list[PktEvent] = []
        pos = 0
        try:
            while (item := _next_packet(self._buf, pos)) is not None:
                event, pos = item
                self._count += 1
                if self._max_packets is not None and self._count > self._max_packets:
                    raise PktLineError(f"more than {self._max_packets} pkt-lines")
                events.append(event)
        except PktLineError:
            self._failed = True
            self._buf.clear()
            raise
        del self._buf[:pos]
        return events

    def take_pending(self) -> bytes:
        """The bytes of an incomplete packet held so far, handed back (the buffer empties)."""
        pending = bytes(self._buf)
        self._buf.clear()
        return pending

    def finish(self) -> None:
        """Declare end of stream.

        Raises:
            PktLineError: if a partial packet is still buffered (truncated stream).
        """
        if self._failed:
            raise PktLineError("pkt-line reader already failed")
        if self._buf:
            raise PktLineError(f"stream ended inside a pkt-line ({len(self._buf)} bytes pending)")


_ZERO_OIDS = frozenset(("0" * 40, "0" * 64))
_OBJECT_FORMATS = {"sha1": 40, "sha256": 64}
# git check-ref-format: bytes that may not appear anywhere in a ref name.
_REFNAME_FORBIDDEN = frozenset(" ~^:?*[\\\x7f") | frozenset(chr(c) for c in range(0x20))


@dataclass(frozen=True)
class RefUpdate:
    """One ``<old-oid> <new-oid> <refname>`` command of a push."""

    old: str
    new: str
    ref: str

    @property
    def is_create(self) -> bool:
        """The ref does not exist yet (old oid is all zeros)."""
        return self.old in _ZERO_OIDS

    @property
    def is_delete(self) -> bool:
        """The ref is being deleted (new oid is all zeros)."""
        return self.new in _ZERO_OIDS


def _is_oid(s: str) -> bool:
    return len(s) in (40, 64) and _LOWER_HEX.issuperset(s)


def _check_refname(ref: str) -> None:
    """Apply git's check-ref-format rules, restricted to ``refs/...``.

    Policy code matches these names against grants, so anything git itself
    would reject (``..``, ``//``, ``@{``...) must not get that far.
    """
    if not ref.startswith("refs/") or ref.endswith(("/", ".")):
        raise PktLineError(f"invalid ref name {ref!r}")
    if ".." in ref or "@{" in ref or not _REFNAME_FORBIDDEN.isdisjoint(ref):
        raise PktLineError(f"invalid ref name {ref!r}")
    for component in ref.split("/"):
        if not component or component.startswith(".") or component.endswith(".lock"):
            raise PktLineError(f"invalid ref name {ref!r}")


class ReceivePackCommandParser:
    """Collects ref update commands from a git-receive-pack request body.

    Feed the body as it streams, in any chunking. Parsing stops at the first
    flush: what follows (push options, pack data) is not pkt-line framed in a
    way we inspect, so once :attr:`done` is True further input is ignored.
    """

    def __init__(self, max_commands: int = 10_000, max_shallow: int = 10_000) -> None:
        """Create a parser; the limits cap commands and shallow lines per request."""
        self._buf = bytearray()
        self._max_commands = max_commands
        self._max_shallow = max_shallow
        self._oid_len: int | None = None
        self._shallow_count = 0
        self._consumed = 0
        self._failed = False
        self.commands: list[RefUpdate] = []
        self.capabilities: frozenset[str] = frozenset()
        self.done = False

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered for an incomplete packet."""
        return len(self._buf)

    @property
    def command_section_length(self) -> int:
        """Bytes of the command section consumed so far (including the flush once done)."""
        return self._consumed

    def feed(self, data: bytes) -> None:
        """Consume the next chunk of the request body.

        Raises:
            PktLineError: on malformed framing or commands, push certificates,
                or too many commands / shallow lines.
        """
        if self.done:
            return
        if self._failed:
            raise PktLineError("receive-pack parser already failed")
        self._buf += data
        pos = 0
        try:
            while (item := _next_packet(self._buf, pos)) is not None:
                event, pos = item
                if isinstance(event, Flush):
                    self.done = True
                    break
                if not isinstance(event, Data):
                    raise PktLineError("unexpected delim/response-end in push commands")
                self._handle_line(event.payload)
        except PktLineError:
            self._failed = True
            self._buf.clear()
            raise
        self._consumed += pos
        if self.done:
            # The rest of the buffer is pack data: drop it rather than hold it.
            self._buf = bytearray()
        else:
            del self._buf[:pos]

    def finish(self) -> None:
        """Declare end of body.

        Raises:
            PktLineError: if the body ended before the flush closing the commands.
        """
        if not self.done:
            raise PktLineError("request body ended before the end of the command list")

    def _set_oid_len(self, oid: str) -> None:
        if self._oid_len is None:
            self._oid_len = len(oid)
        elif self._oid_len != len(oid):
            raise PktLineError("object ids of different hash algorithms in one push")

    def _handle_line(self, payload: bytes) -> None:
        if payload.startswith(b"push-cert"):
            raise PktLineError("push certificates not supported")
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PktLineError("push command is not valid UTF-8") from None
        line = line.removesuffix("\n")

        if line.startswith("shallow "):
            # Shallow lines precede the commands; they carry only an oid.
            if self.commands:
                raise PktLineError("shallow line after commands")
            oid = line[len("shallow ") :]
            if not _is_oid(oid):
                raise PktLineError(f"invalid shallow line {line!r}")
            self._set_oid_len(oid)
            self._shallow_count += 1
            if self._shallow_count > self._max_shallow:
                raise PktLineError(f"more than {self._max_shallow} shallow lines")
            return

        command, nul, caps = line.partition("\0")
        if nul:
            if self.commands:
                raise PktLineError("capabilities on a command other than the first")
            self._set_capabilities(caps)
        parts = command.split(" ")
        if len(parts) != 3 or not _is_oid(parts[0]) or not _is_oid(parts[1]):
            raise PktLineError(f"malformed push command {command!r}")
        old, new, ref = parts
        self._set_oid_len(old)
        self._set_oid_len(new)
        _check_refname(ref)
        if len(self.commands) >= self._max_commands:
            raise PktLineError(f"more than {self._max_commands} push commands")
        self.commands.append(RefUpdate(old=old, new=new, ref=ref))

    def _set_capabilities(self, caps: str) -> None:
        self.capabilities = frozenset(c for c in caps.split(" ") if c)
        for cap in self.capabilities:
            name, eq, value = cap.partition("=")
            if name == "object-format" and eq:
                expected = _OBJECT_FORMATS.get(value)
                if expected is None:
                    raise PktLineError(f"unsupported object format {value!r}")
                # Oids parsed before the capability (shallow lines) must agree too.
                if self._oid_len is not None and self._oid_len != expected:
                    raise PktLineError("object ids do not match the object-format capability")
                self._oid_len = expected
