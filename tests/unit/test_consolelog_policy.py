"""The pure rules of console logs (obs/consolelog_policy.py): stamping at line completion and its exact
inverse, the sidecar index, history assembly, rotation and boot retention; and the [logs] configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.config import LogSettings, parse_config
from serialmuxd.errors import ConfigError
from serialmuxd.obs.consolelog_policy import (
    STAMP_LEN,
    IndexRecord,
    LineHolder,
    Piece,
    boot_seqs,
    boots_to_delete,
    format_stamp,
    history_budget,
    history_runs,
    index_tail,
    marker_line,
    parse_index,
    replay_pieces,
    rotation_plan,
    stamp_lines,
    starts_with_restart_line,
    strip_stamps,
    trigger_accepted,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_stamp_is_fixed_width_utc() -> None:
    assert format_stamp(0.0) == b"1970-01-01T00:00:00.000Z "
    for wall in (0.0, 1.5, 1_796_000_000.999, 4_102_444_799.0):
        assert len(format_stamp(wall)) == STAMP_LEN
    assert format_stamp(12.3456) == b"1970-01-01T00:00:12.345Z "


def test_every_file_line_starts_with_a_stamp() -> None:
    raw, at_start = stamp_lines(b"one\r\ntwo\r\nthr", 0.0, True, True)
    stamp = format_stamp(0.0)
    assert raw == stamp + b"one\r\n" + stamp + b"two\r\n" + stamp + b"thr"
    assert at_start is False
    more, at_start = stamp_lines(b"ee\n", 1.0, at_start, True)
    assert more == b"ee\n" and at_start is True  # a continuation gets no second stamp
    assert stamp_lines(b"plain\n", 0.0, True, False) == (b"plain\n", True)


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"\n")), max_size=12),
    st.booleans(),
)
def test_strip_inverts_stamp_for_any_split(chunks: list[bytes], at_start: bool) -> None:
    """Written piece by piece (as batches are), the file bytes strip back to exactly the guest bytes."""
    for stamps in (True, False):
        line_start = at_start
        file_bytes = b""
        first_starts = at_start
        for chunk in chunks:
            raw, line_start = stamp_lines(chunk, 5.0, line_start, stamps)
            file_bytes += raw
        assert strip_stamps(file_bytes, STAMP_LEN if stamps else 0, first_starts) == b"".join(chunks)


def test_strip_drops_a_torn_stamp() -> None:
    stamp = format_stamp(0.0)
    torn = stamp + b"a\n" + stamp[:7]
    assert strip_stamps(torn, STAMP_LEN, True) == b"a\n"


def test_marker_lines_start_on_their_own_line() -> None:
    assert marker_line("log gap: 5 bytes", 0.0, True, False) == b"[serialmuxd] log gap: 5 bytes\n"
    assert marker_line("x", 0.0, False, False) == b"\n[serialmuxd] x\n"
    assert marker_line("x", 0.0, True, True) == format_stamp(0.0) + b"[serialmuxd] x\n"


def test_line_holder_stamps_at_completion() -> None:
    holder = LineHolder(stamps=True, idle_s=1.0)
    assert holder.feed(b"Booting ", 100, 10.0, now=0.0) == []
    assert holder.held == 8
    (seg,) = holder.feed(b"Linux\r\nlogin: ", 108, 11.0, now=0.5)
    assert (seg.data, seg.offset, seg.wall) == (b"Booting Linux\r\n", 100, 11.0)
    assert holder.flush(now=1.2) == []  # the prompt has waited 0.7 s only
    (prompt,) = holder.flush(now=1.6)
    assert (prompt.data, prompt.offset, prompt.wall) == (b"login: ", 115, 11.0)
    assert holder.held == 0 and holder.flush() == []


def test_line_holder_without_stamps_passes_through() -> None:
    holder = LineHolder(stamps=False)
    (seg,) = holder.feed(b"no newline", 7, 1.0, now=0.0)
    assert (seg.data, seg.offset) == (b"no newline", 7) and holder.held == 0


def test_index_records_round_trip_and_torn_lines_are_ignored() -> None:
    record = IndexRecord(2**40, 123, 80, 55, STAMP_LEN, True)
    assert IndexRecord.parse(record.line()) == record and record.end == 2**40 + 55
    text = record.line() + IndexRecord(2**40 + 55, 203, 5, 5, 0, False).line() + b"2199023255607 208 1"
    assert [r.offset for r in parse_index(text)] == [2**40, 2**40 + 55]
    assert IndexRecord.parse(b"1 2 3 9 0 0") is None  # more guest than file bytes: not a record
    assert IndexRecord.parse(b"1 2 3 1 0 2") is None


def test_index_records_keep_their_time_and_old_records_have_none() -> None:
    record = IndexRecord(7, 0, 3, 3, 0, False, 1_796_170_000_123)
    assert IndexRecord.parse(record.line()) == record
    assert IndexRecord.parse(b"7 0 3 3 0 0") == IndexRecord(7, 0, 3, 3, 0, False, 0)  # an older version's


def test_history_runs_keep_older_runs_at_their_offsets() -> None:
    pieces = [
        Piece(0, b"old run", 1000),
        Piece(2**32, b"abc", 2000),
        Piece(2**32 + 3, b"defg", 0),  # an older version's record: no time
        Piece(2**32 + 7, b""),
        Piece(2**32 + 9, b"hi", 3000),  # after a log gap of 2 bytes
    ]
    runs, times = history_runs(pieces, 100)
    assert runs == [Piece(0, b"old run"), Piece(2**32, b"abcdefg"), Piece(2**32 + 9, b"hi")]
    assert times == [(0, 1000), (2**32, 2000), (2**32 + 9, 3000)]
    runs, times = history_runs(pieces, 5)  # the newest 5 bytes, across the gap
    assert runs == [Piece(2**32 + 4, b"efg"), Piece(2**32 + 9, b"hi")] and times == [(2**32 + 9, 3000)]
    runs, times = history_runs(pieces, 8)  # a cut piece keeps its time (its bytes came within the grain)
    assert runs[0] == Piece(2**32 + 1, b"bcdefg") and times[0] == (2**32 + 1, 2000)
    # Offsets going back (another stream's log): reading stops there.
    assert history_runs([Piece(50, b"x"), Piece(10, b"yy")], 100)[0] == [Piece(10, b"yy")]
    assert history_runs([], 10) == ([], [])


def test_replay_pieces_count_back_across_holes() -> None:
    pieces = [(0, b"a1\na2\nunfinished"), (100, b"b1\nb2\n"), (200, b"c1\n")]
    # Lines: the unfinished line before a hole is a line; an unfinished last line is one too.
    assert replay_pieces(pieces, 1000, 1) == [(200, b"c1\n")]
    assert replay_pieces(pieces, 1000, 2) == [(103, b"b2\n"), (200, b"c1\n")]
    assert replay_pieces(pieces, 1000, 4) == [(6, b"unfinished"), (100, b"b1\nb2\n"), (200, b"c1\n")]
    assert replay_pieces(pieces, 1000, 99) == pieces
    assert replay_pieces([(0, b"x\ny")], 1000, 1) == [(2, b"y")]
    # replay_bytes still bounds a line replay (starting mid-line, like the ring's tail_lines).
    assert replay_pieces(pieces, 8, 99) == [(101, b"1\nb2\n"), (200, b"c1\n")]
    # Bytes: the newest max_bytes, from a line start where the window cuts a piece.
    assert replay_pieces(pieces, 7, 0) == [(103, b"b2\n"), (200, b"c1\n")]
    assert replay_pieces(pieces, 6, 0) == [(103, b"b2\n"), (200, b"c1\n")]  # already at a line start
    assert replay_pieces(pieces, 9, 0) == [(100, b"b1\nb2\n"), (200, b"c1\n")]
    assert replay_pieces(pieces, 15, 0) == [(100, b"b1\nb2\n"), (200, b"c1\n")]  # "nfinished" is no line
    assert replay_pieces([(0, b""), (5, b"z\n")], 10, 0) == [(5, b"z\n")]


def test_a_run_after_a_restart_starts_with_its_restart_line() -> None:
    assert starts_with_restart_line(b"\r\n[serialmuxd] restart gap: serialmuxd restarted at ...")
    assert not starts_with_restart_line(b"[serialmuxd] log gap: 4 bytes not written")


def test_rotation_plan_shifts_oldest_first() -> None:
    assert rotation_plan("/d/p.log", 3) == [
        ("/d/p.log.3", None),
        ("/d/p.log.2", "/d/p.log.3"),
        ("/d/p.log.1", "/d/p.log.2"),
        ("/d/p.log", "/d/p.log.1"),
    ]
    assert rotation_plan("/d/p.log", 0) == [("/d/p.log", None)]


def test_boot_retention_keeps_the_newest() -> None:
    names = [
        "vm1.boot-3.log",
        "vm1.boot-10.log",
        "vm1.log",
        "vm1.boot-x.log",
        "vm10.boot-1.log",
        "vm1.boot-4.log",
    ]
    assert boot_seqs("vm1", names) == [3, 4, 10]
    assert boot_seqs("vm10", names) == [1]
    assert boots_to_delete([3, 4, 10, 11], 2) == [3, 4]
    assert boots_to_delete([3], 5) == []


def test_triggers_close_together_are_one_boot() -> None:
    assert trigger_accepted(None, 5.0, 2.0)
    assert not trigger_accepted(5.0, 6.9, 2.0)
    assert trigger_accepted(5.0, 7.0, 2.0)


# -- [logs] configuration ---------------------------------------------------------------------------


def _port(name: str, extra: str = "") -> str:
    return f'[[ports]]\nname = "{name}"\ndevice = "exec:{name}"\n{extra}\n'


def test_logs_resolve_per_port() -> None:
    text = (
        '[logs]\ndir = "/var/log/c"\nrotate_bytes = 65536\nkeep = 2\ntimestamps = true\n'
        'boot_bytes = 4096\nkeep_boots = 3\nboot_pattern = "Linux version"\nhistory_bytes = 65536\n'
        '[defaults]\nlog_boot_pattern = "^Booting"\n'
        + _port("a")
        + _port("b", "logs = false")
        + _port("c", 'log_dir = "/srv/c"\nlog_boot_pattern = "SAC>"')
    )
    a, b, c = parse_config(text, "t.toml").ports
    assert a.log == LogSettings(Path("/var/log/c"), 65536, 2, True, 4096, 3, "^Booting", 65536)
    assert b.log is None
    assert c.log is not None and c.log.dir == Path("/srv/c") and c.log.boot_pattern == "SAC>"
    assert parse_config(_port("x"), "t.toml").ports[0].log is None  # no [logs]: no logs
    only = parse_config(_port("y", 'log_dir = "/l"'), "t.toml").ports[0].log
    assert only == LogSettings(Path("/l"))


def test_logs_problems_name_file_and_key() -> None:
    text = (
        '[logs]\ndir = "relative"\nrotate_bytes = 10\nkeep = -1\nboot_pattern = "("\nkeep_boot = 3\n'
        "history_bytes = 100\n"
        + _port("a", 'logs = "yes"\nlog_boot_pattern = "x*"')
        + _port("b", "logs = true")
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml")
    lines = info.value.lines()
    expected = [
        "t.toml: logs.dir: must be an absolute path",
        "t.toml: logs.rotate_bytes: must be between 4096 (4 KiB) and",
        "t.toml: logs.keep: must be between 0 and 1000, got -1",
        "t.toml: logs.boot_pattern: not a valid regular expression",
        "t.toml: logs.keep_boot: unknown key; did you mean 'keep_boots'?",
        "t.toml: logs.history_bytes: must be between 1024 (1 KiB) and",
        "t.toml: ports[0].logs: expected boolean",
        "t.toml: ports[0].log_boot_pattern: matches an empty line",
        "t.toml: ports[1].logs: logs = true needs a directory",
    ]
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)


def test_a_console_named_like_a_boot_capture_of_another_is_refused() -> None:
    # a.boot-1.log is console a's first boot capture: console "a.boot-1" would write into it, and a's
    # retention would delete it.  Fine in another directory, or when either is not logged.
    text = '[logs]\ndir = "/var/log/c"\n' + _port("a") + _port("a.boot-1")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml")
    assert info.value.lines() == [
        "t.toml: ports[1].name: 'a.boot-1' is the file name of a boot capture of console 'a' in "
        "/var/log/c: rename it, or give one of them its own log_dir"
    ]
    assert len(parse_config(text.replace('"a.boot-1"\n', '"a.boot-1"\nlog_dir = "/srv/x"\n'), "t").ports) == 2
    assert len(parse_config(text.replace('"a.boot-1"\n', '"a.boot-1"\nlogs = false\n'), "t").ports) == 2
    assert len(parse_config('[logs]\ndir = "/l"\n' + _port("b.boot-1"), "t").ports) == 1


def test_example_logs_block_loads() -> None:
    """The commented [logs] block of config.example.toml, uncommented, is valid."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("#   [logs]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    table = tomllib.loads("\n".join(block))["logs"]
    text = "[logs]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in table.items()) + "\n"
    text = text.replace("True", "true").replace("False", "false")
    port = parse_config(text + _port("vm1"), "example").ports[0]
    assert port.log is not None and port.log.dir == Path("/var/log/serialmuxd/consoles")


