"""The console log writer's thread-side logic, driven directly with a chosen clock (no thread started):
boot captures from triggers and from boot_pattern, coalescing, retention, and the gap marker for chunks
that never reached the writer.  Files only (a temporary directory)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog.testing

from serialmuxd.config import LogSettings
from serialmuxd.errors import StartupError
from serialmuxd.obs import consolelog
from serialmuxd.obs.consolelog import ConsoleLogWriter, PortLog, load_history, prepare_dir
from serialmuxd.obs.consolelog_policy import Piece


def _port(tmp_path: Path, **settings: object) -> PortLog:
    return ConsoleLogWriter().port_log("vm1", LogSettings(tmp_path, **settings), 0)  # type: ignore[arg-type]


class Feed:
    """Chunks at consecutive offsets, each at a chosen monotonic time."""

    def __init__(self, log: PortLog) -> None:
        self.log = log
        self.offset = 0

    def chunk(self, data: bytes, now: float) -> None:
        self.log._item(data, self.offset, 1_700_000_000.0 + now, None, now)
        self.offset += len(data)

    def trigger(self, reason: str, now: float) -> None:
        self.log._item(None, 0, 1_700_000_000.0 + now, reason, now)

    def finish(self) -> None:
        self.log._finish()


def _capture(tmp_path: Path, seq: int) -> tuple[bytes, bytes]:
    header, _, body = (tmp_path / f"vm1.boot-{seq}.log").read_bytes().partition(b"\n")
    return header, body


@pytest.mark.parametrize("stamps", [False, True])
def test_boot_pattern_starts_a_capture_at_its_line(tmp_path: Path, stamps: bool) -> None:
    log = _port(tmp_path, boot_bytes=40, keep_boots=5, boot_pattern=r"^Linux version", timestamps=stamps)
    feed = Feed(log)
    feed.trigger("port started", 0.0)
    feed.chunk(b"first boot line\r\n" + b"y" * 30, 0.1)  # fills capture 1 (40 bytes)
    feed.chunk(b"\r\nshutting down\r\nLinux ver", 10.0)  # the new boot's line starts in this chunk ...
    feed.chunk(b"sion 6.1.0\r\nsecond boot line\r\n" + b"z" * 40, 10.1)  # ... and matches in this one
    feed.finish()
    assert log.boot_captures == 2
    header, body = _capture(tmp_path, 2)
    expected = (
        b"[serialmuxd] boot capture 2 of vm1: boot_pattern matched at 2023-11-14T22:13:30Z, stream offset"
    )
    assert header.endswith(expected + b" %d" % (47 + 17))  # where "Linux version" starts
    guest = b"Linux version 6.1.0\r\nsecond boot line\r\n" + b"z" * 40
    text = body if not stamps else b"\n".join(line[25:] for line in body.split(b"\n"))
    assert text.startswith(guest[:40]), body
    assert b"end of boot capture: the first 40 bytes after the boot are kept here" in body
    assert (tmp_path / "vm1.log").read_bytes().count(b"Linux version") == 1


def test_triggers_close_together_are_one_capture_and_old_ones_are_deleted(tmp_path: Path) -> None:
    log = _port(tmp_path, boot_bytes=10, keep_boots=2)
    feed = Feed(log)
    feed.trigger("port started", 0.0)
    feed.trigger("device online", 0.5)  # the same boot
    feed.chunk(b"boot one..........", 0.6)
    for boot, at in ((2, 10.0), (3, 20.0), (4, 30.0)):
        feed.trigger("reset through the hypervisor", at)
        feed.trigger("machine reset reported by the hypervisor", at + 0.01)  # one reset, two reports
        feed.chunk(b"boot %d ..........." % boot, at + 0.1)
    feed.finish()
    assert log.boot_captures == 4
    assert sorted(p.name for p in tmp_path.glob("vm1.boot-*.log")) == ["vm1.boot-3.log", "vm1.boot-4.log"]
    header, body = _capture(tmp_path, 4)
    assert b": reset through the hypervisor at " in header
    assert body.startswith(b"boot 4 ...")


def test_a_capture_cut_short_by_the_next_boot_says_so(tmp_path: Path) -> None:
    log = _port(tmp_path, boot_bytes=1000)
    feed = Feed(log)
    feed.trigger("port started", 0.0)
    feed.chunk(b"short boot\r\n", 0.1)
    feed.trigger("reset through the hypervisor", 5.0)
    feed.chunk(b"next\r\n", 5.1)
    feed.finish()
    _, body = _capture(tmp_path, 1)
    assert body == b"short boot\r\n[serialmuxd] end of boot capture after 12 bytes: the next boot began; " \
                   b"the rest is in vm1.log\n"  # fmt: skip
    _, last = _capture(tmp_path, 2)
    assert last.startswith(b"next\r\n") and b"after 6 bytes: the port's log was closed" in last


def test_chunks_that_never_reached_the_writer_leave_a_gap_marker(tmp_path: Path) -> None:
    log = _port(tmp_path, boot_bytes=0)
    log._item(b"one\r\n", 0, 0.0, None, 0.0)
    log._item(b"two\r\n", 5 + 300, 0.0, None, 0.1)  # 300 bytes were never queued (the queue limit)
    log._finish()
    text = (tmp_path / "vm1.log").read_bytes()
    assert text == b"one\r\n[serialmuxd] log gap: 300 bytes not written (the log writer fell behind)\ntwo\r\n"
    assert log.bytes_lost == 300 and log.bytes_logged == 10


def _drive(writer: ConsoleLogWriter, now: float = 0.0) -> None:
    """One pass of the writer thread's loop, run here (no thread): drain, then tick the active ports."""
    writer._drain()
    for port in list(writer.active):
        writer._guard(port, port._tick, now)


