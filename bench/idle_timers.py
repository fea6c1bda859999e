"""Timers on an idle daemon: the event loop's scheduled callbacks with N idle consoles, for two values of N.

The daemon is started in this process (``Daemon.start``, on asyncio's own loop, whose scheduled timer
handles are inspectable: uvloop's are not) with N ports on unix-socket devices that this script listens
on, each with a telnet listener.  Once every device is online and start-up work has settled, it lists the
loop's pending ``TimerHandle``s by callback.  No per-port timer while idle means the same count at both N
(what remains are the daemon's own periodic jobs).  Also the loop's wake-ups over a quiet window (epoll
returns counted by wrapping the selector), which per-port timers would multiply.

    .venv/bin/python bench/idle_timers.py --ports 500,3000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.append(
        str(Path(__file__).resolve().parent.parent)
    )  # after PYTHONPATH: another tree may be tested

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.hub import PortState
from serialmuxd.obs.logging import configure_logging

QUIET_S = 3.0


def _config(tmp: Path, count: int) -> str:
    lines = ["[daemon]", f'state_dir = "{tmp / "state"}"', 'log_level = "warning"', ""]
    for i in range(count):
        lines += [
            "[[ports]]",
            f'name = "p{i}"',
            f'device = "unix:{tmp / f"c{i}.sock"}"',
            'telnet = "127.0.0.1:0"',
            "",
        ]
    return "\n".join(lines)


class _CountingSelector(selectors.DefaultSelector):
    wakeups = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        result: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        _CountingSelector.wakeups += 1
        return result


async def measure(count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="serialmuxd-timers-") as tmp_name:
        tmp = Path(tmp_name)
        guests = []
        for i in range(count):
            guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            guest.bind(str(tmp / f"c{i}.sock"))
            guest.listen(1)
            guests.append(guest)
        config = parse_config(_config(tmp, count), "<bench>")
        configure_logging(config.daemon.log_level, config.daemon.log_format)
        daemon = Daemon(config)
        await daemon.start()
        try:
            deadline = time.monotonic() + 120
            while any(hub.state is not PortState.ONLINE for hub in daemon.hubs.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("devices not online after 120 s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # start-up work settles (backoff resets, first health ticks)
            before = _CountingSelector.wakeups
            await asyncio.sleep(QUIET_S)
            wakeups = _CountingSelector.wakeups - before - 1  # minus our own sleep's wake-up
            scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            by_callback = collections.Counter(
                getattr(h._callback, "__qualname__", repr(h._callback)) for h in scheduled
            )
            by_callback.pop("sleep.<locals>.<lambda>", None)
            return {
                "ports": count,
                "timers": sum(by_callback.values()),
                "by_callback": dict(by_callback),
                "wakeups_per_s": wakeups / QUIET_S,
                "tasks": len(asyncio.all_tasks()) - 1,  # each device link's reconnect task waits on a future
            }
        finally:
            await daemon.stop()
            for guest in guests:
                guest.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ports", default="500,3000")
    args = parser.parse_args()
    print(
        "| idle ports | pending timers | loop wake-ups per s | tasks (none on a timer) | timers by callback |"
    )
    print("|---:|---:|---:|---:|---|")
    for count in (int(n) for n in args.ports.split(",")):
        runner = asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(_CountingSelector()))
        with runner:
            result = runner.run(measure(count))
        callbacks = ", ".join(f"{name} x{n}" for name, n in sorted(result["by_callback"].items()))
        print(
            f"| {count:,} | {result['timers']} | {result['wakeups_per_s']:.1f} | {result['tasks']:,} "
            f"| {callbacks} |"
        )


if __name__ == "__main__":
    main()
