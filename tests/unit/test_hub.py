"""PortHub policy: fan-out, slow readers, the writer lease and takeover — with a fake link (a unit test of
policy; the real-path tests are in tests/e2e/test_telnet.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

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
    Notice,
    NoticeKind,
    PortHub,
    PortState,
    RefusalKind,
    Refused,
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


def make_hub(schedule: Callable[..., object] | None = None, **overrides: object) -> tuple[PortHub, FakeLink]:
    cfg = PortConfig(name="vm1", device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"), replay_bytes=0)
    cfg = dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]
    link = FakeLink()
    if schedule is None:
        hub = PortHub(cfg, lambda _hub: link)
    else:
        hub = PortHub(cfg, lambda _hub: link, schedule=schedule)  # type: ignore[arg-type]
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
    sinks = [attach(hub, AttachMode.READ_ONLY)[1] for _ in range(5)]
    for chunk in (b"a" * 10, bytes(range(256)), b"\xff\xff"):
        hub.device_data_received(chunk)
    for sink in sinks:
        assert bytes(sink.output) == b"a" * 10 + bytes(range(256)) + b"\xff\xff"


def test_first_interactive_attach_gets_write_viewer_input_never_reaches_device() -> None:
    hub, link = make_hub()
    writer, _wsink = attach(hub)
    viewer, vsink = attach(hub, AttachMode.READ_ONLY)
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
    assert hub.arbiter.holds(new)


def test_slow_reader_resync_reports_exact_missed_bytes_and_others_unaffected() -> None:
    hub, _ = make_hub(scrollback_bytes=4096)
    _, slow = attach(hub, AttachMode.READ_ONLY, capacity=100)
    _, fast = attach(hub, AttachMode.READ_ONLY)
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
    session, slow = attach(hub, AttachMode.READ_ONLY, capacity=10)
    for _ in range(10):
        hub.device_data_received(b"x" * 1000)
    slow.drain()
    assert slow.closed_reason is not None and "1000" in slow.closed_reason
    assert session.id not in hub.sessions


def test_lagging_reader_that_catches_up_in_time_loses_nothing() -> None:
    hub, _ = make_hub(scrollback_bytes=1 << 16)
    _, slow = attach(hub, AttachMode.READ_ONLY, capacity=10)
    stream = bytes(range(256)) * 40
    for i in range(0, len(stream), 1000):
        hub.device_data_received(stream[i : i + 1000])
        slow.drain()
    assert bytes(slow.output) == stream
    assert NoticeKind.MISSED not in slow.kinds()


def test_replay_on_attach_marks_and_starts_at_line() -> None:
    hub, _ = make_hub(replay_bytes=16)
    hub.device_data_received(b"line one\r\nline two\r\nthree")
    _, sink = attach(hub, AttachMode.READ_ONLY)
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
    _, vsink = attach(hub, AttachMode.READ_ONLY)
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
    viewer, _vsink = attach(hub, AttachMode.READ_ONLY)
    viewer.send_break()
    assert link.breaks == 0
    writer.send_break()
    assert link.breaks == 1


class FakeTimers:
    """A scheduler for the hub that fires only when the test says so (the ``ask`` deadline)."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], FakeTimer]] = []

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        self.pending.append((delay_s, callback, timer))
        return timer

    def fire_all(self) -> int:
        due, self.pending = self.pending, []
        fired = 0
        for _, callback, timer in due:
            if not timer.cancelled:
                fired += 1
                callback()
        return fired


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclasses.dataclass
class ModelSession:
    interactive: bool
    closed: bool = False


class LeaseModel:
    """The takeover rules written down independently of the code under test (README, issue 7)."""

    def __init__(self, policy: TakeoverPolicy) -> None:
        self.policy = policy
        self.sessions: list[ModelSession] = []
        self.writer: int | None = None
        self.asker: int | None = None

    def attach(self, interactive: bool) -> None:
        self.sessions.append(ModelSession(interactive))
        if interactive:
            self.request(len(self.sessions) - 1)

    def request(self, i: int) -> None:
        s = self.sessions[i]
        if s.closed or not s.interactive or self.writer == i:
            return
        if self.writer is None:
            self.writer = i
        elif self.policy is TakeoverPolicy.EVICT:
            self.sessions[self.writer].closed = True
            self.writer = i
        elif self.policy is TakeoverPolicy.DEMOTE:
            self.writer = i
        elif self.policy is TakeoverPolicy.ASK and self.asker is None:
            self.asker = i
        # refuse, or ask while another request waits: nothing changes

    def attach_forced(self) -> None:
        """``ssh CONSOLE.force``: the lease at once; the holder as if it said yes, evicted under refuse."""
        self.sessions.append(ModelSession(True))
        self.asker = None  # a waiting request is cancelled (its asker stays a viewer)
        if self.writer is not None and self.policy in (TakeoverPolicy.EVICT, TakeoverPolicy.REFUSE):
            self.sessions[self.writer].closed = True
        self.writer = len(self.sessions) - 1

    def answer(self, i: int, accept: bool) -> None:
        if self.writer != i or self.asker is None or self.sessions[i].closed:
            return
        if accept:
            self.writer = self.asker
        self.asker = None

    def deadline(self) -> None:
        if self.asker is not None:
            self.writer, self.asker = self.asker, None

    def leave(self, i: int, *, close: bool) -> None:
        if self.sessions[i].closed:
            return
        if self.asker == i:
            self.asker = None
        if self.writer == i:
            self.writer, self.asker = self.asker, None
        if close:
            self.sessions[i].closed = True


