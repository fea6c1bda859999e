"""The console log writer's thread-side logic, driven directly with a chosen clock (no thread started):
boot captures from triggers and from boot_pattern, coalescing, retention, and the gap marker for chunks
that never reached the writer.  Files only (a temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serialmuxd.config import LogSettings
from serialmuxd.obs.consolelog import ConsoleLogWriter, PortLog


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
