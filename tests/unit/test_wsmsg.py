"""WebSocket control-message parsing: every valid message, every kind of bad input, and for any text at
all, either a message or ``BadMessage`` — never another exception."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.proto import wsmsg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "resize", "cols": 132, "rows": 43}', wsmsg.Resize(132, 43)),
        ('{"type": "break"}', wsmsg.Break()),
        ('{"type": "take_over"}', wsmsg.TakeOver()),
        ('{"type": "read_only"}', wsmsg.ReadOnly()),
        ('{"type": "key", "key": "F8"}', wsmsg.Key("F8")),
        ('{"type": "sysrq", "key": "b"}', wsmsg.SysRq("b")),
        ('{"type": "who"}', wsmsg.Who()),
        ('{"type": "ping", "extra": 1}', wsmsg.Ping()),
    ],
)
def test_valid_messages(text: str, expected: wsmsg.ControlMessage) -> None:
    assert wsmsg.parse_control(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ('["type", "break"]', '"type"'),
        ('{"type": 7}', '"type"'),
        ('{"type": "format_disk"}', "unknown type"),
        ('{"type": "resize", "cols": 0, "rows": 24}', "1..1000"),
        ('{"type": "resize", "cols": 80, "rows": 1001}', "1..1000"),
        ('{"type": "resize", "cols": true, "rows": 24}', "integer"),
        ('{"type": "resize", "cols": 80.5, "rows": 24}', "integer"),
        ('{"type": "key"}', "key name"),
        ('{"type": "key", "key": "' + "F" * 100 + '"}', "key name"),
        ('{"type": "sysrq", "key": "bb"}', "one printable"),
        ('{"type": "sysrq", "key": "\\u00e9"}', "one printable"),
        ('{"type": "sysrq", "key": "\\n"}', "one printable"),
    ],
)
def test_bad_messages_say_why(text: str, reason: str) -> None:
    with pytest.raises(wsmsg.BadMessage, match=reason):
        wsmsg.parse_control(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_message_or_bad_message(text: str) -> None:
    with contextlib.suppress(wsmsg.BadMessage):  # anything else fails the test
        wsmsg.parse_control(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["resize", "break", "take_over", "read_only", "key", "sysrq", "who", "ping", "x"]),
    st.dictionaries(st.sampled_from(["cols", "rows", "key", "extra"]), json_values, max_size=4),
)
def test_any_json_object_is_a_message_or_bad_message(kind: str, fields: dict[str, object]) -> None:
    try:
        message = wsmsg.parse_control(json.dumps({"type": kind, **fields}))
    except wsmsg.BadMessage:
        return
    if isinstance(message, wsmsg.Resize):
        assert 1 <= message.cols <= 1000 and 1 <= message.rows <= 1000
    if isinstance(message, wsmsg.SysRq):
        assert len(message.key) == 1 and message.key.isprintable()
