"""Scrape time and size of ``/metrics`` at 1,000 and 10,000 ports, against a baseline in the same run.

Builds real ``PortHub``s without devices (no link factory; guest output fed straight into each hub's
fan-out, so every counter is non-zero), registers them with ``obs.metrics.metrics_registry`` exactly as
the daemon does, and times the two halves of a scrape as ``frontends/http/metrics.py`` runs them: the
collect (on the event loop: this is what the console waits for) and the encoding of that snapshot (in a
worker thread): text 0.0.4 (``generate_latest``) and the OpenMetrics encoder ``choose_encoder`` picks for
Prometheus.  Sizes: the text body, and gzip-compressed as Prometheus asks for it.

Baseline (same series, same labels, same run): prometheus_client's ordinary labelled ``Counter``/``Gauge``
objects, one child per port and label set, updated by hand — what a collector-less design would keep and
update on the hot path.  Process and platform collectors are left out of both, so the figures are about
the console series alone.

Run: ``.venv/bin/python bench/metrics_scrape.py`` (``--ports 1000,10000 --repeat 5``).  Not part of the test
suite; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import choose_encoder

from serialmuxd.config import parse_config
from serialmuxd.core.access import AttachMode, Identity
from serialmuxd.core.health import DEFAULT_PATTERNS
from serialmuxd.frontends.http.metrics import Snapshot
from serialmuxd.hub import PortHub, PortState, Role
from serialmuxd.obs.metrics import metrics_registry

_OPENMETRICS = "application/openmetrics-text; version=1.0.0"
_CONFIG = """
[[ports]]
name = "vm0"
device = "tty:/dev/null"
scrollback_bytes = 4096
"""


class _NullSink:
    """Enough of a ``SessionSink`` for ``PortHub.attach``; drops what it is sent."""

    def session_started(self, session: object) -> None: ...
    def send_output(self, data: bytes) -> None: ...
    def send_notice(self, notice: object) -> None: ...
    def close(self, reason: str) -> None: ...
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def build_hubs(count: int) -> list[PortHub]:
    template = parse_config(_CONFIG, "<bench>").ports[0]
    hubs = []
    for i in range(count):
        config = dataclasses.replace(template, name=f"vm{i}", group=f"rack{i % 40}" if i % 2 else None)
        hub = PortHub(config, None)
        hub.state = PortState.ONLINE
        hub.output.data_received(b"x" * (100 + i % 1000), time.monotonic())
        if i % 10 == 0:  # some ports have viewers attached
            hub.attach(_NullSink(), Identity("bench", "127.0.0.1:1"), AttachMode.READ_ONLY)
        hubs.append(hub)
    return hubs


def baseline_registry(hubs: list[PortHub]) -> CollectorRegistry:
    """The same series as ordinary labelled metric objects (what the hot path would have to update)."""
    registry = CollectorRegistry(auto_describe=False)
    labels = ["port", "group"]

    def counter(name: str, extra: tuple[str, ...] = ()) -> Counter:
        return Counter("serialmuxd_" + name, name, [*labels, *extra], registry=registry)

    def gauge(name: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge("serialmuxd_" + name, name, [*labels, *extra], registry=registry)

    from_guest, to_guest = counter("port_guest_output_bytes"), counter("port_guest_input_bytes")
    sessions = gauge("port_sessions", ("mode", "role"))
    takeovers, reconnects = counter("port_takeovers"), counter("port_device_reconnects")
    state = gauge("port_state", ("state",))
    fill, capacity = gauge("port_scrollback_bytes"), gauge("port_scrollback_capacity_bytes")
    skipped, sink_errors = counter("port_slow_reader_skipped_bytes"), counter("port_sink_errors")
    age = gauge("port_guest_output_age_seconds")
    health = counter("port_guest_health_events", ("kind",))
    kinds = sorted({pattern.kind for pattern in DEFAULT_PATTERNS})
    for hub in hubs:
        key = (hub.name, hub.config.group or "")
        from_guest.labels(*key).inc(hub.output.bytes_from_device)
        to_guest.labels(*key).inc(0)
        for mode in AttachMode:
            for role in Role:
                sessions.labels(*key, str(mode), str(role)).set(0)
        takeovers.labels(*key).inc(0)
        reconnects.labels(*key).inc(0)
        for each in PortState:
            state.labels(*key, str(each)).set(1 if each is hub.state else 0)
        fill.labels(*key).set(hub.ring.end - hub.ring.start)
        capacity.labels(*key).set(hub.ring.capacity)
        skipped.labels(*key).inc(0)
        sink_errors.labels(*key).inc(0)
        age.labels(*key).set(1.0)
        for kind in kinds:
            health.labels(*key, kind).inc(0)
    return registry


def _median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # warm-up: the collector builds each port's label sets on its first scrape
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ports", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        "| ports | samples | collect on the loop ms | encode text ms | encode OpenMetrics ms "
        "| baseline generate_latest ms | text KiB | gzip KiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in (int(n) for n in args.ports.split(",")):
        print(measure(count, args.repeat))


def measure(count: int, repeat: int) -> str:
    openmetrics, _ = choose_encoder(_OPENMETRICS)
    hubs = build_hubs(count)
    ours = metrics_registry(lambda: hubs, process=False)
    collect_ms = _median_ms(lambda: list(ours.collect()), repeat)
    snapshot = Snapshot(list(ours.collect()))
    text_ms = _median_ms(lambda: generate_latest(snapshot), repeat)
    om_ms = _median_ms(lambda: openmetrics(snapshot), repeat)
    baseline = baseline_registry(hubs)
    base_ms = _median_ms(lambda: generate_latest(baseline), repeat)
    text = generate_latest(snapshot)
    samples = sum(len(family.samples) for family in snapshot.collect())
    return (
        f"| {count:,} | {samples:,} | {collect_ms:.0f} | {text_ms:.0f} | {om_ms:.0f} | {base_ms:.0f} "
        f"| {len(text) / 1024:,.0f} | {len(gzip.compress(text, 6)) / 1024:,.0f} |"
    )


if __name__ == "__main__":
    main()
