"""The guest-health pre-filter at C speed: Hyperscan (optional, the ``fast`` extra) over a port's output.

``HealthMatcher`` (core/health.py) asks of every chunk whether any line it completes could match.  The
portable answer (pure Python) searches each trigger literal in the chunk and, when the chunk holds an escape
byte or a carriage return, cleans it with a regex first: about 150-200 MiB/s on console output, which costs
the fan-out (1.1 GiB/s to ten sessions without it) most of its speed.  Hyperscan answers the same question in
one pass over the raw bytes at 1-2.5 GiB/s (4 KiB reads; measured in ``bench/health_match.py``).

What is compiled.  For each trigger ``t1 t2 ... tn`` the expression ``t1 E* t2 E* ... tn``, where ``E`` is
one thing line cleaning removes: an escape sequence (the alternatives of ``core.health._ESCAPES_RE``, none of
which crosses a ``\\n``) or a carriage return.  Cleaning removes disjoint spans, each one such ``E``, so
whenever a cleaned line contains a trigger, the raw bytes contain a match of its expression: the filter never
misses (it may over-report, e.g. an OSC cut where cleaning would cut it differently; ``_scan`` then decides
exactly).  In stream mode Hyperscan carries its state from one chunk to the next, so a trigger split across
reads, or across the unfinished line and the new chunk, is reported in the chunk where it ends, with its
end offset: the matcher uses that to know whether the unfinished line holds a trigger.

Costs: one database per distinct trigger set, compiled once per process (~0.3 s for the shipped set, 0.3-0.6
s for a port's own set) and kept in this module's cache; 23 bytes of stream state per port.  Compiling holds
the CPU that long, so the daemon compiles every set its configuration needs with ``warm`` in a worker
thread, before the hubs that use them are built (at start and in a reload's preparation): building a
matcher on the event loop then only looks the database up.  The binding (python-hyperscan 0.9) keeps
*borrowed* references to the database and to the match handler, so the cache holds every database for the
process's life (the sets are bounded by the configuration), the handler is a module function, and each
stream is closed explicitly by its owner (``close``).

Pure computation: no I/O, clock or logging.  Absent Hyperscan (not installed, a CPU without SSSE3, an
architecture without wheels), ``available()`` is false and the matcher uses its portable pre-filter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

try:  # optional: pip install 'serialmuxd[fast]'
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised on machines without the wheel
    _hs = None  # type: ignore[assignment]

# One removable span, as in core.health._ESCAPES_RE (CSI, OSC/DCS/SOS/PM/APC, other ESC sequences) or "\r";
# written with byte ranges because Hyperscan's parser, unlike Python's, wants them explicit.
_REMOVABLE = (
    rb"(?:\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    rb"|\x1b[\x5d\x50\x58\x5e\x5f][^\x07\x1b\n]*(?:\x07|\x1b\x5c)?"
    rb"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
    rb"|\r)*"
)


def available() -> bool:
    return _hs is not None


def tolerant_expression(trigger: bytes) -> bytes:
    """``trigger`` with any run of removable spans allowed between two of its bytes."""
    return _REMOVABLE.join(re.escape(bytes([byte])) for byte in trigger)


@functools.cache
def _database(triggers: tuple[bytes, ...]) -> Any:
    """The compiled stream database for a trigger set; kept for the process (streams borrow it)."""
    assert _hs is not None
    database = _hs.Database(mode=_hs.HS_MODE_STREAM)
    expressions = [tolerant_expression(trigger) for trigger in triggers]
    # No SINGLEMATCH: in stream mode it would report each trigger once per stream, not once per line.
    database.compile(expressions=expressions, ids=list(range(len(expressions))), flags=[0] * len(expressions))
    return database


def warm(trigger_sets: Iterable[tuple[bytes, ...]]) -> None:
    """Compile the databases of these trigger sets now (call it in a worker thread): the matchers built
    afterwards on the event loop find them in the cache.  A no-op without Hyperscan."""
    if _hs is None:
        return
    for triggers in trigger_sets:
        if triggers:
            _database(triggers)


def _record(_id: int, _start: int, end: int, _flags: int, owner: StreamFilter) -> None:
    # Called by Hyperscan (with the GIL held) for each match end during ``scan``; a falsy return goes on.
    if end > owner.hit_end:
        owner.hit_end = end


class StreamFilter:
    """One port's stream through the trigger database.  ``scan`` every chunk, in order, then ``close``."""

    __slots__ = ("_database", "_stream", "fed", "hit_end")

    def __init__(self, triggers: tuple[bytes, ...]) -> None:
        if _hs is None:
            raise RuntimeError("hyperscan is not installed")
        self._database = _database(triggers)
        self.fed = 0  # bytes scanned so far: stream positions are counted from the first byte scanned
        self.hit_end = -1  # stream position just after the last reported trigger match, -1 for none
        self._stream: Any = self._database.stream(match_event_handler=_record, context=self)
        self._stream.__enter__()  # hs_open_stream

    def scan(self, data: bytes) -> int:
        """Scan ``data``; the end of the last match in it as an index into ``data`` + 1, or 0 for none."""
        before = self.fed
        hit = self.hit_end
        if self._stream is None:  # closed: the port is going away, nothing more to report
            return 0
        self._stream.scan(data)
        self.fed = before + len(data)
        if self.hit_end == hit:
            return 0
        return self.hit_end - before

    def close(self) -> None:
        stream = getattr(self, "_stream", None)  # also from __del__ after a failed __init__
        self._stream = None
        if stream is not None:
            stream.close()  # hs_close_stream; without it the binding leaks the stream state

    def __del__(self) -> None:
        self.close()
