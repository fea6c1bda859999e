"""Hubs a reload took out are freed, although start-up froze the heap.

``cli._settle_heap`` moves everything alive at READY into the permanent generation (``gc.freeze``), which the
cyclic GC never scans.  A hub lives in reference cycles (its parts hold its bound methods: the fan-out's
observers, the arbiter's and the watch's callbacks, the device link's listener), so only the cyclic GC can
free it: a hub built at start-up and then removed or rebuilt by a reload would keep its ring, history and
timeline for the life of the process.  Breaking every cycle by hand in ``PortHub.close`` would be fragile
(each new callback brings one back), so instead, when a reload drops hubs while the heap is frozen, it is
unfrozen (those hubs become collectable like any object), collected, and frozen again once every dropped
hub is gone, so the start-up heap stays out of later collections.  A dropped hub may be held a moment
longer by what is winding down (a WebSocket handler returning after its session was closed): freezing then
would keep it for good, so the freeze waits until the dropped hubs are dead, collecting again every
``retry_s``; if one is still alive after ``tries`` collections (a leak to find, logged) the heap stays
unfrozen, which costs only scanning time, never memory.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterable

import structlog

log = structlog.get_logger("serialmuxd")

RETRY_S = 1.0
TRIES = 10


class HeapSettler:
    """Owned by the reloader: ``dropped`` after each reload that took hubs out."""

    def __init__(self, *, retry_s: float = RETRY_S, tries: int = TRIES) -> None:
        self._retry_s = retry_s
        self._tries = tries
        self._waiting: list[weakref.ref[object]] = []
        self._refreeze = False  # we unfroze what start-up froze: freeze again once the dropped hubs are gone
        self._left = 0
        self._timer: asyncio.TimerHandle | None = None

    def dropped(self, hubs: Iterable[weakref.ref[object]]) -> None:
        """Weak references (a strong one here would keep them) to the hubs a reload has just closed."""
        refs = list(hubs)
        if not refs:
            return
        if gc.get_freeze_count() > 0:
            gc.unfreeze()  # into the oldest generation: collectable again
            self._refreeze = True
        if not self._refreeze:
            return  # nothing is frozen: the cyclic GC frees them as it frees anything
        self._waiting.extend(refs)
        self._left = self._tries
        self._settle()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _settle(self) -> None:
        self.close()
        began = time.monotonic()
        gc.collect()
        self._waiting = [ref for ref in self._waiting if ref() is not None]
        if not self._waiting:
            gc.freeze()
            self._refreeze = False
            log.debug("reload_heap_settled", ms=round((time.monotonic() - began) * 1000, 1))
            return
        self._left -= 1
        if self._left > 0:
            self._timer = asyncio.get_running_loop().call_later(self._retry_s, self._settle)
            return
        log.warning(
            "reload_heap_unfrozen",
            hubs=len(self._waiting),
            reason="a port a reload took out is still referenced; the heap stays unfrozen",
        )
        self._waiting.clear()
        self._refreeze = False