# -- reading the history back (files only) ----------------------------------------------------------


def _write_log(path: Path, runs: list[tuple[int, bytes]], *, stamps: bool, claim_more: int = 0) -> None:
    """NAME.log and its index as the writer leaves them; ``claim_more`` adds a record whose data never
    reached the file (what a power loss can leave)."""
    content, index, at_start = b"", b"", True
    for offset, data in runs:
        raw, next_start = stamp_lines(data, 0.0, at_start, stamps)
        record = IndexRecord(offset, len(content), len(raw), len(data), STAMP_LEN if stamps else 0, at_start)
        content, index, at_start = content + raw, index + record.line(), next_start
    if claim_more:
        end = runs[-1][0] + len(runs[-1][1])
        index += IndexRecord(end, len(content), claim_more, claim_more, 0, at_start).line()
    path.write_bytes(content)
    Path(f"{path}.idx").write_bytes(index + b"123 4")  # and a torn last line


@pytest.mark.parametrize("stamps", [False, True])
def test_history_reads_back_exact_offsets_across_rotations(tmp_path: Path, stamps: bool) -> None:
    from serialmuxd.obs.consolelog import load_history

    settings = LogSettings(tmp_path, keep=2, timestamps=stamps)
    _write_log(tmp_path / "vm1.log.2", [(0, b"first run\r\n")], stamps=stamps)
    _write_log(
        tmp_path / "vm1.log.1", [(2**32, b"second run, "), (2**32 + 12, b"line one\r\nline ")], stamps=stamps
    )
    _write_log(tmp_path / "vm1.log", [(2**32 + 27, b"two\r\n")], stamps=stamps, claim_more=50)
    history = load_history("vm1", settings, 1 << 20)
    assert history is not None
    # Both runs, at their offsets; the record that claims more than the file holds is not served.
    assert [(r.offset, r.data) for r in history.runs] == [
        (0, b"first run\r\n"),
        (2**32, b"second run, line one\r\nline two\r\n"),
    ]
    assert history.read(6, 100) == (6, b"run\r\n")  # a read stays within its run
    assert history.read(11, 4) == (2**32, b"seco")  # one in the hole reads from the next run's start
    short = load_history("vm1", settings, 9)  # the newest 9 bytes, at their offsets
    assert short is not None and short.runs[0].data == history.runs[-1].data[-9:]
    assert (short.start, short.end) == (history.end - 9, history.end)
    # A hole (a log gap, a restart after a crash) between the files: older runs are served too.
    _write_log(tmp_path / "vm1.log", [(2**32 + 40, b"two\r\n")], stamps=stamps)
    after_hole = load_history("vm1", settings, 1 << 20)
    assert after_hole is not None and [r.offset for r in after_hole.runs] == [0, 2**32, 2**32 + 40]
    assert after_hole.since(2**32 + 22) == [
        Piece(2**32 + 22, b"line "),
        Piece(2**32 + 40, b"two\r\n"),
    ]
    assert load_history("other", settings, 100) is None


def test_history_budget_is_history_bytes_at_least_the_replay_at_most_the_scrollback() -> None:
    assert history_budget(256 * 1024, 4096, 1 << 20) == 256 * 1024
    assert history_budget(1024, 65536, 1 << 20) == 65536  # the attach replay is served in full
    assert history_budget(256 * 1024, 4096, 65536) == 65536  # never more than the ring would hold


@given(
    st.lists(
        st.tuples(*[st.integers(0, 10**12)] * 4, st.integers(0, 30), st.booleans(), st.integers(0, 10**13))
    ),
    st.integers(1, 200),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
)
def test_an_index_read_backwards_in_blocks_gives_its_records(
    fields: list[tuple[int, int, int, int, int, bool, int]], block: int, torn: bytes
) -> None:
    records = [IndexRecord(o, p, f + g, g, s, b, t) for o, p, f, g, s, b, t in fields]  # glen <= flen
    text = b"".join(r.line() for r in records) + torn  # a torn last line after a crash
    got: list[IndexRecord] = []
    carry, pos = b"", len(text)
    while pos > 0:
        size = min(block, pos)
        pos -= size
        found, carry = index_tail(text[pos : pos + size], carry, pos == 0)
        got[:0] = found
    assert got == parse_index(text) == records