class LeaseMachine(RuleBasedStateMachine):
    """Any interleaving of attach / take over / answer / deadline / read-only / detach / input under every
    takeover policy: the hub agrees with an independent model of who writes, who waits, who was detached,
    and exactly the current writer's bytes reach the device."""

    def __init__(self) -> None:
        super().__init__()
        self.hub: PortHub | None = None
        self.link: FakeLink | None = None
        self.timers = FakeTimers()
        self.model: LeaseModel | None = None
        self.sessions: list[Session] = []
        self.expected = bytearray()
        self.counter = 0

    @precondition(lambda self: self.hub is None)
    @rule(policy=st.sampled_from(list(TakeoverPolicy)))
    def setup(self, policy: TakeoverPolicy) -> None:
        self.hub, self.link = make_hub(takeover=policy, schedule=self.timers)
        self.model = LeaseModel(policy)

    def _pick(self, i: int) -> int | None:
        return i % len(self.sessions) if self.sessions else None

    @precondition(lambda self: self.hub is not None)
    @rule(interactive=st.booleans())
    def attach(self, interactive: bool) -> None:
        assert self.hub is not None and self.model is not None
        s, _ = attach(
            self.hub,
            AttachMode.INTERACTIVE if interactive else AttachMode.READ_ONLY,
            who=f"10.0.0.{len(self.sessions) % 250}:1",
        )
        self.sessions.append(s)
        self.model.attach(interactive)

    @precondition(lambda self: self.hub is not None)
    @rule()
    def attach_forced(self) -> None:
        assert self.hub is not None and self.model is not None
        sink = Sink()
        who = f"10.0.0.{len(self.sessions) % 250}:1"
        session = self.hub.attach(sink, Identity("ssh", who), AttachMode.INTERACTIVE, force=True)
        assert session is not None
        self.sessions.append(session)
        self.model.attach_forced()

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def take_over(self, i: int) -> None:
        assert self.model is not None
        if (k := self._pick(i)) is not None:
            self.sessions[k].take_over()
            self.model.request(k)

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20), accept=st.booleans())
    def answer(self, i: int, accept: bool) -> None:
        assert self.model is not None
        if (k := self._pick(i)) is not None:
            self.sessions[k].answer_takeover(accept)
            self.model.answer(k, accept)

    @precondition(lambda self: self.hub is not None)
    @rule()
    def deadline(self) -> None:
        assert self.model is not None
        self.timers.fire_all()
        self.model.deadline()

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def read_only(self, i: int) -> None:
        assert self.model is not None
        if (k := self._pick(i)) is not None:
            self.sessions[k].become_viewer()
            self.model.leave(k, close=False)

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def detach(self, i: int) -> None:
        assert self.model is not None
        if (k := self._pick(i)) is not None:
            self.sessions[k].detach()
            self.model.leave(k, close=True)

    @precondition(lambda self: self.hub is not None)
    @rule(i=st.integers(0, 20))
    def type_(self, i: int) -> None:
        assert self.model is not None
        if (k := self._pick(i)) is None:
            return
        self.counter += 1
        data = f"<{self.counter}>".encode()
        if self.model.writer == k:
            self.expected += data
        self.sessions[k].input(data)

    @invariant()
    def hub_agrees_with_model(self) -> None:
        if self.hub is None or self.link is None or self.model is None:
            return
        for k, (session, modelled) in enumerate(zip(self.sessions, self.model.sessions, strict=True)):
            assert session.closed == modelled.closed, k
            expected_role = Role.WRITER if self.model.writer == k else Role.VIEWER
            assert session.closed or session.role is expected_role, k
        holder = self.hub.arbiter.lease.holder
        writer_id = None if self.model.writer is None else self.sessions[self.model.writer].id
        assert (holder.session_id if holder else None) == writer_id
        pending = self.hub.arbiter.lease.pending
        asker_id = None if self.model.asker is None else self.sessions[self.model.asker].id
        assert (pending.asker.session_id if pending else None) == asker_id
        assert bytes(self.link.written) == bytes(self.expected)


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_evicted_writer_paused_by_device_is_resumed_so_its_transport_can_close() -> None:
    hub, _ = make_hub()
    _, old = attach(hub)
    hub.device_write_paused()
    assert old.input_paused
    attach(hub)  # evicts
    assert not old.input_paused


