"""Sans-I/O validation of git-upload-pack request bodies (what a fetch or clone sends).

The gateway forwards an upload-pack body only after this module has parsed all of it as
the request git's own client sends for the protocol version in use, so the upstream never
receives a byte the gateway did not understand. The grammar accepted (from git's
``Documentation/gitprotocol-pack.txt``, ``gitprotocol-http.txt`` and
``gitprotocol-v2.txt``), with ``PKT(x)`` one pkt-line:

Protocol v0 and v1 (stateless RPC, one negotiation round per POST)::

    body      = PKT("want" SP oid SP caps) *(PKT("want" SP oid) / shallow / deepen / filter)
                flush [rounds]
    shallow   = PKT("shallow" SP oid)
    deepen    = PKT("deepen" SP n) / PKT("deepen-since" SP ts) / PKT("deepen-not" SP ref)
    filter    = PKT("filter" SP spec)       ; only with the "filter" capability
    rounds    = *(*PKT("have" SP oid) flush) *PKT("have" SP oid) (PKT("done") / flush)

(A shallow clone's first POST is the want list alone: the server answers with its shallow
lines before the client sends any have.)

Protocol v2 (one command per POST)::

    body      = PKT("command=" ("ls-refs" / "fetch")) *PKT(capability) [delim *PKT(arg)] flush

Capabilities and arguments are those of git's client and GitHub's server; anything else
(``packfile-uris``, ``bundle-uri``, ``object-info``, unknown words) is refused, and so is
trailing data after the request's end. Lines may end in LF or not, as in git.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from airlock.core.pktline import Data, Delim, Flush, PktEvent, PktLineError, PktLineReader

__all__ = [
    "MAX_LINES",
    "UploadPackRefused",
    "UploadPackRequest",
    "parse_protocol_version",
    "parse_upload_pack_request",
]

MAX_LINES = 1_000_000  # wants + haves + everything else in one body

# Capabilities git's fetch-pack puts on its first v0/v1 want line (fetch-pack.c), and the
# ones a v0 server may advertise that a client may echo back.
_V0_CAPABILITIES = frozenset(
    {
        "multi_ack",
        "multi_ack_detailed",
        "no-done",
        "thin-pack",
        "side-band",
        "side-band-64k",
        "ofs-delta",
        "shallow",
        "deepen-since",
        "deepen-not",
        "deepen-relative",
        "no-progress",
        "include-tag",
        "allow-tip-sha1-in-want",
        "allow-reachable-sha1-in-want",
        "filter",
    }
)
_V0_VALUED_CAPABILITIES = frozenset({"agent", "object-format", "session-id"})
# v2 capability lines a client sends before the command's arguments.
_V2_VALUED_CAPABILITIES = frozenset({"agent", "object-format", "session-id", "server-option"})
_V2_LS_REFS_FLAGS = frozenset({"symrefs", "peel", "unborn"})
_V2_FETCH_FLAGS = frozenset(
    {
        "done",
        "thin-pack",
        "no-progress",
        "include-tag",
        "ofs-delta",
        "deepen-relative",
        "wait-for-done",
        "sideband-all",
    }
)
_OID_LENGTHS = {"sha1": 40, "sha256": 64}
_LOWER_HEX = frozenset("0123456789abcdef")
# Values (agent, session id, server options, ref prefixes) are short printable ASCII without
# spaces; filter specs are git's grammar (blob:none, tree:0, combine:...+..., URL-escaped).
_VALUE = re.compile(r"^[\x21-\x7e]{1,256}$")
_FILTER = re.compile(r"^[A-Za-z0-9:=+%._-]{1,256}$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,9})$")
# git check-ref-format: bytes that never appear in a ref name.
_REF_FORBIDDEN = frozenset(" ~^:?*[\\\x7f") | frozenset(chr(c) for c in range(0x20))


class UploadPackRefused(ValueError):
    """The body is not an upload-pack request the gateway forwards; the text says why."""


@dataclass
class UploadPackRequest:
    """What a valid body asks for (counts and options, for the audit log)."""

    version: int
    command: str  # "fetch" or "ls-refs"; v0/v1 bodies are always "fetch"
    wants: int = 0
    want_refs: int = 0
    haves: int = 0
    done: bool = False
    shallow: int = 0
    deepen: str | None = None  # "3", "since 1700000000", "not refs/heads/x", "relative"
    filter: str | None = None
    ref_prefixes: int = 0
    capabilities: list[str] = field(default_factory=list)

    def audit_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"command": self.command}
        if self.command == "fetch":
            fields.update(wants=self.wants + self.want_refs, haves=self.haves, done=self.done)
        if self.deepen is not None:
            fields["deepen"] = self.deepen
        if self.filter is not None:
            fields["filter"] = self.filter
        return fields


def parse_protocol_version(header: str | None) -> int:
    """The protocol version a ``Git-Protocol`` header selects (0 when absent).

    Only ``version=0``, ``version=1`` and ``version=2`` are accepted, once: git's server
    would take the largest of several, and an upstream reading another key the gateway
    does not know could disagree with what was checked here.
    """
    if header is None or header == "":
        return 0
    match = re.fullmatch(r"version=([012])", header)
    if match is None:
        raise UploadPackRefused(f"unsupported Git-Protocol header {header[:64]!r}")
    return int(match.group(1))


def _lines(body: bytes) -> list[PktEvent]:
    reader = PktLineReader(max_packets=MAX_LINES)
    try:
        events = reader.feed(body)
        reader.finish()
    except PktLineError as exc:
        raise UploadPackRefused(str(exc)) from None
    return events


def _text(event: PktEvent) -> str:
    assert isinstance(event, Data)
    try:
        line = event.payload.decode("ascii")
    except UnicodeDecodeError:
        raise UploadPackRefused("a request line is not ASCII") from None
    line = line.removesuffix("\n")
    if not line.isprintable():
        raise UploadPackRefused(f"control character in request line {line[:64]!r}")
    return line


class _Oids:
    """Object ids of one request, all of one hash algorithm."""

    def __init__(self) -> None:
        self.length: int | None = None
        self.declared = False

    def set_format(self, name: str) -> None:
        length = _OID_LENGTHS.get(name)
        if length is None:
            raise UploadPackRefused(f"unsupported object format {name[:32]!r}")
        if self.length is not None and self.length != length:
            raise UploadPackRefused("object ids do not match the object-format capability")
        self.length = length
        self.declared = True

    def check(self, oid: str, what: str) -> None:
        if len(oid) not in (40, 64) or not _LOWER_HEX.issuperset(oid):
            raise UploadPackRefused(f"invalid object id in {what} line")
        if self.length is None:
            self.length = len(oid)
        elif self.length != len(oid):
            if self.declared:
                raise UploadPackRefused("object ids do not match the object-format capability")
            raise UploadPackRefused("object ids of different hash algorithms in one request")


def _check_ref(ref: str, what: str) -> None:
    bad = (
        not ref
        or len(ref) > 1024
        or ref.endswith(("/", "."))
        or ".." in ref
        or "@{" in ref
        or not _REF_FORBIDDEN.isdisjoint(ref)
        or any(not c or c.startswith(".") or c.endswith(".lock") for c in ref.split("/"))
    )
    if bad:
        raise UploadPackRefused(f"invalid ref name in {what} line")


def _check_value(value: str, what: str) -> None:
    if not _VALUE.match(value):
        raise UploadPackRefused(f"invalid {what}")


def _check_filter(spec: str) -> None:
    if not _FILTER.match(spec):
        raise UploadPackRefused("invalid filter spec")


def _check_decimal(value: str, what: str, *, positive: bool = False) -> None:
    if not _DECIMAL.match(value) or (positive and value == "0"):
        raise UploadPackRefused(f"invalid {what}")


def _shape_line(word: str, rest: str, request: UploadPackRequest, oids: _Oids) -> bool:
    """A shallow, deepen or filter line (the same in v0/v1 and in v2 fetch arguments):
    checked and recorded; False for any other word."""
    if word == "shallow":
        oids.check(rest, "shallow")
        request.shallow += 1
    elif word == "deepen":
        _check_decimal(rest, "deepen depth", positive=True)
        request.deepen = rest
    elif word == "deepen-since":
        _check_decimal(rest, "deepen-since timestamp")
        request.deepen = f"since {rest}"
    elif word == "deepen-not":
        _check_ref(rest, "deepen-not")
        request.deepen = f"not {rest}"
    elif word == "filter":
        _check_filter(rest)
        request.filter = rest
    else:
        return False
    return True


def _v0_capabilities(words: list[str], oids: _Oids, request: UploadPackRequest) -> None:
    for word in words:
        name, eq, value = word.partition("=")
        if eq:
            if name not in _V0_VALUED_CAPABILITIES:
                raise UploadPackRefused(f"capability {name[:32]!r} is not forwarded")
            _check_value(value, f"{name} capability")
            if name == "object-format":
                oids.set_format(value)
        elif word not in _V0_CAPABILITIES:
            raise UploadPackRefused(f"capability {word[:32]!r} is not forwarded")
        request.capabilities.append(name)


def _parse_v0(events: list[PktEvent], version: int) -> UploadPackRequest:
    request = UploadPackRequest(version=version, command="fetch")
    oids = _Oids()
    i = 0
    n = len(events)
    # The want section: wants (capabilities on the first), then shallow, deepen and filter
    # lines in any order (as git's upload-pack reads them), then a flush.
    while True:
        if i >= n:
            raise UploadPackRefused("body ended before the end of the want list")
        event = events[i]
        i += 1
        if isinstance(event, Flush):
            break
        if not isinstance(event, Data):
            raise UploadPackRefused("unexpected delim or response-end in a v0 request")
        line = _text(event)
        word, _, rest = line.partition(" ")
        if request.wants == 0 and word != "want":
            raise UploadPackRefused("a v0 request starts with a want line")
        if word == "want":
            oid, _, caps = rest.partition(" ")
            if request.wants == 0:
                _v0_capabilities([c for c in caps.split(" ") if c], oids, request)
            elif caps:
                raise UploadPackRefused("capabilities on a want line other than the first")
            oids.check(oid, "want")
            request.wants += 1
        elif word == "filter" and "filter" not in request.capabilities:
            raise UploadPackRefused("a filter line without the filter capability")
        elif not _shape_line(word, rest, request, oids):
            raise UploadPackRefused(f"unexpected {word[:32]!r} line in the want list")
    if request.wants == 0:
        raise UploadPackRefused("a v0 request starts with a want line")
    # A shallow or filtered clone's first round ends here: the server answers the want
    # list (shallow/unshallow lines) before any have is sent.
    if i == n:
        return request
    # Negotiation: haves, a flush after each batch, then "done" or a final flush.
    while True:
        if i >= n:
            raise UploadPackRefused("body ended before the end of the negotiation")
        event = events[i]
        i += 1
        if isinstance(event, Flush):
            if i == n:
                break
            continue
        if not isinstance(event, Data):
            raise UploadPackRefused("unexpected delim or response-end in a v0 request")
        line = _text(event)
        word, _, rest = line.partition(" ")
        if word == "have":
            oids.check(rest, "have")
            request.haves += 1
        elif line == "done":
            request.done = True
            if i != n:
                raise UploadPackRefused("data after done")
            break
        else:
            raise UploadPackRefused(f"unexpected {word[:32]!r} line in the negotiation")
    return request


def _parse_v2(events: list[PktEvent]) -> UploadPackRequest:
    if not events or not isinstance(events[0], Data):
        raise UploadPackRefused("a v2 request starts with a command line")
    first = _text(events[0])
    key, eq, command = first.partition("=")
    if key != "command" or not eq:
        raise UploadPackRefused("a v2 request starts with a command line")
    if command not in ("ls-refs", "fetch"):
        raise UploadPackRefused(f"v2 command {command[:32]!r} is not forwarded")
    request = UploadPackRequest(version=2, command=command)
    oids = _Oids()
    i = 1
    n = len(events)
    # Capability lines up to the delim (or a flush when there are no arguments).
    while True:
        if i >= n:
            raise UploadPackRefused("body ended inside the capability list")
        event = events[i]
        i += 1
        if isinstance(event, Delim):
            break
        if isinstance(event, Flush):
            if i != n:
                raise UploadPackRefused("data after the end of the request")
            return request
        if not isinstance(event, Data):
            raise UploadPackRefused("unexpected response-end in a request")
        name, eq, value = _text(event).partition("=")
        if name not in _V2_VALUED_CAPABILITIES or not eq:
            raise UploadPackRefused(f"capability {name[:32]!r} is not forwarded")
        _check_value(value, f"{name} capability")
        if name == "object-format":
            oids.set_format(value)
        request.capabilities.append(name)
    while True:
        if i >= n:
            raise UploadPackRefused("body ended before the flush closing the arguments")
        event = events[i]
        i += 1
        if isinstance(event, Flush):
            if i != n:
                raise UploadPackRefused("data after the end of the request")
            return request
        if not isinstance(event, Data):
            raise UploadPackRefused("unexpected delim or response-end among the arguments")
        line = _text(event)
        if command == "ls-refs":
            _ls_refs_argument(line, request)
        else:
            _fetch_argument(line, request, oids)


def _ls_refs_argument(line: str, request: UploadPackRequest) -> None:
    if line in _V2_LS_REFS_FLAGS:
        return
    word, _, rest = line.partition(" ")
    if word == "ref-prefix" and rest:
        _check_value(rest, "ref-prefix")
        request.ref_prefixes += 1
        return
    raise UploadPackRefused(f"ls-refs argument {word[:32]!r} is not forwarded")


def _fetch_argument(line: str, request: UploadPackRequest, oids: _Oids) -> None:
    if line in _V2_FETCH_FLAGS:
        if line == "done":
            request.done = True
        elif line == "deepen-relative":
            request.deepen = "relative" if request.deepen is None else request.deepen
        return
    word, _, rest = line.partition(" ")
    if word == "want":
        oids.check(rest, "want")
        request.wants += 1
    elif word == "want-ref":
        _check_ref(rest, "want-ref")
        request.want_refs += 1
    elif word == "have":
        oids.check(rest, "have")
        request.haves += 1
    elif not _shape_line(word, rest, request, oids):
        raise UploadPackRefused(f"fetch argument {word[:32]!r} is not forwarded")


def parse_upload_pack_request(body: bytes, version: int) -> UploadPackRequest:
    """Parse a whole (already decoded) upload-pack request body for ``version``.

    Raises:
        UploadPackRefused: the body is not a request git's client would send.
    """
    events = _lines(body)
    if version == 2:
        return _parse_v2(events)
    return _parse_v0(events, version)
