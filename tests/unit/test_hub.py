"""PortHub policy: fan-out, slow readers, the writer lease and takeover — with a fake link (a unit test of
policy; the real-path tests are in test_e2e_telnet.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from serialmuxd.config import DeviceKind, DeviceSpec, PortConfig
from serialmuxd.core.access import Identity
from serialmuxd.core.policy import SlowReaderPolicy, TakeoverPolicy
from serialmuxd.devices.base import DeviceLink, LinkState
from serialmuxd.hub import (
    AttachMode,
    EndReason,
    InputRefused,
    Notice,
    NoticeKind,
    PortHub,
    PortState,
    Role,
    Session,
)


class FakeLink(DeviceLink):
    def __init__(self) -> None:
        self.written = bytearray()
        self.breaks = 0
        self._state = LinkState.ONLINE
        self.accept = True

    def start(self) -> None:
        pass

    async def close(self) -> None:
        self._state = LinkState.CLOSED

    def write(self, data: bytes) -> bool:
        if self._state is not LinkState.ONLINE or not self.accept:
            return False
        self.written += data
        return True

    def send_break(self, duration_s: float = 0.25) -> bool:
        self.breaks += 1
        return True

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def write_buffer_size(self) -> int:
        return 0

    @property
    def description(self) -> str:
        return "fake:"


class Sink:
    """Records what a client would see; ``capacity`` simulates a transport buffer that fills up."""

    def __init__(self, capacity: int | None = None) -> None:
        self.output = bytearray()
        self.notices: list[Notice] = []
        self.closed_reason: str | None = None
        self.end_reason: EndReason | None = None
        self.input_paused = False
        self.capacity = capacity
        self.buffered = 0
        self.session: Session | None = None

    def session_started(self, session: Session) -> None:
        self.session = session

    def send_output(self, data: bytes) -> None:
        self.output += data
        self.buffered += len(data)
        if self.capacity is not None and self.buffered > self.capacity and self.session is not None:
            self.session.pause_output()

    def drain(self) -> None:
        self.buffered = 0
        if self.session is not None:
            self.session.resume_output()

    def send_notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def close_session(self, reason: str, kind: EndReason) -> None:
        self.end_reason = kind
        self.closed_reason = reason

    def pause_input(self) -> None:
        self.input_paused = True

    def resume_input(self) -> None:
        self.input_paused = False

    def kinds(self) -> list[NoticeKind]:
        return [n.kind for n in self.notices]


def make_hub(**overrides: object) -> tuple[PortHub, FakeLink]:
    cfg = PortConfig(name="vm1", device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"), replay_bytes=0)
    cfg = dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]
    link = FakeLink()
    hub = PortHub(cfg, lambda _hub: link)
    hub.start()
    if cfg.enabled:
        hub.device_online("fake:")
    return hub, link


def attach(
    hub: PortHub,
    mode: AttachMode = AttachMode.INTERACTIVE,
    capacity: int | None = None,
    who: str = "127.0.0.1:1",
) -> tuple[Session, Sink]:
    sink = Sink(capacity)
    session = hub.attach(sink, Identity("telnet", who), mode)
    assert session is not None and sink.session is session
    return session, sink


def test_fan_out_reaches_every_session_byte_exact() -> None:
    hub, _ = make_hub()
    sinks = [attach(hub, AttachMode.VIEWER)[1] for _ in range(5)]
    for chunk in (b"a" * 10, bytes(range(256)), b"\xff\xff"):
        hub.device_data_received(chunk)
    for sink in sinks:
        assert bytes(sink.output) == b"a" * 10 + bytes(range(256)) + b"\xff\xff"


def test_first_interactive_attach_gets_write_viewer_input_never_reaches_device() -> None:
    hub, link = make_hub()
    writer, _wsink = attach(hub)
    viewer, vsink = attach(hub, AttachMode.VIEWER)
    assert writer.role is Role.WRITER and viewer.role is Role.VIEWER
    viewer.input(b"rm -rf /\r")
    writer.input(b"ls\r")
    assert bytes(link.written) == b"ls\r"
    assert NoticeKind.READ_ONLY in vsink.kinds()


def test_evict_policy_detaches_old_writer_with_names_and_drops_its_later_bytes() -> None:
    hub, link = make_hub(takeover=TakeoverPolicy.EVICT)
    old, osink = attach(hub, who="10.0.0.1:1111")
    new, nsink = attach(hub, who="10.0.0.2:2222")
    assert new.role is Role.WRITER
    evicted = [n for n in osink.notices if n.kind is NoticeKind.EVICTED]
    assert evicted and "10.0.0.2:2222" in evicted[0].text and "not logged out" in evicted[0].text
    assert osink.closed_reason is not None and "10.0.0.2:2222" in osink.closed_reason
    assert osink.end_reason is EndReason.EVICTED
    took = [n for n in nsink.notices if n.kind is NoticeKind.TOOK_OVER]
    assert took and "10.0.0.1:1111" in took[0].text
    old.input(b"late bytes")
    new.input(b"new")
    assert bytes(link.written) == b"new"
    assert old.id not in hub.sessions


def test_demote_policy_keeps_old_writer_as_viewer() -> None:
    hub, link = make_hub(takeover=TakeoverPolicy.DEMOTE)
    old, osink = attach(hub)
    new, _ = attach(hub)
    assert old.role is Role.VIEWER and new.role is Role.WRITER
    assert NoticeKind.DEMOTED in osink.kinds() and osink.closed_reason is None
    hub.device_data_received(b"still watching")
    assert bytes(osink.output).endswith(b"still watching")
    old.input(b"x")
    assert bytes(link.written) == b""


def test_refuse_policy_keeps_writer_and_newcomer_watches() -> None:
    hub, _link = make_hub(takeover=TakeoverPolicy.REFUSE)
    old, _ = attach(hub, who="a:1")
    new, nsink = attach(hub, who="b:2")
    assert old.role is Role.WRITER and new.role is Role.VIEWER
    refused = [n for n in nsink.notices if n.kind is NoticeKind.REFUSED]
    assert refused and "a:1" in refused[0].text
    new.take_over()
    assert old.role is Role.WRITER
    old.detach()
    new.take_over()
    assert hub.lease.holds(new.id)


def test_slow_reader_resync_reports_exact_missed_bytes_and_others_unaffected() -> None:
    hub, _ = make_hub(scrollback_bytes=4096)
    _, slow = attach(hub, AttachMode.VIEWER, capacity=100)
    _, fast = attach(hub, AttachMode.VIEWER)
    stream = bytes(i % 251 for i in range(20_000))
    for i in range(0, len(stream), 500):
        hub.device_data_received(stream[i : i + 500])
    assert bytes(fast.output) == stream
    slow.drain()
    missed = [n for n in slow.notices if n.kind is NoticeKind.MISSED]
    assert len(missed) == 1
    n_missed = missed[0].fields["missed"]
    # What the slow reader got = a prefix, a gap of exactly n_missed, then the rest: nothing else lost.
    got = bytes(slow.output)
    first = 500  # it paused after the first chunk overflowed its capacity of 100
    assert got[:first] == stream[:first]
    assert got[first:] == stream[first + n_missed :]
    assert hub.bytes_missed == n_missed == len(stream) - 4096 - first


def test_slow_reader_close_policy_names_offset() -> None:
    hub, _ = make_hub(scrollback_bytes=4096, slow_reader=SlowReaderPolicy.CLOSE)
    session, slow = attach(hub, AttachMode.VIEWER, capacity=10)
    for _ in range(10):
        hub.device_data_received(b"x" * 1000)
    slow.drain()
    assert slow.closed_reason is not None and "1000" in slow.closed_reason
    assert session.id not in hub.sessions


def test_lagging_reader_that_catches_up_in_time_loses_nothing() -> None:
    hub, _ = make_hub(scrollback_bytes=1 << 16)
    _, slow = attach(hub, AttachMode.VIEWER, capacity=10)
    stream = bytes(range(256)) * 40
    for i in range(0, len(stream), 1000):
        hub.device_data_received(stream[i : i + 1000])
        slow.drain()
    assert bytes(slow.output) == stream
    assert NoticeKind.MISSED not in slow.kinds()


def test_replay_on_attach_marks_and_starts_at_line() -> None:
    hub, _ = make_hub(replay_bytes=16)
    hub.device_data_received(b"line one\r\nline two\r\nthree")
    _, sink = attach(hub, AttachMode.VIEWER)
    kinds = sink.kinds()
    assert kinds.index(NoticeKind.REPLAY_START) < kinds.index(NoticeKind.REPLAY_END)
    assert bytes(sink.output) == b"line two\r\nthree"
    hub.device_data_received(b"!")
    assert bytes(sink.output) == b"line two\r\nthree!"


def test_offline_and_online_are_told_in_band_and_input_is_discarded_with_notice() -> None:
    hub, link = make_hub()
    writer, sink = attach(hub)
    link._state = LinkState.OFFLINE
    hub.device_offline("socket gone")
    assert hub.state is PortState.OFFLINE
    writer.input(b"abc")
    assert bytes(link.written) == b""
    discarded = [n for n in sink.notices if n.kind is NoticeKind.INPUT_DISCARDED]
    assert discarded and discarded[0].fields["discarded"] == 3
    link._state = LinkState.ONLINE
    hub.device_online("fake:")
    writer.input(b"d")
    assert bytes(link.written) == b"d"
    assert sink.closed_reason is None


def test_device_backpressure_pauses_only_the_writer_and_moves_with_the_lease() -> None:
    hub, _ = make_hub(takeover=TakeoverPolicy.DEMOTE)
    _, asink = attach(hub)
    _, vsink = attach(hub, AttachMode.VIEWER)
    hub.device_write_paused()
    assert asink.input_paused and not vsink.input_paused
    _b, bsink = attach(hub)
    assert bsink.input_paused and not asink.input_paused
    hub.device_write_resumed()
    assert not bsink.input_paused


def test_disabled_port_refuses_attach_with_reason() -> None:
    hub, _ = make_hub(enabled=False)
    sink = Sink()
    assert hub.attach(sink, Identity("telnet", "x:1"), AttachMode.INTERACTIVE) is None
    assert sink.closed_reason is not None and "disabled" in sink.closed_reason


def test_break_only_from_writer() -> None:
    hub, link = make_hub()
    writer, _ = attach(hub)
    viewer, _vsink = attach(hub, AttachMode.VIEWER)
    viewer.send_break()
    assert link.breaks == 0
    writer.send_break()
    assert link.breaks == 1


class LeaseMachine(RuleBasedStateMachine):
    """Any interleaving of attach / take over / read-only / detach / input: at most one writer, and only its
    bytes reach the device."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = TakeoverPolicy.EVICT
        self.hub: PortHub | None = None
        self.link: FakeLink | None = None
        self.sessions: list[Session] = []
        self.expected = bytearray()
        self.counter = 0

    @precondition(lambda self: self.hub is None)
    @rule(policy=st.sampled_from(list(TakeoverPolicy)))
    def setup(self, policy: TakeoverPolicy) -> None:
        self.hub, self.link = make_hub(takeover=policy)

    @precondition(lambda self: self.hub is not None)
    @rule(interactive=st.booleans())
    def attach(self, interactive: bool) -> None:
        assert self.hub is not None
        s, _ = attach(self.hub, AttachMode.INTERACTIVE if interactive else AttachMode.VIEWER)
        self.sessions.append(s)

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def take_over(self, i: int) -> None:
        if self.sessions:
            self.sessions[i % len(self.sessions)].take_over()

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def read_only(self, i: int) -> None:
        if self.sessions:
            self.sessions[i % len(self.sessions)].become_viewer()

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def detach(self, i: int) -> None:
        if self.sessions:
            self.sessions[i % len(self.sessions)].detach()

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def type_(self, i: int) -> None:
        assert self.hub is not None
        if not self.sessions:
            return
        s = self.sessions[i % len(self.sessions)]
        self.counter += 1
        data = f"<{self.counter}>".encode()
        if not s.closed and self.hub.lease.holds(s.id):
            self.expected += data
        s.input(data)

    @invariant()
    def one_writer(self) -> None:
        if self.hub is None or self.link is None:
            return
        live = [s for s in self.sessions if not s.closed]
        writers = [s for s in live if s.role is Role.WRITER]
        assert len(writers) <= 1
        holder = self.hub.lease.holder
        if holder is None:
            assert not writers
        else:
            assert [w.id for w in writers] == [holder.session_id]
        assert bytes(self.link.written) == bytes(self.expected)


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_evicted_writer_paused_by_device_is_resumed_so_its_transport_can_close() -> None:
    hub, _ = make_hub()
    _, old = attach(hub)
    hub.device_write_paused()
    assert old.input_paused
    attach(hub)  # evicts
    assert not old.input_paused


