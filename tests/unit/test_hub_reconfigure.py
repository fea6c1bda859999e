"""PortHub.reconfigure and revoke_unauthorized (what a reload applies in place) with a fake link, a fake
clock and timers the test fires: the sessions stay, and the new settings decide from then on."""

from __future__ import annotations

import dataclasses

from serialmuxd.core.access import AccessPolicy, AttachMode, Identity, Verb
from serialmuxd.core.policy import TakeoverPolicy
from serialmuxd.hub import EndReason, NoticeKind, PortHub, Role

from .test_hub import FakeLink, FakeTimers, Sink, attach, make_hub


def test_a_new_takeover_policy_decides_the_next_attach_and_the_writer_stays() -> None:
    hub, link = make_hub(takeover=TakeoverPolicy.EVICT)
    writer, wsink = attach(hub, who="10.0.0.1:1")
    hub.reconfigure(dataclasses.replace(hub.config, takeover=TakeoverPolicy.REFUSE))
    newcomer, nsink = attach(hub, who="10.0.0.2:2")
    assert writer.role is Role.WRITER and wsink.closed_reason is None
    assert newcomer.role is Role.VIEWER and NoticeKind.REFUSED in nsink.kinds()
    writer.input(b"still mine")
    assert bytes(link.written) == b"still mine"


def _timed_hub(**overrides: object) -> tuple[PortHub, FakeLink, FakeTimers, list[float]]:
    timers, now = FakeTimers(), [100.0]
    base = make_hub()[0].config
    link = FakeLink()
    hub = PortHub(
        dataclasses.replace(base, **overrides),  # type: ignore[arg-type]
        lambda _hub: link,
        schedule=timers,
        clock=lambda: now[0],
    )
    hub.start()
    hub.device_online("fake:")
    return hub, link, timers, now


def test_an_idle_timeout_set_by_a_reload_counts_from_the_writers_last_input() -> None:
    hub, _, timers, now = _timed_hub()
    writer, sink = attach(hub)
    now[0] += 20
    writer.input(b"x")
    now[0] += 5
    hub.reconfigure(dataclasses.replace(hub.config, writer_idle_timeout_s=30.0))
    assert [delay for delay, _, timer in timers.pending if not timer.cancelled] == [25.0]
    now[0] += 25
    timers.fire_all()
    assert writer.role is Role.VIEWER and any("no input for 30 s" in n.text for n in sink.notices)


def test_pacing_turned_off_sends_what_was_queued_at_once() -> None:
    hub, link, _timers, _ = _timed_hub(input_rate_bytes_per_s=10)
    writer, _ = attach(hub)
    writer.input(b"a" * 100)
    assert len(link.written) < 100 and hub.input.queued_bytes > 0
    hub.reconfigure(dataclasses.replace(hub.config, input_rate_bytes_per_s=0))
    assert bytes(link.written) == b"a" * 100 and hub.input.queued_bytes == 0
    writer.input(b"b")
    assert bytes(link.written).endswith(b"b")


def test_a_new_logout_sequence_is_sent_when_the_writer_leaves() -> None:
    hub, link = make_hub()
    writer, _ = attach(hub)
    hub.reconfigure(dataclasses.replace(hub.config, logout_sequence="exit\r"))
    hub.session_detach(writer)
    assert bytes(link.written) == b"exit\r"


class Switchable:
    """Grants the test changes, as a reload swaps the policy's grants."""

    def __init__(self, allowed: dict[str, set[Verb]]) -> None:
        self.allowed = allowed

    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return verb in self.allowed.get(identity.user or "", set())


def test_revoked_grants_close_viewers_and_demote_writers() -> None:
    grants = Switchable({"alice": {Verb.VIEW, Verb.WRITE}, "bob": {Verb.VIEW}})
    link = FakeLink()
    hub = PortHub(make_hub()[0].config, lambda _hub: link, access=AccessPolicy(grants))
    hub.start()
    hub.device_online("fake:")
    alice_sink, bob_sink = Sink(), Sink()
    alice = hub.attach(alice_sink, Identity("telnet", "10.0.0.1:1", user="alice"), AttachMode.INTERACTIVE)
    bob = hub.attach(bob_sink, Identity("telnet", "10.0.0.2:2", user="bob"), AttachMode.READ_ONLY)
    assert alice is not None and bob is not None and alice.role is Role.WRITER
    grants.allowed = {"alice": {Verb.VIEW}}
    hub.revoke_unauthorized("access withdrawn by a configuration reload")
    assert bob_sink.end_reason is EndReason.DENIED and bob.id not in hub.sessions
    assert bob_sink.closed_reason == (
        "access withdrawn by a configuration reload: access to console vm1 ended"
    )
    assert alice_sink.closed_reason is None and hub.sessions[alice.id].role is Role.VIEWER
    assert hub.arbiter.writer is None
    alice.input(b"typed")
    assert bytes(link.written) == b""


def test_unchanged_grants_close_nothing() -> None:
    grants = Switchable({"alice": {Verb.VIEW, Verb.WRITE}})
    hub = PortHub(make_hub()[0].config, lambda _hub: FakeLink(), access=AccessPolicy(grants))
    sink = Sink()
    session = hub.attach(sink, Identity("telnet", "10.0.0.1:1", user="alice"), AttachMode.INTERACTIVE)
    hub.revoke_unauthorized("reload")
    assert session is not None and session.role is Role.WRITER and sink.closed_reason is None
