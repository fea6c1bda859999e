"""The SSH user-name grammar (frontends/ssh_user.py): CONSOLE[.ro|.rw|.force][.option=value...]."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.config import PORT_NAME_RE
from serialmuxd.frontends.ssh_user import (
    MAX_REPLAY_LINES,
    ConsoleRequest,
    MalformedUserName,
    SshMode,
    parse_user_name,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vm1", ConsoleRequest("vm1")),
        ("vm1.ro", ConsoleRequest("vm1", SshMode.READ_ONLY)),
        ("vm1.force", ConsoleRequest("vm1", SshMode.FORCE)),
        ("vm1.rw", ConsoleRequest("vm1", SshMode.INTERACTIVE)),
        ("vm1.replay-lines=200", ConsoleRequest("vm1", replay_lines=200)),
        ("vm1.ro.replay-lines=0", ConsoleRequest("vm1", SshMode.READ_ONLY, 0)),
        ("web.prod", ConsoleRequest("web.prod")),  # console names may hold dots
        ("web.prod.force", ConsoleRequest("web.prod", SshMode.FORCE)),
        ("lab.ro.rw", ConsoleRequest("lab.ro")),  # a console whose name ends in .ro: spell the mode out
        ("ro", ConsoleRequest("ro")),  # a lone mode word is a console name
        ("vm1.ro.force", ConsoleRequest("vm1.ro", SshMode.FORCE)),  # only the last mode word is a mode
    ],
)
def test_valid_names(name: str, expected: ConsoleRequest) -> None:
    assert parse_user_name(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "the user name is empty"),
        ("x" * 300, "longer than 256"),
        ("vm1.Replay=1", "options are written .name=value"),
        ("vm1.colour=red", "unknown option 'colour'"),
        ("vm1.replay-lines=1.replay-lines=2", "option replay-lines is given twice"),
        ("vm1.replay-lines=-1", "replay-lines must be a number from 0"),
        ("vm1.replay-lines=007", "replay-lines must be a number from 0"),
        (f"vm1.replay-lines={MAX_REPLAY_LINES + 1}", "replay-lines must be a number from 0"),
        ("vm1.replay-lines=5.ro", "'vm1.replay-lines=5' is not a console name"),  # options after the mode
        ("-vm1", "is not a console name"),
        ("vm 1", "is not a console name"),
        ("vm1/../x", "is not a console name"),
        ("vm1\x1b[2J", "is not a console name"),
    ],
)
def test_malformed_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(MalformedUserName) as caught:
        parse_user_name(name)
    assert reason in str(caught.value)


@given(st.from_regex(PORT_NAME_RE, fullmatch=True), st.sampled_from(list(SshMode)))
def test_every_console_name_round_trips_with_an_explicit_mode(console: str, mode: SshMode) -> None:
    assert parse_user_name(f"{console}.{mode}") == ConsoleRequest(console, mode)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_a_reason(name: str) -> None:
    try:
        request = parse_user_name(name)
    except MalformedUserName as exc:
        assert str(exc)
    else:
        assert PORT_NAME_RE.fullmatch(request.console)
