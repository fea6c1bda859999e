"""The per-port keys takeover = "ask", ask_timeout_s, notices, max_sessions, max_sessions_per_address and
[http] max_connections: each valid, wrong in type, out of range, mistyped, and inherited from [defaults]."""

from __future__ import annotations

import pytest

from serialmuxd.config import NoticePolicy, PortConfig, TakeoverPolicy, parse_config
from serialmuxd.errors import ConfigError

SOURCE = "t.toml"


def port(extra: str = "", name: str = "vm1") -> str:
    return f'[[ports]]\nname = "{name}"\ndevice = "exec:{name}"\n{extra}\n'


def only_port(text: str) -> PortConfig:
    [result] = parse_config(text, SOURCE).ports
    return result


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    return info.value.lines()


# ---------------------------------------------------------------------------------------------------------
# Built-in defaults


def test_builtin_defaults_of_the_new_keys() -> None:
    p = only_port(port())
    assert p.takeover is TakeoverPolicy.EVICT
    assert p.ask_timeout_s == 10.0
    assert p.notices is NoticePolicy.INBAND
    assert p.escape == "^E"
    assert (p.max_sessions, p.max_sessions_per_address) == (100, 50)
    assert parse_config(port(), SOURCE).http.max_connections == 1000


# ---------------------------------------------------------------------------------------------------------
# takeover = "ask" and ask_timeout_s


def test_takeover_ask_with_its_timeout() -> None:
    p = only_port(port("takeover = 'ask'\nask_timeout_s = 2.5"))
    assert p.takeover is TakeoverPolicy.ASK
    assert p.ask_timeout_s == 2.5


def test_ask_timeout_accepts_an_integer_and_the_inclusive_bound() -> None:
    p = only_port(port("ask_timeout_s = 300"))
    assert p.ask_timeout_s == 300.0 and isinstance(p.ask_timeout_s, float)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("'10'", "expected number, got string '10'"),
        ("true", "expected number, got boolean true"),
        ("0", "must be greater than 0 and at most 300, got 0"),
        ("-1.0", "must be greater than 0 and at most 300, got -1.0"),
        ("300.5", "must be greater than 0 and at most 300, got 300.5"),
        ("nan", "must be greater than 0 and at most 300, got nan"),
    ],
)
def test_ask_timeout_invalid(value: str, reason: str) -> None:
    assert problems(port(f"ask_timeout_s = {value}")) == [f"{SOURCE}: ports[0].ask_timeout_s: {reason}"]


def test_takeover_ask_misspelt() -> None:
    assert problems(port("takeover = 'aks'")) == [
        f"{SOURCE}: ports[0].takeover: must be one of 'evict', 'demote', 'refuse', 'ask', got 'aks'; "
        "did you mean 'ask'?"
    ]


# ---------------------------------------------------------------------------------------------------------
# notices, and the escape key's default under notices = "none"


def test_notices_values() -> None:
    assert only_port(port("notices = 'inband'")).notices is NoticePolicy.INBAND
    assert only_port(port("notices = 'none'")).notices is NoticePolicy.NONE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("false", "expected string, got boolean false"),
        ("'off'", "must be one of 'inband', 'none', got 'off'"),
        ("'inbnad'", "must be one of 'inband', 'none', got 'inbnad'; did you mean 'inband'?"),
    ],
)
def test_notices_invalid(value: str, reason: str) -> None:
    assert problems(port(f"notices = {value}")) == [f"{SOURCE}: ports[0].notices: {reason}"]


def test_notices_none_turns_the_escape_key_off_by_default() -> None:
    assert only_port(port("notices = 'none'")).escape == ""


def test_notices_none_keeps_an_escape_key_set_on_the_port() -> None:
    assert only_port(port("notices = 'none'\nescape = '^B'")).escape == "^B"


def test_notices_none_keeps_an_escape_key_set_in_defaults() -> None:
    text = "[defaults]\nescape = '^B'\n" + port("notices = 'none'")
    assert only_port(text).escape == "^B"


def test_notices_none_from_defaults_turns_escape_off_only_where_it_applies() -> None:
    text = (
        "[defaults]\nnotices = 'none'\n"
        + port(name="a")
        + port("notices = 'inband'", name="b")
        + port("escape = '^E'", name="c")
    )
    a, b, c = parse_config(text, SOURCE).ports
    assert (a.notices, a.escape) == (NoticePolicy.NONE, "")
    assert (b.notices, b.escape) == (NoticePolicy.INBAND, "^E")  # the port's own notices wins
    assert (c.notices, c.escape) == (NoticePolicy.NONE, "^E")  # an explicit escape key is kept


# ---------------------------------------------------------------------------------------------------------
# max_sessions and max_sessions_per_address


def test_session_limits_parse() -> None:
    p = only_port(port("max_sessions = 500\nmax_sessions_per_address = 50"))
    assert (p.max_sessions, p.max_sessions_per_address) == (500, 50)


def test_session_limits_inclusive_bounds() -> None:
    low = only_port(port("max_sessions = 1\nmax_sessions_per_address = 1"))
    assert (low.max_sessions, low.max_sessions_per_address) == (1, 1)
    high = only_port(port("max_sessions = 100000\nmax_sessions_per_address = 100000"))
    assert (high.max_sessions, high.max_sessions_per_address) == (100_000, 100_000)