def test_paced_input_queue_is_bounded_by_pausing_the_writer() -> None:
    async def scenario() -> None:
        hub, link = make_hub(input_rate_bps=100, device_buffer_bytes=1024)
        writer, sink = attach(hub)
        writer.input(b"x" * 5000)
        assert sink.input_paused  # no more is read from this client until the queue drains
        assert len(link.written) <= 100
        await hub.close()

    asyncio.run(scenario())


def test_viewer_going_read_only_keeps_the_writers_queued_input() -> None:
    async def scenario() -> None:
        hub, _ = make_hub(input_rate_bps=100)
        writer, _wsink = attach(hub)
        viewer, _vsink = attach(hub, AttachMode.VIEWER)
        writer.input(b"y" * 500)
        queued = len(hub._pending_input)
        assert queued > 0
        viewer.become_viewer()
        assert len(hub._pending_input) == queued
        await hub.close()

    asyncio.run(scenario())


def test_manual_replay_while_behind_does_not_skip_bytes_silently() -> None:
    hub, _ = make_hub(scrollback_bytes=1 << 16)
    session, slow = attach(hub, AttachMode.VIEWER, capacity=10)
    stream = bytes(range(256)) * 20
    hub.device_data_received(stream[:1000])
    hub.device_data_received(stream[1000:])
    assert session.lagging
    session.replay()
    assert any("catching up" in n.text for n in slow.notices)
    slow.drain()
    assert bytes(slow.output) == stream  # nothing skipped, nothing doubled


