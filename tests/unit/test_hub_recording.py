"""The hub's side of the recording export: every guest chunk gets the hub's wall-clock time in its
timeline, ``recording`` decides access like the scrollback, and the window size is the writer's only."""

from __future__ import annotations

import pytest

from serialmuxd.config import DeviceKind, DeviceSpec, PortConfig
from serialmuxd.core.access import AccessPolicy, AttachMode, Identity, Verb
from serialmuxd.hub import PortHub
from serialmuxd.hub.status import Refused

from .test_hub import attach


class ViewNobody:
    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return False


def _hub(wall: list[float], access: AccessPolicy | None = None, scrollback_bytes: int = 1 << 20) -> PortHub:
    config = PortConfig(
        name="vm1",
        device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"),
        replay_bytes=0,
        scrollback_bytes=scrollback_bytes,
    )
    hub = PortHub(config, None, access=access, wall=lambda: wall[0], start_offset=1000)
    hub.device_online("fake:")
    return hub


def test_each_chunk_gets_the_hubs_wall_time() -> None:
    wall = [1_700_000_000.0]
    hub = _hub(wall)
    for text, step in ((b"boot\r\n", 0.0), (b"init\r\n", 1.25), (b"login: ", 3.5)):
        wall[0] += step
        hub.device_data_received(text)
    who = Identity("http", "127.0.0.1:1")
    got = hub.recording(who, None, None)
    assert got.scrollback.data == b"boot\r\ninit\r\nlogin: "
    assert got.scrollback.offset == 1000
    assert got.segments == ((1000, 1_700_000_000.0), (1006, 1_700_000_001.25), (1012, 1_700_000_004.75))
    assert got.window is None
    part = hub.recording(who, 1008, 1014)
    assert part.scrollback.data == b"it\r\nlo"
    assert part.segments == ((1008, 1_700_000_001.25), (1012, 1_700_000_004.75))


def test_recording_needs_view() -> None:
    hub = _hub([0.0], AccessPolicy(ViewNobody()))
    hub.device_data_received(b"secret")
    with pytest.raises(Refused):
        hub.recording(Identity("http", "127.0.0.1:1", user="mallory"), None, None)


def test_only_the_writers_window_size_counts() -> None:
    hub = _hub([0.0])
    writer, _ = attach(hub, AttachMode.INTERACTIVE)
    viewer, _ = attach(hub, AttachMode.READ_ONLY, who="127.0.0.1:2")
    viewer.window_size_changed(200, 60)
    assert hub.window_size is None
    writer.window_size_changed(132, 43)
    assert hub.recording(Identity("http", "127.0.0.1:1"), None, None).window == (132, 43)


def test_the_timeline_forgets_what_the_ring_dropped() -> None:
    wall = [0.0]
    hub = _hub(wall, scrollback_bytes=4096)
    for _ in range(200):  # 20,000 bytes through a 4 KiB ring, a 100-byte chunk every 10 ms
        wall[0] += 0.01
        hub.device_data_received(b"0123456789" * 10)
    # The ring holds 41 whole chunks and part of one; forgetting is amortised (an eighth more at most).
    assert len(hub.timeline) <= 42 + 42 // 8 + 1
    assert hub.timeline.floor <= hub.ring.start
    got = hub.recording(Identity("http", "127.0.0.1:1"), None, None)
    (first, first_at), (last, last_at) = got.segments[0], got.segments[-1]
    assert first == hub.ring.start and first_at == pytest.approx(1.6)  # mid-chunk: that chunk's time
    assert last == hub.ring.end - 100 and last_at == pytest.approx(2.0)


def test_many_small_chunks_are_bounded_by_the_cap() -> None:
    wall = [0.0]
    hub = _hub(wall, scrollback_bytes=4096)
    for _ in range(2000):  # keystroke echoes: 1 byte each, 10 ms apart (past the coalescing)
        wall[0] += 0.01
        hub.device_data_received(b"k")
    assert len(hub.timeline) <= 64  # max_samples_for(4096): older bytes in the ring lose their times
    floor = hub.timeline.floor
    assert floor > hub.ring.start
    got = hub.recording(Identity("http", "127.0.0.1:1"), None, None)
    # Bytes older than the floor play at once, at the oldest time known; from there on, their own times.
    assert got.timed_from == floor
    assert got.segments[0] == (hub.ring.start, hub.timeline.time_at(floor))
    assert got.segments[1][0] == floor + 1
