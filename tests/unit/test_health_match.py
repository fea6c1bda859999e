"""The guest-health matcher: shipped patterns, cleaning, line reassembly, offsets, and chunking independence.

The expected events come from an independent model (``_model``): split the whole stream on ``\\n``, cut long
lines, clean each with a regex written here, search the patterns.  The matcher's pre-filter and incremental
line buffer must give exactly the same events however the stream is chunked.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.core import health_accel
from serialmuxd.core.health import (
    DEFAULT_PATTERNS,
    HealthEvent,
    HealthMatcher,
    HealthPattern,
    _derive_triggers,
    _has_long_line,
    effective_patterns,
)

_MODEL_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?"
)


def _model(
    stream: bytes, patterns: tuple[HealthPattern, ...], limit: int, base: int = 0
) -> list[HealthEvent]:
    events = []
    offset = base
    pieces: list[tuple[int, bytes]] = []
    *lines, _unfinished = stream.split(b"\n")
    for line in lines:
        start = offset
        while len(line) >= limit:
            pieces.append((start, line[:limit]))
            line, start = line[limit:], start + limit
        pieces.append((start, line))
        offset = start + len(line) + 1
    # The unfinished tail's full pieces are complete too.
    tail, start = _unfinished, offset
    while len(tail) >= limit:
        pieces.append((start, tail[:limit]))
        tail, start = tail[limit:], start + limit
    compiled = [(p.kind, re.compile(p.regex)) for p in patterns]
    for start, raw in pieces:
        text = _MODEL_ESCAPES.sub(b"", raw).replace(b"\r", b"").decode("utf-8", "replace")
        for kind, regex in compiled:
            if regex.search(text):
                events.append(HealthEvent(kind, text.rstrip(), start))
                break
    return events


# Every matcher test runs with both pre-filters: the portable one and Hyperscan's (when installed: the
# ``fast`` extra, which ./dev installs, so CI runs both).  They must give the same events.
BOTH = pytest.mark.parametrize(
    "accelerate",
    [
        pytest.param(False, id="portable"),
        pytest.param(
            True,
            id="hyperscan",
            marks=pytest.mark.skipif(not health_accel.available(), reason="hyperscan is not installed"),
        ),
    ],
)


def _feed_all(matcher: HealthMatcher, chunks: list[bytes], base: int = 0) -> list[HealthEvent]:
    events = []
    offset = base
    for chunk in chunks:
        events.extend(matcher.feed(chunk, offset))
        offset += len(chunk)
    return events


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


SAMPLES = {
    "panic": b"[   12.345678] Kernel panic - not syncing: sysrq triggered crash",
    "oops": b"[    3.1] Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "soft_lockup": b"[  52.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [swapper/1:0]",
    "hard_lockup": b"[  60.0] NMI watchdog: Watchdog detected hard LOCKUP on cpu 3",
    "hung_task": b"[ 242.1] INFO: task jbd2/vda1-8:145 blocked for more than 120 seconds.",
    "oom": b"[  90.2] Out of memory: Killed process 1234 (stress) total-vm:1000kB, anon-rss:900kB",
    "windows_bugcheck": b"*** STOP: 0x0000007B (0xF78D2524,0xC0000034,0x00000000,0x00000000)",
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@BOTH
def test_each_shipped_kind_matches_its_sample(accelerate: bool, kind: str) -> None:
    matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate)
    line = SAMPLES[kind]
    assert matcher.feed(b"hello\r\n" + line + b"\r\n", 1000) == [HealthEvent(kind, line.decode(), 1007)]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"[ 1.0] BUG: unable to handle page fault for address: ffffffffc0000000", "oops"),
        (b"[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
        (b"[ 1.0] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=stress,pid=12,uid=0", "oom"),
        (b"[ 1.0] Memory cgroup out of memory: Killed process 77 (x)", "oom"),
        (b'<INSTANCE CLASSNAME="BLUESCREEN">', "windows_bugcheck"),
    ],
)
@BOTH
def test_more_shipped_forms(accelerate: bool, line: bytes, kind: str) -> None:
    assert HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate).feed(line + b"\n", 0) == [
        HealthEvent(kind, line.decode(), 0)
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"[  12.4] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---",
        b'<?xml version="1.0"?><machine-info><name>WIN-1</name></machine-info>',  # every SAC start
        b"Kernel panic handling is configured",
        b"systemd[1]: Started OOM killer daemon.",
        b"oops, a typo",
    ],
)
@BOTH
def test_lines_that_are_not_incidents(accelerate: bool, line: bytes) -> None:
    assert HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate).feed(line + b"\r\n", 0) == []


@BOTH
def test_escapes_inside_a_keyword_and_across_reads(accelerate: bool) -> None:
    matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate)
    chunks = [
        b"\x1b[0;31mKer",
        b"nel pa\x1b",
        b"[1mnic\x1b]0;title\x07 - not",
        b" sync",
        b"ing: boom\x1b[0m\r",
        b"\n",
    ]
    assert _feed_all(matcher, chunks, 500) == [HealthEvent("panic", "Kernel panic - not syncing: boom", 500)]


@BOTH
def test_carriage_return_inside_a_keyword_is_removed(accelerate: bool) -> None:
    assert HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate).feed(b"Oo\rps: 0000 [#1]\n", 7) == [
        HealthEvent("oops", "Oops: 0000 [#1]", 7)
    ]


@BOTH
def test_one_event_per_line_first_pattern_wins(accelerate: bool) -> None:
    own = (HealthPattern("mine", r"Kernel panic"),)
    matcher = HealthMatcher(effective_patterns(own, ()), accelerate=accelerate)
    assert matcher.feed(b"Kernel panic - not syncing: x\n", 0) == [
        HealthEvent("mine", "Kernel panic - not syncing: x", 0)
    ]


@BOTH
def test_long_lines_are_cut_and_bounded(accelerate: bool) -> None:
    matcher = HealthMatcher(DEFAULT_PATTERNS, max_line_bytes=64, accelerate=accelerate)
    line = b"x" * 100 + b" Oops: here" + b"\n"
    events = _feed_all(matcher, [line[i : i + 7] for i in range(0, len(line), 7)], 10)
    assert events == [HealthEvent("oops", "x" * 36 + " Oops: here", 10 + 64)]
    matcher.feed(b"y" * 10_000, 10_000)
    assert matcher.pending_bytes < 64


@BOTH
def test_no_patterns_no_events(accelerate: bool) -> None:
    assert HealthMatcher((), accelerate=accelerate).feed(b"Kernel panic - not syncing\n", 0) == []


def test_derived_triggers() -> None:
    assert _derive_triggers(r"INFO: task .+ blocked for more than") == (b" blocked for more than",)
    assert _derive_triggers(r"disk \d+ failed") == (b" failed",)
    assert _derive_triggers(r"abcx?yz") == (b"abc",)
    assert _derive_triggers(r"a\.b\.cd") == (b"a.b.cd",)
    assert _derive_triggers(r"foo|bar") == ()
    assert _derive_triggers(r"(?i)panic") == ()
    assert _derive_triggers(r"a.b") == ()


_ALPHABET = [
    b"Kernel panic - not syncing: x",
    b"---[ end Kernel panic - not syncing: x ]---",
    b"Oops: 0000",
    b"oom-kill:",
    b"INFO: task a:1 blocked for more than 1 seconds.",
    b"\x1b[1m",
    b"\x1b]0;t\x07",
    b"\x1b(B",
    b"\x1b",
    b"\r",
    b"\r\n",
    b"\n",
    b"ordinary text ",
    b"Kern",
    b"el pa",
    b"nic - not syncing",
    b"\xc3\xa9\xff",
    b"disk 7 failed",
]
_CUSTOM = (HealthPattern("disk", r"disk \d+ failed"),)


@BOTH
@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(_ALPHABET), max_size=60),
    cuts=st.lists(st.integers(0, 3000), max_size=40),
    limit=st.sampled_from([64, 100, 4096]),
    base=st.integers(0, 1 << 40),
    custom=st.booleans(),
)
def test_any_chunking_gives_the_model_events(
    accelerate: bool, parts: list[bytes], cuts: list[int], limit: int, base: int, custom: bool
) -> None:
    stream = b"".join(parts)
    patterns = effective_patterns(_CUSTOM if custom else (), ())
    expected = _model(stream, patterns, limit, base)
    whole = HealthMatcher(patterns, max_line_bytes=limit, accelerate=accelerate)
    assert _feed_all(whole, [stream], base) == expected
    chunked = HealthMatcher(patterns, max_line_bytes=limit, accelerate=accelerate)
    assert _feed_all(chunked, _chunks(stream, cuts), base) == expected
    bytewise = HealthMatcher(patterns, max_line_bytes=limit, accelerate=accelerate)
    assert _feed_all(bytewise, [stream[i : i + 1] for i in range(len(stream))], base) == expected


@settings(max_examples=100, deadline=None)
@given(noise=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=20))
@BOTH
def test_random_bytes_match_the_model(accelerate: bool, noise: bytes, cuts: list[int]) -> None:
    stream = noise + b"\nKernel panic - not syncing: z\n" + noise
    expected = _model(stream, DEFAULT_PATTERNS, 4096, 3)
    assert (
        _feed_all(HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate), _chunks(stream, cuts), 3)
        == expected
    )


@settings(max_examples=300, deadline=None)
@given(
    window=st.lists(st.sampled_from([b"\n", b"x", b"xxxxxxxxxx", b"\x1b[1m"]), max_size=40).map(b"".join),
    limit=st.integers(1, 40),
)
def test_long_line_check_equals_splitting(window: bytes, limit: int) -> None:
    expected = max(map(len, window.split(b"\n"))) >= limit
    assert _has_long_line(window, limit) is expected


_REMOVABLE_SPANS = [
    b"\x1b[1m",
    b"\x1b[0;31m",
    b"\x1b]0;title\x07",
    b"\x1b]2;t\x1b\\",
    b"\x1b(B",
    b"\x1b7",
    b"\r",
]


@BOTH
@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    kind=st.sampled_from(sorted(SAMPLES)),
    cuts=st.lists(st.integers(0, 400), max_size=30),
)
def test_escapes_inserted_anywhere_in_an_incident_line(
    accelerate: bool, data: st.DataObject, kind: str, cuts: list[int]
) -> None:
    # Any removable span (escape sequence or carriage return) at any position of the line: still one event,
    # the same one, however the stream is cut.
    line = SAMPLES[kind]
    positions = data.draw(st.lists(st.integers(0, len(line)), max_size=6))
    spans = data.draw(st.lists(st.sampled_from(_REMOVABLE_SPANS), min_size=len(positions), max_size=6))
    raw = bytearray(line)
    for position, span in sorted(zip(positions, spans, strict=False), reverse=True):
        raw[position:position] = span
    stream = b"boot ok\r\n" + bytes(raw) + b"\r\nafter\n"
    expected = _model(stream, DEFAULT_PATTERNS, 4096)
    assert [event.kind for event in expected] == [kind]
    matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate)
    assert _feed_all(matcher, _chunks(stream, cuts)) == expected


@BOTH
def test_chunks_without_a_trigger_are_not_scanned(accelerate: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pre-filter's job: ordinary output (with colour escapes for the accelerated one, which sees through
    # them) never reaches the per-line scan; an incident does.
    scanned: list[bytes] = []
    scan = HealthMatcher._scan

    def counting(self: HealthMatcher, data: bytes, offset: int) -> list[HealthEvent]:
        scanned.append(data)
        return scan(self, data, offset)

    monkeypatch.setattr(HealthMatcher, "_scan", counting)
    matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate)
    assert matcher.accelerated is (accelerate and health_accel.available())
    plain = b"[    1.000000] EXT4-fs (vda1): mounted filesystem. Quota mode: none.\r\n" * 50
    colour = b"[\x1b[0;32m  OK  \x1b[0m] Started \x1b[1mJournal Service\x1b[0m.\r\n" * 50
    offset = 0
    for chunk in [plain, colour, plain] if accelerate else [plain, plain]:
        assert matcher.feed(chunk, offset) == []
        offset += len(chunk)
    assert scanned == []
    panic = b"[   12.3] Kernel panic - not syncing: x\r\n"
    assert [e.kind for e in matcher.feed(panic, offset)] == ["panic"]
    assert scanned == [panic]
    matcher.close()
