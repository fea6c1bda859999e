"""A notice's hint in a terminal front end's words: the hub's text says what happened, the front end adds
how to act on it with its own keys (telnet and SSH: the port's escape setting), or nothing."""

from __future__ import annotations

from serialmuxd.frontends.telnet import escape_hint
from serialmuxd.hub import Hint, Notice, NoticeKind, notice_line
from serialmuxd.proto import escape as esc


def test_notice_line_adds_the_front_ends_keys_only_to_hinted_notices() -> None:
    hinted = Notice(NoticeKind.READ_ONLY, "read-only: input not sent", hint=Hint.TAKE_OVER)
    plain = Notice(NoticeKind.READ_ONLY, "you are now read-only")
    assert (
        notice_line(hinted, lambda hint: "Ctrl-E c f") == "read-only: input not sent (Ctrl-E c f takes over)"
    )
    assert notice_line(hinted, lambda hint: None) == "read-only: input not sent"
    assert notice_line(plain, lambda hint: "never asked") == "you are now read-only"


def test_escape_hint_names_the_sessions_escape_keys() -> None:
    assert escape_hint(esc.EscapeParser(esc.parse_escape_key("^E")).prefix, Hint.TAKE_OVER) == "Ctrl-E c f"
    assert escape_hint(esc.EscapeParser(esc.parse_escape_key("^]")).prefix, Hint.TAKE_OVER) == "Ctrl-] c f"
    assert escape_hint(esc.EscapeParser(esc.parse_escape_key("")).prefix, Hint.TAKE_OVER) is None  # off
    # The keys come from the command table, so the help text and the hint cannot disagree.
    assert f"{escape_hint(0x05, Hint.TAKE_OVER)}  take over writing (force)" in esc.help_text(0x05)
    assert esc.command_keys(0x1D, esc.Command.DETACH) == "Ctrl-] c ."


def test_every_hint_has_words_and_escape_keys() -> None:
    for hint in Hint:
        assert escape_hint(0x05, hint) is not None
        assert notice_line(Notice(NoticeKind.INFO, "x", hint=hint), lambda _: "K").startswith("x (K ")
