"""The guest-health webhook: ``[alerts] webhook_url`` gets one JSON POST per reported event.

Theory of operation
-------------------
``submit`` is called from the fan-out path (``hub/health.py``), so it only appends to a bounded queue and
wakes the sender: it never awaits, never does I/O, and a full queue drops its *oldest* entry (counted in
``dropped``) — the newest incident is the one an operator needs.  One sender task, started and stopped by
the daemon, takes alerts in order and POSTs each as ``{console, kind, line, offset, time}`` (``time`` in
RFC 3339 UTC).  Each attempt is bounded by ``timeout_s``; a failed attempt (connection error, timeout,
5xx, 408, 429) is retried after a backoff delay (``core/backoff.py``: doubling with jitter, capped) up to
``MAX_ATTEMPTS``, then given up (``failed``).  A 4xx other than 408/429 is the receiver refusing this body:
not retried.  Redirects are not followed (the configured URL was checked: https, or http to loopback).
A slow or dead receiver therefore delays only later alerts, never a console.

aiohttp is imported when the sender starts: a daemon without a webhook does not load it for this.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog

from ..core.backoff import Backoff, BackoffPolicy
from ..core.health import HealthEvent
from .audit import escape_text, rfc3339_ms

if TYPE_CHECKING:
    import aiohttp

    from ..config import AlertsSettings
    from ..hub import PortHub

log = structlog.get_logger("serialmuxd.webhook")

QUEUE_MAX = 1000
MAX_ATTEMPTS = 5
RETRY_POLICY = BackoffPolicy(initial_s=1.0, max_s=60.0, jitter=0.2)
_NOT_RETRIED = frozenset(range(400, 500)) - {408, 429}


class WebhookSender:
    """Bounded queue + one sender task.  ``start()`` in a running loop; ``stop()`` cancels and awaits it."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        queue_max: int = QUEUE_MAX,
        max_attempts: int = MAX_ATTEMPTS,
        retry: BackoffPolicy = RETRY_POLICY,
        random_source: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._retry = retry
        self._random = random_source
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=queue_max)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0  # given up after max_attempts, or refused by the receiver
        self.dropped = 0  # pushed out of a full queue before they were sent
        self.retries = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, console: str, event: HealthEvent, when: float) -> None:
        """Queue one alert; never blocks.  A full queue loses its oldest alert."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(
            {
                "console": console,
                "kind": event.kind,
                "line": event.line,
                "offset": event.offset,
                "time": rfc3339_ms(when),
            }
        )
        self._wake.set()

    def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": "serialmuxd"},
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._queue:
            log.warning("webhook_unsent_at_stop", alerts=len(self._queue))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            body = self._queue[0]
            try:
                await self._deliver(body)
            except Exception:  # a bug (or an error aiohttp did not wrap) loses this alert, not the sender
                self.failed += 1
                log.exception("webhook_delivery_failed", console=body["console"], url=self.url)
            if self._queue and self._queue[0] is body:  # not pushed out meanwhile
                self._queue.popleft()

    async def _deliver(self, body: dict[str, Any]) -> None:
        backoff = Backoff(self._retry, self._random)
        for attempt in range(1, self.max_attempts + 1):
            outcome = await self._attempt(body)
            if outcome == "ok":
                self.delivered += 1
                return
            if outcome == "refused":
                break
            if attempt < self.max_attempts:
                self.retries += 1
                await asyncio.sleep(backoff.next_delay_s())
        self.failed += 1
        log.error("webhook_gave_up", console=body["console"], kind=body["kind"], url=self.url)

    async def _attempt(self, body: dict[str, Any]) -> str:
        assert self._session is not None
        import aiohttp

        try:
            async with self._session.post(self.url, json=body, allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return "ok"
                log.warning("webhook_status", status=response.status, url=self.url)
                return "refused" if response.status in _NOT_RETRIED else "retry"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("webhook_failed", error=escape_text(str(exc) or type(exc).__name__), url=self.url)
            return "retry"


def attach_alerts(alerts: AlertsSettings, hubs: Iterable[PortHub]) -> WebhookSender | None:
    """Give every hub's guest-health matcher the [alerts] patterns and, with a webhook_url, a started
    sender's ``submit``.  Call in the running loop; the caller owns the sender (``await stop()``)."""
    sender = None
    if alerts.webhook_url:
        sender = WebhookSender(alerts.webhook_url, timeout_s=alerts.webhook_timeout_s)
        sender.start()
    for hub in hubs:
        hub.health.configure(alerts.patterns, None if sender is None else sender.submit)
    return sender
