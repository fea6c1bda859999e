"""Guest-health events through a PortHub: counts, audit, notices, the alert hook, the flood cap."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from serialmuxd.config import DeviceKind, DeviceSpec, PortConfig
from serialmuxd.core import health_accel
from serialmuxd.core.access import Identity
from serialmuxd.core.health import HealthEvent, HealthPattern
from serialmuxd.hub import AttachMode, NoticeKind, PortHub
from serialmuxd.hub.health import REPORTS_PER_WINDOW, WINDOW_S, warm_matchers
from tests.unit.test_hub import FakeLink, Sink


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


def make(**overrides: Any) -> tuple[PortHub, Recorder, list[float]]:
    cfg = PortConfig(name="vm1", device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"), replay_bytes=0)
    cfg = dataclasses.replace(cfg, **overrides)
    audit = Recorder()
    now = [1000.0]
    link = FakeLink()
    hub = PortHub(cfg, lambda _hub: link, audit=audit, wall=lambda: now[0])
    hub.start()
    hub.device_online("fake:")
    return hub, audit, now


def test_a_panic_is_counted_audited_noticed_and_alerted() -> None:
    hub, audit, _ = make()
    sink = Sink()
    assert hub.attach(sink, Identity("telnet", "127.0.0.1:1"), AttachMode.INTERACTIVE) is not None
    alerts: list[tuple[str, HealthEvent, float]] = []
    hub.health.configure((), lambda console, event, when: alerts.append((console, event, when)))
    hub.device_data_received(b"booting\r\n[ 1.0] Kernel pa")
    hub.device_data_received(
        b"nic - not syncing: Fatal exception\r\n---[ end Kernel panic - not syncing ]---\r\n"
    )
    line = "[ 1.0] Kernel panic - not syncing: Fatal exception"
    assert hub.health_counts == {"panic": 1}
    assert audit.named("guest_health") == [
        {"port": "vm1", "kind": "panic", "line": line, "offset": 9, "suppressed": 0}
    ]
    [notice] = [n for n in sink.notices if n.kind is NoticeKind.GUEST_HEALTH]
    assert notice.fields == {"health_kind": "panic", "line": line, "offset": 9}
    assert "panic at offset 9" in notice.text
    assert alerts == [("vm1", HealthEvent("panic", line, 9), 1000.0)]
    assert b"Kernel panic" in sink.output  # the guest's bytes are untouched


def test_configured_patterns_and_port_patterns_in_order() -> None:
    hub, _audit, _ = make(health_patterns=(HealthPattern("mine", "Kernel panic"),))
    hub.health.configure((HealthPattern("fs_error", "EXT4-fs error"),), None)
    hub.device_data_received(b"Kernel panic - not syncing\nEXT4-fs error (device vda1)\n")
    assert hub.health_counts == {"mine": 1, "fs_error": 1}


@pytest.mark.skipif(not health_accel.available(), reason="hyperscan is not installed")
def test_warmed_matchers_compile_nothing_when_the_hub_is_built() -> None:
    # The daemon warms in a worker thread what the hubs will need; building the hub and configuring its
    # [alerts] on the event loop then only looks databases up (a compile holds the CPU for ~0.3 s).
    own = (HealthPattern("mine", "only this test's own pattern"),)
    alerts = (HealthPattern("fs_error", "only this test's alert pattern"),)
    cfg = PortConfig(name="vm1", device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"))
    cfg = dataclasses.replace(cfg, health_patterns=own)
    compiled = health_accel._database.cache_info
    before = compiled().misses
    warm_matchers([cfg], alerts)
    warmed = compiled().misses
    assert warmed - before == 2  # the port's own set, and with the [alerts] patterns
    hub, _audit, _ = make(health_patterns=own)
    hub.health.configure(alerts, None)
    hub.health.configure(alerts, None)  # the same patterns again: the matcher (and its line) is kept
    assert compiled().misses == warmed
    assert hub.health.matcher.accelerated
    hub.device_data_received(b"x only this test's alert pattern\n")
    assert hub.health_counts == {"fs_error": 1}


def test_health_false_matches_nothing() -> None:
    hub, audit, _ = make(health=False)
    hub.device_data_received(b"Kernel panic - not syncing: x\n")
    assert hub.health_counts == {} and audit.named("guest_health") == []


def test_a_flood_is_capped_but_counted() -> None:
    hub, audit, now = make()
    alerts: list[HealthEvent] = []
    hub.health.configure((), lambda _c, event, _t: alerts.append(event))
    hub.device_data_received(b"[1] Oops: 0000 [#1]\n" * (REPORTS_PER_WINDOW + 5))
    assert hub.health_counts == {"oops": REPORTS_PER_WINDOW + 5}
    assert len(audit.named("guest_health")) == REPORTS_PER_WINDOW == len(alerts)
    now[0] += WINDOW_S
    hub.device_data_received(b"[2] Oops: 0000 [#2]\n")
    assert audit.named("guest_health")[-1]["suppressed"] == 5


def test_a_failing_alert_hook_does_not_stop_matching() -> None:
    hub, audit, _ = make()

    def broken(_console: str, _event: HealthEvent, _when: float) -> None:
        raise RuntimeError("bug")

    hub.health.configure((), broken)
    hub.device_data_received(b"Oops: 1\nOops: 2\n")
    assert hub.health_counts == {"oops": 2} and len(audit.named("guest_health")) == 2
