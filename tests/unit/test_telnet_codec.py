"""Tests of the sans-I/O telnet codec: protocol vectors, the bad-input catalogue (rows 1-6), hypothesis.

Every vector is fed whole, byte by byte, split in two at every position, and coalesced with surrounding data
in one chunk (the aioesphomeapi frame-helper way); all four must give the same events and the same replies.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.errors import RemoteError
from serialmuxd.proto import telnet
from serialmuxd.proto.telnet import (
    AYT_REPLY,
    BreakReceived,
    DataReceived,
    InterruptReceived,
    TelnetCodec,
    TelnetCommand,
    TelnetEvent,
    TelnetOption,
    TelnetProtocolError,
    WindowSizeChanged,
)

IAC, SB, SE = TelnetCommand.IAC, TelnetCommand.SB, TelnetCommand.SE
WILL, WONT, DO, DONT = TelnetCommand.WILL, TelnetCommand.WONT, TelnetCommand.DO, TelnetCommand.DONT
BINARY, ECHO, SGA, NAWS = TelnetOption.BINARY, TelnetOption.ECHO, TelnetOption.SGA, TelnetOption.NAWS
NEW_ENVIRON, LINEMODE, TTYPE = TelnetOption.NEW_ENVIRON, TelnetOption.LINEMODE, TelnetOption.TTYPE


def b(*parts: int | bytes) -> bytes:
    """Build wire bytes from command/option ints and byte strings."""
    return b"".join(part if isinstance(part, bytes) else bytes([part]) for part in parts)


OPENING_OFFER = b(
    IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, SGA, IAC, WILL, BINARY, IAC, DO, BINARY, IAC, DO, NAWS
)
# What Debian's telnet (inetutils 2.4) answered to the opening offer, byte for byte (window 100 x 40).
INETUTILS_ANSWER = b(
    IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA, IAC, DO, BINARY, IAC, WILL, BINARY, IAC, WILL, NAWS,
    IAC, SB, NAWS, 0, 100, 0, 40, IAC, SE,
)  # fmt: skip
# A client like inetutils that refuses BINARY both ways (non-binary mode, RFC 854 newlines).
NON_BINARY_ANSWER = b(
    IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA, IAC, DONT, BINARY, IAC, WONT, BINARY, IAC, WILL, NAWS
)  # fmt: skip

CodecFactory = Callable[[], TelnetCodec]


def fresh() -> TelnetCodec:
    return TelnetCodec()


def negotiated(answer: bytes) -> TelnetCodec:
    codec = TelnetCodec()
    codec.start()
    assert codec.data_to_send() == OPENING_OFFER
    codec.receive_data(answer)
    codec.events_received()
    assert codec.data_to_send() == b""
    return codec


def binary() -> TelnetCodec:
    codec = negotiated(INETUTILS_ANSWER)
    assert codec.local_enabled(BINARY) and codec.remote_enabled(BINARY)
    return codec


def non_binary() -> TelnetCodec:
    codec = negotiated(NON_BINARY_ANSWER)
    assert not codec.local_enabled(BINARY) and not codec.remote_enabled(BINARY)
    return codec


def merged(events: list[TelnetEvent]) -> list[TelnetEvent]:
    """Join adjacent DataReceived: how data is split between events is not part of the contract."""
    out: list[TelnetEvent] = []
    for event in events:
        if isinstance(event, DataReceived) and out and isinstance(out[-1], DataReceived):
            out[-1] = DataReceived(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed(codec: TelnetCodec, chunks: list[bytes]) -> tuple[list[TelnetEvent], bytes]:
    for chunk in chunks:
        codec.receive_data(chunk)
    return merged(codec.events_received()), codec.data_to_send()


def chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield f"split@{cut}", [data[:cut], data[cut:]]


def check_vector(factory: CodecFactory, data: bytes, events: list[TelnetEvent], reply: bytes = b"") -> None:
    for name, chunks in chunkings(data):
        assert feed(factory(), chunks) == (events, reply), name
    # Coalesced with plain data before and after it in one chunk.
    expected = merged([DataReceived(b"<"), *events, DataReceived(b">")])
    assert feed(factory(), [b"<" + data + b">"]) == (expected, reply), "coalesced"


# -- negotiation -------------------------------------------------------------------------------------------


def test_start_queues_the_opening_offer_once() -> None:
    codec = TelnetCodec()
    codec.start()
    assert codec.data_to_send() == OPENING_OFFER
    codec.start()
    assert codec.data_to_send() == b""
    assert not codec.local_enabled(ECHO)  # only asked for, not agreed yet


def test_real_client_answer_enables_character_mode_binary_and_naws() -> None:
    codec = TelnetCodec()
    codec.start()
    codec.data_to_send()
    codec.receive_data(INETUTILS_ANSWER)
    assert codec.events_received() == [WindowSizeChanged(cols=100, rows=40)]
    assert codec.data_to_send() == b""  # acknowledgements are never answered
    for option in (ECHO, SGA, BINARY):
        assert codec.local_enabled(option)
    for option in (SGA, BINARY, NAWS):
        assert codec.remote_enabled(option)
    assert not codec.remote_enabled(ECHO)


@pytest.mark.parametrize(
    ("request_bytes", "reply", "local", "remote"),
    [
        (b(IAC, DO, ECHO), b(IAC, WILL, ECHO), {ECHO}, set()),
        (b(IAC, DO, ECHO, IAC, DONT, ECHO), b(IAC, WILL, ECHO, IAC, WONT, ECHO), set(), set()),
        (b(IAC, DONT, ECHO), b"", set(), set()),  # already off: no answer
        (b(IAC, DO, ECHO, IAC, DO, ECHO), b(IAC, WILL, ECHO), {ECHO}, set()),  # no answer to a repeat
        (b(IAC, WILL, NAWS), b(IAC, DO, NAWS), set(), {NAWS}),
        (b(IAC, WILL, BINARY), b(IAC, DO, BINARY), set(), {BINARY}),
        (b(IAC, DO, BINARY), b(IAC, WILL, BINARY), {BINARY}, set()),
        (b(IAC, WILL, SGA, IAC, DO, SGA), b(IAC, DO, SGA, IAC, WILL, SGA), {SGA}, {SGA}),
        (b(IAC, WILL, ECHO), b(IAC, DONT, ECHO), set(), set()),  # the client must not echo
        (b(IAC, WONT, ECHO), b"", set(), set()),
        (b(IAC, DO, NEW_ENVIRON), b(IAC, WONT, NEW_ENVIRON), set(), set()),
        (b(IAC, WILL, NEW_ENVIRON), b(IAC, DONT, NEW_ENVIRON), set(), set()),
        (b(IAC, WILL, LINEMODE), b(IAC, DONT, LINEMODE), set(), set()),
        (b(IAC, WILL, TTYPE), b(IAC, DONT, TTYPE), set(), set()),
        (b(IAC, DO, NAWS), b(IAC, WONT, NAWS), set(), set()),  # NAWS is the client's to send
        (
            b(IAC, WILL, TelnetOption.COM_PORT_OPTION),
            b(IAC, DONT, TelnetOption.COM_PORT_OPTION),
            set(),
            set(),
        ),
        (b(IAC, DO, TelnetOption.COM_PORT_OPTION), b(IAC, WONT, TelnetOption.COM_PORT_OPTION), set(), set()),
        (b(IAC, DO, 200), b(IAC, WONT, 200), set(), set()),  # an option nobody defined
        (b(IAC, WONT, 200, IAC, DONT, 200), b"", set(), set()),
    ],
)
def test_negotiation_replies(
    request_bytes: bytes, reply: bytes, local: set[TelnetOption], remote: set[TelnetOption]
) -> None:
    check_vector(fresh, request_bytes, [], reply)
    codec = fresh()
    codec.receive_data(request_bytes)
    assert {option for option in TelnetOption if codec.local_enabled(option)} == local
    assert {option for option in TelnetOption if codec.remote_enabled(option)} == remote


def test_answers_to_our_offer_are_not_answered() -> None:
    codec = TelnetCodec()
    codec.start()
    codec.data_to_send()
    codec.receive_data(b(IAC, DONT, ECHO, IAC, WONT, NAWS, IAC, DO, SGA))  # refusals and an acceptance
    assert codec.data_to_send() == b""
    assert not codec.local_enabled(ECHO) and not codec.remote_enabled(NAWS) and codec.local_enabled(SGA)
    codec.receive_data(b(IAC, DO, ECHO))  # the client changes its mind: a new request, answered once
    assert codec.data_to_send() == b(IAC, WILL, ECHO)
    assert codec.local_enabled(ECHO)


def test_client_may_turn_binary_off_and_on_again() -> None:
    codec = binary()
    for _ in range(10):
        codec.receive_data(b(IAC, WONT, BINARY, IAC, WILL, BINARY))
        assert codec.data_to_send() == b(IAC, DONT, BINARY, IAC, DO, BINARY)
    assert codec.remote_enabled(BINARY)


def test_timing_mark_is_refused_every_time_without_counting() -> None:
    codec = TelnetCodec(max_negotiations_per_option=3)
    codec.receive_data(b(IAC, DO, TelnetOption.TIMING_MARK) * 100)
    assert codec.data_to_send() == b(IAC, WONT, TelnetOption.TIMING_MARK) * 100


def test_q_method_table_is_total_and_keeps_the_queue_bit_in_want_states() -> None:
    table = telnet._Q_METHOD
    valid = [(state, False) for state in telnet._Q] + [(telnet._Q.WANTNO, True), (telnet._Q.WANTYES, True)]
    assert set(table) == {(state, queued, event) for state, queued in valid for event in telnet._QInput}
    for (_, _, event), (state, queued, reply) in table.items():
        assert (state, queued) in valid
        if event in (telnet._QInput.ENABLE_REQUESTED, telnet._QInput.DISABLE_REQUESTED):
            assert reply is not telnet._QReply.ACCEPT_OR_REFUSE


# -- no negotiation loops ---------------------------------------------------------------------------------


def pump(server: TelnetCodec, peer: Callable[[bytes], bytes], first: bytes, max_rounds: int = 10) -> int:
    """Exchange bytes until both sides are quiet; returns the number of rounds it took."""
    to_server = first
    for rounds in range(1, max_rounds + 1):
        server.receive_data(to_server)
        to_peer = server.data_to_send()
        if not to_peer:
            return rounds
        to_server = peer(to_peer)
    raise AssertionError(f"negotiation still going after {max_rounds} rounds")


def triples(data: bytes) -> Iterator[tuple[int, int]]:
    assert len(data) % 3 == 0 and data[::3] == bytes([IAC]) * (len(data) // 3), data
    for i in range(0, len(data), 3):
        yield data[i + 1], data[i + 2]


def agreeing_peer(data: bytes) -> bytes:
    """A naive client that says yes to everything, answering even acknowledgements: the classic looper."""
    answer = {WILL: DO, WONT: DONT, DO: WILL, DONT: WONT}
    return b"".join(b(IAC, answer[TelnetCommand(verb)], option) for verb, option in triples(data))


def refusing_peer(data: bytes) -> bytes:
    """A naive client that says no to everything, every time."""
    answer = {WILL: DONT, WONT: DONT, DO: WONT, DONT: WONT}
    return b"".join(b(IAC, answer[TelnetCommand(verb)], option) for verb, option in triples(data))


@pytest.mark.parametrize("peer", [agreeing_peer, refusing_peer])
def test_naive_peers_do_not_loop(peer: Callable[[bytes], bytes]) -> None:
    server = TelnetCodec()
    server.start()
    asks = b(IAC, WILL, LINEMODE, IAC, DO, ECHO, IAC, WILL, NEW_ENVIRON, IAC, DO, 77)
    assert pump(server, peer, peer(server.data_to_send()) + asks) <= 3


def test_two_codecs_converge_and_agree_on_every_option() -> None:
    server, client = TelnetCodec(), TelnetCodec()
    server.start()
    client.start()
    for _ in range(5):
        to_client, to_server = server.data_to_send(), client.data_to_send()
        if not to_client and not to_server:
            break
        client.receive_data(to_client)
        server.receive_data(to_server)
    else:
        raise AssertionError("codecs kept negotiating")
    for option in range(256):
        assert server.local_enabled(option) == client.remote_enabled(option), option
        assert server.remote_enabled(option) == client.local_enabled(option), option
    assert server.local_enabled(BINARY) and server.remote_enabled(BINARY) and server.local_enabled(SGA)
    assert not server.local_enabled(ECHO)  # the mirror refuses a remote echo, as we do


# -- commands and subnegotiation ---------------------------------------------------------------------------


def naws(cols: int, rows: int) -> bytes:
    size = bytes([cols >> 8, cols & 0xFF, rows >> 8, rows & 0xFF]).replace(b"\xff", b"\xff\xff")
    return b(IAC, SB, NAWS, size, IAC, SE)


@pytest.mark.parametrize(
    ("cols", "rows"), [(80, 24), (100, 40), (255, 24), (80, 255), (65535, 65535), (0, 0), (511, 256)]
)
def test_naws(cols: int, rows: int) -> None:
    check_vector(binary, naws(cols, rows), [WindowSizeChanged(cols=cols, rows=rows)])


def test_naws_255_wide_is_escaped_on_the_wire() -> None:
    assert naws(255, 24) == b(IAC, SB, NAWS, 0, IAC, IAC, 0, 24, IAC, SE)


def test_naws_ignored_unless_enabled_or_malformed() -> None:
    check_vector(fresh, naws(80, 24), [])  # client never said WILL NAWS
    check_vector(binary, b(IAC, SB, NAWS, 0, 80, 0, IAC, SE), [])  # 3 size bytes
    check_vector(binary, b(IAC, SB, NAWS, 0, 80, 0, 24, 0, IAC, SE), [])  # 5 size bytes
    check_vector(binary, b(IAC, SB, IAC, SE), [])  # empty


@pytest.mark.parametrize("factory", [binary, non_binary])
def test_break_interrupt_and_ayt(factory: CodecFactory) -> None:
    check_vector(factory, b(IAC, TelnetCommand.BRK), [BreakReceived()])
    check_vector(factory, b(IAC, TelnetCommand.IP), [InterruptReceived()])
    check_vector(factory, b(IAC, TelnetCommand.AYT), [], AYT_REPLY)
    check_vector(
        factory,
        b"ab" + b(IAC, TelnetCommand.BRK) + b"cd" + b(IAC, TelnetCommand.IP) + b"ef",
        [DataReceived(b"ab"), BreakReceived(), DataReceived(b"cd"), InterruptReceived(), DataReceived(b"ef")],
    )


def test_ayt_flood_gets_one_answer_per_drain() -> None:
    codec = binary()
    codec.receive_data(b(IAC, TelnetCommand.AYT) * 1000)
    assert codec.data_to_send() == AYT_REPLY
    codec.receive_data(b(IAC, TelnetCommand.AYT, IAC, DONT, ECHO, IAC, TelnetCommand.AYT))
    assert codec.data_to_send() == AYT_REPLY + b(IAC, WONT, ECHO)


@pytest.mark.parametrize(
    "command",
    [
        TelnetCommand.NOP,
        TelnetCommand.GA,
        TelnetCommand.AO,
        TelnetCommand.EC,
        TelnetCommand.EL,
        TelnetCommand.DM,
        TelnetCommand.SE,
        0,
        239,
        ord("A"),
    ],
)
def test_other_commands_are_consumed_silently(command: int) -> None:
    check_vector(binary, b"x" + b(IAC, command) + b"y", [DataReceived(b"xy")])


def test_iac_other_inside_subnegotiation_ends_it_and_is_a_command() -> None:
    check_vector(
        binary, b(IAC, SB, NAWS, 0, 80, IAC, TelnetCommand.BRK) + b"z", [BreakReceived(), DataReceived(b"z")]
    )
    check_vector(fresh, b(IAC, SB, TTYPE, 0, IAC, DO, ECHO), [], b(IAC, WILL, ECHO))


def test_open_subnegotiation_at_eof_is_pending_not_an_error() -> None:
    codec = binary()
    codec.receive_data(b(IAC, SB, NAWS, 0, 80))
    assert codec.events_received() == [] and codec.data_to_send() == b""
    codec.receive_data(b(0, 24, IAC, SE) + b"k")
    assert codec.events_received() == [WindowSizeChanged(80, 24), DataReceived(b"k")]


# -- data, 0xFF and newlines (catalogue rows 4-6) ----------------------------------------------------------


@pytest.mark.parametrize("factory", [binary, non_binary, fresh])
def test_escaped_ff_is_one_data_byte(factory: CodecFactory) -> None:
    check_vector(
        factory, b"a" + b(IAC, IAC) + b"b" + b(IAC, IAC, IAC, IAC), [DataReceived(b"a\xffb\xff\xff")]
    )


@pytest.mark.parametrize(
    ("first", "second", "events", "reply"),
    [
        (b"ab\xff", b"\xffcd", [DataReceived(b"ab\xffcd")], b""),
        (
            b"ab\xff",
            b(TelnetCommand.BRK) + b"cd",
            [DataReceived(b"ab"), BreakReceived(), DataReceived(b"cd")],
            b"",
        ),
        (b"ab\xff", b(DONT, ECHO), [DataReceived(b"ab")], b(IAC, WONT, ECHO)),
        (b"ab\xff", b(TelnetCommand.AYT), [DataReceived(b"ab")], AYT_REPLY),
    ],
)
def test_row4_lone_iac_at_the_end_of_a_segment(
    first: bytes, second: bytes, events: list[TelnetEvent], reply: bytes
) -> None:
    split = binary()
    split.receive_data(first)
    assert split.data_to_send() == b""
    assert feed(split, [second]) == (events, reply)
    assert feed(binary(), [first + second]) == (events, reply)


@pytest.mark.parametrize(
    ("wire", "guest"),
    [
        (b"root\r\x00", b"root\r"),
        (b"root\r\n", b"root\r"),
        (b"a\rb", b"a\rb"),  # a bare CR (not RFC 854, but harmless) stays a CR
        (b"\r\r\n", b"\r\r"),
        (b"\r\x00\n", b"\r\n"),  # the LF belongs to nobody: it stays
        (b"\r\n\x00", b"\r\x00"),
        (b"\n", b"\n"),
        (b"\x00", b"\x00"),
        (b"\r" + b(IAC, IAC) + b"\x00", b"\r\xff\x00"),
        (b"\r" + b(IAC, TelnetCommand.NOP) + b"\x00", b"\r"),  # a command in between: still the CR's NUL
    ],
)
def test_row6_cr_translation_when_the_client_is_not_binary(wire: bytes, guest: bytes) -> None:
    check_vector(non_binary, wire, [DataReceived(guest)])
    check_vector(fresh, wire, [DataReceived(guest)])


@pytest.mark.parametrize("wire", [b"root\r\x00", b"root\r\n", b"\r\x00\n", b"a\rb\r"])
def test_row6_no_translation_when_the_client_is_binary(wire: bytes) -> None:
    check_vector(binary, wire, [DataReceived(wire)])


def test_row6_cr_at_the_end_of_a_chunk_is_delivered_at_once() -> None:
    codec = non_binary()
    codec.receive_data(b"ls\r")
    assert codec.events_received() == [DataReceived(b"ls\r")]  # the getty sees Enter without waiting
    codec.receive_data(b"\x00")
    assert codec.events_received() == []
    codec.receive_data(b"\n")  # a later LF is a new byte
    assert codec.events_received() == [DataReceived(b"\n")]


def test_binary_switch_mid_stream_changes_translation() -> None:
    codec = fresh()
    codec.receive_data(b"a\r\x00" + b(IAC, WILL, BINARY) + b"b\r\x00")
    assert merged(codec.events_received()) == [DataReceived(b"a\rb\r\x00")]


# -- encode (catalogue row 5) ------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [binary, non_binary])
def test_row5_guest_ff_is_doubled(factory: CodecFactory) -> None:
    assert factory().encode(b"\xff") == b"\xff\xff"
    assert factory().encode(b"a\xff\xffb") == b"a\xff\xff\xff\xffb"


def test_encode_cr_in_non_binary_mode() -> None:
    codec = non_binary()
    assert codec.encode(b"login: \r\n") == b"login: \r\n"
    assert codec.encode(b"50%\r75%\r") == b"50%\r\x0075%\r\x00"
    assert codec.encode(b"\r\r\n\xff\r") == b"\r\x00\r\n\xff\xff\r\x00"


def test_encode_cr_in_binary_mode_is_unchanged() -> None:
    assert binary().encode(b"50%\r75%\r\n") == b"50%\r75%\r\n"


def test_encode_plain_data_is_not_copied() -> None:
    data = b"plain guest output\r\n" * 100
    assert binary().encode(data) is data
    assert non_binary().encode(b"no carriage return") == b"no carriage return"


def test_plain_binary_data_passes_through_without_an_event() -> None:
    codec = binary()
    assert codec.passes_through(b"ls -l\r")
    assert codec.events_received() == [] and codec.data_to_send() == b""
    assert not codec.passes_through(b"a\xff\xffb")  # an escaped 0xFF needs the parser
    assert not codec.passes_through(b"")
    codec.receive_data(b(IAC))  # half a command pending: the next byte belongs to it
    assert not codec.passes_through(b"a")
    assert not non_binary().passes_through(b"abc")  # CR NUL / CR LF translation needs the parser


def test_pass_through_or_parse_give_the_same_stream() -> None:
    """What the front end does (plain chunks straight through, the rest parsed) equals parsing all."""
    brk, nop = TelnetCommand.BRK, TelnetCommand.NOP
    chunks = [b"a", b"b\r", b"\x00", b(IAC, IAC), b"c", b(IAC, brk), b"d", b(IAC), b(nop), b"e\r\n", b"f"]
    parsed, _ = feed(binary(), chunks)
    codec = binary()
    events: list[TelnetEvent] = []
    for chunk in chunks:
        if codec.passes_through(chunk):
            events.append(DataReceived(chunk))
        else:
            codec.receive_data(chunk)
            events += codec.events_received()
    assert merged(events) == parsed


def test_one_chunk_encoded_for_many_sessions_in_either_mode() -> None:
    """The fan-out hands the same chunk to every session in turn; each gets its own mode's wire form,
    however the binary and non-binary sessions alternate."""
    chunk = b"a\rb\xffc\r\n"
    codecs = [binary(), non_binary(), non_binary(), binary(), non_binary()]
    wire = [codec.encode(chunk) for codec in codecs]
    for codec, got in zip(codecs, wire, strict=True):
        assert got == (b"a\rb\xff\xffc\r\n" if codec.local_enabled(BINARY) else b"a\r\x00b\xff\xffc\r\n")
    other = bytes(chunk)  # equal bytes, another object: encoded on its own
    assert non_binary().encode(b"x" + other) == b"xa\r\x00b\xff\xffc\r\n"


def test_row5_client_sees_the_guest_bytes_exactly() -> None:
    guest = bytes(range(256)) * 4
    client = TelnetCodec()
    client.receive_data(b(IAC, WILL, BINARY))
    client.data_to_send()
    assert feed(client, [binary().encode(guest)]) == ([DataReceived(guest)], b"")


# -- limits (catalogue rows 1-3) ---------------------------------------------------------------------------


def test_row1_huge_subnegotiation_fails_at_the_cap() -> None:
    codec = binary()
    with pytest.raises(TelnetProtocolError, match="option NAWS exceeds 1024 bytes"):
        codec.receive_data(b(IAC, SB, NAWS) + b"\x00" * (1 << 20))
    assert isinstance(TelnetProtocolError("x"), RemoteError)
    with pytest.raises(TelnetProtocolError):  # the codec stays failed
        codec.receive_data(b"more")


def test_row1_byte_by_byte_subnegotiation_fails_at_exactly_the_cap() -> None:
    codec = binary()
    codec.receive_data(b(IAC, SB))
    for _ in range(1024):  # the option byte plus 1023 payload bytes fit
        codec.receive_data(b"\x01")
    with pytest.raises(TelnetProtocolError, match="option ECHO exceeds 1024 bytes"):  # same message as whole
        codec.receive_data(b"\x01")
    assert len(codec._subnegotiation) <= 1024


def test_row1_escaped_iac_counts_against_the_cap() -> None:
    codec = TelnetCodec(max_subnegotiation_bytes=8)
    codec.receive_data(b(IAC, SB, TTYPE) + b"\xff\xff" * 7 + b(IAC, SE))  # 8 bytes unescaped: fine
    with pytest.raises(TelnetProtocolError):
        codec.receive_data(b(IAC, SB, TTYPE) + b"\xff\xff" * 8 + b(IAC, SE))


def test_row1_data_before_the_error_is_delivered() -> None:
    codec = TelnetCodec(max_subnegotiation_bytes=4)
    with pytest.raises(TelnetProtocolError):
        codec.receive_data(b"typed" + b(IAC, SB, NAWS) + b"12345")
    assert codec.events_received() == [DataReceived(b"typed")]


def test_row2_do_dont_flood_is_cut_off_with_bounded_replies() -> None:
    codec = TelnetCodec()
    flood = b(IAC, DO, ECHO, IAC, DONT, ECHO) * 5000
    with pytest.raises(TelnetProtocolError, match="too many telnet negotiations for option ECHO"):
        codec.receive_data(flood)
    replies = codec.data_to_send()
    assert replies == b(IAC, WILL, ECHO, IAC, WONT, ECHO) * 25  # one per change, 50 in all


def test_row2_flood_in_small_segments_is_cut_off_at_the_same_point() -> None:
    codec = TelnetCodec()
    sent = 0
    with pytest.raises(TelnetProtocolError):
        for verb in [DO, DONT] * 5000:
            codec.receive_data(b(IAC, verb, ECHO))
            sent += 1
    assert sent == 50
    assert len(codec.data_to_send()) == 50 * 3


def test_row2_refused_option_flood_is_cut_off() -> None:
    codec = TelnetCodec(max_negotiations_per_option=5)
    with pytest.raises(TelnetProtocolError, match="LINEMODE"):
        codec.receive_data(b(IAC, WILL, LINEMODE) * 1000)
    assert codec.data_to_send() == b(IAC, DONT, LINEMODE) * 5


def test_limits_are_per_option() -> None:
    codec = TelnetCodec(max_negotiations_per_option=2)
    codec.receive_data(b(IAC, DO, ECHO, IAC, DONT, ECHO, IAC, DO, SGA, IAC, DONT, SGA))
    with pytest.raises(TelnetProtocolError):
        codec.receive_data(b(IAC, DO, ECHO))


def test_row3_new_environ_user_is_ignored() -> None:
    attack = b(IAC, SB, NEW_ENVIRON, 0, 0) + b"USER" + b(1) + b'"-f root"' + b(IAC, SE)
    check_vector(binary, attack, [])
    check_vector(
        fresh, b(IAC, WILL, NEW_ENVIRON) + attack + b"x", [DataReceived(b"x")], b(IAC, DONT, NEW_ENVIRON)
    )


def test_constructor_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        TelnetCodec(max_subnegotiation_bytes=0)
    with pytest.raises(ValueError):
        TelnetCodec(max_negotiations_per_option=0)


# -- hypothesis ----------------------------------------------------------------------------------------------

# Fragments that make interesting telnet streams far more likely than uniform random bytes do.
_TOKENS = [
    bytes([IAC]),
    b(IAC, IAC),
    b"\r",
    b"\x00",
    b"\n",
    b"a",
    b"longer run",  # crosses the small subnegotiation cap in one slice
    b"\r\n",
    b"\r\x00",
    b(IAC, SB),
    b(IAC, SE),
    b(IAC, SB, NAWS),
    b(0, 80, 0, 24),
    b(IAC, SB, NAWS, 0, 80, 0, 24, 0, 0),  # too long for the small cap used below
    b(IAC, TelnetCommand.BRK),
    b(IAC, TelnetCommand.IP),
    b(IAC, TelnetCommand.AYT),
    b(IAC, TelnetCommand.NOP),
    *(b(IAC, verb, option) for verb in (WILL, WONT, DO, DONT) for option in (BINARY, ECHO, SGA, NAWS, 39, 6)),
]
telnet_streams = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join),
    st.binary(max_size=200),
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    return [data[start:stop] for start, stop in itertools.pairwise(points)]


def run_chunks(codec: TelnetCodec, chunks: list[bytes]) -> tuple[list[TelnetEvent], bytes, str | None]:
    """Feed until the end or the first error; returns merged events, replies and the error message."""
    error = None
    try:
        for chunk in chunks:
            codec.receive_data(chunk)
    except TelnetProtocolError as exc:
        error = str(exc)
    return merged(codec.events_received()), codec.data_to_send(), error


def small_limits_codec(start: bool) -> TelnetCodec:
    codec = TelnetCodec(max_subnegotiation_bytes=6, max_negotiations_per_option=4)
    if start:
        codec.start()
    return codec


@settings(max_examples=300, deadline=None)
@given(
    data=telnet_streams,
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    start=st.booleans(),
)
def test_property_chunking_invariance(data: bytes, cuts: list[int], start: bool) -> None:
    chunks = split_at(data, cuts)
    whole = run_chunks(small_limits_codec(start), [data])
    assert run_chunks(small_limits_codec(start), chunks) == whole
    assert run_chunks(small_limits_codec(start), [data[i : i + 1] for i in range(len(data))]) == whole


@settings(max_examples=300, deadline=None)
@given(data=telnet_streams, start=st.booleans())
def test_property_arbitrary_input_raises_only_protocol_errors(data: bytes, start: bool) -> None:
    codec = small_limits_codec(start)
    with contextlib.suppress(TelnetProtocolError):
        codec.receive_data(data)
    for event in codec.events_received():
        if isinstance(event, DataReceived):
            assert event.data  # never an empty data event


@settings(max_examples=200, deadline=None)
@given(guest=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6))
def test_property_binary_round_trip(guest: bytes, cuts: list[int]) -> None:
    wire = binary().encode(guest)
    client = TelnetCodec()
    client.receive_data(b(IAC, WILL, BINARY))
    client.data_to_send()
    events, replies = feed(client, split_at(wire, cuts))
    assert replies == b""
    assert events == ([DataReceived(guest)] if guest else [])