def test_bytes_refused_by_a_full_queue_are_counted_at_once_and_marked_with_nothing_after(
    tmp_path: Path,
) -> None:
    writer = ConsoleLogWriter(limit=1000)
    log = writer.port_log("vm1", LogSettings(tmp_path, boot_bytes=0), 0)
    log.observe(b"a" * 899 + b"\n", 0)  # queued
    log.observe(b"b" * 600, 900)  # over the limit: refused ...
    log.observe(b"c" * 600, 1500)  # ... and again, right after it: the same hole
    assert log.bytes_lost == 1200  # counted before the thread ran, whatever comes next
    _drive(writer)  # the port goes quiet: no later chunk, no close
    text = (tmp_path / "vm1.log").read_bytes()
    assert (
        text == b"a" * 899 + b"\n[serialmuxd] log gap: 1200 bytes not written (the log writer fell behind)\n"
    )
    assert log.bytes_lost == 1200 and log.bytes_logged == 900
    log.observe(b"d\n", 2100)  # the next chunk follows the hole: no second marker, nothing counted twice
    writer._drain()
    log._finish()
    assert (tmp_path / "vm1.log").read_bytes().endswith(b"behind)\nd\n")
    assert log.bytes_lost == 1200 and log.bytes_logged == 902


def test_bytes_refused_right_before_the_close_are_marked_and_counted(tmp_path: Path) -> None:
    writer = ConsoleLogWriter(limit=1000)
    log = writer.port_log("vm1", LogSettings(tmp_path, boot_bytes=0), 0)
    log.observe(b"a" * 900, 0)
    log.observe(b"b" * 900, 900)  # refused
    writer._drain()
    log._finish()  # what close() has the thread do
    assert (tmp_path / "vm1.log").read_bytes() == (
        b"a" * 900 + b"\n[serialmuxd] log gap: 900 bytes not written (the log writer fell behind)\n"
    )
    assert log.bytes_lost == 900 and log.bytes_logged == 900


def test_a_port_whose_log_fails_closes_its_files_and_counts_every_byte_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ConsoleLogWriter()
    reports: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(writer, "report", lambda event, **fields: reports.append((event, fields)))
    bad = writer.port_log("bad", LogSettings(tmp_path, boot_bytes=0), 0)
    good = writer.port_log("good", LogSettings(tmp_path, boot_bytes=0), 0)
    bad.observe(b"line one\n", 0)
    good.observe(b"fine\n", 0)
    _drive(writer)
    log_file = bad._file
    assert log_file is not None and bad.bytes_logged == 9

    def broken(data: bytes, offset: int, wall: float, now: float) -> None:
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(bad, "_chunk", broken)
    bad.observe(b"two\n", 9)  # the failing item
    good.observe(b"still fine\n", 5)
    _drive(writer)
    assert bad.failed == "ValueError('a bug in the writer')"
    assert [event for event, _ in reports] == ["console_log_failed"]
    for fd in (log_file.fd, log_file.idx_fd):  # closed, not leaked
        with pytest.raises(OSError):
            os.fstat(fd)  # type: ignore[arg-type]
    assert bad.bytes_lost == 4
    bad.observe(b"three\n", 13)  # refused and counted from now on; logged once only
    _drive(writer)
    assert bad.bytes_lost == 10 and [event for event, _ in reports] == ["console_log_failed"]
    assert (tmp_path / "bad.log").read_bytes() == b"line one\n"
    good._finish()
    assert (tmp_path / "good.log").read_bytes() == b"fine\nstill fine\n" and good.bytes_lost == 0


