"""The client's pure parts: error codes to exit codes, the settings' precedence and checks, control
characters made visible, stream offsets and the missed-bytes report, the attach-mode rule, the ports
table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd import __version__
from serialmuxd.client.commands import ports_table, version_line
from serialmuxd.client.connect import attach_mode
from serialmuxd.client.errors import CODE_EXITS, ClientError, Exit, api_error, exit_for
from serialmuxd.client.escape import hint_text
from serialmuxd.client.lines import StatusLines
from serialmuxd.client.main import build_parser
from serialmuxd.client.resume import Cursor, Resumption
from serialmuxd.client.settings import (
    DEFAULT_URL,
    ENVIRONMENT,
    FILE_KEYS,
    PASSWORD_ENV,
    authorization,
    check_url,
    config_path,
    load_file,
    read_token,
    resolve,
)
from serialmuxd.client.visible import Visualiser, visible
from serialmuxd.frontends.http.errors import ERROR_CODES

# -- exit codes ---------------------------------------------------------------------------------------------


def test_every_daemon_error_code_has_an_exit_code() -> None:
    assert set(CODE_EXITS) == set(ERROR_CODES)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("unknown_port", 404, Exit.NOT_FOUND),
        ("unauthorized", 401, Exit.DENIED),
        ("forbidden", 403, Exit.DENIED),
        ("console_in_use", 409, Exit.CONFLICT),
        ("console_disabled", 503, Exit.UNAVAILABLE),
        ("hypervisor_failed", 502, Exit.FAILED),
        ("bad_request", 400, Exit.USAGE),
        (None, 404, Exit.NOT_FOUND),
        (None, 409, Exit.CONFLICT),
        (None, 500, Exit.FAILED),
        ("some_new_code", 503, Exit.UNAVAILABLE),
    ],
)
def test_exit_for(code: str | None, status: int, expected: Exit) -> None:
    assert exit_for(code, status) is expected


def test_api_error_message() -> None:
    err = api_error(409, {"code": "console_in_use", "message": "alice is writing"}, "break vm1")
    assert str(err) == "break vm1: alice is writing (console_in_use)" and err.exit_code is Exit.CONFLICT
    assert str(api_error(502, None, "nmi vm1")) == "nmi vm1: HTTP 502"


# -- settings -----------------------------------------------------------------------------------------------


def test_precedence_flags_then_environment_then_file(tmp_path: Path) -> None:
    file = {"url": "http://file:1", "user": "fileuser", "escape": "^]"}
    env = {"SERIALMUX_URL": "http://env:2", "SERIALMUX_USER": "envuser"}
    s = resolve({"url": "https://flag:3"}, env, file)
    assert (s.url, s.user, s.escape) == ("https://flag:3", "envuser", "^]")
    assert resolve({}, {}, {}).url == DEFAULT_URL
    assert resolve({}, {}, {}).escape == "~"


def test_config_path() -> None:
    assert config_path({"SERIALMUX_CONFIG": "/x/c.toml"}) == Path("/x/c.toml")
    assert config_path({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/serialmux/config.toml")


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = "https://h:8443"\ntoken_file = "token"\nca_file = "/etc/ca.pem"\n')
    assert load_file(path, True) == {
        "url": "https://h:8443",
        "token_file": str(tmp_path / "token"),
        "ca_file": "/etc/ca.pem",
    }
    assert load_file(tmp_path / "missing.toml", False) == {}
    with pytest.raises(ClientError, match="no such file"):
        load_file(tmp_path / "missing.toml", True)
    path.write_text('urll = "x"\n')
    with pytest.raises(ClientError, match=r"config\.toml: urll: unknown key") as info:
        load_file(path, True)
    assert info.value.exit_code is Exit.USAGE
    path.write_text("url = 5\n")
    with pytest.raises(ClientError, match="url: must be a string"):
        load_file(path, True)
    path.write_text("url = \n")
    with pytest.raises(ClientError, match=r"config\.toml"):
        load_file(path, True)


@pytest.mark.parametrize(
    "url",
    ["ftp://h", "http://", "http://u:p@h:1", "http://h:1/api", "http://h:99999", "http://h?x=1", "h:1"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ClientError) as info:
        check_url(url)
    assert info.value.exit_code is Exit.USAGE


def test_good_urls() -> None:
    assert check_url("http://127.0.0.1:8480/") == "http://127.0.0.1:8480"
    assert check_url("https://[::1]:8443") == "https://[::1]:8443"


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret-token \nsecond line\n")
    path.chmod(0o600)
    assert read_token(path) == "s3cret-token"
    s = resolve({"token_file": str(path)}, {}, {})
    assert authorization(s, lambda _: "unused") == "Bearer s3cret-token"
    path.chmod(0o640)
    with pytest.raises(ClientError, match="others may read it"):
        read_token(path)
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ClientError, match="empty"):
        read_token(path)


def test_password_from_environment_or_prompt() -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "pw"

    s = resolve({"user": "alice"}, {"SERIALMUX_PASSWORD": "env-pw"}, {})
    assert authorization(s, prompt) == "Basic YWxpY2U6ZW52LXB3"  # alice:env-pw
    assert asked == []
    s = resolve({"user": "alice"}, {}, {})
    assert authorization(s, prompt) == "Basic YWxpY2U6cHc="  # alice:pw
    assert asked == ["password for alice: "]
    assert authorization(resolve({}, {}, {}), prompt) is None

    def no_terminal(text: str) -> str:
        raise EOFError

    with pytest.raises(ClientError, match="SERIALMUX_PASSWORD"):
        authorization(s, no_terminal)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8480", False),
        ("http://localhost:8480", False),
        ("http://[::1]:8480", False),
        ("http://[::ffff:127.0.0.1]:8480", False),
        ("https://consoles.example.com", False),
        ("http://consoles.example.com:8480", True),
        ("http://10.0.0.5:8480", True),
        ("http://[2001:db8::1]:8480", True),
    ],
)
def test_credentials_never_go_over_plain_http_off_this_host(url: str, refused: bool) -> None:
    # A password (prompted or not) or a token would cross the network in clear: refused before the
    # prompt, before the token file is read; nothing to refuse without credentials.
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "pw"

    s = resolve({"user": "alice", "url": url}, {}, {})
    if refused:
        with pytest.raises(ClientError, match=r"over plain http to .*: use https://"):
            authorization(s, prompt)
        assert asked == []
        with pytest.raises(ClientError, match="over plain http"):
            authorization(resolve({"token_file": "/nonexistent", "url": url}, {}, {}), prompt)
    else:
        assert authorization(s, prompt) == "Basic YWxpY2U6cHc="
    assert authorization(resolve({"url": url}, {}, {}), lambda _: "unused") is None


def test_key_without_certificate() -> None:
    with pytest.raises(ClientError, match="needs its certificate"):
        resolve({"key_file": "/k.pem"}, {}, {})


# -- visible ------------------------------------------------------------------------------------------------


def test_visible() -> None:
    assert visible(b"hello\r\nworld\n") == "hello\nworld\n"
    assert visible(b"\x1b[1mbold\x1b[0m\ttab") == "^[[1mbold^[[0m\ttab"
    assert visible(b"bell\x07 del\x7f") == "bell^G del^?"
    assert visible(b"cr\ronly") == "cr^Monly"
    assert visible(b"end\r") == "end^M"
    assert visible("naïve €".encode()) == "naïve €"
    assert visible(b"bad\xff\xfe") == "bad\\xff\\xfe"
    assert visible("\u009b".encode()) == "\\x9b"


@given(st.binary(max_size=80), st.integers(0, 80))
def test_visible_is_the_same_in_any_two_pieces(data: bytes, cut: int) -> None:
    v = Visualiser()
    assert v.feed(data[:cut]) + v.feed(data[cut:], final=True) == visible(data)


@given(st.binary(max_size=80))
def test_visible_output_has_no_control_characters(data: bytes) -> None:
    assert all(ch in "\n\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) for ch in visible(data))


# -- offsets and resumption --------------------------------------------------------------------------------


def test_cursor() -> None:
    c = Cursor()
    c.hello({"type": "hello", "offset": 100}, None)
    assert c.offset == 100
    c.notice({"kind": "replay_start", "offset": 60})
    c.data(40)
    c.notice({"kind": "replay_end", "offset": 100})
    assert c.offset == 100
    c.data(5)
    c.notice({"kind": "guest_health", "offset": 3})  # where a line began: not the cursor
    assert c.offset == 105
    c.notice({"kind": "missed", "missed": 20, "offset": 125})
    assert c.offset == 125
    c.notice({"kind": "restart_gap", "from": 125, "to": 1 << 40, "exact": True, "lost": 0})
    assert c.offset == 1 << 40
    resumed = Cursor()
    resumed.hello({"type": "hello", "offset": 999}, 42)  # from= asked: the bytes start there
    assert resumed.offset == 42


def _notice(kind: str, **fields: object) -> dict[str, object]:
    return {"type": "notice", "kind": kind, "text": "...", **fields}


def test_resumption_reports_exactly() -> None:
    r = Resumption(500)
    assert r.event(_notice("attached")) is None
    assert r.data() == "resumed from offset 500: no bytes missed"
    assert r.data() is None and r.finish() is None

    r = Resumption(500)
    assert r.event(_notice("missed", missed=123, offset=623)) is None
    assert (
        r.event(_notice("write_granted"))
        == "resumed from offset 500: 123 bytes of console output were missed"
    )

    r = Resumption(500)
    r.event(_notice("restart_gap", exact=True, lost=0))
    assert r.data() == "resumed from offset 500: no bytes missed"

    r = Resumption(500)
    r.event(_notice("restart_gap", exact=True, lost=7))
    r.event(_notice("missed", missed=3))
    assert r.finish() == "resumed from offset 500: 10 bytes of console output were missed"

    r = Resumption(500)
    r.event(_notice("restart_gap", exact=False, lost=None))
    line = r.data()
    assert line is not None and "unknown" in line


# -- attach mode and the table ------------------------------------------------------------------------------


def test_attach_mode() -> None:
    assert attach_mode(False, False, None) == ("rw", "")
    assert attach_mode(True, True, None) == ("ro", "")
    mode, note = attach_mode(False, False, "telnet 127.0.0.1:5555")
    assert mode == "ro" and "telnet 127.0.0.1:5555 is writing" in note and "~f" in note
    assert attach_mode(False, True, "alice") == ("rw", "")
    # The keys named are this client's escape key, whatever it is, or none at all (-e none).
    assert (
        attach_mode(False, False, "alice", 0x18)[1]
        == "alice is writing; you are read-only (^Xf takes over, or connect --force)"
    )
    assert (
        attach_mode(False, False, "alice", None)[1]
        == "alice is writing; you are read-only (connect --force takes over)"
    )


def test_status_names_the_daemons_version_and_a_mismatch() -> None:
    assert version_line("http://h:1", "ok", __version__) == [f"serialmuxd {__version__} at http://h:1: ok"]
    assert version_line("http://h:1", "ok", "9.9.9") == [
        "serialmuxd 9.9.9 at http://h:1: ok",
        f"  (this client is serialmux {__version__})",
    ]
    assert version_line("http://h:1", "ok", None) == ["serialmuxd at http://h:1: ok"]  # it does not say


def test_notice_hints_in_this_clients_words() -> None:
    """The daemon's "hint" field (its text never says how): the client names its own escape keys."""
    assert hint_text(ord("~"), "take_over") == "~f takes over"
    assert hint_text(0x18, "take_over") == "^Xf takes over"
    assert hint_text(None, "take_over") is None  # -e none: nothing to type
    assert hint_text(ord("~"), "hand_over") is None  # a newer daemon's hint: nothing added
    assert hint_text(ord("~"), 7) is None


