"""``GET /metrics``: the daemon's Prometheus registry, in the format the scraper asks for.

Who may scrape is the daemon's decision, not this module's: ``MetricsControl.metrics`` asks the access
policy for ``view`` on the host scope ``*`` and raises ``hub.Refused`` (403) otherwise.  Without ``[auth]``
every caller may (the listeners are loopback-only then); with ``[auth]`` the authentication middleware has
already turned a request without credentials into a 401, so a scraper sends a token as
``Authorization: Bearer`` (Prometheus' ``authorization`` / ``bearer_token_file``).

The body is encoded with ``prometheus_client.exposition.choose_encoder`` on the ``Accept`` header:
OpenMetrics for a scraper that asks for it (Prometheus does), the text format 0.0.4 otherwise.

A scrape is split in two so that the console path never waits for the text: the collectors run on the
event loop (they read the hubs, which only the loop may touch: ~19 ms per 1,000 ports), and encoding that
snapshot — most of the cost — runs in a worker thread, where the loop keeps getting the GIL back every
switch interval (``bench/metrics_scrape.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ...core.access import Identity
from .common import CONTROL_KEY, identity

PATH = "/metrics"


@runtime_checkable
class MetricsControl(Protocol):
    """What this route needs of the daemon besides ``ConsoleControl``."""

    def metrics(self, identity: Identity) -> CollectorRegistry:
        """The daemon's registry; raises ``hub.Refused`` (forbidden) unless the policy allows ``view``
        on ``*`` for ``identity``."""


class Snapshot(Collector):
    """The families one scrape collected, for the encoder to format off the loop."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def _serve(request: web.Request) -> web.Response:
    source = request.app[CONTROL_KEY]
    assert isinstance(source, MetricsControl)  # add_routes registers the route only then
    registry = source.metrics(identity(request, "http"))  # Refused -> 403 (errors.py)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    snapshot = Snapshot(list(registry.collect()))  # on the loop: the hubs are read here, consistently
    body = await asyncio.to_thread(encode, snapshot)
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = "no-store"
    response.enable_compression()  # only when the scraper accepts gzip (Prometheus does)
    return response


def add_routes(app: web.Application) -> None:
    """Register ``GET /metrics`` when the control surface offers metrics (``daemon.Daemon`` does)."""
    if isinstance(app[CONTROL_KEY], MetricsControl):
        app.router.add_get(PATH, _serve)
