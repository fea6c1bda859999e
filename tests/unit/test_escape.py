"""Tests of the in-band escape key: key spec, help text, the parser FSM in every chunking, hypothesis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.proto.escape import (
    COMMANDS,
    Command,
    EscapeCommand,
    EscapeEvent,
    EscapeParser,
    EscapeState,
    PassThrough,
    UnknownEscape,
    escape_key_name,
    help_text,
    parse_escape_key,
)

E = b"\x05"  # Ctrl-E, the default prefix

# -- escape key spec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "byte"),
    [
        ("^E", 0x05),
        ("^]", 0x1D),
        ("^A", 0x01),
        ("^_", 0x1F),
        ("^\\", 0x1C),
        ("^^", 0x1E),
        ("^Z", 0x1A),
        ("", None),
    ],
)
def test_parse_escape_key(spec: str, byte: int | None) -> None:
    assert parse_escape_key(spec) == byte


@pytest.mark.parametrize(
    "spec",
    ["^@", "^H", "^I", "^J", "^M", "^[", "^e", "^?", "^", "E", "^EE", "^`", " ^E", "Ctrl-E", "\x05", "^ "],
)
def test_parse_escape_key_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_escape_key(spec)


def test_escape_key_name_is_the_inverse_of_parse() -> None:
    assert escape_key_name(0x05) == "Ctrl-E"
    assert escape_key_name(0x1D) == "Ctrl-]"
    for code in range(ord("A"), ord("_") + 1):
        spec = "^" + chr(code)
        try:
            byte = parse_escape_key(spec)
        except ValueError:
            continue
        assert byte is not None
        assert escape_key_name(byte) == "Ctrl-" + spec[1]
    with pytest.raises(ValueError):
        escape_key_name(0x41)


def test_help_text() -> None:
    lines = help_text(0x05)
    # Lines without line ends: the front end writes each one as a marked serialmuxd line.
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert lines[0] == "commands:"
    assert lines[1] == "Ctrl-E c .  detach"
    assert len(lines) - 1 == len(COMMANDS)
    for row in COMMANDS:
        assert any(line.startswith(f"Ctrl-E c {row.key}  ") for line in lines)
    assert help_text(0x1D)[1].startswith("Ctrl-] c .  ")


def test_command_table_is_one_key_per_command() -> None:
    assert len({row.key for row in COMMANDS}) == len(COMMANDS)
    assert {row.command for row in COMMANDS} == set(Command)
    assert all(len(row.key) == 1 and row.key.isascii() and row.key != "c" for row in COMMANDS)
    keys = {row.key: row.command for row in COMMANDS}
    assert keys == {
        ".": Command.DETACH,
        "f": Command.TAKE_OVER,
        "r": Command.READ_ONLY,
        "p": Command.REPLAY,
        "b": Command.BREAK,
        "w": Command.WHO,
        "n": Command.NMI,
        "x": Command.RESET,
        "g": Command.RESTART,
        "?": Command.HELP,
    }


# -- the parser --------------------------------------------------------------------------------------------


def merged(events: list[EscapeEvent]) -> list[EscapeEvent]:
    out: list[EscapeEvent] = []
    for event in events:
        if isinstance(event, PassThrough) and out and isinstance(out[-1], PassThrough):
            out[-1] = PassThrough(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed(parser: EscapeParser, chunks: list[bytes]) -> list[EscapeEvent]:
    events: list[EscapeEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return merged(events)


def chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield f"split@{cut}", [data[:cut], data[cut:]]


@pytest.mark.parametrize(
    ("data", "events"),
    [
        (b"ls -l\r", [PassThrough(b"ls -l\r")]),
        (E + b"c.", [EscapeCommand(Command.DETACH)]),
        (b"ab" + E + b"cfcd", [PassThrough(b"ab"), EscapeCommand(Command.TAKE_OVER), PassThrough(b"cd")]),
        (E + b"x", [PassThrough(E + b"x")]),  # Ctrl-E stays usable
        (E + b"C.", [PassThrough(E + b"C.")]),  # only a lower-case c starts a command
        (E + E + b"c.", [PassThrough(E), EscapeCommand(Command.DETACH)]),
        (E + E + E + b"x", [PassThrough(E + E + E + b"x")]),
        (E + b"cz", [UnknownEscape(b"z")]),
        (E + b"cc", [UnknownEscape(b"c")]),
        (E + b"c" + E, [UnknownEscape(E)]),
        (E + b"c" + E + b"c.", [UnknownEscape(E), PassThrough(b"c.")]),
        (b"c.", [PassThrough(b"c.")]),
        (E + b"cr" + E + b"cp", [EscapeCommand(Command.READ_ONLY), EscapeCommand(Command.REPLAY)]),
        (
            E + b"cb" + E + b"cw" + E + b"c?",
            [EscapeCommand(c) for c in (Command.BREAK, Command.WHO, Command.HELP)],
        ),
    ],
)
def test_vectors_in_every_chunking(data: bytes, events: list[EscapeEvent]) -> None:
    for name, chunks in chunkings(data):
        assert feed(EscapeParser(0x05), chunks) == events, name
    coalesced = merged([PassThrough(b"<"), *events, PassThrough(b">")])
    assert feed(EscapeParser(0x05), [b"<" + data + b">"]) == coalesced, "coalesced"


def test_every_command_key_dispatches() -> None:
    for row in COMMANDS:
        assert EscapeParser(0x05).feed(E + b"c" + row.key.encode()) == [EscapeCommand(row.command)]


def test_prefix_at_the_end_of_a_chunk_is_held_until_the_next_byte() -> None:
    parser = EscapeParser(0x05)
    steps: list[tuple[list[EscapeEvent], EscapeState]] = []
    for chunk in [b"vi" + E, b"x", E, b"c", b".more"]:
        steps.append((parser.feed(chunk), parser.state))
    assert steps == [
        ([PassThrough(b"vi")], EscapeState.PREFIX_SEEN),
        ([PassThrough(E + b"x")], EscapeState.IDLE),
        ([], EscapeState.PREFIX_SEEN),
        ([], EscapeState.COMMAND),
        ([EscapeCommand(Command.DETACH), PassThrough(b"more")], EscapeState.IDLE),
    ]


def test_other_prefix_key() -> None:
    parser = EscapeParser(0x1D)
    assert parser.feed(E + b"c.\x1dc.") == [PassThrough(E + b"c."), EscapeCommand(Command.DETACH)]


def test_disabled_parser_passes_everything() -> None:
    parser = EscapeParser(None)
    data = E + b"c." + b"\x1dc."
    assert parser.feed(data) == [PassThrough(data)]
    assert parser.feed(b"") == []


def test_fast_path_returns_the_input_itself() -> None:
    data = b"a long paste without the prefix\r" * 1000
    (event,) = EscapeParser(0x05).feed(data)
    assert isinstance(event, PassThrough) and event.data is data
    assert EscapeParser(0x05).feed(b"") == []


def test_prefix_c_is_refused() -> None:
    with pytest.raises(ValueError):
        EscapeParser(ord("c"))
    with pytest.raises(ValueError):
        EscapeParser(256)


# -- hypothesis ----------------------------------------------------------------------------------------------

inputs = st.lists(st.sampled_from([E, b"c", b".", b"f", b"x", b"\r", b"\x1d", E + b"c"]), max_size=30).map(
    b"".join
)


@settings(max_examples=300, deadline=None)
@given(data=inputs, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_property_chunking_invariance(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    chunks = [data[start:stop] for start, stop in itertools.pairwise(points)]
    assert feed(EscapeParser(0x05), chunks) == feed(EscapeParser(0x05), [data])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200).map(lambda data: data.replace(E, b"")))
def test_property_without_prefix_output_is_input(data: bytes) -> None:
    assert feed(EscapeParser(0x05), [data]) == ([PassThrough(data)] if data else [])
    assert feed(EscapeParser(0x05), [data[i : i + 1] for i in range(len(data))]) == merged(
        [PassThrough(data)] if data else []
    )


@settings(max_examples=200, deadline=None)
@given(data=inputs)
def test_property_prefix_never_followed_by_c_passes_unchanged(data: bytes) -> None:
    data = data.replace(E + b"c", E + b"x")
    if data.endswith(E):
        data += b"!"
    while E + b"c" in data:  # the replace above can create a new "prefix c" from "prefix prefix c"
        data = data.replace(E + b"c", E + b"x")
    assert feed(EscapeParser(0x05), [data]) == ([PassThrough(data)] if data else [])
