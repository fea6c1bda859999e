"""The Python part of one keystroke round trip, in-process and without I/O: µs per keystroke, each way.

``bench/run.py``'s RTT is the whole trip (kernel, two PTY hops, wake-ups, the bench itself); the daemon's
own Python is a few tens of µs of it and is what the hot-path work changes.  This times exactly that part,
deterministically enough to compare two versions on a noisy machine (best of ``--repeat``):

* **in**: ``TelnetConnection.data_received(b"a")`` on a raw or telnet connection, through the escape FSM,
  the session, the hub's access and lease checks and the input pacing, to the device link's ``write``;
* **out**: ``PortHub.device_data_received(b"a")`` through the ring, the fan-out's observers (the daemon's
  defaults: the guest-health matcher) and the session to ``TelnetConnection.send_output`` and
  ``transport.write`` — for 1, 10 and 100 attached sessions;

against stand-ins for the two ends only: a link whose ``write`` takes the bytes, and a transport whose
``write`` drops them.  Everything between is the daemon's real code.

    .venv/bin/python bench/keypath.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import pstats
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.append(
        str(Path(__file__).resolve().parent.parent)
    )  # after PYTHONPATH: another tree may be tested

from serialmuxd.config import parse_config
from serialmuxd.core.access import AttachMode
from serialmuxd.devices.base import LinkState
from serialmuxd.frontends.telnet import TelnetConnection
from serialmuxd.hub import PortHub, PortState

_CONFIG = """
[[ports]]
name = "vm0"
device = "tty:/dev/null"
raw = {raw}
max_sessions = 1000
max_sessions_per_address = 1000
"""


_TEXT_CHUNK = (b"[  OK  ] Started serial-getty@ttyS0.service - Serial Getty on ttyS0.\r\n" * 60)[:4096]


class _Link:
    """The device end: takes every byte."""

    state = LinkState.ONLINE
    write_buffer_size = 0

    def write(self, data: bytes) -> bool:
        return True


class _Transport:
    """The client end: drops what it is given (a real transport's write is a send(2))."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def build(raw: bool, sessions: int) -> tuple[PortHub, TelnetConnection]:
    config = parse_config(_CONFIG.format(raw="true" if raw else "false"), "<bench>").ports[0]
    hub = PortHub(config, None)
    hub.state = PortState.ONLINE
    hub.link = _Link()  # type: ignore[assignment]
    first: TelnetConnection | None = None
    for i in range(sessions):
        conn = TelnetConnection(hub, raw=raw, mode=AttachMode.INTERACTIVE if i == 0 else AttachMode.READ_ONLY)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        first = first or conn
    assert first is not None and first.session is not None
    if not raw:  # the client's answer to the opening offer, as Debian's telnet sends it
        first.data_received(bytes.fromhex("fffd01fffd03fffb03fffd00fffb00fffb1f"))
    return hub, first


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def calls_per_op(fn: Callable[[], object], number: int = 1000) -> float:
    """Python-level function calls per ``fn()`` (cProfile's count: the same on a busy or an idle machine)."""
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(nc for (_cc, nc, _tt, _ct, _callers) in stats.stats.values())  # type: ignore[attr-defined]
    return (total - 1) / number  # minus profiler.disable itself


async def measure(number: int, repeat: int) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    for raw in (True, False):
        kind = "raw" if raw else "telnet"
        hub, conn = build(raw, 1)

        typed = functools.partial(conn.data_received, b"a")

        label = f"in, {kind}: data_received(b'a') -> link.write"
        out.append((label, best_us(typed, number, repeat), calls_per_op(typed)))
        for n in (1, 10, 100):
            hub, conn = build(raw, n)
            echoed = functools.partial(hub.device_data_received, b"a")

            label = f"out, {kind}, {n} session(s): device_data_received(b'a') -> transport.write"
            out.append((label, best_us(echoed, number, repeat), calls_per_op(echoed)))
        text = functools.partial(hub.device_data_received, _TEXT_CHUNK)
        label = f"out, {kind}, 100 sessions: a 4 KiB chunk of text lines"
        out.append((label, best_us(text, max(number // 10, 100), repeat), calls_per_op(text)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"| path | µs per keystroke (best of {args.repeat}) | Python calls per keystroke |")
    print("|---|---:|---:|")
    for label, us, calls in asyncio.run(measure(args.number, args.repeat)):
        print(f"| {label} | {us:.2f} | {calls:.0f} |")


if __name__ == "__main__":
    main()