@pytest.mark.parametrize("key", ["max_sessions", "max_sessions_per_address"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("'10'", "expected integer, got string '10'"),
        ("1.0", "expected integer, got float 1.0"),
        ("true", "expected integer, got boolean true"),
        ("0", "must be between 1 and 100000, got 0"),
        ("100001", "must be between 1 and 100000, got 100001"),
    ],
)
def test_session_limits_invalid(key: str, value: str, reason: str) -> None:
    assert problems(port(f"{key} = {value}")) == [f"{SOURCE}: ports[0].{key}: {reason}"]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("max_session", "max_sessions"),
        ("max_sessions_per_adress", "max_sessions_per_address"),
        ("ask_timeout", "ask_timeout_s"),
        ("notice", "notices"),
    ],
)
def test_new_keys_misspelt(typo: str, meant: str) -> None:
    assert problems(port(f"{typo} = 1")) == [
        f"{SOURCE}: ports[0].{typo}: unknown key; did you mean {meant!r}?"
    ]
    assert problems(f"[defaults]\n{typo} = 1\n" + port()) == [
        f"{SOURCE}: defaults.{typo}: unknown key; did you mean {meant!r}?"
    ]


def test_per_address_above_max_sessions_on_the_port() -> None:
    assert problems(port("max_sessions = 10\nmax_sessions_per_address = 11")) == [
        f"{SOURCE}: ports[0].max_sessions_per_address: max_sessions_per_address = 11 must not exceed "
        "max_sessions = 10 (set in ports[0].max_sessions)"
    ]


def test_per_address_from_defaults_above_the_ports_max_sessions() -> None:
    text = "[defaults]\nmax_sessions_per_address = 50\n" + port("max_sessions = 40")
    assert problems(text) == [
        f"{SOURCE}: ports[0].max_sessions: max_sessions_per_address = 50 (set in "
        "defaults.max_sessions_per_address) must not exceed max_sessions = 40"
    ]


def test_per_address_above_max_sessions_both_in_defaults_is_reported_once() -> None:
    text = "[defaults]\nmax_sessions = 5\nmax_sessions_per_address = 6\n" + port(name="a") + port(name="b")
    assert problems(text) == [
        f"{SOURCE}: defaults.max_sessions_per_address: max_sessions_per_address = 6 must not exceed "
        "max_sessions = 5 (set in defaults.max_sessions)"
    ]


def test_builtin_per_address_yields_to_a_smaller_max_sessions() -> None:
    """Only a value someone wrote can contradict max_sessions: max_sessions = 5 alone is 5 and 5."""
    p = only_port(port("max_sessions = 5"))
    assert (p.max_sessions, p.max_sessions_per_address) == (5, 5)
    p = only_port("[defaults]\nmax_sessions = 8\n" + port())
    assert (p.max_sessions, p.max_sessions_per_address) == (8, 8)
    assert only_port(port("max_sessions = 30")).max_sessions_per_address == 30
    assert only_port(port("max_sessions = 80")).max_sessions_per_address == 50


def test_invalid_limit_does_not_also_fail_the_cross_check() -> None:
    assert problems(port("max_sessions = 5\nmax_sessions_per_address = 0")) == [
        f"{SOURCE}: ports[0].max_sessions_per_address: must be between 1 and 100000, got 0"
    ]


def test_new_keys_inherit_from_defaults() -> None:
    text = (
        "[defaults]\ntakeover = 'ask'\nask_timeout_s = 30\nnotices = 'none'\nmax_sessions = 7\n"
        "max_sessions_per_address = 3\n"
        + port(name="a")
        + port("ask_timeout_s = 5\nmax_sessions = 9", name="b")
    )
    a, b = parse_config(text, SOURCE).ports
    assert (a.takeover, a.ask_timeout_s, a.notices, a.max_sessions, a.max_sessions_per_address) == (
        TakeoverPolicy.ASK,
        30.0,
        NoticePolicy.NONE,
        7,
        3,
    )
    assert (b.takeover, b.ask_timeout_s, b.max_sessions, b.max_sessions_per_address) == (
        TakeoverPolicy.ASK,
        5.0,
        9,
        3,
    )


def test_invalid_new_default_is_reported_once_and_ports_use_the_builtin() -> None:
    text = "[defaults]\nmax_sessions = 0\nask_timeout_s = 0\n" + port(name="a") + port(name="b")
    assert problems(text) == [
        f"{SOURCE}: defaults.max_sessions: must be between 1 and 100000, got 0",
        f"{SOURCE}: defaults.ask_timeout_s: must be greater than 0 and at most 300, got 0",
    ]


# ---------------------------------------------------------------------------------------------------------
# [http] max_connections


def test_http_max_connections() -> None:
    assert parse_config("[http]\nmax_connections = 1\n" + port(), SOURCE).http.max_connections == 1
    assert parse_config("[http]\nmax_connections = 1000000\n" + port(), SOURCE).http.max_connections == 10**6


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("'1000'", "expected integer, got string '1000'"),
        ("0", "must be between 1 and 1000000, got 0"),
        ("1000001", "must be between 1 and 1000000, got 1000001"),
    ],
)
def test_http_max_connections_invalid(value: str, reason: str) -> None:
    assert problems(f"[http]\nmax_connections = {value}\n" + port()) == [
        f"{SOURCE}: http.max_connections: {reason}"
    ]


def test_http_max_connections_misspelt() -> None:
    assert problems("[http]\nmax_conections = 5\n" + port()) == [
        f"{SOURCE}: http.max_conections: unknown key; did you mean 'max_connections'?"
    ]


def test_max_connections_is_not_a_port_key() -> None:
    [line] = problems(port("max_connections = 5"))
    assert line.startswith(f"{SOURCE}: ports[0].max_connections: unknown key")