def test_paced_input_queue_is_bounded_by_pausing_the_writer() -> None:
    async def scenario() -> None:
        hub, link = make_hub(input_rate_bytes_per_s=100, device_buffer_bytes=1024)
        writer, sink = attach(hub)
        writer.input(b"x" * 5000)
        assert sink.input_paused  # no more is read from this client until the queue drains
        assert len(link.written) <= 100
        await hub.close()

    asyncio.run(scenario())


def test_viewer_going_read_only_keeps_the_writers_queued_input() -> None:
    async def scenario() -> None:
        hub, _ = make_hub(input_rate_bytes_per_s=100)
        writer, _wsink = attach(hub)
        viewer, _vsink = attach(hub, AttachMode.READ_ONLY)
        writer.input(b"y" * 500)
        queued = hub.input.queued_bytes
        assert queued > 0
        viewer.become_viewer()
        assert hub.input.queued_bytes == queued
        await hub.close()

    asyncio.run(scenario())


def test_manual_replay_while_behind_does_not_skip_bytes_silently() -> None:
    hub, _ = make_hub(scrollback_bytes=1 << 16)
    session, slow = attach(hub, AttachMode.READ_ONLY, capacity=10)
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
    session, sink = attach(hub, AttachMode.READ_ONLY, capacity=100)
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
        hub, _ = make_hub(input_rate_bytes_per_s=10, device_buffer_bytes=1024)
        who = Identity("http", "127.0.0.1:9")
        with pytest.raises(Refused) as refused:
            for _ in range(100):
                hub.api_input(who, b"k" * 100, "send keys")
        assert refused.value.kind is RefusalKind.QUEUE_FULL
        assert hub.input.queued_bytes < 1024 + 100
        await hub.close()

    asyncio.run(scenario())


def test_resume_from_an_overwritten_offset_is_told_even_with_close_policy() -> None:
    hub, _ = make_hub(scrollback_bytes=4096, slow_reader=SlowReaderPolicy.CLOSE)
    hub.device_data_received(b"a" * 10000)
    sink = Sink()
    session = hub.attach(sink, Identity("ws", "x:1"), AttachMode.READ_ONLY, from_offset=100)
    assert session is not None and sink.closed_reason is None
    missed = [n for n in sink.notices if n.kind is NoticeKind.MISSED]
    assert missed and missed[0].fields == {"missed": 10000 - 4096 - 100, "offset": 10000 - 4096}
    assert len(sink.output) == 4096


def test_ask_policy_writer_says_no_and_keeps_writing() -> None:
    timers = FakeTimers()
    hub, link = make_hub(takeover=TakeoverPolicy.ASK, schedule=timers)
    old, osink = attach(hub, who="10.0.0.1:1")
    new, nsink = attach(hub, who="10.0.0.2:2")
    assert old.role is Role.WRITER and new.role is Role.VIEWER
    asked = [n for n in osink.notices if n.kind is NoticeKind.ASKED]
    assert asked and "10.0.0.2:2" in asked[0].text and asked[0].fields["timeout_s"] == 10.0
    assert NoticeKind.WAITING in nsink.kinds()
    assert old.being_asked() and not new.being_asked()
    old.answer_takeover(False)
    assert old.role is Role.WRITER and new.role is Role.VIEWER
    refused = [n for n in nsink.notices if n.kind is NoticeKind.REFUSED]
    assert refused and "keeps write access" in refused[-1].text
    assert timers.fire_all() == 0  # the deadline timer was cancelled by the answer
    old.input(b"mine")
    new.input(b"not mine")
    assert bytes(link.written) == b"mine"


def test_ask_policy_silence_hands_over_and_old_writer_watches() -> None:
    timers = FakeTimers()
    hub, link = make_hub(takeover=TakeoverPolicy.ASK, ask_timeout_s=3.0, schedule=timers)
    old, osink = attach(hub, who="10.0.0.1:1")
    new, nsink = attach(hub, who="10.0.0.2:2")
    assert [delay for delay, _, _ in timers.pending] == [3.0]
    assert timers.fire_all() == 1
    assert new.role is Role.WRITER and old.role is Role.VIEWER and not old.closed
    demoted = [n for n in osink.notices if n.kind is NoticeKind.DEMOTED]
    assert demoted and "did not answer" in demoted[0].text
    assert NoticeKind.TOOK_OVER in nsink.kinds()
    old.input(b"late")
    new.input(b"new")
    assert bytes(link.written) == b"new"


