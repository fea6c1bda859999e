"""Guest-health events of one port: the matcher fed as a fan-out observer, and what each event causes.

``GuestHealth`` owns the port's ``HealthMatcher`` (core/health.py) and is registered in
``OutputFanout.observers``, so it sees every guest chunk with its offset right after the ring append.  For
each event it: counts it by kind (``counts``, the port's ``health_counts`` for metrics), writes a structlog
line and the ``guest_health`` audit event, tells every attached session in-band (``NoticeKind.GUEST_HEALTH``
with ``health_kind``, ``line`` and ``offset``; WebSocket clients get those as JSON fields), and hands it to
``alert`` (the daemon's webhook sender, which only queues).  Nothing here awaits or does I/O beyond the log
and audit writes every other hub event makes too.

A guest that prints a panic pattern in a loop must not turn into an audit or webhook flood: at most
``REPORTS_PER_WINDOW`` events per ``WINDOW_S`` are reported; the rest are still counted, and the next
reported event carries ``suppressed`` (how many were not reported before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import structlog

from ..config import PortConfig
from ..core import health_accel
from ..core.health import (
    HealthEvent,
    HealthMatcher,
    HealthPattern,
    effective_patterns,
    prefilter_triggers,
)
from ..obs.audit import AuditFn, escape_text
from .notices import Notice, NoticeKind

log = structlog.get_logger("serialmuxd.health")

WINDOW_S = 60.0
REPORTS_PER_WINDOW = 20
NOTICE_LINE_CHARS = 200  # the notice repeats the guest's line for people: cut, the full line is in fields

AlertFn = Callable[[str, HealthEvent, float], None]  # (console, event, wall time)


def warm_matchers(ports: Iterable[PortConfig], alert_patterns: Sequence[HealthPattern]) -> None:
    """Compile the Hyperscan databases the ports' matchers will use (``GuestHealth`` builds one from the
    port's own patterns, ``configure`` one with the [alerts] patterns too), so that building hubs on the
    event loop compiles nothing.  Blocking for up to a second per distinct set: call it in a worker thread
    (start-up runs it before the hubs are built, a reload while it prepares)."""
    sets: set[tuple[bytes, ...]] = set()
    for port in ports:  # also ports with health = false: a reload may turn it on in place
        for configured in ((), alert_patterns):
            triggers = prefilter_triggers(effective_patterns(port.health_patterns, configured))
            if triggers:
                sets.add(triggers)
    health_accel.warm(sets)


class GuestHealth:
    __slots__ = (
        "_audit",
        "_broadcast",
        "_patterns",
        "_reported",
        "_suppressed",
        "_wall",
        "_window_start",
        "alert",
        "config",
        "counts",
        "enabled",
        "matcher",
        "port",
    )

    def __init__(
        self,
        config: PortConfig,
        *,
        audit: AuditFn,
        broadcast: Callable[[Notice], None],
        wall: Callable[[], float],
    ) -> None:
        self.port = config.name
        self.config = config
        self.enabled = config.health
        self._audit = audit
        self._broadcast = broadcast
        self._wall = wall
        self.counts: dict[str, int] = {}  # kind -> events seen (reported or not)
        self.alert: AlertFn | None = None
        self._patterns = effective_patterns(config.health_patterns, ())
        self.matcher = HealthMatcher(self._patterns)
        self._window_start: float | None = None
        self._reported = 0
        self._suppressed = 0

    def configure(self, patterns: Sequence[HealthPattern], alert: AlertFn | None) -> None:
        """The daemon's [alerts]: patterns for every port (after the port's own) and the webhook."""
        wanted = effective_patterns(self.config.health_patterns, patterns)
        if wanted != self._patterns:  # the same patterns keep the matcher, and its unfinished line
            self.matcher.close()
            self._patterns = wanted
            self.matcher = HealthMatcher(wanted)
        self.alert = alert

    def close(self) -> None:
        """The port is going away: release the matcher's Hyperscan stream."""
        self.matcher.close()

    def observe(self, data: bytes, offset: int) -> None:
        """``OutputFanout`` observer: every guest chunk and the offset of its first byte."""
        if not self.enabled:
            return
        events = self.matcher.feed(data, offset)
        for event in events:
            self._raised(event)

    def _raised(self, event: HealthEvent) -> None:
        self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        now = self._wall()
        if self._window_start is None or now - self._window_start >= WINDOW_S:
            self._window_start = now
            self._reported = 0
        if self._reported >= REPORTS_PER_WINDOW:
            self._suppressed += 1
            return
        self._reported += 1
        suppressed, self._suppressed = self._suppressed, 0
        shown = escape_text(event.line)
        log.warning(
            "guest_health",
            port=self.port,
            kind=event.kind,
            line=shown,
            offset=event.offset,
            suppressed=suppressed,
        )
        self._audit(
            "guest_health",
            port=self.port,
            kind=event.kind,
            line=event.line,
            offset=event.offset,
            suppressed=suppressed,
        )
        short = shown if len(shown) <= NOTICE_LINE_CHARS else shown[:NOTICE_LINE_CHARS] + "..."
        self._broadcast(
            Notice(
                NoticeKind.GUEST_HEALTH,
                f"guest health: {event.kind} at offset {event.offset}: {short}",
                {"health_kind": event.kind, "line": event.line, "offset": event.offset},
            )
        )
        if self.alert is not None:
            try:
                self.alert(self.port, event, now)
            except Exception:  # a broken sender must not take the matcher (and the port's events) down
                log.exception("guest_health_alert_failed", port=self.port)
