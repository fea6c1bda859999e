"""The telnet login line editor (proto/login.py): the same events for any chunking, no password echo,
bounded lines, erase keys, CR NUL / CR LF / LF line ends, Ctrl-C."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.proto.login import (
    LOGIN_PROMPT,
    MAX_LINE_BYTES,
    PASSWORD_PROMPT,
    Cancelled,
    LoginEvent,
    LoginPrompt,
    Output,
    Submitted,
)


def run(*chunks: bytes) -> tuple[bytes, list[LoginEvent]]:
    prompt = LoginPrompt()
    events = [*prompt.start()]
    for chunk in chunks:
        events.extend(prompt.feed(chunk))
    shown = b"".join(e.data for e in events if isinstance(e, Output))
    return shown, [e for e in events if not isinstance(e, Output)]


def test_user_is_echoed_password_is_not() -> None:
    shown, events = run(b"alice\r\x00s3cret\r\x00")
    assert events == [Submitted("alice", "s3cret")]
    assert shown == LOGIN_PROMPT + b"alice\r\n" + PASSWORD_PROMPT + b"\r\n"


@given(st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    stream = b"bob\r\nhunter2\r\n"
    chunks, rest = [], stream
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    assert run(*chunks) == run(stream)


def test_line_ends_and_erase_keys() -> None:
    assert run(b"al\x7fli\bice\n", b"pw\x15PW\r\n")[1] == [Submitted("alice", "PW")]
    shown, _ = run(b"ab\x7f")
    assert shown.endswith(b"ab\x08 \x08")


def test_lines_are_bounded_and_controls_ignored() -> None:
    _, events = run(b"u" * (MAX_LINE_BYTES + 50) + b"\x1b\x01\r", b"p\r")
    assert events == [Submitted("u" * MAX_LINE_BYTES, "p")]


def test_empty_user_submits_at_once_and_ctrl_c_cancels() -> None:
    assert run(b"\r\n")[1] == [Submitted("", "")]
    assert run(b"ali\x03more")[1] == [Cancelled()]


def test_retry_starts_over_and_typed_ahead_bytes_are_dropped() -> None:
    prompt = LoginPrompt()
    prompt.start()
    assert prompt.feed(b"a\rb\rTYPED-AHEAD")[-1] == Submitted("a", "b")
    assert prompt.feed(b"more") == []
    assert prompt.retry(b"Login incorrect\r\n") == [Output(b"Login incorrect\r\n" + LOGIN_PROMPT)]
    assert [e for e in prompt.feed(b"c\rd\r") if not isinstance(e, Output)] == [Submitted("c", "d")]


def test_password_bytes_are_kept_as_typed() -> None:
    assert run("zoë\r".encode(), "pässwörd 😀\r".encode())[1] == [Submitted("zoë", "pässwörd 😀")]