@pytest.mark.parametrize("block", [64, 100_000])
def test_history_reads_only_the_newest_bytes_back_at_their_offsets_across_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(consolelog, "_INDEX_BLOCK", block)  # blocks that cut index lines, or one read
    settings = LogSettings(tmp_path, rotate_bytes=4096, keep=3, boot_bytes=0)
    feed = Feed(ConsoleLogWriter().port_log("vm1", settings, 0))
    stream = b"".join(b"line %03d of the console\r\n" % i for i in range(400))  # 10 KiB: 2 rotations
    for i in range(0, len(stream), 100):
        feed.chunk(stream[i : i + 100], i / 1000)  # 100 ms apart: a record each
    feed.finish()
    assert (tmp_path / "vm1.log.2").exists() and not (tmp_path / "vm1.log.3").exists()
    for want in (1, 4000, 5000, 9000, len(stream), 10 * len(stream)):
        history = load_history("vm1", settings, want)
        assert history is not None
        kept = stream[-want:]
        assert history.runs == (Piece(len(stream) - len(kept), kept),)
        assert history.times[0][0] == history.start and history.end == len(stream)


def test_the_log_directory_is_created_0700_with_its_parents_and_a_readable_one_is_named(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)  # the usual umask: mkdir's parents would be 0755
    try:
        made = tmp_path / "a" / "b" / "logs"
        prepare_dir(made)
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", made):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with structlog.testing.capture_logs() as logs:
        prepare_dir(shared)
        prepare_dir(shared)  # each port of the directory: told once
    assert [(e["event"], e["path"], e["mode"]) for e in logs] == [
        ("console_log_dir_readable", str(shared), "0755")
    ]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # used as it is
    shared.chmod(0o775)
    with pytest.raises(StartupError, match="writable by other users"):
        prepare_dir(shared)


def test_a_record_torn_in_the_index_is_skipped_and_the_next_run_indexes_on_its_own_line(
    tmp_path: Path,
) -> None:
    settings = LogSettings(tmp_path, boot_bytes=0)
    first = Feed(ConsoleLogWriter().port_log("vm1", settings, 0))
    first.chunk(b"before the crash\r\n", 0.0)
    first.finish()
    idx = tmp_path / "vm1.log.idx"
    with idx.open("ab") as torn:  # a record cut short, inside its time: it would parse as a wrong one
        torn.write(b"18 18 9 9 0 1 17")
    second = Feed(ConsoleLogWriter().port_log("vm1", settings, 18))
    second.offset = 18
    second.chunk(b"after\r\n", 5.0)
    second.finish()
    history = load_history("vm1", settings, 1000)
    assert history is not None
    assert history.runs == (Piece(0, b"before the crash\r\nafter\r\n"),)
    assert [at for _, at in history.times] == [1_700_000_000.0, 1_700_000_005.0]


@pytest.mark.asyncio
async def test_the_thread_sleeps_without_a_timeout_while_idle_and_wakes_for_a_chunk(tmp_path: Path) -> None:
    # An idle host (no [logs] output, or none at all) costs the writer thread no wake-ups: it waits on its
    # event alone, and the loop side wakes it for the next chunk (or trigger) it queues.
    import asyncio

    writer = ConsoleLogWriter(interval_s=0.01)
    log = writer.port_log("vm1", LogSettings(tmp_path), 0)
    writer.start()
    try:

        async def until(predicate: object, what: str) -> None:
            for _ in range(2000):
                if predicate():  # type: ignore[operator]
                    return
                await asyncio.sleep(0.005)
            raise AssertionError(f"timeout waiting for {what}")

        await until(lambda: writer.sleeping, "the idle thread asleep")
        log.observe(b"first line\r\n", 0)
        await until(lambda: (tmp_path / "vm1.log").exists() and log.bytes_logged == 12, "the chunk written")
        assert (tmp_path / "vm1.log").read_bytes() == b"first line\r\n"
        await until(lambda: writer.sleeping, "asleep again once nothing is held")
        log.observe(b"second line\r\n", 12)
        await until(lambda: log.bytes_logged == 25, "the next chunk written")
    finally:
        await writer.stop()
    assert (tmp_path / "vm1.log").read_bytes() == b"first line\r\nsecond line\r\n"
