"""The metrics collector against fake hubs: every series reads the hub's own counter at scrape time, labels
come only from configured names, groups and enums, and the text passes prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from serialmuxd.adapters import Action, AdapterError
from serialmuxd.core.access import AttachMode, Identity
from serialmuxd.hub import PortHub, PortState, Role
from serialmuxd.hub.vm import VmControl
from serialmuxd.obs.metrics import ConsoleCollector, metrics_registry


@dataclass
class FakeRing:
    start: int = 0
    end: int = 0
    capacity: int = 1024


@dataclass
class FakeOutput:
    bytes_from_device: int = 0
    bytes_missed: int = 0
    sink_errors: int = 0
    last_output_at: float | None = None


@dataclass(eq=False)  # hashable by identity, like PortHub
class FakeHub:
    name: str
    group: str | None = None
    state: PortState = PortState.ONLINE
    sessions: dict[int, Any] = field(default_factory=dict)
    ring: FakeRing = field(default_factory=FakeRing)
    output: FakeOutput = field(default_factory=FakeOutput)
    device_reconnects: int = 0
    takeovers: int = 0
    bytes_to_device: int = 0
    actions: frozenset[Action] = frozenset()
    action_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    health_counts: dict[str, int] = field(default_factory=dict)
    health: bool = False

    @property
    def config(self) -> Any:
        return SimpleNamespace(group=self.group, health=self.health, health_patterns=())

    @property
    def input(self) -> Any:
        return SimpleNamespace(bytes_to_device=self.bytes_to_device)

    @property
    def arbiter(self) -> Any:
        return SimpleNamespace(takeovers=self.takeovers)

    @property
    def vm(self) -> Any:
        adapter = SimpleNamespace(actions=self.actions) if self.actions else None
        return SimpleNamespace(adapter=adapter, action_counts=self.action_counts)


def _session(mode: AttachMode, role: Role) -> Any:
    return SimpleNamespace(mode=mode, role=role)


def _samples(collector: ConsoleCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def _hubs(*hubs: FakeHub) -> Any:
    return lambda: cast(list[PortHub], list(hubs))


def test_every_series_reads_the_hub_counters() -> None:
    vm1 = FakeHub(
        "vm1",
        group="web",
        sessions={
            1: _session(AttachMode.INTERACTIVE, Role.WRITER),
            2: _session(AttachMode.INTERACTIVE, Role.VIEWER),
            3: _session(AttachMode.READ_ONLY, Role.VIEWER),
            4: _session(AttachMode.READ_ONLY, Role.VIEWER),
        },
        ring=FakeRing(start=100, end=612, capacity=4096),
        output=FakeOutput(bytes_from_device=612, bytes_missed=7, sink_errors=2, last_output_at=990.0),
        device_reconnects=3,
        takeovers=5,
        bytes_to_device=11,
        actions=frozenset({Action.NMI, Action.RESET, Action.STATE}),
        action_counts={("nmi", "ok"): 2, ("reset", "failed"): 1},
    )
    vm2 = FakeHub("vm2", state=PortState.OFFLINE)
    got = _samples(ConsoleCollector(_hubs(vm1, vm2), clock=lambda: 1000.0))
    web = {("port", "vm1"), ("group", "web")}

    def at(name: str, **extra: str) -> float:
        return got[f"serialmuxd_{name}", frozenset(web | set(extra.items()))]

    assert at("port_guest_output_bytes_total") == 612
    assert at("port_guest_input_bytes_total") == 11
    assert at("port_sessions", mode="interactive", role="writer") == 1
    assert at("port_sessions", mode="interactive", role="viewer") == 1
    assert at("port_sessions", mode="read_only", role="viewer") == 2
    assert at("port_sessions", mode="read_only", role="writer") == 0
    assert at("port_takeovers_total") == 5
    assert at("port_device_reconnects_total") == 3
    assert at("port_state", state="online") == 1
    assert at("port_state", state="offline") == 0
    assert at("port_scrollback_bytes") == 512
    assert at("port_scrollback_capacity_bytes") == 4096
    assert at("port_slow_reader_skipped_bytes_total") == 7
    assert at("port_guest_output_age_seconds") == 10.0
    assert at("port_vm_actions_total", action="nmi", result="ok") == 2
    assert at("port_vm_actions_total", action="reset", result="failed") == 1
    assert at("port_vm_actions_total", action="reset", result="ok") == 0
    assert at("port_sink_errors_total") == 2
    # Offered actions only (and never the read-only "state"); no port without an adapter gets any.
    assert not any(
        name == "serialmuxd_port_vm_actions_total" and ("action", "restart") in labels for name, labels in got
    )
    assert not any(
        name == "serialmuxd_port_vm_actions_total" and ("port", "vm2") in labels for name, labels in got
    )
    # No group configured: the label is empty, which Prometheus treats as absent.
    assert (
        got["serialmuxd_port_state", frozenset({("port", "vm2"), ("group", ""), ("state", "offline")})] == 1
    )
    # Before the guest printed anything there is no age at all (not 0, not +Inf).
    assert not any(
        name == "serialmuxd_port_guest_output_age_seconds" and ("port", "vm2") in labels
        for name, labels in got
    )


def test_counters_are_read_at_scrape_time_not_copied() -> None:
    hub = FakeHub("vm1")
    collector = ConsoleCollector(_hubs(hub))
    key = ("serialmuxd_port_guest_output_bytes_total", frozenset({("port", "vm1"), ("group", "")}))
    assert _samples(collector)[key] == 0
    hub.output.bytes_from_device = 123_456_789_012
    assert _samples(collector)[key] == 123_456_789_012


def test_labels_are_bounded_by_config_and_enums() -> None:
    hubs = [FakeHub(f"vm{i}", group="g" if i % 2 else None) for i in range(50)]
    got = _samples(ConsoleCollector(_hubs(*hubs)))
    allowed = {"port", "group", "mode", "role", "state", "action", "result", "method"}
    values = {"mode": {str(m) for m in AttachMode}, "role": {str(r) for r in Role}}
    values["state"] = {str(s) for s in PortState}
    for _, labels in got:
        for name, value in labels:
            assert name in allowed
            if name in values:
                assert value in values[name]
    # Series per port are fixed: adding sessions never adds series.
    per_port = len([1 for _, labels in got if ("port", "vm0") in labels])
    hubs[0].sessions = {i: _session(AttachMode.READ_ONLY, Role.VIEWER) for i in range(100)}
    assert (
        len([1 for _, labels in _samples(ConsoleCollector(_hubs(*hubs))) if ("port", "vm0") in labels])
        == per_port
    )


def test_logins_by_method_and_result_start_at_zero() -> None:
    logins = SimpleNamespace(login_counts={("token", "ok"): 4, ("password", "failed"): 2})
    got = _samples(ConsoleCollector(_hubs(), logins))
    assert got["serialmuxd_logins_total", frozenset({("method", "token"), ("result", "ok")})] == 4
    assert got["serialmuxd_logins_total", frozenset({("method", "password"), ("result", "failed")})] == 2
    assert got["serialmuxd_logins_total", frozenset({("method", "oidc"), ("result", "ok")})] == 0
    assert not any(n == "serialmuxd_logins_total" for n, _ in _samples(ConsoleCollector(_hubs())))


def test_registry_is_private_and_has_process_metrics() -> None:
    from prometheus_client import REGISTRY

    registry = metrics_registry(_hubs(FakeHub("vm1")))
    assert registry is not REGISTRY
    text = generate_latest(registry).decode()
    assert "process_resident_memory_bytes" in text and "python_info" in text
    assert "serialmuxd_port_guest_output_bytes_total" in text
    encode, content_type = choose_encoder("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    openmetrics = encode(registry).decode()
    assert openmetrics.endswith("# EOF\n")
    assert (
        REGISTRY.get_sample_value("serialmuxd_port_guest_output_bytes_total", {"port": "vm1", "group": ""})
        is None
    )


class FakeAdapter:
    kind = "fake"
    actions = frozenset({Action.NMI, Action.RESET})

    def __init__(self) -> None:
        self.fail = False

    def on_state_change(self, callback: Any) -> None:
        pass

    async def nmi(self) -> None:
        if self.fail:
            raise AdapterError("vm1", "the hypervisor said no")

    async def reset(self) -> None:
        pass


def test_vm_actions_are_counted_on_success_and_failure() -> None:
    adapter = FakeAdapter()
    vm = VmControl("vm1", cast(Any, adapter), audit=lambda *a, **k: None, broadcast=lambda notice: None)
    who = Identity("http", "127.0.0.1:1", user="ops")

    async def run() -> None:
        await vm.run(Action.NMI, who)
        await vm.run(Action.NMI, who)
        adapter.fail = True
        with pytest.raises(AdapterError):
            await vm.run(Action.NMI, who)
        await vm.run(Action.RESET, who)

    asyncio.run(run())
    assert vm.action_counts == {("nmi", "ok"): 2, ("nmi", "failed"): 1, ("reset", "ok"): 1}


def test_guest_health_events_by_kind_start_at_zero_for_the_shipped_kinds() -> None:
    hub = FakeHub("vm1", health=True, health_counts={"panic": 1, "disk_full": 2})
    got = _samples(ConsoleCollector(_hubs(hub, FakeHub("vm2"))))

    def events(port: str, kind: str) -> float | None:
        labels = frozenset({("port", port), ("group", ""), ("kind", kind)})
        return got.get(("serialmuxd_port_guest_health_events_total", labels))

    assert events("vm1", "panic") == 1
    assert events("vm1", "oops") == 0  # a shipped default kind, before its first event
    assert events("vm1", "disk_full") == 2  # an [alerts] kind, once seen
    assert events("vm2", "panic") is None  # health = false: no series
