"""The webhook sender against a real aiohttp server: the JSON body, retries with backoff after 5xx, no retry
after a 4xx refusal, a timeout per attempt and giving up, and a full queue dropping its oldest."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from serialmuxd.core.backoff import BackoffPolicy
from serialmuxd.core.health import HealthEvent
from serialmuxd.obs.webhook import WebhookSender

from .support import eventually

pytestmark = pytest.mark.asyncio

FAST = BackoffPolicy(initial_s=0.01, max_s=0.05)


class Server:
    def __init__(self, statuses: list[int], hang_s: float = 0.0) -> None:
        self.statuses = statuses
        self.hang_s = hang_s
        self.bodies: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_post("/h", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/h"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


EVENT = HealthEvent("panic", "Kernel panic - not syncing: x", 1234)


async def test_body_and_retries_after_server_errors() -> None:
    async with Server([500, 503]) as server:
        sender = WebhookSender(server.url, timeout_s=5.0, retry=FAST)
        sender.start()
        try:
            sender.submit("vm1", EVENT, 0.5)
            await eventually(lambda: sender.delivered == 1, "delivered")
        finally:
            await sender.stop()
    assert len(server.bodies) == 3 and sender.retries == 2 and sender.failed == 0
    assert server.bodies[0] == {
        "console": "vm1",
        "kind": "panic",
        "line": "Kernel panic - not syncing: x",
        "offset": 1234,
        "time": "1970-01-01T00:00:00.500Z",
    }


async def test_a_refusal_is_not_retried_and_the_next_alert_goes_out() -> None:
    async with Server([400]) as server:
        sender = WebhookSender(server.url, timeout_s=5.0, retry=FAST)
        sender.start()
        try:
            sender.submit("vm1", EVENT, 0.0)
            sender.submit("vm2", EVENT, 0.0)
            await eventually(lambda: sender.delivered == 1 and sender.failed == 1, "one refused, one sent")
        finally:
            await sender.stop()
    assert [b["console"] for b in server.bodies] == ["vm1", "vm2"]


async def test_timeouts_and_giving_up() -> None:
    async with Server([], hang_s=5.0) as server:
        sender = WebhookSender(server.url, timeout_s=0.1, retry=FAST, max_attempts=3)
        sender.start()
        try:
            sender.submit("vm1", EVENT, 0.0)
            await eventually(lambda: sender.failed == 1, "gave up", timeout_s=5.0)
        finally:
            await sender.stop()
    assert len(server.bodies) == 3 and sender.delivered == 0


async def test_a_full_queue_drops_the_oldest() -> None:
    sender = WebhookSender("http://127.0.0.1:9/h", timeout_s=1.0, queue_max=3)  # not started: nothing sent
    for index in range(5):
        sender.submit(f"vm{index}", EVENT, 0.0)
    assert sender.dropped == 2 and sender.queued == 3
    assert [body["console"] for body in sender._queue] == ["vm2", "vm3", "vm4"]
