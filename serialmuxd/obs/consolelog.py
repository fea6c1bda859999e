"""Persistent console logs: each port's guest output in ``NAME.log``, rotated, with the boots kept aside.

Theory of operation
-------------------
The hub hands every guest chunk to ``PortLog.observe`` (an ``OutputFanout`` observer, so it runs on the
event loop for every chunk).  That call only appends ``(port, chunk, offset, wall time)`` to one deque
shared by all ports and returns: no I/O, no lock, no formatting.  One daemon-wide thread
(``ConsoleLogWriter``) wakes every ``FLUSH_INTERVAL_S`` (or sooner when a lot is queued), drains the deque,
stamps lines, matches the boot pattern, and writes each port's batch with one ``write(2)`` per file.  So
the console never waits for a disk: if the thread falls behind by more than ``QUEUE_LIMIT_BYTES``, chunks
are not queued at all; they are counted in ``bytes_lost`` there and then (an integer add on the loop), and
one small hole item per run of refused bytes has the thread write the gap marker in their place, whether a
later chunk follows, the port goes quiet, or it is closed.  A bug in the thread stops only that port's
log, for good and visibly: named in the log once, its files closed, every later byte counted as lost.

Nothing lost silently.  A write that fails (ENOSPC, EIO, EDQUOT ...) pauses that port's log: what reached
the file stays, what did not is counted in ``bytes_lost`` (a metric) with one log line, and every tick the
thread tries again by writing the gap marker ``[serialmuxd] log gap: N bytes not written (REASON)``; once
that succeeds logging resumes.  The console, the ring and the sessions never notice.

Files.  ``NAME.log`` holds guest bytes (with ``timestamps``, a UTC stamp before each line) and
``[serialmuxd]`` marker lines, never client input.  At ``rotate_bytes`` it is renamed to ``NAME.log.1``
(``.1`` to ``.2`` ... up to ``keep``) and a new one is created, which is what ``tail -F`` follows.  Its
sidecar ``NAME.log.idx`` (rotated with it) maps stream offsets to file positions (see consolelog_policy),
so that after a restart, even after SIGKILL, ``load_history`` gives the hub the persisted bytes at their
exact offsets, earlier runs too (with the holes between them told: a restart, a log gap), and when each
arrived (to ``TIME_GRAIN_S``: an index record's time), so a recording of a boot from before the restart
keeps its timing.  Files are created 0600 and the directory 0700.

Keeping the boot.  A trigger (the port starting, the device coming online, a reset/restart/start through
the hypervisor adapter, QEMU's ``RESET`` event, a line matching ``boot_pattern``) opens
``NAME.boot-SEQ.log``: the first ``boot_bytes`` of output after it, in the same format; the newest
``keep_boots`` are kept.  So however often ``NAME.log`` wraps, each recent boot's first lines are on disk,
and the panic at the end of the last boot is in ``NAME.log``.  Triggers within ``TRIGGER_GAP_S`` of the
last accepted one are the same boot; a pattern match does not cut short a capture that is still filling.

What a SIGKILL costs: what was still in the deque (at most one tick, ``FLUSH_INTERVAL_S``) and a held
unfinished line.  The index says exactly where the persisted bytes end; the hub reports the rest as the
restart gap.  Data is not fsynced: a power loss may lose what the kernel had not written yet, which the
index (written after its data) then also does not claim.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import re
import stat
import threading
import time
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..config import LogSettings
from ..errors import StartupError
from .consolelog_policy import (
    STAMP_LEN,
    TIME_GRAIN_S,
    IndexRecord,
    LineHolder,
    Piece,
    Segment,
    boot_file_name,
    boot_seqs,
    boots_to_delete,
    history_runs,
    index_tail,
    marker_line,
    rotation_plan,
    stamp_lines,
    strip_stamps,
    trigger_accepted,
)

log = structlog.get_logger("serialmuxd.consolelog")

FLUSH_INTERVAL_S = 0.2
QUEUE_LIMIT_BYTES = 32 * 1024 * 1024  # all ports together; beyond it chunks are counted as lost
_WAKE_BYTES = 1024 * 1024  # wake the thread early when this much is queued
TRIGGER_GAP_S = 2.0
_JOIN_WITHIN_S = 0.01  # with timestamps, chunks this close are stamped as one (a line's time is its last)
# A joined batch is stamped with one bytes.replace, which holds the GIL throughout: bounded, so that the
# event loop never waits more than a fraction of a millisecond for this thread.
_JOIN_MAX_BYTES = 256 * 1024
LINE_IDLE_S = 1.0  # timestamps: an unfinished line is written after waiting this long
_GRAIN_MS = int(TIME_GRAIN_S * 1000)  # an index record's arrivals span less than this (its time is its first)
_PATTERN_TAIL = 4096  # bytes of an unfinished line kept for boot_pattern matching across chunks
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def index_name(log_name: str) -> str:
    return log_name + ".idx"


_warned_dirs: set[Path] = set()  # a readable log directory is told once per process, not once per port


def prepare_dir(directory: Path) -> None:
    """Create the log directory, and each missing parent, 0700; a directory that cannot be used, or that
    others can write to, stops the start.  An existing one that others can read or search is used with a
    warning naming it (the files are 0600, so only their names and sizes show): refusing it would stop a
    daemon that ran yesterday over a mode that protects nothing secret."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another start
                os.mkdir(path, 0o700)
    except OSError as exc:
        raise StartupError(f"cannot create log directory {directory}: {exc.strerror}") from exc
    if not directory.is_dir():
        raise StartupError(f"log directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"log directory {directory} is not writable")
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StartupError(f"log directory {directory} is writable by other users (mode {mode & 0o777:o})")
    if mode & 0o077 and directory not in _warned_dirs:
        _warned_dirs.add(directory)
        log.warning(
            "console_log_dir_readable",
            path=str(directory),
            mode=f"{stat.S_IMODE(mode):04o}",
            hint=f"other users can list the console log names and sizes: chmod 700 {directory}",
        )


# -- history after a restart -------------------------------------------------------------------------


class HistoryTimes:
    """``(offset, wall)`` pairs, offsets increasing, in two arrays: 16 bytes a record where a tuple of
    tuples costs over 100 (a slow console has a record per line, so that would be twice its bytes)."""

    __slots__ = ("_at_ms", "_offsets")

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        """``pairs``: ``(offset, at_ms)``, the index's milliseconds."""
        self._offsets = array("Q")
        self._at_ms = array("q")
        for offset, at_ms in pairs:
            self._offsets.append(offset)
            self._at_ms.append(at_ms)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> tuple[int, float]:
        return self._offsets[i], self._at_ms[i] / 1000

    def __iter__(self) -> Iterator[tuple[int, float]]:
        for i in range(len(self._offsets)):
            yield self._offsets[i], self._at_ms[i] / 1000


@dataclass(frozen=True, slots=True)
class History:
    """Guest output previous runs persisted: ``runs`` (oldest first, at their exact stream offsets, a hole
    between each two: a restart or a log gap) and ``times``, when their bytes arrived (``(offset, wall)``,
    offsets increasing) to seed the hub's timeline, so a recording of it keeps its timing."""

    runs: tuple[Piece, ...]
    times: HistoryTimes = dataclasses.field(default_factory=HistoryTimes)

    @property
    def start(self) -> int:
        return self.runs[0].offset

    @property
    def end(self) -> int:
        return self.runs[-1].end

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """Up to ``limit`` bytes from ``offset`` (``start <= offset < end``), within one run: an offset in a
        hole reads from the next run's first byte (the returned offset says where the bytes begin)."""
        for run in self.runs:
            if offset < run.end:
                begin = max(offset, run.offset)
                return begin, run.data[begin - run.offset : begin - run.offset + limit]
        return self.end, b""

    def since(self, offset: int) -> list[Piece]:
        """The runs from ``offset`` on (the first one cut there)."""
        out = []
        for run in self.runs:
            if offset < run.end:
                skip = max(0, offset - run.offset)
                out.append(Piece(run.offset + skip, run.data[skip:]))
        return out


def load_history(name: str, settings: LogSettings, want: int) -> History | None:
    """The newest ``want`` bytes of ``name``'s persisted output, read back through the sidecar indexes, as
    runs at their exact offsets (see ``history_runs``).  Only what is needed is read, newest first: the
    indexes from their ends (``_INDEX_BLOCK`` at a time), the records' bytes with ``pread``, so a start costs
    ``want`` per port whatever ``rotate_bytes`` and ``keep`` are.  A record whose bytes the file does not
    hold (torn, truncated) is a hole like any other.  None when there is nothing usable."""
    base = settings.dir / f"{name}.log"
    files = [base] + [Path(f"{base}.{k}") for k in range(1, settings.keep + 1)]  # newest first
    pieces: list[Piece] = []  # newest first
    total = 0
    floor: int | None = None
    fds: dict[Path, int] = {}
    records = _records_newest_first(name, files)
    try:
        for path, record in records:
            if floor is not None and record.end > floor:
                break  # offsets going back: not this stream any more
            data = _read_record(path, record, fds)
            if data is None:
                continue  # a hole
            pieces.append(Piece(record.offset, data, record.at_ms))
            floor, total = record.offset, total + len(data)
            if total >= want:
                break
    finally:
        records.close()  # the index it has open
        for fd in fds.values():
            os.close(fd)
    runs, times = history_runs(pieces[::-1], want)
    if not runs:
        return None
    return History(tuple(runs), HistoryTimes(times))


_INDEX_BLOCK = 64 * 1024


def _records_newest_first(name: str, files: list[Path]) -> Generator[tuple[Path, IndexRecord], None, None]:
    """Every index record of ``files`` (newest file first), newest first, each file's index read from its
    end in blocks: only as much as the caller goes on asking for."""
    for path in files:
        try:
            fd = os.open(index_name(str(path)), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("console_log_history_unreadable", port=name, path=str(path), error=exc.strerror)
            continue
        try:
            pos = os.fstat(fd).st_size
            carry = b""
            while pos > 0:
                size = min(_INDEX_BLOCK, pos)
                pos -= size
                block = os.pread(fd, size, pos)
                if len(block) != size:
                    break  # shrunk under us: what was read is all there is
                records, carry = index_tail(block, carry, pos == 0)
                for record in reversed(records):
                    yield path, record
        except OSError as exc:
            log.warning("console_log_history_unreadable", port=name, path=str(path), error=exc.strerror)
        finally:
            os.close(fd)


def _read_record(path: Path, record: IndexRecord, fds: dict[Path, int]) -> bytes | None:
    """The guest bytes of one index record, or None if the file does not hold them (torn, truncated)."""
    fd = fds.get(path)
    try:
        if fd is None:
            fd = fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        raw = os.pread(fd, record.flen, record.filepos)
    except OSError:
        return None
    if len(raw) != record.flen:
        return None
    data = strip_stamps(raw, record.stamp_len, record.starts_line)
    return data if len(data) == record.glen else None


def restart_marker(history: History, run_start: int, previous_end: int | None, wall: float) -> bytes:
    """The line the ring starts with after a restart: where the persisted output ends and what is gone."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))
    if previous_end is not None and previous_end <= history.end:
        lost = "nothing was lost"
    elif previous_end is not None:
        lost = f"{previous_end - history.end} bytes before the restart were not logged"
    else:
        lost = "what the previous run printed after that offset is not known (it did not stop cleanly)"
    lead = b"" if history.runs[-1].data.endswith(b"\n") else b"\r\n"
    text = (
        f"[serialmuxd] restart gap: serialmuxd restarted at {when}; the logged output above ends at offset "
        f"{history.end}, {lost}; new output starts at offset {run_start}"
    )
    return lead + text.encode() + b"\r\n"


# -- one file being written ----------------------------------------------------------------------------


class _WriteFailed(Exception):
    def __init__(self, lost: int, error: OSError, written: int = 0) -> None:
        super().__init__(error.strerror)
        self.lost = lost
        self.error = error
        self.written = written  # guest bytes of the batch that did reach the file


class _LogFile:
    """An append-only file with a batch being built, and (for NAME.log) its index."""

    def __init__(self, path: Path, *, stamps: bool, indexed: bool) -> None:
        self.path = path
        self.stamps = stamps
        self.fd = _open(path)  # read-write: the last byte says whether the file ends mid-line
        self.idx_fd: int | None = None
        try:
            self.idx_fd = _open(Path(index_name(str(path)))) if indexed else None
            if self.idx_fd is not None:
                _cut_torn_record(self.idx_fd)
            self.size = os.fstat(self.fd).st_size
            self.at_line_start = self.size == 0 or os.pread(self.fd, 1, self.size - 1) == b"\n"
        except OSError:
            self.close()
            raise
        self.pending = bytearray()
        self.records: list[IndexRecord] = []
        self._line_start_before = self.at_line_start  # at_line_start when the pending batch began

    @property
    def length(self) -> int:
        """Size once the pending batch is written."""
        return self.size + len(self.pending)

    def add_guest(self, data: bytes, offset: int, wall: float) -> None:
        if not self.pending:
            self._line_start_before = self.at_line_start
        starts = self.at_line_start
        raw, self.at_line_start = stamp_lines(data, wall, starts, self.stamps)
        filepos = self.length
        self.pending += raw
        if self.idx_fd is None:
            return
        last = self.records[-1] if self.records else None
        at_ms = int(wall * 1000)
        if (
            last is not None
            and last.end == offset
            and last.filepos + last.flen == filepos
            and at_ms - last.at_ms < _GRAIN_MS
        ):
            self.records[-1] = IndexRecord(
                last.offset,
                last.filepos,
                last.flen + len(raw),
                last.glen + len(data),
                last.stamp_len,
                last.starts_line,
                last.at_ms,
            )
        else:
            stamp_len = STAMP_LEN if self.stamps else 0
            self.records.append(IndexRecord(offset, filepos, len(raw), len(data), stamp_len, starts, at_ms))

    def add_marker(self, text: str, wall: float) -> None:
        if not self.pending:
            self._line_start_before = self.at_line_start
        self.pending += marker_line(text, wall, self.at_line_start, self.stamps)
        self.at_line_start = True

    def flush(self) -> int:
        """Write the batch; returns guest bytes written.  Raises ``_WriteFailed`` with the guest bytes that
        did not reach the file; what did stays, and the index names exactly that."""
        data, records = self.pending, self.records
        self.pending, self.records = bytearray(), []
        if not data:
            return 0
        written = 0
        failure: OSError | None = None
        view = memoryview(data)
        try:
            while written < len(data):
                n = os.write(self.fd, view[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
        except OSError as exc:
            failure = exc
        finally:
            view.release()
        base = self.size
        self.size += written
        if written < len(data):
            self.at_line_start = data[written - 1] == 0x0A if written else self._line_start_before
        kept: list[IndexRecord] = []
        guest_total = sum(r.glen for r in records)
        for record in records:
            cut = base + written - record.filepos
            if cut >= record.flen:
                kept.append(record)
            elif cut > 0:
                raw = bytes(data[record.filepos - base : record.filepos - base + cut])
                glen = len(strip_stamps(raw, record.stamp_len, record.starts_line))
                if glen:
                    kept.append(
                        IndexRecord(
                            record.offset,
                            record.filepos,
                            cut,
                            glen,
                            record.stamp_len,
                            record.starts_line,
                            record.at_ms,
                        )
                    )
            else:
                break
        guest_written = sum(r.glen for r in kept)
        if kept and self.idx_fd is not None:
            # Best effort: data without its index record is still in the human-readable log; only a
            # restart cannot serve it from there.
            with contextlib.suppress(OSError):
                os.write(self.idx_fd, b"".join(r.line() for r in kept))
        if failure is not None:
            lost = guest_total - guest_written if self.idx_fd is not None else 0
            raise _WriteFailed(lost, failure, guest_written)
        return guest_written

    def close(self) -> None:
        for fd in (self.fd, self.idx_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _cut_torn_record(idx_fd: int) -> None:
    """An index whose last record was torn (a crash or a full disk mid-write) loses that part line, so that
    the next record starts its own line (instead of being lost with it) and the torn one, were it ever
    completed by a newline, cannot pass for a record.  Best effort, like every index write."""
    with contextlib.suppress(OSError):
        size = os.fstat(idx_fd).st_size
        tail = os.pread(idx_fd, min(size, 4096), max(0, size - 4096))  # a record line is < 200 bytes
        if tail and not tail.endswith(b"\n"):
            nl = tail.rfind(b"\n")
            if nl >= 0 or size <= 4096:
                os.ftruncate(idx_fd, size - len(tail) + nl + 1)


def _open(path: Path) -> int:
    fd = os.open(path, _OPEN_FLAGS, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older run (or created under another umask) is tightened
    except OSError:
        os.close(fd)
        raise
    return fd


# -- one port's log ---------------------------------------------------------------------------------


class PortLog:
    """One port's console log.  ``observe``, ``trigger`` and ``close`` run on the event loop; everything
    whose name starts with ``_`` runs on the writer thread.  The counters are read by metrics."""

    def __init__(self, writer: ConsoleLogWriter, name: str, settings: LogSettings, start_offset: int) -> None:
        self._writer = writer
        self.name = name
        self.settings = settings
        self.bytes_logged = 0  # guest bytes that reached NAME.log
        self.boot_captures = 0  # boot capture files started
        self.closed = False
        # Why this port's log stopped for good (a bug in the writer, see ConsoleLogWriter._guard); from then
        # on every chunk is counted as lost.  Written by the thread, read by the loop.
        self.failed: str | None = None
        # Event loop side: guest bytes refused at observe (the queue over its limit, or a failed log), counted
        # the moment they are refused, so bytes_lost is right however the port goes on (quiet, closed).
        self.dropped = 0
        self._hole: list[int] | None = None  # [start, end) of refused bytes whose marker is still queued
        self._hole_lock = threading.Lock()  # only taken when refusing (rare) and when the thread takes a hole
        # Thread side.
        self._next = start_offset  # the offset the next chunk should have; a larger one is a hole
        self._holder = LineHolder(settings.timestamps, LINE_IDLE_S)
        self._file: _LogFile | None = None
        self._failure: str | None = None  # why the log is paused; None while writing works
        self._unlogged = 0  # guest bytes lost since the last gap marker
        self._last_trigger: float | None = None
        self._pending_trigger: tuple[str, float] | None = None  # (reason, wall) waiting for output
        self._boot: _LogFile | None = None
        self._boot_left = 0
        self._boot_from = 0  # stream offset the current capture starts at
        self._boot_seq = 0
        self._pattern = (
            re.compile(settings.boot_pattern.encode(), re.MULTILINE) if settings.boot_pattern else None
        )
        self._tail = b""  # unfinished line, for boot_pattern
        self._lost = 0  # thread side: guest bytes that did not reach NAME.log (write errors, a full disk)
        self._start = start_offset
        self._hole_bytes = 0  # thread side: refused bytes (counted in dropped) the thread has marked

    @property
    def bytes_lost(self) -> int:
        """Guest bytes that did not reach NAME.log: write errors, a full disk, the queue limit, a failure."""
        return self._lost + self.dropped

    # -- event loop side -----------------------------------------------------------------------------
    def observe(self, data: bytes, offset: int) -> None:
        """OutputFanout observer: queue the chunk, or leave a hole in the offsets if the queue is full."""
        writer = self._writer
        if self.closed or writer.queued - writer.drained + len(data) > writer.limit:
            self._refuse(data, offset)
            return
        writer.queued += len(data)
        writer.queue.append((self, data, offset, time.time(), None))
        if writer.sleeping or writer.queued - writer.drained > _WAKE_BYTES:
            writer.wake.set()

    def _refuse(self, data: bytes, offset: int) -> None:
        """A chunk the thread will never see: counted now; unless the log is closed for good, a hole item
        (one per run of refused bytes, extended while no chunk follows) makes the thread write the gap marker
        in its place, whatever comes next: a later chunk, nothing at all, or the close."""
        if self.failed is not None or not self.closed:
            self.dropped += len(data)
        if self.closed:
            return
        end = offset + len(data)
        with self._hole_lock:
            hole = self._hole
            if hole is not None and hole[1] == offset:
                hole[1] = end
                return
            self._hole = hole = [offset, end]
        self._writer.queue.append((self, None, offset, time.time(), hole))
        self._writer.wake.set()

    def continue_at(self, offset: int) -> None:
        """Before the first chunk (``PortHub.continue_at``: a port a reload rebuilt): the stream starts at
        ``offset``.  Safe from the loop: the thread reads these only for this port's items (none queued)."""
        self._next = self._start = offset

    def trigger(self, reason: str) -> None:
        """A boot or reset happened here in the stream: capture what follows (see the module docstring)."""
        if not self.closed and self.settings.boot_bytes > 0:
            self._writer.queue.append((self, None, 0, time.time(), reason))
            if self._writer.sleeping:
                self._writer.wake.set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write everything queued for this port, then close its files (port stopped or removed)."""
        if self.closed:
            return
        self.closed = True
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer.queue.append((self, None, 0, time.time(), done))
        self._writer.wake.set()
        if not self._writer.running:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), timeout_s)
        except TimeoutError:
            log.warning("console_log_close_timeout", port=self.name, seconds=timeout_s)

    # -- writer thread side ----------------------------------------------------------------------------
    def _busy(self) -> bool:
        """Something waits for a later tick: a held line, a batch, a boot capture, a paused log."""
        return bool(
            self._holder.held
            or self._failure is not None
            or (self._file is not None and self._file.pending)
            or (self._boot is not None and self._boot.pending)
        )

    def _item(self, data: bytes | None, offset: int, wall: float, extra: Any, now: float) -> None:
        self._writer.active.add(self)
        if data is not None:
            self._chunk(data, offset, wall, now)
        elif isinstance(extra, str):
            if trigger_accepted(self._last_trigger, now, TRIGGER_GAP_S):
                self._last_trigger = now
                self._pending_trigger = (extra, wall)
        elif isinstance(extra, list):
            self._take_hole(extra, now)
        elif isinstance(extra, concurrent.futures.Future):
            try:
                self._finish()
            finally:
                extra.set_result(None)

    def _take_hole(self, hole: list[int], now: float) -> None:
        """Refused bytes (see ``_refuse``; already counted in ``dropped``): the gap marker in their place."""
        with self._hole_lock:
            if self._hole is hole:
                self._hole = None  # a later refusal starts a new hole (and queues its own item)
            start, end = hole
        if end <= self._next:
            return
        self._release(self._holder.flush(), now)  # the held line ends where the hole begins
        self._lost += max(0, start - self._next)  # never seen by either side (not expected): counted here
        self._hole_bytes += end - self._next
        self._lose(end - self._next, "the log writer fell behind", counted=True)
        self._next = end

    def _chunk(self, data: bytes, offset: int, wall: float, now: float) -> None:
        if offset > self._next:
            self._release(self._holder.flush(), now)  # the held line ends where the hole begins
            self._lose(offset - self._next, "the log writer fell behind")
        self._next = offset + len(data)
        if self._pattern is not None:
            self._match(data, offset, wall, now)
        self._release(self._holder.feed(data, offset, wall, now), now)

    def _match(self, data: bytes, offset: int, wall: float, now: float) -> None:
        assert self._pattern is not None
        buf = self._tail + data
        found = self._pattern.search(buf)
        if (
            found is not None
            and found.end() > len(self._tail)
            and self._boot is None
            and self._pending_trigger is None
        ) and trigger_accepted(self._last_trigger, now, TRIGGER_GAP_S):
            self._last_trigger = now
            line_start = buf.rfind(b"\n", 0, found.start()) + 1
            # The line so far (from the earlier chunk) opens the capture; this chunk's bytes follow.
            start = offset - len(self._tail) + line_start
            self._start_capture("boot_pattern matched", wall, start)
            # Without timestamps the line's beginning was written with the earlier chunk already (with
            # them, the holder still has it and releases it with this chunk).
            if line_start < len(self._tail) and self._boot is not None and not self._holder.stamps:
                self._boot_write(Segment(self._tail[line_start:], start, wall))
        nl = buf.rfind(b"\n")
        self._tail = buf[nl + 1 :][-_PATTERN_TAIL:]

    def _release(self, segments: list[Segment], now: float) -> None:
        for segment in segments:
            if self._pending_trigger is not None:
                reason, wall = self._pending_trigger
                self._pending_trigger = None
                self._start_capture(reason, wall, segment.offset)
            if self._boot is not None:
                self._boot_write(segment)
            self._main_write(segment)

    def _main_write(self, segment: Segment) -> None:
        if self._failure is not None:
            self._unlogged += len(segment.data)
            self._lost += len(segment.data)
            return
        data, offset = segment.data, segment.offset
        settings = self.settings
        while data:
            target = self._ensure_file()
            if target is None:
                self._unlogged += len(data)
                self._lost += len(data)
                return
            room = settings.rotate_bytes - target.length
            if room <= 0 and target.length > 0:
                if not self._rotate():
                    self._unlogged += len(data)
                    self._lost += len(data)
                    return
                continue
            piece = data[: max(room, 1)]
            if settings.timestamps:  # stamps count towards the size too: cut before the file passes it
                while len(piece) > 1:
                    excess = len(piece) + STAMP_LEN * (piece.count(b"\n") + 1) - room
                    if excess <= 0:
                        break
                    piece = piece[: max(1, len(piece) - excess)]
            target.add_guest(piece, offset, segment.wall)
            data, offset = data[len(piece) :], offset + len(piece)

    def _ensure_file(self) -> _LogFile | None:
        if self._file is None:
            try:
                self._file = _LogFile(
                    self.settings.dir / f"{self.name}.log", stamps=self.settings.timestamps, indexed=True
                )
            except OSError as exc:
                self._fail(exc.strerror or str(exc), 0)
                return None
        return self._file

    def _rotate(self) -> bool:
        """Flush, rename NAME.log to NAME.log.1 (and so on), start a new NAME.log."""
        if not self._flush_main():
            return False
        assert self._file is not None
        self._file.close()
        self._file = None
        base = str(self.settings.dir / f"{self.name}.log")
        try:
            for src, dst in rotation_plan(base, self.settings.keep):
                for a, b in ((src, dst), (index_name(src), None if dst is None else index_name(dst))):
                    with contextlib.suppress(FileNotFoundError):
                        if b is None:
                            os.unlink(a)
                        else:
                            os.rename(a, b)
        except OSError as exc:
            self._fail(exc.strerror or str(exc), 0)
            return False
        return self._ensure_file() is not None

    def _start_capture(self, reason: str, wall: float, offset: int) -> None:
        self._end_capture("the next boot began")
        settings = self.settings
        try:
            names = os.listdir(settings.dir)
        except OSError:
            names = []
        seqs = boot_seqs(self.name, names)
        self._boot_seq = max(self._boot_seq, seqs[-1] if seqs else 0) + 1
        try:
            self._boot = _LogFile(
                settings.dir / boot_file_name(self.name, self._boot_seq),
                stamps=settings.timestamps,
                indexed=False,
            )
        except OSError as exc:
            self._writer.report("console_log_boot_failed", port=self.name, error=exc.strerror)
            return
        self.boot_captures += 1
        self._boot_left = settings.boot_bytes
        self._boot_from = offset
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
        self._boot.add_marker(
            f"boot capture {self._boot_seq} of {self.name}: {reason} at {when}, stream offset {offset}", wall
        )
        for seq in boots_to_delete([*seqs, self._boot_seq], settings.keep_boots):
            with contextlib.suppress(OSError):
                os.unlink(settings.dir / boot_file_name(self.name, seq))

    def _boot_write(self, segment: Segment) -> None:
        boot = self._boot
        assert boot is not None
        skip = max(0, self._boot_from - segment.offset)  # output from before the boot line
        piece = segment.data[skip : skip + self._boot_left]
        if not piece:
            return
        boot.add_guest(piece, segment.offset + skip, segment.wall)
        self._boot_left -= len(piece)
        if self._boot_left <= 0:
            self._end_capture(None)

    def _end_capture(self, cut_short: str | None) -> None:
        """Close the capture: complete (``None``), or cut short for the reason given."""
        boot = self._boot
        if boot is None:
            return
        self._boot = None
        kept = self.settings.boot_bytes - self._boot_left
        if cut_short is None:
            text = f"end of boot capture: the first {kept} bytes after the boot are kept here"
        else:
            text = f"end of boot capture after {kept} bytes: {cut_short}"
        boot.add_marker(f"{text}; the rest is in {self.name}.log", time.time())
        try:
            boot.flush()
        except _WriteFailed as exc:
            self._writer.report("console_log_boot_failed", port=self.name, error=exc.error.strerror)
        boot.close()

    def _lose(self, count: int, reason: str, *, counted: bool = False) -> None:
        """Bytes that never reached the thread (the queue limit): a gap marker in place of them.
        ``counted``: the loop already counted them (``dropped``)."""
        if not counted:
            self._lost += count
        if self._failure is None:
            target = self._ensure_file()
            if target is not None:
                target.add_marker(f"log gap: {count} bytes not written ({reason})", time.time())
                self._writer.report("console_log_gap", port=self.name, lost=count, reason=reason)
                return
        self._unlogged += count  # paused: told in the marker written when logging resumes

    def _fail(self, reason: str, lost: int) -> None:
        self._lost += lost
        self._unlogged += lost
        if self._failure is None:
            self._writer.report("console_log_paused", port=self.name, reason=reason, lost=self._unlogged)
        self._failure = reason

    def _flush_main(self) -> bool:
        target = self._file
        if target is None:
            return self._failure is None
        if self._failure is not None:
            # Paused: the next attempt is the gap marker; once it is written, logging resumes.  Nothing
            # else is pending then (_main_write counts instead of adding while paused).
            target.pending.clear()
            target.records.clear()
            target.add_marker(f"log gap: {self._unlogged} bytes not written ({self._failure})", time.time())
            try:
                target.flush()
            except _WriteFailed as exc:
                self._failure = exc.error.strerror or self._failure
                return False
            self._writer.report(
                "console_log_resumed", port=self.name, lost=self._unlogged, reason=self._failure
            )
            self._failure = None
            self._unlogged = 0
            return True
        try:
            self.bytes_logged += target.flush()
        except _WriteFailed as exc:
            self.bytes_logged += exc.written  # what reached the file before it filled up
            self._fail(exc.error.strerror or str(exc.error), exc.lost)
            return False
        return True

    @property
    def paused(self) -> bool:
        return self._failure is not None

    def _retry(self) -> None:
        if self._file is None:
            self._ensure_file_quietly()
        self._flush_main()

    def _tick(self, now: float) -> None:
        self._release(self._holder.flush(now), now)
        if self._failure is not None and self._file is None:
            self._ensure_file_quietly()
        self._flush_main()
        if self._boot is not None:
            try:
                self._boot.flush()
            except _WriteFailed as exc:
                self._writer.report("console_log_boot_failed", port=self.name, error=exc.error.strerror)
                self._boot.close()
                self._boot = None

    def _ensure_file_quietly(self) -> None:
        with contextlib.suppress(OSError):
            self._file = _LogFile(
                self.settings.dir / f"{self.name}.log", stamps=self.settings.timestamps, indexed=True
            )

    def _abandon(self, seen_end: int) -> None:
        """After a failure (``ConsoleLogWriter._guard``): close the files, whatever state they are in, and
        count as lost every guest byte up to ``seen_end`` (the failing item's end) not accounted for yet:
        held, batched, or not reached at all."""
        self._next = max(self._next, seen_end)
        accounted = self.bytes_logged + self._lost + self._hole_bytes
        self._lost += max(0, self._next - self._start - accounted)
        for log_file in (self._file, self._boot):
            if log_file is not None:
                with contextlib.suppress(Exception):
                    log_file.close()
        self._file = self._boot = None

    def _finish(self) -> None:
        self._release(self._holder.flush(), time.monotonic())
        self._flush_main()
        self._end_capture("the port's log was closed")
        if self._file is not None:
            self._file.close()
            self._file = None
        self._writer.ports.discard(self)
        self._writer.active.discard(self)


# -- the daemon's writer thread ------------------------------------------------------------------------


_Item = tuple[PortLog, bytes | None, int, float, Any]


class ConsoleLogWriter:
    """The one thread that writes every port's log (see the module docstring)."""

    def __init__(self, *, limit: int = QUEUE_LIMIT_BYTES, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.queue: collections.deque[_Item] = collections.deque()
        self.queued = 0  # bytes ever queued (event loop writes it)
        self.drained = 0  # bytes ever taken off the queue (the thread writes it)
        self.limit = limit
        self.interval_s = interval_s
        self.wake = threading.Event()
        # The thread waits without a timeout while it has nothing to write or hold (an idle host costs no
        # wake-ups); whoever queues something then wakes it.  Set before the thread's last look at the
        # queue, so an append either is seen by that look or sees the flag.
        self.sleeping = False
        self.ports: set[PortLog] = set()
        self.active: set[PortLog] = set()  # ports the thread has work for (thread side only)
        self.running = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def port_log(self, name: str, settings: LogSettings, start_offset: int) -> PortLog:
        port = PortLog(self, name, settings, start_offset)
        self.ports.add(port)
        return port

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.running = True
        self._thread = threading.Thread(target=self._run, name="serialmuxd-consolelog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Close every port's log that is still open, write what is queued, end the thread."""
        for port in list(self.ports):
            await port.close()
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self.wake.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        self._thread = None
        self.running = False

    def report(self, event: str, **fields: Any) -> None:
        """Log from the thread, on the event loop (the daemon's logging is the loop's)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: log.warning(event, **fields))

    def _run(self) -> None:
        while True:
            if self.active or self._stopping:
                self.wake.wait(self.interval_s)
            else:
                self.sleeping = True
                if not self.queue:
                    self.wake.wait()
                self.sleeping = False
                if not self._stopping:  # then gather a tick's worth, as for a busy port: one batch
                    self.wake.clear()
                    self.wake.wait(self.interval_s)
            self.wake.clear()
            for port in [p for p in self.active if p.paused]:
                self._guard(port, port._retry)  # before the new chunks: they are written if it works
            self._drain()
            now = time.monotonic()
            # Only ports with something to write or hold: 10,000 idle ports cost the thread nothing.
            for port in list(self.active):
                self._guard(port, port._tick, now)
                if not port._busy():
                    self.active.discard(port)
            if self._stopping and not self.queue:
                return

    def _drain(self) -> None:
        queue = self.queue
        pending: _Item | None = None  # consecutive chunks of one port, joined: one pass instead of many
        parts: list[bytes] = []
        joined_end = 0  # stream offset one past the joined parts
        while queue:
            item = queue.popleft()
            port, data, offset, wall, extra = item
            if data is not None:
                self.drained += len(data)
                # Joined chunks share one time (the index's, and with timestamps the stamp's).
                join_s = _JOIN_WITHIN_S if port.settings.timestamps else TIME_GRAIN_S
                if (
                    pending is not None
                    and pending[0] is port
                    and joined_end == offset
                    and joined_end - pending[2] + len(data) <= _JOIN_MAX_BYTES
                    and wall - pending[3] < join_s
                ):
                    parts.append(data)
                    joined_end += len(data)
                    continue
            if pending is not None:
                self._process(pending, parts)
                pending, parts = None, []
            if data is None:
                self._guard(port, port._item, data, offset, wall, extra, time.monotonic())
            else:
                pending, parts, joined_end = item, [data], offset + len(data)
        if pending is not None:
            self._process(pending, parts)

    def _process(self, item: _Item, parts: list[bytes]) -> None:
        port, _, offset, wall, extra = item
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._guard(port, port._item, data, offset, wall, extra, time.monotonic())

    def _guard(self, port: PortLog, call: Callable[..., None], *args: Any) -> None:
        if port.failed is None:
            try:
                call(*args)
                return
            except Exception as exc:
                # A bug here must not end every port's log: this port's stops for good, visibly (named in
                # the log once, its files closed, every byte from here on counted in bytes_lost).
                port.failed = repr(exc)
                port.closed = True  # after failed: observe then counts what it refuses
                self.ports.discard(port)
                self.active.discard(port)
                data = args[0] if args and isinstance(args[0], bytes) else b""
                port._abandon(args[1] + len(data) if data else 0)
                self.report("console_log_failed", port=port.name, error=port.failed, lost=port.bytes_lost)
                args = tuple(arg for arg in args if arg is not data)  # counted by _abandon
        for arg in args:  # the item that failed, or one queued before the failure was seen: not written
            if isinstance(arg, concurrent.futures.Future) and not arg.done():
                arg.set_result(None)
            elif isinstance(arg, bytes):
                port._lost += len(arg)