def test_ask_policy_yes_hands_over_at_once_and_a_second_asker_is_told_busy() -> None:
    timers = FakeTimers()
    hub, _ = make_hub(takeover=TakeoverPolicy.ASK, schedule=timers)
    old, _ = attach(hub, who="10.0.0.1:1")
    new, _ = attach(hub, who="10.0.0.2:2")
    third, tsink = attach(hub, who="10.0.0.3:3")
    assert any("another takeover request" in n.text for n in tsink.notices)
    old.answer_takeover(True)
    assert new.role is Role.WRITER and old.role is Role.VIEWER and third.role is Role.VIEWER


def test_ask_policy_writer_leaving_hands_over_and_asker_leaving_cancels() -> None:
    timers = FakeTimers()
    hub, _ = make_hub(takeover=TakeoverPolicy.ASK, schedule=timers)
    old, _ = attach(hub)
    new, nsink = attach(hub, who="10.0.0.2:2")
    old.detach()
    assert new.role is Role.WRITER
    assert any("the writer left" in n.text for n in nsink.notices)
    other, _ = attach(hub, who="10.0.0.3:3")
    assert hub.arbiter.lease.pending is not None
    other.detach()
    assert hub.arbiter.lease.pending is None and timers.fire_all() == 0
    assert new.role is Role.WRITER


class BrokenSink(Sink):
    def send_output(self, data: bytes) -> None:
        raise RuntimeError("codec bug")


def test_a_sink_that_raises_loses_its_own_session_and_nobody_else_misses_a_byte() -> None:
    hub, _ = make_hub()
    _, before = attach(hub, AttachMode.READ_ONLY)
    broken = BrokenSink()
    session = hub.attach(broken, Identity("telnet", "10.9.9.9:1"), AttachMode.READ_ONLY)
    assert session is not None
    _, after = attach(hub, AttachMode.READ_ONLY)
    hub.device_data_received(b"one")
    hub.device_data_received(b"two")
    assert bytes(before.output) == bytes(after.output) == b"onetwo"
    assert session.closed and broken.end_reason is EndReason.PROTOCOL
    assert hub.sink_errors == 1 and hub.state is PortState.ONLINE


def test_observers_see_every_chunk_with_its_offset_and_a_failing_one_is_dropped() -> None:
    hub, _ = make_hub()
    seen: list[tuple[bytes, int]] = []

    def broken(data: bytes, offset: int) -> None:
        raise RuntimeError("observer bug")

    before = len(hub.output.observers)  # the hub's own (the recording timeline)
    hub.output.observers += [lambda data, offset: seen.append((data, offset)), broken]
    _, sink = attach(hub, AttachMode.READ_ONLY)
    hub.device_data_received(b"abc")
    hub.device_data_received(b"de")
    assert seen == [(b"abc", 0), (b"de", 3)]
    assert len(hub.output.observers) == before + 1 and bytes(sink.output) == b"abcde"
    assert hub.output.last_output_at is not None


def test_an_idle_writer_is_demoted_typing_keeps_it_and_the_logout_sequence_follows_every_writer() -> None:
    timers = FakeTimers()
    now = [100.0]
    cfg = PortConfig(
        name="vm1",
        device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"),
        replay_bytes=0,
        writer_idle_timeout_s=60.0,
        logout_sequence="\x04",
    )
    link = FakeLink()
    hub = PortHub(cfg, lambda _hub: link, schedule=timers, clock=lambda: now[0])
    hub.start()
    hub.device_online("fake:")
    writer, sink = attach(hub)
    assert [delay for delay, _, _ in timers.pending] == [60.0]
    now[0] += 50
    writer.input(b"x")  # typing only records the time
    now[0] += 10
    assert timers.fire_all() == 1  # fired at 60 s, but the writer typed 10 s ago: set again for 50 s
    assert writer.role is Role.WRITER and [delay for delay, _, _ in timers.pending] == [50.0]
    now[0] += 50
    timers.fire_all()
    assert str(writer.role) == "viewer" and not writer.closed  # (str: mypy narrowed role above)
    assert any("no input for 60 s" in n.text for n in sink.notices)
    assert bytes(link.written) == b"x\x04"  # the logout sequence after the writer lost the lease
    writer.take_over()
    other, _ = attach(hub)  # evicts the writer: logout again
    assert bytes(link.written) == b"x\x04\x04" and other.role is Role.WRITER


def test_an_idle_writer_can_be_detached_instead() -> None:
    timers = FakeTimers()
    hub, _ = make_hub(schedule=timers, writer_idle_timeout_s=5.0, writer_idle_action="detach")
    writer, sink = attach(hub)
    timers.fire_all()  # the real clock has not moved 5 s: the check is set again ...
    assert not writer.closed
    hub.watch._last_input -= 10  # ... and once the writer has been idle long enough, it is detached
    timers.fire_all()
    assert writer.closed and sink.closed_reason == "no input for 5 s"