def test_attach_replay_counts_against_the_session_buffer() -> None:
    hub, _ = make_hub(replay_bytes=4096)
    hub.device_data_received(b"z" * 4096)
    session, sink = attach(hub, AttachMode.VIEWER, capacity=100)
    assert session.lagging  # the sink could pause during the replay itself
    hub.device_data_received(b"live")
    assert not bytes(sink.output).endswith(b"live")
    sink.drain()
    assert bytes(sink.output).endswith(b"live") and NoticeKind.MISSED not in sink.kinds()


def test_disable_while_device_paused_then_enable_does_not_leave_writers_paused() -> None:
    async def scenario() -> None:
        hub, _ = make_hub()
        hub.device_write_paused()
        await hub.set_enabled(False, "maintenance")
        await hub.set_enabled(True, "")
        _, sink = attach(hub)
        assert not sink.input_paused
        await hub.close()

    asyncio.run(scenario())


def test_typing_into_an_offline_console_is_told_without_a_notice_per_keystroke() -> None:
    hub, link = make_hub()
    writer, sink = attach(hub)
    link._state = LinkState.OFFLINE
    hub.device_offline("gone")
    for _ in range(100):
        writer.input(b"k")
    told = [n.fields["discarded"] for n in sink.notices if n.kind is NoticeKind.INPUT_DISCARDED]
    assert told == [1]
    link._state = LinkState.ONLINE
    hub.device_online("fake:")
    told = [n.fields["discarded"] for n in sink.notices if n.kind is NoticeKind.INPUT_DISCARDED]
    assert told == [1, 99]  # every discarded byte accounted for
    assert bytes(link.written) == b""


def test_api_input_is_refused_once_the_paced_queue_is_full() -> None:
    async def scenario() -> None:
        hub, _ = make_hub(input_rate_bps=10, device_buffer_bytes=1024)
        who = Identity("http", "127.0.0.1:9")
        with pytest.raises(InputRefused) as refused:
            for _ in range(100):
                hub.api_input(who, b"k" * 100, "send keys")
        assert refused.value.code == "input_queue_full"
        assert len(hub._pending_input) < 1024 + 100
        await hub.close()

    asyncio.run(scenario())


def test_resume_from_an_overwritten_offset_is_told_even_with_close_policy() -> None:
    hub, _ = make_hub(scrollback_bytes=4096, slow_reader=SlowReaderPolicy.CLOSE)
    hub.device_data_received(b"a" * 10000)
    sink = Sink()
    session = hub.attach(sink, Identity("ws", "x:1"), AttachMode.VIEWER, from_offset=100)
    assert session is not None and sink.closed_reason is None
    missed = [n for n in sink.notices if n.kind is NoticeKind.MISSED]
    assert missed and missed[0].fields == {"missed": 10000 - 4096 - 100, "offset": 10000 - 4096}
    assert len(sink.output) == 4096
