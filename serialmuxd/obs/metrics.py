"""Prometheus metrics: one custom collector that reads the hubs' own counters at scrape time.

Nothing on the console path touches a metric object: the hubs already count what operators want (bytes
each way, takeovers, reconnects, skipped bytes, sink errors, hypervisor actions, the guest's last output),
and ``ConsoleCollector.collect`` turns those plain integers into metric families only when Prometheus
asks.  A guest byte therefore costs the same with or without metrics, and a scrape of N ports costs one
pass over N hubs (measured in ``bench/metrics_scrape.py``).

Labels come only from the configuration (``port``, ``group``) and from fixed enums (state, attach mode,
role, action, result, login method), so the number of series is bounded by the config, never by what
clients or guests send.  The registry is built here and injected (``metrics_registry``); the global
default registry of prometheus_client is never used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..adapters import Action
from ..core.access import AttachMode
from ..hub.session import Role
from ..hub.status import PortState

if TYPE_CHECKING:
    from ..hub import PortHub

PREFIX = "serialmuxd_"
_PORT_LABELS = ("port", "group")
_STATES = tuple(PortState)
_SESSION_KINDS = tuple((mode, role) for mode in AttachMode for role in Role)
_VM_ACTIONS = (Action.NMI, Action.RESET, Action.RESTART, Action.START)
_RESULTS = ("ok", "failed")
# The methods Authenticator counts (auth/authenticator.py); shown at zero before the first login.
LOGIN_METHODS = ("password", "token", "oidc", "certificate")


class LoginCounts(Protocol):
    """What ``auth.authenticator.Authenticator`` exposes for metrics."""

    @property
    def login_counts(self) -> Mapping[tuple[str, str], int]: ...


class ConsoleCollector(Collector):
    """Per-port and daemon-wide series, read from the hubs at scrape time.

    ``hubs`` returns the hubs to report (the daemon's, at the moment of the scrape); ``logins`` the
    authenticator when ``[auth]`` is configured; ``clock`` is the monotonic clock the hubs stamp the guest's
    last output with.  Only reads the hubs' attributes, never calls into them.
    """

    def __init__(
        self,
        hubs: Callable[[], Iterable[PortHub]],
        logins: LoginCounts | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hubs = hubs
        self._logins = logins
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        # Registering must not run a scrape (the hubs may not exist yet); the names are fixed anyway.
        return ()

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, labels=(*_PORT_LABELS, *extra))

        def gauge(name: str, doc: str, extra: tuple[str, ...] = (), unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=(*_PORT_LABELS, *extra), unit=unit)

        from_guest = counter("port_guest_output_bytes", "Bytes the guest wrote (device to clients)")
        to_guest = counter("port_guest_input_bytes", "Bytes written to the guest (clients to device)")
        sessions = gauge("port_sessions", "Attached sessions by attach mode and role", ("mode", "role"))
        takeovers = counter("port_takeovers", "Writer lease takeovers")
        reconnects = counter("port_device_reconnects", "Times the device link came back after a loss")
        state = gauge("port_state", "1 for the port's current state, 0 for the others", ("state",))
        fill = gauge("port_scrollback_bytes", "Bytes held in the scrollback ring")
        capacity = gauge("port_scrollback_capacity_bytes", "Capacity of the scrollback ring")
        skipped = counter(
            "port_slow_reader_skipped_bytes", "Bytes slow readers missed (overwritten in the ring)"
        )
        quiet = gauge(
            "port_guest_output_age_seconds", "Seconds since the guest last wrote (absent before any output)"
        )
        actions = counter("port_vm_actions", "Hypervisor actions run, by outcome", ("action", "result"))
        sink_errors = counter("port_sink_errors", "Sessions closed because their transport failed")
        now = self._clock()
        for hub in self._hubs():
            config = hub.config
            labels = (hub.name, config.group or "")
            output = hub.output
            from_guest.add_metric(labels, output.bytes_from_device)
            to_guest.add_metric(labels, hub.input.bytes_to_device)
            counts = dict.fromkeys(_SESSION_KINDS, 0)
            for session in hub.sessions.values():
                counts[session.mode, session.role] += 1
            for (mode, role), count in counts.items():
                sessions.add_metric((*labels, str(mode), str(role)), count)
            takeovers.add_metric(labels, hub.arbiter.takeovers)
            reconnects.add_metric(labels, hub.device_reconnects)
            current = hub.state
            for each in _STATES:
                state.add_metric((*labels, str(each)), 1 if each is current else 0)
            ring = hub.ring
            fill.add_metric(labels, ring.end - ring.start)
            capacity.add_metric(labels, ring.capacity)
            skipped.add_metric(labels, output.bytes_missed)
            if output.last_output_at is not None:
                quiet.add_metric(labels, max(0.0, now - output.last_output_at))
            vm = hub.vm
            done: Mapping[tuple[str, str], int] = vm.action_counts
            offered = vm.adapter.actions if vm.adapter is not None else ()
            for action in _VM_ACTIONS:
                if action in offered or any((str(action), r) in done for r in _RESULTS):
                    for result in _RESULTS:
                        actions.add_metric((*labels, str(action), result), done.get((str(action), result), 0))
            sink_errors.add_metric(labels, output.sink_errors)
        yield from (from_guest, to_guest, sessions, takeovers, reconnects, state, fill, capacity, skipped)
        yield from (quiet, actions, sink_errors)
        if self._logins is not None:
            logins = CounterMetricFamily(
                PREFIX + "logins", "Sign-in attempts by method and outcome", labels=("method", "result")
            )
            seen = self._logins.login_counts
            methods = (*LOGIN_METHODS, *sorted({m for m, _ in seen} - set(LOGIN_METHODS)))
            for method in methods:
                for result in _RESULTS:
                    logins.add_metric((method, result), seen.get((method, result), 0))
            yield logins


def metrics_registry(
    hubs: Callable[[], Iterable[PortHub]],
    logins: LoginCounts | None = None,
    *,
    process: bool = True,
) -> CollectorRegistry:
    """A fresh registry (never prometheus_client's global one) with the console collector and, unless
    ``process`` is False, the process and Python platform collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConsoleCollector(hubs, logins))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
