"""Tests for airlock.core.pktline."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.core.pktline import (
    DELIM,
    FLUSH,
    MAX_PAYLOAD_LENGTH,
    MAX_PKT_LENGTH,
    RESPONSE_END,
    Data,
    Delim,
    Flush,
    PktEvent,
    PktLineError,
    PktLineReader,
    ReceivePackCommandParser,
    RefUpdate,
    ResponseEnd,
    encode_pkt,
)


def encode_event(event: PktEvent) -> bytes:
    if isinstance(event, Data):
        return encode_pkt(event.payload)
    if isinstance(event, Flush):
        return FLUSH
    if isinstance(event, Delim):
        return DELIM
    return RESPONSE_END


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- encoding ---------------------------------------------------------------------


def test_encode_pkt() -> None:
    assert encode_pkt(b"hello\n") == b"000ahello\n"
    assert encode_pkt(b"") == b"0004"
    big = encode_pkt(b"x" * MAX_PAYLOAD_LENGTH)
    assert big[:4] == b"fff0"
    assert len(big) == MAX_PKT_LENGTH
    with pytest.raises(PktLineError):
        encode_pkt(b"x" * (MAX_PAYLOAD_LENGTH + 1))


def test_reader_basic() -> None:
    reader = PktLineReader()
    stream = b"000ahello\n" + FLUSH + DELIM + RESPONSE_END + b"0004" + b"0005x"
    assert reader.feed(stream) == [
        Data(b"hello\n"),
        Flush(),
        Delim(),
        ResponseEnd(),
        Data(b""),
        Data(b"x"),
    ]
    assert reader.pending_bytes == 0
    assert reader.packet_count == 6
    reader.finish()


def test_reader_partial_and_uppercase_hex() -> None:
    reader = PktLineReader()
    assert reader.feed(b"00") == []
    assert reader.feed(b"0A") == []
    assert reader.pending_bytes == 4
    assert reader.feed(b"hello") == []
    with pytest.raises(PktLineError, match="inside a pkt-line"):
        reader.finish()
    assert reader.feed(b"\n0000") == [Data(b"hello\n"), Flush()]
    reader.finish()


@pytest.mark.parametrize(
    "header",
    [
        b"+fff",  # int(x, 16) accepts a sign ...
        b"-001",
        b" fff",  # ... surrounding whitespace ...
        b"fff ",
        b"0_0a",  # ... and underscores
        b"0x10",
        b"000g",
        b"\xff\xff\xff\xff",
        b"\x000\x000",
        b"0003",  # reserved/invalid small length
        b"fff1",  # 65521 > LARGE_PACKET_MAX
        b"ffff",
        b"PACK",
    ],
)
def test_strict_length_rejected(header: bytes) -> None:
    reader = PktLineReader()
    with pytest.raises(PktLineError):
        reader.feed(header + b"x" * 16)
    # The reader stays failed rather than resynchronizing on attacker data.
    with pytest.raises(PktLineError):
        reader.feed(b"0000")


def test_max_packets() -> None:
    reader = PktLineReader(max_packets=3)
    assert reader.feed(b"0005a0000") == [Data(b"a"), Flush()]
    assert reader.feed(b"0001") == [Delim()]
    with pytest.raises(PktLineError, match="more than 3"):
        reader.feed(b"0000")


def test_max_packets_within_one_feed() -> None:
    with pytest.raises(PktLineError):
        PktLineReader(max_packets=2).feed(FLUSH * 3)


# --- properties -------------------------------------------------------------------


def _sized_payload(n: int, seed: bytes) -> bytes:
    return (seed * (n // len(seed) + 1))[:n]


payloads = st.one_of(
    st.binary(min_size=1, max_size=64),
    # Large payloads up to the limit without asking hypothesis for 64 KiB of entropy.
    st.builds(
        _sized_payload, st.integers(1, MAX_PAYLOAD_LENGTH), st.binary(min_size=1, max_size=16)
    ),
)
events_st = st.lists(
    st.one_of(
        payloads.map(Data),
        st.just(Flush()),
        st.just(Delim()),
        st.just(ResponseEnd()),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(events_st, st.data())
def test_round_trip_any_chunking(events: list[PktEvent], data: st.DataObject) -> None:
    stream = b"".join(encode_event(e) for e in events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    reader = PktLineReader()
    got: list[PktEvent] = []
    for chunk in split_at(stream, cuts):
        got.extend(reader.feed(chunk))
        assert reader.pending_bytes < MAX_PKT_LENGTH
    assert got == events
    assert reader.pending_bytes == 0
    reader.finish()


# Streams that mix valid framing with junk, so both paths get exercised.
_fragments = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([FLUSH, DELIM, RESPONSE_END, b"0003", b"fff0", b"fff1", b"+fff", b"0004"]),
    payloads.map(encode_pkt),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_fragments, max_size=10), st.data())
def test_arbitrary_bytes_only_pktline_error(fragments: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(fragments)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    reader = PktLineReader(max_packets=data.draw(st.none() | st.integers(0, 10)))
    try:
        for chunk in split_at(stream, cuts):
            events = reader.feed(chunk)
            assert all(isinstance(e, Data | Flush | Delim | ResponseEnd) for e in events)
            assert reader.pending_bytes < MAX_PKT_LENGTH
    except PktLineError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_parser_arbitrary_bytes_only_pktline_error(raw: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8), label="cuts")
    parser = ReceivePackCommandParser()
    try:
        for chunk in split_at(raw, cuts):
            parser.feed(chunk)
            assert parser.pending_bytes < MAX_PKT_LENGTH
    except PktLineError:
        pass


# --- receive-pack commands --------------------------------------------------------

ZERO1 = "0" * 40
A1 = "a" * 40
B1 = "0123456789abcdef0123456789abcdef01234567"
ZERO2 = "0" * 64
A2 = "ab" * 32
B2 = "0123456789abcdef" * 4
PACK = b"PACK\x00\x00\x00\x02\x00\x00\x00\x03" + bytes(range(256))
CAPS1 = "report-status side-band-64k quiet object-format=sha1 agent=git/2.43.0"
CAPS2 = "report-status-v2 side-band-64k object-format=sha256 agent=git/2.45.0"


def pkt(line: str | bytes) -> bytes:
    return encode_pkt(line.encode() if isinstance(line, str) else line)


def realistic_body() -> bytes:
    return (
        pkt(f"shallow {B1}")
        + pkt(f"shallow {A1}")
        + pkt(f"{ZERO1} {A1} refs/heads/feature/x\0{CAPS1}")
        + pkt(f"{A1} {B1} refs/heads/main")
        + pkt(f"{B1} {ZERO1} refs/tags/v1.0\n")
        + FLUSH
        + PACK
    )


EXPECTED = [
    RefUpdate(ZERO1, A1, "refs/heads/feature/x"),
    RefUpdate(A1, B1, "refs/heads/main"),
    RefUpdate(B1, ZERO1, "refs/tags/v1.0"),
]


def check_realistic(parser: ReceivePackCommandParser, body: bytes) -> None:
    assert parser.done
    assert parser.commands == EXPECTED
    assert parser.capabilities == frozenset(CAPS1.split())
    assert parser.command_section_length == len(body) - len(PACK)
    assert parser.pending_bytes == 0
    parser.finish()


def test_receive_pack_whole() -> None:
    body = realistic_body()
    parser = ReceivePackCommandParser()
    parser.feed(body)
    check_realistic(parser, body)
    assert parser.commands[0].is_create
    assert not parser.commands[0].is_delete
    assert parser.commands[2].is_delete
    assert not parser.commands[1].is_create


def test_receive_pack_split_at_every_boundary() -> None:
    body = realistic_body()
    for i in range(len(body) + 1):
        parser = ReceivePackCommandParser()
        parser.feed(body[:i])
        parser.feed(body[i:])
        check_realistic(parser, body)


def test_receive_pack_byte_by_byte() -> None:
    body = realistic_body()
    parser = ReceivePackCommandParser()
    for i in range(len(body)):
        parser.feed(body[i : i + 1])
        assert parser.done == (i >= len(body) - len(PACK) - 1)
    check_realistic(parser, body)


def test_receive_pack_sha256() -> None:
    body = (
        pkt(f"shallow {B2}")
        + pkt(f"{A2} {B2} refs/heads/main\0{CAPS2}\n")
        + pkt(f"{ZERO2} {A2} refs/heads/new")
        + FLUSH
        + PACK
    )
    for i in range(len(body) + 1):
        parser = ReceivePackCommandParser()
        parser.feed(body[:i])
        parser.feed(body[i:])
        assert parser.done
        assert parser.commands == [
            RefUpdate(A2, B2, "refs/heads/main"),
            RefUpdate(ZERO2, A2, "refs/heads/new"),
        ]
        assert "object-format=sha256" in parser.capabilities
        assert parser.commands[1].is_create


def test_receive_pack_no_commands_and_ignores_pack() -> None:
    parser = ReceivePackCommandParser()
    parser.feed(FLUSH + b"garbage that is not pkt-line")
    assert parser.done
    assert parser.commands == []
    # Once done, input is ignored, even if it would be malformed.
    parser.feed(b"\xff" * 100_000)
    assert parser.pending_bytes == 0
    assert parser.command_section_length == 4


def test_receive_pack_first_command_without_capabilities() -> None:
    parser = ReceivePackCommandParser()
    parser.feed(pkt(f"{A1} {B1} refs/heads/main") + FLUSH)
    assert parser.commands == [RefUpdate(A1, B1, "refs/heads/main")]
    assert parser.capabilities == frozenset()


def test_receive_pack_unterminated() -> None:
    parser = ReceivePackCommandParser()
    parser.feed(pkt(f"{A1} {B1} refs/heads/main\0{CAPS1}"))
    assert not parser.done
    with pytest.raises(PktLineError, match="ended before"):
        parser.finish()


def test_receive_pack_max_commands() -> None:
    lines = b"".join(pkt(f"{A1} {B1} refs/heads/b{i}") for i in range(4))
    parser = ReceivePackCommandParser(max_commands=4)
    parser.feed(lines + FLUSH)
    assert len(parser.commands) == 4
    parser = ReceivePackCommandParser(max_commands=3)
    with pytest.raises(PktLineError, match="more than 3"):
        parser.feed(lines + FLUSH)
    with pytest.raises(PktLineError):
        parser.feed(FLUSH)  # stays failed


def test_receive_pack_max_shallow() -> None:
    parser = ReceivePackCommandParser(max_shallow=1)
    with pytest.raises(PktLineError, match="shallow"):
        parser.feed(pkt(f"shallow {A1}") + pkt(f"shallow {B1}"))


MALFORMED: list[tuple[str, bytes]] = [
    ("push-cert", pkt(f"push-cert\0{CAPS1}") + pkt("certificate version 0.1\n")),
    ("push-cert after shallow", pkt(f"shallow {A1}") + pkt("push-cert\0report-status")),
    ("uppercase oid", pkt(f"{A1.upper()} {B1} refs/heads/main")),
    ("short oid", pkt(f"{A1[:39]} {B1} refs/heads/main")),
    ("long oid", pkt(f"{A1}a {B1} refs/heads/main")),
    ("non-hex oid", pkt(f"{'g' * 40} {B1} refs/heads/main")),
    ("missing ref", pkt(f"{A1} {B1}")),
    ("empty ref", pkt(f"{A1} {B1} ")),
    ("extra field", pkt(f"{A1} {B1} refs/heads/main extra")),
    ("double space", pkt(f"{A1}  {B1} refs/heads/main")),
    ("tab separated", pkt(f"{A1}\t{B1}\trefs/heads/main")),
    ("HEAD", pkt(f"{A1} {B1} HEAD")),
    ("not under refs/", pkt(f"{A1} {B1} heads/main")),
    ("bare refs/", pkt(f"{A1} {B1} refs/")),
    ("dot-dot ref", pkt(f"{A1} {B1} refs/heads/../../config")),
    ("double slash ref", pkt(f"{A1} {B1} refs/heads//main")),
    ("trailing slash ref", pkt(f"{A1} {B1} refs/heads/main/")),
    ("trailing dot ref", pkt(f"{A1} {B1} refs/heads/main.")),
    ("dot component", pkt(f"{A1} {B1} refs/heads/.hidden")),
    (".lock ref", pkt(f"{A1} {B1} refs/heads/main.lock")),
    ("reflog syntax", pkt(f"{A1} {B1} refs/heads/main@{{1}}")),
    ("control char ref", pkt(f"{A1} {B1} refs/heads/ma\x01in")),
    ("colon ref", pkt(f"{A1} {B1} refs/heads/a:b")),
    ("glob ref", pkt(f"{A1} {B1} refs/heads/*")),
    ("backslash ref", pkt(f"{A1} {B1} refs/heads/a\\b")),
    ("non-utf8", pkt(A1.encode() + b" " + B1.encode() + b" refs/heads/\xff")),
    ("caps on second command", pkt(f"{A1} {B1} refs/heads/a") + pkt(f"{A1} {B1} refs/heads/b\0x")),
    ("shallow after command", pkt(f"{A1} {B1} refs/heads/a") + pkt(f"shallow {A1}")),
    ("bad shallow", pkt(f"shallow {A1[:10]}")),
    ("mixed hash lengths", pkt(f"{A1} {B2} refs/heads/a")),
    ("mixed across commands", pkt(f"{A1} {B1} refs/heads/a") + pkt(f"{A2} {B2} refs/heads/b")),
    ("object-format mismatch", pkt(f"{A1} {B1} refs/heads/a\0object-format=sha256")),
    (
        "shallow vs object-format",
        pkt(f"shallow {A1}") + pkt(f"{A2} {B2} refs/a\0object-format=sha256"),
    ),
    ("unknown object-format", pkt(f"{A1} {B1} refs/heads/a\0object-format=md5")),
    ("empty packet", b"0004"),
    ("delim", pkt(f"{A1} {B1} refs/heads/a") + DELIM),
    ("response-end", RESPONSE_END),
    ("bad length", b"+fff"),
    ("pack without commands", PACK),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_receive_pack_malformed(name: str, body: bytes) -> None:
    parser = ReceivePackCommandParser()
    with pytest.raises(PktLineError):
        parser.feed(body + FLUSH)


def test_push_cert_message() -> None:
    with pytest.raises(PktLineError, match="push certificates not supported"):
        ReceivePackCommandParser().feed(pkt(f"push-cert\0{CAPS1}"))


_oid1 = st.text("0123456789abcdef", min_size=40, max_size=40)
_ref_component = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
)
_refs = st.lists(_ref_component, min_size=1, max_size=4).map(lambda c: "refs/" + "/".join(c))
_commands = st.lists(st.builds(RefUpdate, _oid1, _oid1, _refs), max_size=8)


@settings(max_examples=300, deadline=None)
@given(_commands, st.lists(_oid1, max_size=3), st.binary(max_size=50), st.data())
def test_receive_pack_round_trip(
    commands: list[RefUpdate], shallow: list[str], pack: bytes, data: st.DataObject
) -> None:
    body = b"".join(pkt(f"shallow {oid}") for oid in shallow)
    for i, cmd in enumerate(commands):
        caps = f"\0{CAPS1}" if i == 0 else ""
        body += pkt(f"{cmd.old} {cmd.new} {cmd.ref}{caps}")
    body += FLUSH
    section = len(body)
    body += pack
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10), label="cuts")
    parser = ReceivePackCommandParser()
    for chunk in split_at(body, cuts):
        parser.feed(chunk)
    assert parser.done
    assert parser.commands == commands
    assert parser.command_section_length == section