def test_ports_table() -> None:
    table = ports_table(
        [
            {
                "name": "vm1",
                "state": "online",
                "writer": {"who": "alice", "since": 0},
                "viewers": 2,
                "hypervisor": {"state": "running"},
            },
            {
                "name": "long-name",
                "state": "offline",
                "state_reason": "no device",
                "writer": None,
                "viewers": 0,
                "hypervisor": None,
            },
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "WRITER", "VIEWERS", "VM"]
    assert lines[1].split() == ["vm1", "online", "alice", "2", "running"]
    assert lines[2].startswith("long-name  offline (no device)")
    assert lines[1].index("alice") == lines[0].index("WRITER")


# -- the README's section stays true to the code -----------------------------------------------------------


def test_readme_lists_every_command_option_variable_and_exit_code() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Command-line client", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"serialmux {name}" in section, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in section, (name, flag)
    for variable in [*ENVIRONMENT.values(), PASSWORD_ENV, "SERIALMUX_CONFIG"]:
        assert variable in section, variable
    for key in FILE_KEYS:
        assert f"`{key}`" in section, key
    for code in Exit:
        if code is not Exit.INTERRUPTED:
            assert f"\n| {int(code)} |" in section, code


def test_status_lines_show_escape_sequences_instead_of_obeying_them(
    capfd: pytest.CaptureFixture[str],
) -> None:
    lines = StatusLines(raw=True)
    lines.guest_output(b"half a line")
    lines.show("guest health: panic \x1b]0;owned\x07 at offset 5\nsecond")
    err = capfd.readouterr().err
    assert err == "\r\n[serialmux] guest health: panic ^[]0;owned^G at offset 5\r\n[serialmux] second\r\n"
    StatusLines(raw=False).show("plain")
    assert capfd.readouterr().err == "[serialmux] plain\n"
