"""Guest-health matching: guest output in, ``HealthEvent``s (a panic, an oops, an OOM kill...) out.

Theory of operation
-------------------
``HealthMatcher.feed(data, offset)`` takes every chunk of guest output with the absolute offset of its first
byte, in stream order, and returns the events of the lines that chunk completed.  A line is what lies
between two raw ``\\n`` bytes; a line longer than ``max_line_bytes`` is cut into pieces of exactly that many
raw bytes, each matched on its own (so memory stays bounded, and a keyword straddling a cut is missed).
Because lines are split on raw bytes before anything else happens, the events do not depend on how the
stream was chunked: the property tests feed the same text whole, byte by byte and at random cut points.

Before matching, a line is cleaned the way a person reading the console sees it: ANSI/VT100 escape
sequences (CSI ``ESC [ ... final``, OSC ``ESC ] ... BEL|ESC \\``, and two-byte ``ESC x`` sequences such as
``ESC 7`` or charset selections ``ESC ( B``) and carriage returns are removed, and the bytes are decoded as
UTF-8 with replacement.  So ``Kernel pa\\x1b[1mnic`` still reads ``Kernel panic``.  Patterns are Python
regular expressions searched in the cleaned line; the first pattern that matches decides the line's
``kind``, so one line gives at most one event.  Order: the port's own patterns, then the configured
defaults, then the shipped ``DEFAULT_PATTERNS``.

Speed.  Nearly all console output matches nothing, so ``feed`` first asks a cheap question of the raw chunk:
can any pattern match here at all?  Each pattern carries *triggers*: literals one of which every match must
contain (shipped patterns name theirs; for a configured regex they are derived when the regex is a plain
sequence, see ``_derive_triggers``; a regex they cannot be derived for disables the shortcut).  When the
chunk, and the few bytes where it joins the unfinished line, hold no trigger, no escape byte and no lone
carriage return (which cleaning could remove to join a keyword), no line can match: ``feed`` only moves the
line boundary (``bytes.rfind``) and returns.  With escapes or carriage returns, the unfinished line and the
chunk are cleaned in one ``re.sub`` and searched for triggers the same way.  Only a chunk that may hold a
match has its lines cleaned and searched one by one.

With Hyperscan installed (the ``fast`` extra), the pre-filter is one streaming pass over the raw bytes
instead (``core/health_accel.py``, 1-2.5 GiB/s): it reports where a trigger, escapes and carriage returns
allowed inside it, ends, and the matcher scans the chunk that completes such a line; every other chunk is
skipped as above.  Both pre-filters only decide which chunks are scanned: the events are the same (the
property tests run both).

Pure: no I/O, no clock, no logging; the hub (``serialmuxd.hub.health``) does the audit, notices and alerts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import health_accel

MAX_LINE_BYTES = 4096  # the bounded line buffer: longer lines are matched in pieces of this many raw bytes

# A kind names a metric label value and a notice field: short, lower-case, from the configuration only.
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")

_ESC = b"\x1b"
# CSI: ESC [ parameters intermediates final; OSC: ESC ] ... terminated by BEL or ST (ESC \), or cut by the end
# of the line; other: ESC, any intermediates (0x20-0x2F), one final byte (ESC 7, ESC ( B, ESC c ...).
# DCS/SOS/PM/APC (ESC P, X, ^, _) are treated like OSC: their payload is not text either.  No alternative
# matches a "\n", so cleaning a run of whole lines at once equals cleaning each line (the pre-filter's use).
_ESCAPES_RE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]?"
    rb"|\x1b[\]PX^_][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    rb"|\x1b[ -/]*[0-~]?"
)


@dataclass(frozen=True, slots=True)
class HealthPattern:
    """One pattern: the ``kind`` of event it raises and the regex searched in cleaned lines.

    ``triggers``: literals (bytes) one of which every match contains, for the pre-filter; ``None`` derives
    them from the regex where that is safe (``()`` when it is not: the pre-filter is then off).
    """

    kind: str
    regex: str
    triggers: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class HealthEvent:
    kind: str
    line: str  # the cleaned line (escapes and carriage returns removed), without its line end
    offset: int  # absolute stream offset of the line's (or piece's) first raw byte


# Shipped patterns.  Each is anchored on text the kernel (or Windows) prints once per incident, and avoids
# the lines that repeat it: Linux closes a panic with "---[ end Kernel panic - not syncing: ... ]---", which
# must not count as a second panic.
DEFAULT_PATTERNS: tuple[HealthPattern, ...] = (
    # panic(): "Kernel panic - not syncing: Fatal exception", "... sysrq triggered crash".
    HealthPattern("panic", r"(?<!end )Kernel panic - not syncing", (b"Kernel panic - not syncing",)),
    # An oops: "Oops: 0000 [#1] SMP PTI", "Oops: general protection fault, ...", and the line that
    # announces a bad access first on x86 ("BUG: unable to handle page fault for address: ...", older
    # "BUG: unable to handle kernel NULL pointer dereference", newer "BUG: kernel NULL pointer dereference").
    HealthPattern("oops", r"\bOops: ", (b"Oops: ",)),
    HealthPattern("oops", r"BUG: unable to handle ", (b"BUG: ",)),
    HealthPattern("oops", r"BUG: kernel NULL pointer dereference", (b"BUG: ",)),
    # "watchdog: BUG: soft lockup - CPU#3 stuck for 22s! [kworker:123]" (older kernels: no "watchdog: ").
    HealthPattern("soft_lockup", r"BUG: soft lockup", (b"BUG: ",)),
    # "Watchdog detected hard LOCKUP on cpu 2" (then usually a panic with hardlockup_panic).
    HealthPattern("hard_lockup", r"Watchdog detected hard LOCKUP", (b"LOCKUP",)),
    # khungtaskd: "INFO: task jbd2/sda1-8:123 blocked for more than 120 seconds."
    HealthPattern("hung_task", r"INFO: task .+ blocked for more than", (b"blocked for more than",)),
    # The OOM killer: "Out of memory: Killed process 1234 (stress) ..." (older: "Kill process"), the
    # memory cgroup variant, and the one-line summary "oom-kill:constraint=...,task=stress,pid=1234,...".
    HealthPattern("oom", r"[Oo]ut of memory: Kill(?:ed)? process", (b"of memory: Kill",)),
    HealthPattern("oom", r"\boom-kill:", (b"oom-kill:",)),
    # Windows bug checks.  Text consoles before Vista: "*** STOP: 0x0000007B (0x...".  With EMS enabled,
    # SAC emits machine-readable XML on a bug check: <INSTANCE CLASSNAME="BLUESCREEN"> with a STOPCODE
    # property.  The <machine-info> block alone is printed at every SAC start and is *not* a crash.
    HealthPattern("windows_bugcheck", r"\*\*\* STOP: 0x[0-9A-Fa-f]", (b"STOP: 0x",)),
    HealthPattern("windows_bugcheck", r'CLASSNAME="BLUESCREEN"', (b'CLASSNAME="BLUESCREEN"',)),
)


def clean_line(raw: bytes) -> str:
    """A raw line as a reader sees it: escape sequences and carriage returns removed, decoded leniently."""
    if _ESC in raw:
        raw = _ESCAPES_RE.sub(b"", raw)
    if b"\r" in raw:
        raw = raw.replace(b"\r", b"")
    return raw.decode("utf-8", "replace")


_REGEX_SPECIAL = set(".^$*+?{}[]\\|()")
_QUANTIFIERS = set("*+?{")


def _derive_triggers(regex: str) -> tuple[bytes, ...]:
    """The longest literal run every match of ``regex`` must contain, or ``()`` when that is not certain.

    Only plain sequences are read: a regex with alternation, groups, classes or flags gives ``()`` (the
    pre-filter is off for the matcher holding it).  A quantifier cancels the character before it.
    """
    if any(char in regex for char in "|()[]"):
        return ()
    runs: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(regex):
        char = regex[index]
        if char in _QUANTIFIERS:
            if current:
                current.pop()
            runs.append("".join(current))
            current = []
        elif char == "\\":
            nxt = regex[index + 1 : index + 2]
            # An escaped punctuation character is that literal character; \d, \s, \b ... are not literals.
            if nxt and not nxt.isalnum() and regex[index + 2 : index + 3] not in _QUANTIFIERS:
                current.append(nxt)
            else:
                runs.append("".join(current))
                current = []
            index += 1
        elif char in _REGEX_SPECIAL:
            runs.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    runs.append("".join(current))
    best = max(runs, key=len)
    if len(best) < 3:  # too short to filter anything out
        return ()
    return (best.encode("utf-8"),)


def _has_long_line(window: bytes, limit: int) -> bool:
    """Some line of ``window`` (its first and last possibly unfinished) has ``limit`` bytes or more.

    The first and last line are measured with find/rfind; the lines between only need splitting when the
    stretch between the first and last line end is itself that long (rare: a read larger than a line).
    """
    if len(window) < limit:
        return False
    first = window.find(b"\n")
    if first < 0 or first >= limit:
        return True
    last = window.rfind(b"\n")
    if len(window) - last - 1 >= limit:
        return True
    if last - first - 1 < limit:
        return False
    return max(map(len, window[first + 1 : last].split(b"\n"))) >= limit


@dataclass(frozen=True, slots=True)
class _Compiled:
    kind: str
    search: re.Pattern[str]


def compile_pattern(pattern: HealthPattern) -> re.Pattern[str]:
    """The compiled regex; raises ``re.error`` (the configuration reports it naming the key)."""
    return re.compile(pattern.regex)


def prefilter_triggers(patterns: Iterable[HealthPattern]) -> tuple[bytes, ...] | None:
    """The pre-filter's literals for ``patterns``: ``None`` when one pattern has none (every line is then
    searched), ``()`` when there are no patterns.  Also the key of the Hyperscan database they compile to."""
    triggers: list[bytes] = []
    for pattern in patterns:
        found = pattern.triggers if pattern.triggers is not None else _derive_triggers(pattern.regex)
        if not found:
            return None
        triggers.extend(found)
    return tuple(dict.fromkeys(triggers))


class HealthMatcher:
    """Line reassembly, cleaning and matching for one port's output stream.  See the module docstring."""

    __slots__ = (
        "_accel",
        "_dirty",
        "_hit_end",
        "_line",
        "_line_offset",
        "_max_line",
        "_patterns",
        "_reach",
        "_triggers",
    )

    def __init__(
        self,
        patterns: Iterable[HealthPattern],
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        accelerate: bool = True,
    ) -> None:
        if max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be at least 64, got {max_line_bytes}")
        patterns = tuple(patterns)
        self._patterns = tuple(_Compiled(p.kind, compile_pattern(p)) for p in patterns)
        # None: no pre-filter, every line is searched.  () : there are no patterns, nothing ever matches.
        self._triggers = prefilter_triggers(patterns)
        # How far back into the unfinished line a trigger may start and still end in the new chunk.
        self._reach = max((len(t) for t in self._triggers or ()), default=1) - 1
        self._max_line = max_line_bytes
        self._line = bytearray()  # raw bytes of the unfinished line (< max_line_bytes)
        self._line_offset = 0  # stream offset of _line[0]
        self._dirty = False  # _line holds an escape byte, a carriage return or a trigger: scan, not skip
        # The Hyperscan pre-filter, when installed and there is something to filter for.  With it, _dirty
        # means only "a trigger match ends inside _line" (_hit_end: offset just after the last match's end).
        self._accel: health_accel.StreamFilter | None = None
        if accelerate and self._triggers and health_accel.available():
            self._accel = health_accel.StreamFilter(self._triggers)
        self._hit_end = -1

    @property
    def accelerated(self) -> bool:
        """The pre-filter is Hyperscan's (``core/health_accel.py``), not the portable one."""
        return self._accel is not None

    def close(self) -> None:
        """Release the Hyperscan stream (the matcher is not fed after this)."""
        if self._accel is not None:
            self._accel.close()

    @property
    def pending_bytes(self) -> int:
        """Raw bytes of the unfinished line held (at most ``max_line_bytes - 1``)."""
        return len(self._line)

    def feed(self, data: bytes, offset: int) -> list[HealthEvent]:
        """Events of the lines (and pieces) completed by ``data``, which starts at stream ``offset``."""
        if not data:
            return []
        if not self._line:
            self._line_offset = offset
        accel = self._accel
        if accel is not None:
            # Every byte goes through the stream (its state spans chunks), whatever is decided after.
            end = accel.scan(data)
            if end:
                self._hit_end = offset + end
            elif not self._dirty:
                self._skip(data, offset)
                return []
            return self._scan(data, offset)
        if self._triggers is not None and not self._may_match(data):
            self._skip(data, offset)
            return []
        return self._scan(data, offset)

    def _may_match(self, data: bytes) -> bool:
        triggers = self._triggers
        if not triggers:
            return False  # no patterns at all
        if self._dirty or _ESC in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
            return self._may_match_cleaned(data, triggers)
        for trigger in triggers:
            if trigger in data:
                return True
        reach = self._reach
        if reach and self._line:
            seam = bytes(self._line[-reach:]) + data[:reach]
            for trigger in triggers:
                if trigger in seam:
                    return True
        return False

    def _may_match_cleaned(self, data: bytes, triggers: tuple[bytes, ...]) -> bool:
        """The unfinished line plus ``data``, cleaned at once (C speed), holds a trigger.

        Exact only when no line in it is cut (a cut inside an escape sequence leaves its tail as text in
        the next piece): with a line that long, answer "maybe" and let ``_scan`` decide.
        """
        window = bytes(self._line) + data if self._line else data
        if _has_long_line(window, self._max_line):
            return True
        cleaned = _ESCAPES_RE.sub(b"", window) if _ESC in window else window
        if b"\r" in cleaned:
            cleaned = cleaned.replace(b"\r", b"")
        return any(trigger in cleaned for trigger in triggers)

    def _skip(self, data: bytes, offset: int) -> None:
        """Track the line boundary only: nothing in ``data`` can complete a match."""
        last = data.rfind(b"\n")
        if last < 0:
            self._line += data
        else:
            self._line.clear()
            self._line += data[last + 1 :]
            self._line_offset = offset + last + 1
        limit = self._max_line
        if len(self._line) >= limit:
            # The pieces a long line is cut into: same boundaries as _scan would cut, nothing to match.
            cut = len(self._line) - len(self._line) % limit
            del self._line[:cut]
            self._line_offset += cut
        # No trigger can be in it (or this would be _scan); cleaning can still join one with what comes next
        # (the Hyperscan stream keeps that state itself).
        line = self._line
        self._dirty = self._accel is None and (_ESC in line or b"\r" in line)

    def _scan(self, data: bytes, offset: int) -> list[HealthEvent]:
        events: list[HealthEvent] = []
        limit = self._max_line
        position = 0
        size = len(data)
        while position < size:
            newline = data.find(b"\n", position)
            end = size if newline < 0 else newline
            room = limit - len(self._line)
            if end - position >= room:
                # The line reaches the bound: match exactly max_line_bytes raw bytes as one piece.
                self._line += data[position : position + room]
                position += room
                self._complete(events)
                continue
            self._line += data[position:end]
            if newline < 0:
                break
            position = newline + 1
            self._complete(events)
        if self._line:
            # The unfinished line stays "dirty" (every chunk scanned until it ends) when cleaning could
            # change it or it already holds a trigger: the seam check only looks a trigger's length back.
            tail = self._line
            if self._accel is not None:
                self._dirty = self._hit_end > self._line_offset
            else:
                self._dirty = _ESC in tail or b"\r" in tail or any(t in tail for t in self._triggers or ())
        else:
            self._dirty = False
            self._line_offset = offset + size
        return events

    def _complete(self, events: list[HealthEvent]) -> None:
        raw = bytes(self._line)
        start = self._line_offset
        self._line_offset = start + len(raw) + (0 if len(raw) >= self._max_line else 1)
        self._line.clear()
        self._dirty = False
        event = self._match(raw, start)
        if event is not None:
            events.append(event)

    def _match(self, raw: bytes, offset: int) -> HealthEvent | None:
        if not self._patterns:
            return None
        line = clean_line(raw)
        for pattern in self._patterns:
            if pattern.search.search(line) is not None:
                return HealthEvent(pattern.kind, line.rstrip(), offset)
        return None


def effective_patterns(
    own: Sequence[HealthPattern], configured: Sequence[HealthPattern], *, shipped: bool = True
) -> tuple[HealthPattern, ...]:
    """The search order: a port's own patterns, then [alerts] patterns, then the shipped defaults."""
    return (*own, *configured, *(DEFAULT_PATTERNS if shipped else ()))
