"""The client's ssh-style escape key (serialmuxd/client/escape.py): line starts, every command, prompts,
the takeover answer, and the same events for any chunking of the same keystrokes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.client.escape import (
    COMMANDS,
    Action,
    Ask,
    Cancelled,
    Do,
    EscapeParser,
    Event,
    Need,
    Send,
    escape_name,
    help_text,
    parse_escape,
)


def feed(data: bytes, escape: int | None = ord("~")) -> list[Event]:
    return EscapeParser(escape).feed(data)


def merged(events: list[Event]) -> list[Event]:
    """Adjacent Sends joined: how chunks split the bytes is not part of the contract."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Send) and out and isinstance(out[-1], Send):
            out[-1] = Send(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def test_plain_typing_passes_through() -> None:
    assert feed(b"ls -l\r") == [Send(b"ls -l\r")]


@pytest.mark.parametrize(("key", "action"), [(c.key, c.action) for c in COMMANDS if c.need is Need.NOTHING])
def test_each_command_at_session_start(key: str, action: Action) -> None:
    assert feed(b"~" + key.encode()) == [Do(action)]


def test_escape_only_at_line_start() -> None:
    assert feed(b"a~.") == [Send(b"a~.")]
    assert feed(b"a\r~.") == [Send(b"a\r"), Do(Action.DETACH)]
    assert feed(b"a\n~.") == [Send(b"a\n"), Do(Action.DETACH)]


def test_double_escape_sends_one_literal() -> None:
    assert feed(b"~~") == [Send(b"~")]
    # ... and is not a line start any more: the next ~ is typed too.
    assert feed(b"~~~.") == [Send(b"~~.")]


def test_unknown_command_goes_to_the_guest_as_typed() -> None:
    assert feed(b"~z") == [Send(b"~z")]
    assert feed(b"~\r~.") == [Send(b"~\r"), Do(Action.DETACH)]


def test_commands_leave_a_line_start() -> None:
    assert feed(b"~?~.") == [Do(Action.HELP), Do(Action.DETACH)]


def test_sysrq_takes_the_next_printable_key() -> None:
    assert feed(b"~ss") == [Ask(Action.SYSRQ, Need.KEY), Do(Action.SYSRQ, "s")]
    assert feed(b"~s\x1b") == [Ask(Action.SYSRQ, Need.KEY), Cancelled(Action.SYSRQ)]
    assert feed(b"~s ") == [Ask(Action.SYSRQ, Need.KEY), Cancelled(Action.SYSRQ)]


@pytest.mark.parametrize("action,key", [(Action.NMI, b"n"), (Action.RESET, b"x")])
def test_confirmed_commands(action: Action, key: bytes) -> None:
    assert feed(b"~" + key + b"y") == [Ask(action, Need.CONFIRM), Do(action)]
    assert feed(b"~" + key + b"Y") == [Ask(action, Need.CONFIRM), Do(action)]
    # Anything else cancels, and that key is not typed into the guest.
    assert feed(b"~" + key + b"q") == [Ask(action, Need.CONFIRM), Cancelled(action)]
    assert feed(b"~" + key + b"\r") == [Ask(action, Need.CONFIRM), Cancelled(action)]


def test_other_escape_characters_and_none() -> None:
    assert feed(b"\x1d.", escape=0x1D) == [Do(Action.DETACH)]
    assert feed(b"~.", escape=None) == [Send(b"~.")]
    assert feed(b"\r~.", escape=None) == [Send(b"\r~.")]


def test_takeover_answer() -> None:
    parser = EscapeParser()
    parser.feed(b"x")  # not at a line start: the answer does not depend on it
    parser.expect_answer()
    assert parser.feed(b"y") == [Do(Action.ANSWER_TAKEOVER, "y")]
    parser.expect_answer()
    assert parser.feed(b"N") == [Do(Action.ANSWER_TAKEOVER, "n")]
    parser.expect_answer()
    assert parser.feed(b"ab") == [Send(b"ab")]  # anything else is typed, and the question is gone
    assert parser.feed(b"y") == [Send(b"y")]
    parser.expect_answer()
    parser.answer_settled()
    assert parser.feed(b"y") == [Send(b"y")]


def test_parse_escape() -> None:
    assert parse_escape("~") == ord("~")
    assert parse_escape("^]") == 0x1D
    assert parse_escape("^a") == 0x01
    assert parse_escape("none") is None
    assert parse_escape("NONE") is None
    for bad in ("", "ab", "é", "\r", "^1"):
        with pytest.raises(ValueError, match="escape must be"):
            parse_escape(bad)
    assert escape_name(0x1D) == "^]"
    assert escape_name(ord("~")) == "~"


def test_help_lists_every_command() -> None:
    text = help_text(ord("~"))
    for command in COMMANDS:
        assert f"~{command.key}" in text
    assert "~~" in text
    assert "no escape key" in help_text(None)


@given(st.binary(max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_any_chunking_gives_the_same_events(data: bytes, cuts: list[int]) -> None:
    whole = merged(EscapeParser().feed(data))
    parser = EscapeParser()
    events: list[Event] = []
    last = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        events += parser.feed(data[last:cut])
        last = cut
    events += parser.feed(data[last:])
    assert merged(events) == whole


@given(st.binary(max_size=60).filter(lambda b: b"~" not in b))
def test_without_the_escape_byte_everything_passes(data: bytes) -> None:
    assert b"".join(e.data for e in EscapeParser().feed(data) if isinstance(e, Send)) == data
