"""The pure parts of persistent console logs: line stamping, the sidecar index, rotation and retention.

No I/O, clock or threads here (``obs/consolelog.py`` does those), so each rule is unit-tested alone.

Line stamps.  With ``timestamps`` on, every line of a log file starts with ``STAMP_LEN`` bytes of UTC time
(``2026-12-01T23:06:41.123Z ``), the time the line *completed*: ``LineHolder`` keeps an unfinished line
back until its newline, or until it has waited ``idle_s`` (a shell prompt, a progress bar), when it is
written with the time of its last byte and the rest of that line follows later without a new stamp.  A
marker line, a rotation or a boot capture's header starts a new file line, so a continuation written after
one gets a stamp of its own: the rule "every file line starts with a stamp" always holds, which is what
lets ``strip_stamps`` recover the guest's bytes exactly.

The sidecar index.  ``NAME.log`` holds guest bytes (+ stamps) and ``[serialmuxd]`` marker lines only; which
file bytes are which stream offsets is in ``NAME.log.idx``: one text line per write, ``IndexRecord``
(offset, file position, file length, guest length, stamp length, starts-a-line, wall time in ms).  A
record is written after its data, so a record never names bytes that were not written first; on reading, a
record that points past the end of its file or whose bytes do not strip to its guest length (a torn write)
is ignored.  The wall time is when the record's first byte arrived (with timestamps: when its first line
completed); a record covers at most ``TIME_GRAIN_S`` of arrivals, so after a restart the recording export
replays the persisted history with its original timing to within that (``History.times``).  Records of
older versions have six fields and no time.

History after a restart.  ``history_runs`` keeps the newest ``want`` bytes the index names, as runs: a
run is a stretch without a hole in its offsets; between two runs the daemon restarted (the later run then
starts with the restart-gap line that run wrote) or the log had a gap (a full disk: the file has a
``log gap`` marker there, which is not guest output and has no offset).  Serving older runs too, at their
exact offsets with the holes told, is what lets a console that crashed or lost its log briefly still show
what came before; the budget is the ring's size, so memory is the same as without history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STAMP_LEN = 25  # len(b"2026-12-01T23:06:41.123Z ")
TIME_GRAIN_S = 0.1  # one index record covers at most this much arrival time (the recording's resolution)
RESTART_LINE = b"[serialmuxd] restart gap:"  # how the restart-gap line a run starts with begins
_NL = b"\n"


def format_stamp(wall: float) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ `` (UTC, fixed width: ``STAMP_LEN`` bytes)."""
    whole = int(wall)
    millis = min(999, int((wall - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode() + b".%03dZ " % millis


def stamp_lines(data: bytes, wall: float, at_line_start: bool, stamps: bool) -> tuple[bytes, bool]:
    """The file bytes for guest ``data`` written when the file is (or is not) ``at_line_start``: a stamp
    before each line's first byte when ``stamps``.  Returns them and whether the file ends at a line start."""
    if not data:
        return b"", at_line_start
    ends_line = data.endswith(_NL)
    if not stamps:
        return data, ends_line
    stamp = format_stamp(wall)
    body = data[:-1] if ends_line else data
    out = body.replace(_NL, _NL + stamp)
    if ends_line:
        out += _NL
    return (stamp + out if at_line_start else out), ends_line


def strip_stamps(data: bytes, stamp_len: int, starts_line: bool) -> bytes:
    """Undo ``stamp_lines``: drop ``stamp_len`` bytes at the start (if it starts a line) and after every
    newline that is not the last byte.  A stamp cut short by a torn write is dropped as far as it got."""
    if stamp_len <= 0:
        return data
    parts = []
    pos = stamp_len if starts_line else 0
    while pos < len(data):
        nl = data.find(_NL, pos)
        if nl < 0:
            parts.append(data[pos:])
            break
        parts.append(data[pos : nl + 1])
        pos = nl + 1 + stamp_len
    return b"".join(parts)


def marker_line(text: str, wall: float, at_line_start: bool, stamps: bool) -> bytes:
    """A ``[serialmuxd] ...`` line for a log file, on a line of its own (after a newline if the file is
    mid-line; that newline is not the guest's)."""
    line = b"[serialmuxd] " + text.encode("utf-8", "replace") + _NL
    prefix = b"" if at_line_start else _NL
    return prefix + (format_stamp(wall) if stamps else b"") + line


@dataclass(frozen=True, slots=True)
class Segment:
    """Guest bytes ready to be written: ``data`` starts at stream ``offset``; ``wall`` is its line time."""

    data: bytes
    offset: int
    wall: float


class LineHolder:
    """Holds an unfinished line back while stamping (see the module docstring); passes bytes straight
    through when not."""

    __slots__ = ("_held", "_held_since", "_held_wall", "_offset", "idle_s", "stamps")

    def __init__(self, stamps: bool, idle_s: float = 1.0) -> None:
        self.stamps = stamps
        self.idle_s = idle_s
        self._held = bytearray()
        self._offset = 0  # stream offset of _held[0]
        self._held_since = 0.0  # monotonic time the oldest held byte arrived
        self._held_wall = 0.0  # wall time of the newest held byte

    @property
    def held(self) -> int:
        return len(self._held)

    def feed(self, data: bytes, offset: int, wall: float, now: float) -> list[Segment]:
        """``data`` at ``offset`` (contiguous with what is held; the caller flushes first on a gap)."""
        if not self.stamps:
            return [Segment(data, offset, wall)]
        nl = data.rfind(_NL)
        if nl < 0:
            if not self._held:
                self._offset, self._held_since = offset, now
            self._held += data
            self._held_wall = wall
            return []
        done = bytes(self._held) + data[: nl + 1] if self._held else data[: nl + 1]
        start = self._offset if self._held else offset
        self._held.clear()
        rest = data[nl + 1 :]
        if rest:
            self._held += rest
            self._offset, self._held_since, self._held_wall = offset + nl + 1, now, wall
        return [Segment(done, start, wall)]

    def flush(self, now: float | None = None) -> list[Segment]:
        """The held partial line, if it waited ``idle_s`` (or at once when ``now`` is None)."""
        if not self._held or (now is not None and now - self._held_since < self.idle_s):
            return []
        segment = Segment(bytes(self._held), self._offset, self._held_wall)
        self._held.clear()
        return [segment]


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """Guest bytes ``[offset, offset + glen)`` are file bytes ``[filepos, filepos + flen)`` with stamps of
    ``stamp_len`` bytes at line starts (the first byte starts a line when ``starts_line``); the first byte
    arrived at ``at_ms`` (wall clock, milliseconds; 0: not known, a record of an older version)."""

    offset: int
    filepos: int
    flen: int
    glen: int
    stamp_len: int
    starts_line: bool
    at_ms: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.glen

    def line(self) -> bytes:
        return b"%d %d %d %d %d %d %d\n" % (
            self.offset,
            self.filepos,
            self.flen,
            self.glen,
            self.stamp_len,
            int(self.starts_line),
            self.at_ms,
        )

    @classmethod
    def parse(cls, line: bytes) -> IndexRecord | None:
        """None for a line that is not a whole record (a torn last line after a crash)."""
        fields = line.split()
        if len(fields) not in (6, 7) or not all(f.isdigit() for f in fields):
            return None
        offset, filepos, flen, glen, stamp_len, starts, *at = (int(f) for f in fields)
        if starts > 1 or glen > flen:
            return None
        return cls(offset, filepos, flen, glen, stamp_len, bool(starts), at[0] if at else 0)


def parse_index(text: bytes) -> list[IndexRecord]:
    """The records of an index's text.  Only whole lines count: an unterminated last one is a record torn
    by a crash or a full disk, which could still parse (cut inside its time, or after its sixth field)."""
    return [r for r in (IndexRecord.parse(line) for line in text.split(_NL)[:-1]) if r is not None]


def index_tail(block: bytes, carry: bytes, at_file_start: bool) -> tuple[list[IndexRecord], bytes]:
    """An index read backwards: the records of ``block + carry`` (``carry``: the start of the line the
    previous, later block began in), newest last, and the new carry.  The text before the block's first
    newline may be the end of an earlier line, so it is carried, unparsed, unless the block starts the file
    (a line cut at its front could still parse, as a wrong record)."""
    text = block + carry
    if at_file_start:
        return parse_index(text), b""
    first = text.find(_NL)
    if first < 0:
        return [], text
    return parse_index(text[first + 1 :]), text[: first + 1]


def history_budget(history_bytes: int, replay_bytes: int, scrollback_bytes: int) -> int:
    """The persisted bytes a port loads at start ([logs] history_bytes): never less than its attach replay,
    never more than its scrollback."""
    return min(scrollback_bytes, max(history_bytes, replay_bytes))


@dataclass(frozen=True, slots=True)
class Piece:
    """Persisted guest bytes: ``data`` at stream ``offset``, the first arrived at ``at_ms`` (0: unknown)."""

    offset: int
    data: bytes
    at_ms: int = 0

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def history_runs(pieces: Sequence[Piece], want: int) -> tuple[list[Piece], list[tuple[int, int]]]:
    """From ``pieces`` in write order, the newest ``want`` bytes: the runs (oldest first; consecutive
    pieces without a hole between them joined, a new run after each hole) and the arrival times
    ``(offset, at_ms)`` of the pieces kept, in order (pieces of unknown time left out).  Reading stops at a
    piece whose bytes do not come before the newer ones' (offsets going back: not this stream).  The oldest
    piece is cut so that the total is at most ``want``."""
    kept: list[Piece] = []  # newest first
    total = 0
    for piece in reversed(pieces):
        if total >= want:
            break
        if not piece.data:
            continue
        if kept and piece.end > kept[-1].offset:
            break
        data = piece.data[max(0, len(piece.data) - (want - total)) :]
        kept.append(Piece(piece.end - len(data), data, piece.at_ms))
        total += len(data)
    kept.reverse()
    starts: list[int] = []
    parts: list[list[bytes]] = []
    end = -1
    for piece in kept:
        if piece.offset != end:
            starts.append(piece.offset)
            parts.append([])
        parts[-1].append(piece.data)
        end = piece.end
    runs = [Piece(start, b"".join(chunks)) for start, chunks in zip(starts, parts, strict=True)]
    return runs, [(p.offset, p.at_ms) for p in kept if p.at_ms > 0]


def replay_pieces(pieces: Sequence[tuple[int, bytes]], max_bytes: int, lines: int) -> list[tuple[int, bytes]]:
    """What an attach replay shows of ``pieces`` (``(offset, data)`` in stream order, a hole or a restart
    between each two): the newest ``max_bytes`` at most; with ``lines > 0`` the last ``lines`` lines
    within that (an unfinished line before a hole counts as a line, as the ring's ``tail_lines`` counts an
    unfinished last line); without, from a line start when the window cuts a piece (as ``replay_window``).
    Empty pieces are left out."""
    out: list[tuple[int, bytes]] = []
    room = max_bytes
    left = lines
    for offset, data in reversed(pieces):
        if not data:
            continue
        limited = len(data) > room  # the window ends in this piece
        cut = max(0, len(data) - room)
        if lines > 0:
            wanted = left + 1 if data.endswith(_NL) else left
            pos = len(data)
            for _ in range(wanted):
                pos = data.rfind(_NL, cut, pos)
                if pos < 0:
                    break
            if pos >= 0:
                cut, left = pos + 1, 0
            else:
                left -= data.count(_NL, cut) + (0 if data.endswith(_NL) else 1)
        elif limited and data[cut - 1] != 0x0A:
            newline = data.find(_NL, cut)
            cut = len(data) if newline < 0 else newline + 1
        if cut < len(data):
            out.append((offset + cut, data[cut:]))
        room -= len(data) - cut
        if limited or (lines > 0 and left <= 0):
            break
    return out[::-1]


def starts_with_restart_line(data: bytes) -> bool:
    """Whether a run begins with the restart-gap line (it does when a restart made the hole before it)."""
    return data.lstrip(b"\r\n").startswith(RESTART_LINE)


def rotation_plan(base: str, keep: int) -> list[tuple[str, str | None]]:
    """Renames that rotate ``base`` (oldest first): ``base.KEEP`` is deleted (``None``), ``base.K`` becomes
    ``base.K+1``, ``base`` becomes ``base.1``.  With ``keep = 0`` the file itself is deleted."""
    if keep <= 0:
        return [(base, None)]
    plan: list[tuple[str, str | None]] = [(f"{base}.{keep}", None)]
    plan += [(f"{base}.{k}", f"{base}.{k + 1}") for k in range(keep - 1, 0, -1)]
    plan.append((base, f"{base}.1"))
    return plan


BOOT_NAME_RE = re.compile(r"(?P<port>.+)\.boot-(?P<seq>[0-9]{1,18})\.log")


def boot_file_name(port: str, seq: int) -> str:
    return f"{port}.boot-{seq}.log"


def boot_seqs(port: str, names: Iterable[str]) -> list[int]:
    """Sequence numbers of ``port``'s boot captures among directory entries, ascending."""
    found = []
    for name in names:
        match = BOOT_NAME_RE.fullmatch(name)
        if match is not None and match["port"] == port:
            found.append(int(match["seq"]))
    return sorted(found)


def boots_to_delete(seqs: Sequence[int], keep: int) -> list[int]:
    """The captures beyond the newest ``keep``."""
    ordered = sorted(seqs)
    return ordered[: max(0, len(ordered) - keep)]


def trigger_accepted(last: float | None, now: float, min_gap_s: float) -> bool:
    """Boot triggers closer than ``min_gap_s`` to the previous accepted one are the same boot: a port
    start followed by its device coming online, a reset action and QEMU's RESET event for it."""
    return last is None or now - last >= min_gap_s
